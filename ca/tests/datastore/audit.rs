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
