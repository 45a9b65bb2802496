//! The whole agent (`warden_node_agent::run`) against a CA over real TLS: join-token
//! attestation and its refusals, key storage, restart without a token, sync, rotation with
//! short TTLs seen on a Workload API stream, CA outage and resync, entry withdrawal, agent
//! SVID renewal, JWT-SVIDs minted by the CA.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use tokio::sync::oneshot;
use warden_identity::test_util::free_port;
use warden_node_agent::config::NodeAttestation;
use warden_node_agent::{AgentError, Config};

use crate::support::{TD, TestCa, uid_selector};
use crate::test_ca::{TestCaServer, entry_proto, new_state};

pub(crate) const WAIT: Duration = Duration::from_secs(20);

pub(crate) struct RunningAgent {
    socket: PathBuf,
    pub(crate) http: String,
    stop: Option<oneshot::Sender<()>>,
    pub(crate) task: tokio::task::JoinHandle<Result<(), AgentError>>,
}

pub(crate) fn config(ca_addr: &str, dir: &Path, root_pem: &str, token: Option<&str>) -> Config {
    let bundle = dir.join("root.pem");
    std::fs::write(&bundle, root_pem).unwrap();
    Config {
        server: ca_addr.to_owned(),
        trust_bundle: bundle,
        attestation: token.map(|t| NodeAttestation::JoinToken(t.to_owned())),
        socket: dir.join("agent.sock"),
        data_dir: dir.join("data"),
        http_listen: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        sync_interval: Duration::from_millis(500),
    }
}

impl RunningAgent {
    /// An agent of the CA `server` (root `ca`) in `dir`, attesting with the join token `tok`.
    pub(crate) fn joined(server: &TestCaServer, dir: &Path, ca: &TestCa) -> Self {
        Self::start(config(
            &server.addr.to_string(),
            dir,
            &ca.root_pem(),
            Some("tok"),
        ))
    }

    pub(crate) fn start(config: Config) -> Self {
        let (tx, rx) = oneshot::channel::<()>();
        let socket = config.socket.clone();
        let http = config.http_listen.to_string();
        let task = tokio::spawn(warden_node_agent::run(config, async {
            let _ = rx.await;
        }));
        Self {
            socket,
            http,
            stop: Some(tx),
            task,
        }
    }

