//! The hash-chained audit log: appends, paging, and tamper detection that names the record.

use serde_json::json;
use warden_ca::datastore::AuditEvent;

use super::harness::{Backend, backends, sqlite};

fn event(n: u32) -> AuditEvent {
    AuditEvent {
        kind: "test.event".into(),
        actor: "tester".into(),
        subject: format!("s{n}"),
        detail: json!({ "n": n }),
    }
}

async fn five_records(b: &Backend) {
    for n in 1..=5 {
        assert_eq!(b.ds.append_audit(&event(n)).await.unwrap(), u64::from(n));
    }
    let v = b.ds.verify_audit().await.unwrap();
    assert!(v.is_ok(), "{}: {v:?}", b.name);
    assert_eq!(v.records, 5);
}

#[tokio::test]
async fn audit_list_pages_by_sequence() {
    for b in backends().await {
        five_records(&b).await;
        let page = b.ds.list_audit(2, 2).await.unwrap();
        assert_eq!(
            page.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [3, 4],
            "{}",
            b.name
        );
        assert_eq!(page[0].subject, "s3");
        assert_eq!(page[0].detail, r#"{"n":3}"#);
        assert_eq!(page[0].hash.len(), 64);
        assert!(b.ds.list_audit(5, 10).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn audit_verify_names_an_edited_record() {
    for b in backends().await {
        five_records(&b).await;
        b.raw_exec("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 3")
            .await;
        let v = b.ds.verify_audit().await.unwrap();
        let bad = v.first_bad.expect("tampering detected");
        assert_eq!(bad.seq, 3, "{}: {}", b.name, bad.problem);
        assert!(
            bad.problem.contains("record 3 was edited"),
            "{}",
            bad.problem
        );
        assert_eq!(v.records, 2);
    }
}

#[tokio::test]
async fn audit_verify_names_an_edited_record_even_when_its_hash_was_recomputed() {
    // Editing record 3 and fixing up its stored hash still breaks the link to record 4.
    let b = sqlite().await;
    five_records(&b).await;
    b.raw_exec("UPDATE audit_log SET detail = '{\"n\":33}', hash = (SELECT hash FROM audit_log WHERE seq = 2) WHERE seq = 3").await;
    let bad = b.ds.verify_audit().await.unwrap().first_bad.unwrap();
    assert_eq!(bad.seq, 3, "{}", bad.problem);
}

#[tokio::test]
async fn audit_verify_names_a_deleted_record() {
    for b in backends().await {
        five_records(&b).await;
        b.raw_exec("DELETE FROM audit_log WHERE seq = 2").await;
        let bad =
            b.ds.verify_audit()
                .await
                .unwrap()
                .first_bad
                .expect("deletion detected");
        assert_eq!(bad.seq, 2, "{}", b.name);
        assert!(
            bad.problem.contains("record 2 is missing (deleted)"),
            "{}",
            bad.problem
        );
    }
}

#[tokio::test]
async fn audit_verify_detects_records_deleted_from_the_end() {
    for b in backends().await {
        five_records(&b).await;
        b.raw_exec("DELETE FROM audit_log WHERE seq >= 4").await;
        let v = b.ds.verify_audit().await.unwrap();
        let bad = v.first_bad.expect("truncation detected");
        assert_eq!(bad.seq, 4, "{}", b.name);
        assert!(
            bad.problem.contains("records 4..=5 are missing"),
            "{}",
            bad.problem
        );
    }
}

#[tokio::test]
async fn audit_chain_survives_reopening_and_concurrent_appends() {
    for b in backends().await {
        let mut tasks = Vec::new();
        for n in 0..20 {
            let ds = b.ds.clone();
            tasks.push(tokio::spawn(async move {
                ds.append_audit(&event(n)).await.unwrap()
            }));
        }
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap());
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=20).collect::<Vec<u64>>(), "{}", b.name);
        let reopened = warden_ca::datastore::Datastore::open(&b.url).await.unwrap();
        reopened.append_audit(&event(99)).await.unwrap();
        let v = reopened.verify_audit().await.unwrap();
        assert!(v.is_ok(), "{}: {v:?}", b.name);
        assert_eq!(v.records, 21);
    }
}

/// A busy CA appends while its log is verified: records appended meanwhile are no tampering.
#[tokio::test]
async fn audit_verify_while_records_are_appended_finds_nothing_wrong() {
    for b in backends().await {
        five_records(&b).await;
        let ds = b.ds.clone();
        let appending = tokio::spawn(async move {
            for n in 0..400 {
                ds.append_audit(&event(n)).await.unwrap();
            }
        });
        let mut verified = 0;
        while !appending.is_finished() {
            let v = b.ds.verify_audit().await.unwrap();
            assert!(v.is_ok(), "{}: {v:?}", b.name);
            verified += 1;
        }
        appending.await.unwrap();
        let v = b.ds.verify_audit().await.unwrap();
        assert!(v.is_ok(), "{}: {v:?}", b.name);
        assert_eq!(v.records, 405);
        assert!(verified > 0);
    }
}

/// A record written into the log without the chain head (by whoever can write the database):
/// named, though its hash links to the record before it.
#[tokio::test]
async fn audit_verify_names_a_record_past_the_chain_head() {
    for b in backends().await {
        five_records(&b).await;
        b.raw_exec(
            "INSERT INTO audit_log (seq, at, kind, actor, subject, detail, hash) \
             SELECT 6, at, kind, actor, subject, detail, hash FROM audit_log WHERE seq = 5",
        )
        .await;
        let bad = b.ds.verify_audit().await.unwrap().first_bad.unwrap();
        assert_eq!(bad.seq, 6, "{}: {}", b.name, bad.problem);
        assert!(
            bad.problem.contains("past the chain head"),
            "{}",
            bad.problem
        );
    }
}

/// `b`'s store keyed from record `from` with a fixed test key, and the keying recorded.
async fn keyed(b: &Backend, from: u64) -> warden_ca::datastore::Datastore {
    let key = warden_ca::datastore::AuditKey::new(&[0x5a; 32], from);
    b.ds.set_audit_keying(&key).await.unwrap();
    b.ds.clone().with_audit_key(key)
}

/// Cuts `b`'s log back to before record `from` and writes `events` after it with the CA's code
/// but without the key, as whoever can write the database but not read the key could.
async fn rewrite_from(b: &Backend, from: u64, events: &[u32]) {
    b.raw_exec(&format!("DELETE FROM audit_log WHERE seq >= {from}"))
        .await;
    b.raw_exec(&format!(
        "UPDATE audit_head SET seq = {last}, hash = (SELECT hash FROM audit_log WHERE seq = {last}) WHERE id = 1",
        last = from - 1
    ))
    .await;
    for n in events {
        b.ds.append_audit(&event(*n)).await.unwrap();
    }
}

/// The record `ds`'s verification names.
async fn first_bad(ds: &warden_ca::datastore::Datastore) -> u64 {
    let v = ds.verify_audit().await.unwrap();
    v.first_bad.expect("tampering found").seq
}

#[tokio::test]
async fn a_keyed_chain_verifies_with_its_key_and_tells_the_keyless_it_cannot() {
    for b in backends().await {
        for n in 1..=2 {
            b.ds.append_audit(&event(n)).await.unwrap();
        }
        let ds = keyed(&b, 3).await;
        // Record 3 is the keying's own record.
        let third = ds.list_audit(2, 1).await.unwrap().remove(0);
        assert_eq!((third.seq, third.kind.as_str()), (3, "audit.keyed"));
        for n in 4..=6 {
            assert_eq!(ds.append_audit(&event(n)).await.unwrap(), u64::from(n));
        }
        let v = ds.verify_audit().await.unwrap();
        assert!(v.is_ok(), "{}: {v:?}", b.name);
        assert_eq!(v.records, 6);
        let keying = b.ds.audit_keying().await.unwrap().unwrap();
        assert_eq!(keying.keyed_from, 3);
        let err = b.ds.verify_audit().await.unwrap_err().to_string();
        assert!(err.contains("keyed from record 3"), "{}: {err}", b.name);
        // Keyed already, or from a record already written: refused.
        let again = warden_ca::datastore::AuditKey::new(&[1; 32], 9);
        assert!(b.ds.set_audit_keying(&again).await.is_err());
        // The head's keying edited (to pass the chain off as unkeyed): named.
        b.raw_exec("UPDATE audit_head SET keyed_from = NULL, key_id = NULL WHERE id = 1")
            .await;
        let bad = ds
            .verify_audit()
            .await
            .unwrap()
            .first_bad
            .expect("head edit found");
        assert!(
            bad.problem.contains("the head was edited"),
            "{}",
            bad.problem
        );
    }
}

#[tokio::test]
async fn records_chained_without_the_key_are_found_in_a_keyed_chain() {
    for b in backends().await {
        let ds = keyed(&b, 1).await;
        for n in 1..=5 {
            ds.append_audit(&event(n)).await.unwrap();
        }
        // Whoever can write the database but has no key: cuts the log back to record 2 and
        // writes records of its own with the CA's code, unkeyed.
        rewrite_from(&b, 3, &[30, 31, 32]).await;
        assert_eq!(first_bad(&ds).await, 3, "{}", b.name);
    }
}

#[tokio::test]
async fn unkeyed_records_before_the_key_are_held_by_the_first_keyed_one() {
    let b = sqlite().await;
    for n in 1..=3 {
        b.ds.append_audit(&event(n)).await.unwrap();
    }
    let ds = keyed(&b, 4).await;
    ds.append_audit(&event(4)).await.unwrap();
    // Record 2 edited, and the chain from it rebuilt with the CA's code but without the key.
    rewrite_from(&b, 2, &[22, 3, 4]).await;
    // Records 2 and 3 are unkeyed links and hold together; the keyed record 4 does not.
    assert_eq!(first_bad(&ds).await, 4);
}
