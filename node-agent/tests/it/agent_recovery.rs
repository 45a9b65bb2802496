//! What an agent recovers from, and what it cannot: its own SVID expiring while the CA is away
//! (it attests the node again with x509pop; with a join token, used once, it stops and says
//! what to do), an entry the CA refuses to sign, and a renewed SVID it cannot store.

use std::sync::Arc;
use std::time::Duration;

use warden_node_agent::AgentError;
use warden_node_agent::config::NodeAttestation;

use crate::agent_sync::{RunningAgent, WAIT, ca_with, config};
use crate::support::TestCa;
use crate::test_ca::TestCaServer;

/// Agent SVIDs live 2 s (renewed at half-life, unless the CA is away).
const AGENT_TTL: Duration = Duration::from_secs(2);
/// Longer than an agent SVID lives, `notAfter`'s whole second included.
const OUTAGE: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_agent_whose_svid_expired_stops_and_says_to_attest_again() {
    let (ca, server) = ca_with(1, Duration::from_secs(3600), AGENT_TTL, &["tok"]).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = RunningAgent::joined(&server, dir.path(), &ca);
    agent.first_svid().await;
    server.stop().await;
    let ended = tokio::time::timeout(WAIT, agent.task)
        .await
        .unwrap()
        .unwrap();
    let Err(err @ AgentError::AgentSvidExpired { .. }) = ended else {
        panic!("{ended:?}");
    };
    assert!(
        err.to_string()
            .contains("cannot attest the node again by itself"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_x509pop_agent_whose_svid_expired_attests_again_when_the_ca_returns() {
    let (ca, server) = ca_with(1, Duration::from_secs(3600), AGENT_TTL, &[]).await;
    let node_ca = TestCa::new("nodes.test");
    server.state.lock().unwrap().node_ca = Some(node_ca.root().clone());
    let dir = tempfile::tempdir().unwrap();
    let (cert_pem, key_pem) = node_ca.node_cert_pem("node-1");
    std::fs::write(dir.path().join("node.pem"), &cert_pem).unwrap();
    std::fs::write(dir.path().join("node.key"), &key_pem).unwrap();
    let addr = server.addr;
    let state = Arc::clone(&server.state);
    let mut cfg = config(&addr.to_string(), dir.path(), &ca.root_pem(), None);
    cfg.attestation = Some(NodeAttestation::X509Pop {
        cert: dir.path().join("node.pem"),
        key: dir.path().join("node.key"),
    });
    let agent = RunningAgent::start(cfg);
    agent.first_svid().await;
    server.stop().await;
    tokio::time::sleep(OUTAGE).await;
    let stored = std::fs::read(dir.path().join("data/agent.pem")).unwrap();

    // The CA returns with a new entry: only an agent with a valid SVID can sync it.
    state
        .lock()
        .unwrap()
        .entries
        .push(crate::test_ca::entry_proto(
            "new",
            "new",
            &crate::support::uid_selector(),
        ));
    let server = TestCaServer::start(Arc::clone(&ca), state, addr).await;
    let client = agent.client().await;
    agent.serves(&client, "new").await;
    assert_ne!(
        std::fs::read(dir.path().join("data/agent.pem")).unwrap(),
        stored,
        "the new agent svid is stored"
    );
    agent.stop().await;
    server.stop().await;
}

/// The CA refuses a whole signing batch for one entry (deleted since it was listed): the
/// other entries still get their SVIDs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_the_ca_refuses_to_sign_costs_the_others_nothing() {
    let (ca, server) = ca_with(
        3,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
        &["tok"],
    )
    .await;
    server.state.lock().unwrap().unsignable.insert("e1".into());
    let dir = tempfile::tempdir().unwrap();
    let agent = RunningAgent::joined(&server, dir.path(), &ca);
    let client = agent.client().await;
    agent.serves(&client, "w2").await;
    let ids: Vec<String> = client
        .fetch_all_x509_svids()
        .await
        .unwrap()
        .iter()
        .map(|s| s.spiffe_id().to_string())
        .collect();
    assert!(
        ids.contains(&format!("spiffe://{}/w0", crate::support::TD)),
        "{ids:?}"
    );
    assert!(
        !ids.contains(&format!("spiffe://{}/w1", crate::support::TD)),
        "{ids:?}"
    );
    agent.stop().await;
    server.stop().await;
}

/// The CA cannot sign one entry (InvalidArgument, as for a DNS name its signer refuses): the
/// sync goes on, the other entries get their SVIDs, and an entry deleted meanwhile is still
/// withdrawn from the workload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_the_ca_cannot_sign_does_not_stop_the_sync() {
    let (ca, server) = ca_with(
        3,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
        &["tok"],
    )
    .await;
    server.state.lock().unwrap().invalid.insert("e1".into());
    let dir = tempfile::tempdir().unwrap();
    let agent = RunningAgent::joined(&server, dir.path(), &ca);
    let client = agent.client().await;
    agent.serves(&client, "w2").await;
    let ids = || async {
        client
            .fetch_all_x509_svids()
            .await
            .unwrap()
            .iter()
            .map(|s| s.spiffe_id().to_string())
            .collect::<Vec<String>>()
    };
    let td = crate::support::TD;
    let got = ids().await;
    assert!(got.contains(&format!("spiffe://{td}/w0")), "{got:?}");
    assert!(!got.contains(&format!("spiffe://{td}/w1")), "{got:?}");
    // w2 deleted at the CA: withdrawn at a later sync, though e1 is still refused at each.
    server
        .state
        .lock()
        .unwrap()
        .entries
        .retain(|e| e.id != "e2");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = ids().await;
        if !got.contains(&format!("spiffe://{td}/w2")) {
            assert!(got.contains(&format!("spiffe://{td}/w0")), "{got:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "w2 still served: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.stop().await;
    server.stop().await;
}

/// A refusal of the agent itself (not of one entry) is not taken for entries gone one by one:
/// the sync fails, and a fresh agent does not claim to be ready with nothing to serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_refusal_of_the_agent_itself_fails_the_sync() {
    let (ca, server) = ca_with(
        3,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
        &["tok"],
    )
    .await;
    server.state.lock().unwrap().refuse_signing = true;
    let dir = tempfile::tempdir().unwrap();
    let agent = RunningAgent::joined(&server, dir.path(), &ca);
    agent.sync_failed().await;
    assert!(
        !warden_node_agent::client::healthcheck(&agent.http)
            .await
            .unwrap(),
        "ready without a single svid"
    );
    agent.stop().await;
    server.stop().await;
}

/// A renewed agent SVID that cannot be stored is not used: the agent goes on presenting the
/// stored one (whose serial the CA still accepts as the one renewed from), stores the renewed
/// one when it can and uses it then, without renewing again meanwhile. Had it used the new one
/// unstored, the CA would refuse the stored one, which a restart loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_svid_that_cannot_be_stored_is_not_used() {
    let (ca, server) = ca_with(
        1,
        Duration::from_secs(3600),
        Duration::from_secs(4),
        &["tok"],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let agent = RunningAgent::joined(&server, dir.path(), &ca);
    agent.first_svid().await;
    // The next save fails: a directory stands where its first file goes.
    let renewed_before = server.state.lock().unwrap().renewals;
    std::fs::create_dir(dir.path().join("data/agent.key.next")).unwrap();
    let stored = pem::parse(std::fs::read(dir.path().join("data/agent.pem")).unwrap())
        .unwrap()
        .into_contents();
    let deadline = std::time::Instant::now() + WAIT;
    let (renewed, calls) = loop {
        let (renewals, calls) = {
            let st = server.state.lock().unwrap();
            (st.renewals, st.calls)
        };
        if renewals > renewed_before {
            break (renewals, calls);
        }
        assert!(std::time::Instant::now() < deadline, "never renewed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Two more calls after the renewal: both present the stored SVID.
    while server.state.lock().unwrap().calls < calls + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no call after the renewal"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        server.state.lock().unwrap().presented.as_deref() == Some(stored.as_slice()),
        "the agent presented another svid than the stored one"
    );
    // It does not renew again while the renewed one waits to be stored: it stores that one
    // once it can, and uses it then.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        server.state.lock().unwrap().renewals,
        renewed,
        "renewed again meanwhile"
    );
    std::fs::remove_dir(dir.path().join("data/agent.key.next")).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let now_stored = pem::parse(std::fs::read(dir.path().join("data/agent.pem")).unwrap())
            .unwrap()
            .into_contents();
        let presented = server.state.lock().unwrap().presented.clone();
        if now_stored != stored && presented.as_deref() == Some(now_stored.as_slice()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed svid was never stored and used"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        server.state.lock().unwrap().renewals,
        renewed,
        "renewed again instead"
    );
    assert!(!agent.task.is_finished());
    agent.stop().await;
    server.stop().await;
}

/// The stored agent SVID expires while its renewal still waits to be stored: the renewal (the
/// one the CA holds as current) is taken into use, renewed in its turn while the disk fails,
/// and what is in use is stored once that works. Before, a join-token agent stopped as if it
/// had nothing valid, and an x509pop agent attested again, only to store the stale renewal
/// later and be refused with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_waiting_to_be_stored_is_used_when_the_stored_svid_expires() {
    // Agent SVIDs of 14 s, valid from 10 s back (the test CA's): renewed 2 s after issue, so a
    // renewal outlives the SVID it renews by 2 s.
    let (ca, server) = ca_with(
        1,
        Duration::from_secs(3600),
        Duration::from_secs(14),
        &["tok"],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let agent = RunningAgent::joined(&server, dir.path(), &ca);
    agent.first_svid().await;
    std::fs::create_dir(dir.path().join("data/agent.key.next")).unwrap();
    let leaf = |path: &std::path::Path| {
        pem::parse(std::fs::read(path).unwrap())
            .unwrap()
            .into_contents()
    };
    let stored = leaf(&dir.path().join("data/agent.pem"));
    // The stored SVID expires; the agent goes on with another one.
    let deadline = std::time::Instant::now() + WAIT + Duration::from_secs(14);
    loop {
        let presented = server.state.lock().unwrap().presented.clone();
        if presented.is_some_and(|p| p != stored) {
            break;
        }
        if agent.task.is_finished() {
            panic!("the agent stopped: {:?}", agent.task.await);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never moved off the stored svid"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And goes on while the disk fails, from renewal to renewal.
    tokio::time::sleep(Duration::from_secs(5)).await;
    if agent.task.is_finished() {
        panic!("the agent stopped: {:?}", agent.task.await);
    }
    // Once the disk takes it, what it uses is what it stores.
    std::fs::remove_dir(dir.path().join("data/agent.key.next")).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let presented = server.state.lock().unwrap().presented.clone();
        if presented.is_some_and(|p| p == leaf(&dir.path().join("data/agent.pem"))) {
            break;
        }
        if agent.task.is_finished() {
            panic!("the agent stopped: {:?}", agent.task.await);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "what it uses was never stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.stop().await;
    server.stop().await;
}
