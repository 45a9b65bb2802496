//! Workload API streams (W-6): the first message comes at once, rotations and entry changes
//! push complete new state, and a withdrawn identity ends the stream with PermissionDenied.

use std::time::Duration;

use futures::StreamExt;
use warden_node_agent::cache::{Entry, MAX_HINT_LEN};

use crate::support::{TD, TestAgent, TestCa, entry, uid_selector};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn stream_delivers_rotated_svid_w6() {
    let ca = TestCa::new(TD);
    let id = format!("spiffe://{TD}/web");
    let mut agent = TestAgent::start(
        &ca,
        vec![entry("e", &id, &uid_selector(), 1, "")],
        Duration::from_secs(3600),
        vec![],
    )
    .await;
    let client = agent.client().await;
    let mut stream = Box::pin(client.stream_x509_contexts().await.unwrap());
    let first = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let old_leaf = first.default_svid().unwrap().leaf().as_bytes().to_vec();

    assert!(
        agent
            .cache
            .set_svid("e", ca.svid(&id, Duration::from_secs(3600)))
    );
    agent.cache.publish();
    let next = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let new_leaf = next.default_svid().unwrap().leaf().as_bytes().to_vec();
    assert_ne!(old_leaf, new_leaf, "the stream must carry the rotated svid");
    agent.stop().await;
}

#[tokio::test]
async fn deleted_entry_is_withdrawn_from_the_stream_w6() {
    let ca = TestCa::new(TD);
    let sel = uid_selector();
    let keep = entry("keep", &format!("spiffe://{TD}/keep"), &sel, 1, "");
    let gone = entry("gone", &format!("spiffe://{TD}/gone"), &sel, 2, "");
    let mut agent = TestAgent::start(
        &ca,
        vec![keep.clone(), gone],
        Duration::from_secs(3600),
        vec![],
    )
    .await;
    let client = agent.client().await;
    let mut stream = Box::pin(client.stream_x509_contexts().await.unwrap());
    let first = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.svids().len(), 2);

    agent.cache.set_entries(vec![keep]);
    agent.cache.publish();
    let next = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let ids: Vec<String> = next
        .svids()
        .iter()
        .map(|s| s.spiffe_id().to_string())
        .collect();
    assert_eq!(ids, vec![format!("spiffe://{TD}/keep")]);

    // The last identity withdrawn: the stream ends with PermissionDenied.
    agent.cache.set_entries(Vec::<Entry>::new());
    agent.cache.publish();
    let end = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(end, Err(spiffe::WorkloadApiError::NoIdentityIssued)),
        "{end:?}"
    );
    agent.stop().await;
}

#[tokio::test]
async fn unrelated_cache_changes_do_not_resend_identical_state_w6() {
    let ca = TestCa::new(TD);
    let mine = entry(
        "mine",
        &format!("spiffe://{TD}/mine"),
        &uid_selector(),
        1,
        "",
    );
    let other = entry(
        "other",
        &format!("spiffe://{TD}/other"),
        "unix:uid:4294967000",
        2,
        "",
    );
    let mut agent =
        TestAgent::start(&ca, vec![mine, other], Duration::from_secs(3600), vec![]).await;
    let client = agent.client().await;
    let mut stream = Box::pin(client.stream_x509_svids().await.unwrap());
    tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Rotate the other workload's SVID, then ours: only ours produces a message.
    assert!(agent.cache.set_svid(
        "other",
        ca.svid(&format!("spiffe://{TD}/other"), Duration::from_secs(60))
    ));
    agent.cache.publish();
    assert!(agent.cache.set_svid(
        "mine",
        ca.svid(&format!("spiffe://{TD}/mine"), Duration::from_secs(60))
    ));
    agent.cache.publish();
    let next = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.spiffe_id().to_string(), format!("spiffe://{TD}/mine"));
    let lifetime = next.leaf().as_bytes().len();
    assert!(lifetime > 0);
    agent.stop().await;
}

#[tokio::test]
async fn overlong_hints_are_not_sent_w13() {
    let long = "h".repeat(MAX_HINT_LEN + 1);
    let e = entry("e", &format!("spiffe://{TD}/w"), &uid_selector(), 1, &long);
    assert_eq!(e.hint, "");
    let ok = entry(
        "e",
        &format!("spiffe://{TD}/w"),
        &uid_selector(),
        1,
        &"h".repeat(MAX_HINT_LEN),
    );
    assert_eq!(ok.hint.len(), MAX_HINT_LEN);
}