    pub(crate) async fn client(&self) -> spiffe::WorkloadApiClient {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.socket.exists()
                && let Ok(c) = spiffe::WorkloadApiClient::connect_to(format!(
                    "unix://{}",
                    self.socket.display()
                ))
                .await
            {
                return c;
            }
            assert!(Instant::now() < deadline, "agent socket never appeared");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until the agent serves an X.509-SVID.
    pub(crate) async fn first_svid(&self) -> spiffe::X509Svid {
        let client = self.client().await;
        let deadline = Instant::now() + WAIT;
        loop {
            match client.fetch_x509_svid().await {
                Ok(s) => return s,
                Err(e) => assert!(Instant::now() < deadline, "no svid in time: {e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until the agent serves `spiffe://<TD>/<path>` (it synced that entry), failing the
    /// test if the agent stops first.
    pub(crate) async fn serves(&self, client: &spiffe::WorkloadApiClient, path: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let ids: Vec<String> = client
                .fetch_all_x509_svids()
                .await
                .map(|v| v.iter().map(|s| s.spiffe_id().to_string()).collect())
                .unwrap_or_default();
            if ids.contains(&format!("spiffe://{TD}/{path}")) {
                return;
            }
            assert!(!self.task.is_finished(), "the agent stopped");
            assert!(Instant::now() < deadline, "agent did not resync: {ids:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls until `/metrics` counts a failed sync with the CA.
    pub(crate) async fn sync_failed(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let m = self.metrics().await;
            if m.lines()
                .any(|l| l.starts_with("warden_agent_ca_sync_failures_total") && !l.ends_with(" 0"))
            {
                return;
            }
            assert!(Instant::now() < deadline, "no sync failure recorded: {m}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `/metrics`, waiting for the health listener to be up.
    pub(crate) async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let deadline = Instant::now() + WAIT;
        let mut s = loop {
            match tokio::net::TcpStream::connect(&self.http).await {
                Ok(s) => break s,
                Err(e) => assert!(Instant::now() < deadline, "no health listener: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    pub(crate) async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

pub(crate) async fn ca_with(
    entries: usize,
    svid_ttl: Duration,
    agent_ttl: Duration,
    tokens: &[&str],
) -> (Arc<TestCa>, TestCaServer) {
    let ca = Arc::new(TestCa::new(TD));
    let state = new_state(svid_ttl, agent_ttl);
    {
        let mut st = state.lock().unwrap();
        for t in tokens {
            st.tokens.insert(
                (*t).to_owned(),
                (SystemTime::now() + Duration::from_secs(600), false),
            );
        }
        for i in 0..entries {
            st.entries.push(entry_proto(
                &format!("e{i}"),
                &format!("w{i}"),
                &uid_selector(),
            ));
        }
    }
    let server = TestCaServer::start(Arc::clone(&ca), state, "127.0.0.1:0".parse().unwrap()).await;
    (ca, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_token_attestation_serves_svids_and_stores_agent_key_0600() {
    let (ca, server) = ca_with(
        2,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
        &["tok"],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let agent = RunningAgent::joined(&server, dir.path(), &ca);
    let svid = agent.first_svid().await;
    assert_eq!(svid.spiffe_id().to_string(), format!("spiffe://{TD}/w0"));
    let key_mode = std::fs::metadata(dir.path().join("data/agent.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
    assert!(
        dir.path().join("data/agent.pem").exists() && dir.path().join("data/bundle.pem").exists()
    );
    assert!(
        warden_node_agent::client::healthcheck(&agent.http)
            .await
            .unwrap(),
        "readyz after first sync"
    );
    let metrics = agent.metrics().await;
    assert!(metrics.contains("warden_agent_svids_cached 2"), "{metrics}");
    assert!(
        metrics.contains("warden_agent_workload_attestations_total{result=\"success\"}"),
        "{metrics}"
    );
    agent.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_attestation_stops_the_agent_with_the_reason() {
    let (ca, server) = ca_with(
        1,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
        &["used", "old"],
    )
    .await;
    {
        let mut st = server.state.lock().unwrap();
        st.tokens.get_mut("used").unwrap().1 = true;
        st.tokens.get_mut("old").unwrap().0 = SystemTime::now() - Duration::from_secs(1);
        st.tokens.insert(
            "banned".into(),
            (SystemTime::now() + Duration::from_secs(60), false),
        );
        st.banned
            .insert(format!("spiffe://{TD}/agent/join_token/banned"));
    }
    for (token, reason) in [
        ("used", "already used"),
        ("old", "expired"),
        ("nope", "unknown"),
        ("banned", "banned"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(
            &server.addr.to_string(),
            dir.path(),
            &ca.root_pem(),
            Some(token),
        );
        let err = tokio::time::timeout(WAIT, warden_node_agent::run(cfg, std::future::pending()))
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, AgentError::AttestationRefused(_)), "{err:?}");
        assert!(
            err.to_string().contains(reason),
            "`{err}` should say `{reason}`"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_certificate_outside_the_trust_bundle_is_a_bundle_mismatch() {
    let (_ca, server) = ca_with(
        1,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
        &["tok"],
    )
    .await;
    let other = TestCa::new(TD);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &server.addr.to_string(),
        dir.path(),
        &other.root_pem(),
        Some("tok"),
    );
    let err = tokio::time::timeout(WAIT, warden_node_agent::run(cfg, std::future::pending()))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("bundle mismatch"), "{err}");
    assert!(
        !server.state.lock().unwrap().tokens["tok"].1,
        "the token must not be spent"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_without_token_or_stored_svid_says_so() {
    let (ca, server) = ca_with(1, Duration::from_secs(3600), Duration::from_secs(3600), &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&server.addr.to_string(), dir.path(), &ca.root_pem(), None);
    let err = warden_node_agent::run(cfg, std::future::pending())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no join token or x509pop"),
        "{err}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_reuses_its_stored_svid_without_a_new_token() {
    let (ca, server) = ca_with(
        1,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
        &["tok"],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let agent = RunningAgent::joined(&server, dir.path(), &ca);
    agent.first_svid().await;
    agent.stop().await;
    // Same data dir, no token (and the token is spent anyway).
    let agent = RunningAgent::start(config(
        &server.addr.to_string(),
        dir.path(),
        &ca.root_pem(),
        None,
    ));
    let svid = agent.first_svid().await;
    assert_eq!(svid.spiffe_id().to_string(), format!("spiffe://{TD}/w0"));
    agent.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_client_sees_rotated_svid_before_the_old_one_expires() {
    let (ca, server) = ca_with(
        1,
        Duration::from_secs(4),
        Duration::from_secs(3600),
        &["tok"],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let agent = RunningAgent::joined(&server, dir.path(), &ca);
    let first = agent.first_svid().await;
    let client = agent.client().await;
    let mut stream = Box::pin(client.stream_x509_svids().await.unwrap());
    let mut current = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    if current.leaf().as_bytes() == first.leaf().as_bytes() {
        current = tokio::time::timeout(WAIT, stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    let (_, old) = x509_parser::parse_x509_certificate(first.leaf().as_bytes()).unwrap();
    let old_expiry = old.validity().not_after.timestamp();
    let now = i64::try_from(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    assert_ne!(current.leaf().as_bytes(), first.leaf().as_bytes());
    assert!(
        now < old_expiry,
        "rotation arrived at {now}, after the old svid expired at {old_expiry}"
    );
    assert!(
        agent
            .metrics()
            .await
            .contains("warden_agent_svid_rotations_total")
    );
    agent.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_keeps_serving_while_ca_is_down_and_resyncs_when_it_returns() {
    let (ca, server) = ca_with(
        1,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
        &["tok"],
    )
    .await;
    let addr = server.addr;
    let state = Arc::clone(&server.state);
    let dir = tempfile::tempdir().unwrap();
    let agent = RunningAgent::start(config(
        &addr.to_string(),
        dir.path(),
        &ca.root_pem(),
        Some("tok"),
    ));
    agent.first_svid().await;
    server.stop().await;

    // Longer than several sync intervals (500 ms): failures are counted, SVIDs still served.
    agent.sync_failed().await;
    let client = agent.client().await;
    assert_eq!(
        client
            .fetch_x509_svid()
            .await
            .unwrap()
            .spiffe_id()
            .to_string(),
        format!("spiffe://{TD}/w0")
    );

    // The CA returns with a new entry; the agent resyncs and serves it.
    state
        .lock()
        .unwrap()
        .entries
        .push(entry_proto("new", "new", &uid_selector()));
    let server = TestCaServer::start(Arc::clone(&ca), state, addr).await;
    agent.serves(&client, "new").await;
    agent.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_deleted_at_the_ca_is_withdrawn_from_the_stream() {
    let (ca, server) = ca_with(
        2,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
        &["tok"],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let agent = RunningAgent::joined(&server, dir.path(), &ca);
    agent.first_svid().await;
    let client = agent.client().await;
    let mut stream = Box::pin(client.stream_x509_contexts().await.unwrap());
    let first = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.svids().len(), 2);
    server
        .state
        .lock()
        .unwrap()
        .entries
        .retain(|e| e.id != "e1");
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
    assert_eq!(ids, vec![format!("spiffe://{TD}/w0")]);
    agent.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_svid_is_renewed_at_half_life() {
    let (ca, server) = ca_with(
        1,
        Duration::from_secs(3600),
        Duration::from_secs(3),
        &["tok"],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let agent = RunningAgent::joined(&server, dir.path(), &ca);
    agent.first_svid().await;
    let before = std::fs::read(dir.path().join("data/agent.pem")).unwrap();
    let deadline = Instant::now() + WAIT;
    while server.state.lock().unwrap().renewals == 0 {
        assert!(Instant::now() < deadline, "agent svid never renewed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + WAIT;
    while std::fs::read(dir.path().join("data/agent.pem")).unwrap() == before {
        assert!(Instant::now() < deadline, "renewed svid not stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Still serving with the renewed credentials.
    agent.client().await.fetch_x509_svid().await.unwrap();
    agent.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_svids_are_minted_by_the_ca_and_validate_with_served_bundles() {
    let (ca, server) = ca_with(
        1,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
        &["tok"],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let agent = RunningAgent::joined(&server, dir.path(), &ca);
    agent.first_svid().await;
    let client = agent.client().await;
    let jwt = client.fetch_jwt_svid(["backend"], None).await.unwrap();
    let bundles = client.fetch_jwt_bundles().await.unwrap();
    let parsed = spiffe::JwtSvid::parse_and_validate(jwt.token(), &bundles, &["backend"]).unwrap();
    assert_eq!(parsed.spiffe_id().to_string(), format!("spiffe://{TD}/w0"));
    agent.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509pop_attestation_proves_the_node_key_and_gets_a_fingerprint_id() {
    let (ca, server) = ca_with(1, Duration::from_secs(3600), Duration::from_secs(3600), &[]).await;
    let node_ca = TestCa::new("nodes.test");
    server.state.lock().unwrap().node_ca = Some(node_ca.root().clone());
    let dir = tempfile::tempdir().unwrap();
    let (cert_pem, key_pem) = node_ca.node_cert_pem("node-1");
    std::fs::write(dir.path().join("node.pem"), &cert_pem).unwrap();
    std::fs::write(dir.path().join("node.key"), &key_pem).unwrap();
    let mut cfg = config(&server.addr.to_string(), dir.path(), &ca.root_pem(), None);
    cfg.attestation = Some(NodeAttestation::X509Pop {
        cert: dir.path().join("node.pem"),
        key: dir.path().join("node.key"),
    });
    let agent = RunningAgent::start(cfg);
    agent.first_svid().await;
    let stored = std::fs::read(dir.path().join("data/agent.pem")).unwrap();
    let der = pem::parse(&stored).unwrap();
    let id = warden_node_agent::cache::spiffe_id_of(der.contents()).unwrap();
    let leaf = pem::parse(cert_pem.as_bytes()).unwrap();
    let fp = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, leaf.contents());
    assert_eq!(
        id.to_string(),
        format!("spiffe://{TD}/agent/x509pop/{}", hex::encode(fp.as_ref()))
    );
    agent.stop().await;

    // A node certificate from another CA is refused, and the agent says why.
    let stranger = TestCa::new("strangers.test");
    let (cert_pem, key_pem) = stranger.node_cert_pem("intruder");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("node.pem"), &cert_pem).unwrap();
    std::fs::write(dir.path().join("node.key"), &key_pem).unwrap();
    let mut cfg = config(&server.addr.to_string(), dir.path(), &ca.root_pem(), None);
    cfg.attestation = Some(NodeAttestation::X509Pop {
        cert: dir.path().join("node.pem"),
        key: dir.path().join("node.key"),
    });
    let err = tokio::time::timeout(WAIT, warden_node_agent::run(cfg, std::future::pending()))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        err.to_string().contains("does not chain to a node ca"),
        "{err}"
    );
    server.stop().await;
}
