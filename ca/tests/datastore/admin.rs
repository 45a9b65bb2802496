//! The admin API served on a real Unix socket, driven with the generated gRPC client.

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use warden_api::v1::{self, admin_api_client::AdminApiClient};
use warden_ca::admin::{AdminError, AdminService, serve};
use warden_ca::datastore::{AgentRecord, join_token_hash};
use warden_identity::test_util::TestCa;

use super::harness::{Backend, backends};

struct Server {
    client: AdminApiClient<Channel>,
    socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), AdminError>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(b: &Backend) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("ca").join("admin.sock");
        let own = TestCa::new("example.org").bundle();
        let (_tx, rx) = watch::channel(Arc::new(own));
        std::mem::forget(_tx);
        let service = AdminService::new(b.ds.clone(), "example.org".parse().unwrap(), rx);
        let (stop, stopped) = oneshot::channel::<()>();
        let path = socket.clone();
        let task = tokio::spawn(async move {
            serve(&path, service, async {
                let _ = stopped.await;
            })
            .await
        });
        let client = AdminApiClient::new(connect(&socket).await);
        Server {
            client,
            socket,
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.unwrap().unwrap();
        assert!(!self.socket.exists(), "socket removed on shutdown");
    }
}

/// Polls until the socket accepts a connection (bounded: 10 s).
async fn connect(socket: &Path) -> Channel {
    let endpoint = Endpoint::from_shared(format!("unix://{}", socket.display())).unwrap();
    for _ in 0..200 {
        if let Ok(channel) = endpoint.connect().await {
            return channel;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("admin socket {} never came up", socket.display());
}

fn entry(spiffe_id: &str, parent_id: &str, selectors: &[&str]) -> v1::Entry {
    v1::Entry {
        spiffe_id: spiffe_id.into(),
        parent_id: parent_id.into(),
        selectors: selectors.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

const AGENT: &str = "spiffe://example.org/agent/join_token/0123456789abcdef";

#[tokio::test]
async fn admin_socket_is_private_and_entries_round_trip_with_audited_actor() {
    for b in backends().await {
        let s = Server::start(&b).await;
        let meta = std::fs::metadata(&s.socket).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "socket is 0600");
        let dir_mode = std::fs::metadata(s.socket.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700, "socket dir is 0700");

        let mut c = s.client.clone();
        let created = c
            .create_entry(entry("spiffe://example.org/web", AGENT, &["unix:uid:1000"]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(created.revision, 1);
        let got = c
            .get_entry(v1::EntryId {
                id: created.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got, created);
        let mut changed = created.clone();
        changed.dns_names = vec!["web.example.org".into()];
        let updated = c.update_entry(changed).await.unwrap().into_inner();
        assert_eq!(updated.revision, 2);
        let list = c
            .list_entries(v1::ListEntriesFilter {
                selector: "unix:uid:1000".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(list.entries, vec![updated]);
        c.delete_entry(v1::EntryId {
            id: created.id.clone(),
        })
        .await
        .unwrap();
        let err = c
            .get_entry(v1::EntryId {
                id: created.id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(err.message(), format!("entry `{}` not found", created.id));

        let uid = nix::unistd::Uid::effective().as_raw();
        let audit = c
            .list_audit(v1::ListAuditRequest { after: 0, limit: 0 })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(audit.records.len(), 3, "{}", b.name);
        assert!(
            audit
                .records
                .iter()
                .all(|r| r.actor == format!("admin:uid={uid}")),
            "{:?}",
            audit.records
        );
        let v = c.verify_audit(v1::Empty {}).await.unwrap().into_inner();
        assert!(v.ok);
        assert_eq!(v.records, 3);
        s.stop().await;
    }
}

#[tokio::test]
async fn bad_admin_input_is_invalid_argument_naming_the_value_and_changes_nothing() {
    for b in backends().await {
        let s = Server::start(&b).await;
        let mut c = s.client.clone();
        let cases = [
            (
                entry("spiffe://example.org/web", AGENT, &["unix-uid-1000"]),
                "selector `unix-uid-1000`",
            ),
            (
                entry("spiffe://Example.org/we b", AGENT, &["unix:uid:1"]),
                "invalid spiffe_id `spiffe://Example.org/we b`",
            ),
            (
                entry("http://example.org/web", AGENT, &["unix:uid:1"]),
                "invalid spiffe_id `http://example.org/web`",
            ),
            (
                entry("spiffe://other.org/web", AGENT, &["unix:uid:1"]),
                "not in the trust domain `example.org`",
            ),
            (
                entry("spiffe://example.org/web", "", &["unix:uid:1"]),
                "parent_id is required",
            ),
            (
                entry("spiffe://example.org/web", AGENT, &[]),
                "has no selectors",
            ),
            (
                entry("spiffe://example.org/warden/ca", AGENT, &["unix:uid:1"]),
                "`spiffe://example.org/warden/ca` is reserved: it is the ca's own id",
            ),
            (
                entry(AGENT, "spiffe://example.org/warden/ca", &["unix:uid:1"]),
                "ids under `/agent/` are agent ids",
            ),
            (
                v1::Entry {
                    x509_svid_ttl: 1,
                    ..entry("spiffe://example.org/web", AGENT, &["unix:uid:1"])
                },
                "x509_svid_ttl `1` is out of range",
            ),
            (
                v1::Entry {
                    dns_names: vec!["a..b".into()],
                    ..entry("spiffe://example.org/web", AGENT, &["unix:uid:1"])
                },
                "dns name `a..b`",
            ),
        ];
        for (bad, want) in cases {
            let err = c.create_entry(bad).await.unwrap_err();
            assert_eq!(
                err.code(),
                Code::InvalidArgument,
                "{}: {}",
                b.name,
                err.message()
            );
            assert!(
                err.message().contains(want),
                "want {want:?}, got {:?}",
                err.message()
            );
        }
        let err = c
            .update_entry(entry("spiffe://example.org/web", AGENT, &["unix:uid:1"]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let err = c
            .evict_agent(v1::AgentId {
                spiffe_id: "not an id".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let err = c
            .ban_agent(v1::AgentId {
                spiffe_id: AGENT.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err = c
            .create_join_token(v1::CreateJoinTokenRequest { ttl: 8 * 24 * 3600 })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(b.count("entries").await, 0);
        assert_eq!(b.count("join_tokens").await, 0);
        assert_eq!(b.count("audit_log").await, 0, "{}", b.name);

        c.create_entry(entry("spiffe://example.org/web", AGENT, &["unix:uid:1"]))
            .await
            .unwrap();
        let err = c
            .create_entry(entry("spiffe://example.org/web", AGENT, &["unix:uid:1"]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
        s.stop().await;
    }
}

#[tokio::test]
async fn join_token_is_returned_once_and_stored_as_hash_with_its_agent_id() {
    for b in backends().await {
        let s = Server::start(&b).await;
        let mut c = s.client.clone();
        let t = c
            .create_join_token(v1::CreateJoinTokenRequest { ttl: 0 })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(t.token.len(), 64, "32 random bytes, hex");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(
            (t.expires_at - now - 600).abs() <= 5,
            "default ttl 10 minutes"
        );
        let short = &hex::encode(join_token_hash(&t.token))[..16];
        assert_eq!(
            t.agent_id,
            format!("spiffe://example.org/agent/join_token/{short}")
        );
        // The store accepts the token's hash exactly once.
        b.ds.consume_join_token(&join_token_hash(&t.token), now)
            .await
            .unwrap();
        assert!(
            b.ds.consume_join_token(&join_token_hash(&t.token), now)
                .await
                .is_err()
        );
        let audit = c
            .list_audit(v1::ListAuditRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(
            audit
                .records
                .iter()
                .all(|r| !r.detail.contains(&t.token) && !r.subject.contains(&t.token))
        );
        s.stop().await;
    }
}

#[tokio::test]
async fn agents_are_listed_banned_and_evicted_over_the_socket() {
    for b in backends().await {
        let rec = AgentRecord {
            spiffe_id: AGENT.parse().unwrap(),
            attestor: "join_token".into(),
            selectors: vec![],
            serial: "0a".into(),
            previous_serial: None,
            expires_at: 10,
            banned: false,
            attested_at: 1,
            renewed_at: 1,
        };
        b.ds.attest_agent(&rec).await.unwrap();
        let s = Server::start(&b).await;
        let mut c = s.client.clone();
        let agents = c
            .list_agents(v1::Empty {})
            .await
            .unwrap()
            .into_inner()
            .agents;
        assert_eq!(agents.len(), 1);
        assert_eq!(agents[0].spiffe_id, AGENT);
        c.ban_agent(v1::AgentId {
            spiffe_id: AGENT.into(),
        })
        .await
        .unwrap();
        assert!(
            c.list_agents(v1::Empty {})
                .await
                .unwrap()
                .into_inner()
                .agents[0]
                .banned
        );
        c.evict_agent(v1::AgentId {
            spiffe_id: AGENT.into(),
        })
        .await
        .unwrap();
        assert!(
            c.list_agents(v1::Empty {})
                .await
                .unwrap()
                .into_inner()
                .agents
                .is_empty()
        );
        let err = c
            .evict_agent(v1::AgentId {
                spiffe_id: AGENT.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(err.message(), format!("agent `{AGENT}` not found"));
        s.stop().await;
    }
}

#[tokio::test]
async fn bundles_set_from_pem_or_jwks_refuse_the_own_trust_domain_and_round_trip() {
    for b in backends().await {
        let s = Server::start(&b).await;
        let mut c = s.client.clone();
        let other = TestCa::new("other.org");
        let pem = other.bundle().to_pem();
        let set = c
            .set_bundle(v1::SetBundleRequest {
                trust_domain: "other.org".into(),
                bundle: pem.into_bytes(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            set.sequence, 1,
            "pem has no sequence: the store starts at 1"
        );
        assert_eq!(
            set.x509_authorities,
            vec![other.root_cert().as_ref().to_vec()]
        );
        let mut jwks_bundle = other.bundle();
        jwks_bundle.set_sequence(42);
        let set = c
            .set_bundle(v1::SetBundleRequest {
                trust_domain: "other.org".into(),
                bundle: jwks_bundle.to_jwks().into_bytes(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(set.sequence, 42);
        let got = c
            .get_bundle(v1::TrustDomainName {
                trust_domain: "other.org".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got, set);

        let own = c
            .get_bundle(v1::TrustDomainName {
                trust_domain: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(own.trust_domain, "example.org");
        let list = c
            .list_bundles(v1::Empty {})
            .await
            .unwrap()
            .into_inner()
            .bundles;
        assert_eq!(
            list.iter()
                .map(|b| b.trust_domain.as_str())
                .collect::<Vec<_>>(),
            ["example.org", "other.org"]
        );

        let err = c
            .set_bundle(v1::SetBundleRequest {
                trust_domain: "example.org".into(),
                bundle: TestCa::new("example.org").bundle().to_pem().into_bytes(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(
            err.message().contains("own trust domain"),
            "{}",
            err.message()
        );
        for (bytes, want) in [
            (b"hello".to_vec(), "neither a spiffe bundle"),
            (
                b"{\"keys\": 5}".to_vec(),
                "invalid spiffe bundle for `other.org`",
            ),
            (
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
                "invalid pem bundle",
            ),
        ] {
            let err = c
                .set_bundle(v1::SetBundleRequest {
                    trust_domain: "other.org".into(),
                    bundle: bytes,
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
            assert!(
                err.message().contains(want),
                "want {want:?}, got {:?}",
                err.message()
            );
        }
        let err = c
            .set_bundle(v1::SetBundleRequest {
                trust_domain: "Bad TD".into(),
                bundle: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);

        c.delete_bundle(v1::TrustDomainName {
            trust_domain: "other.org".into(),
        })
        .await
        .unwrap();
        let err = c
            .get_bundle(v1::TrustDomainName {
                trust_domain: "other.org".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        s.stop().await;
    }
}

#[tokio::test]
async fn verify_audit_over_the_socket_names_the_tampered_record() {
    for b in backends().await {
        let s = Server::start(&b).await;
        let mut c = s.client.clone();
        for n in 0..3 {
            c.create_entry(entry(
                &format!("spiffe://example.org/w{n}"),
                AGENT,
                &["unix:uid:1"],
            ))
            .await
            .unwrap();
        }
        b.raw_exec("UPDATE audit_log SET subject = 'forged' WHERE seq = 2")
            .await;
        let v = c.verify_audit(v1::Empty {}).await.unwrap().into_inner();
        assert!(!v.ok);
        assert_eq!(v.first_bad_seq, 2, "{}: {}", b.name, v.problem);
        assert!(v.problem.contains("record 2 was edited"));
        s.stop().await;
    }
}

#[tokio::test]
async fn serve_replaces_a_stale_socket_but_refuses_a_live_one_or_a_regular_file() {
    let b = super::harness::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let own = Arc::new(TestCa::new("example.org").bundle());
    let service = || {
        AdminService::new(
            b.ds.clone(),
            "example.org".parse().unwrap(),
            watch::channel(own.clone()).1,
        )
    };

    // A regular file is never removed.
    let file = dir.path().join("file.sock");
    std::fs::write(&file, b"keep me").unwrap();
    let err = serve(&file, service(), async {}).await.unwrap_err();
    assert!(matches!(err, AdminError::NotASocket(_)), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

    // A stale socket (nobody listening) is replaced.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let path = stale.clone();
    let svc = service();
    let task = tokio::spawn(async move {
        serve(&path, svc, async {
            let _ = stopped.await;
        })
        .await
    });
    let channel = connect(&stale).await;
    AdminApiClient::new(channel)
        .list_agents(v1::Empty {})
        .await
        .unwrap();

    // While it is live, a second server refuses to take it over.
    let err = serve(&stale, service(), async {}).await.unwrap_err();
    assert!(matches!(err, AdminError::InUse(_)), "{err}");
    assert!(err.to_string().contains("in use by another process"));
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
