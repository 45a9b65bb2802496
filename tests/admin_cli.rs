//! The admin commands (`warden token|entry|node|bundle|audit`) driven through the real `warden`
//! binary against a real admin API on a Unix socket (served in-process over a temp SQLite store).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers outside #[test] functions: a failure there is a test failure"
)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use assert_cmd::Command;
use sqlx::Connection as _;
use tokio::sync::{oneshot, watch};
use warden_ca::admin::{AdminService, serve};
use warden_ca::datastore::{AgentRecord, AuditEvent, Datastore, IssuedJwtSvid};
use warden_identity::{Bundle, JwtAuthority, JwtSigner};

struct Ca {
    socket: PathBuf,
    db: PathBuf,
    ds: Datastore,
    rt: tokio::runtime::Runtime,
    stop: Option<oneshot::Sender<()>>,
    dir: tempfile::TempDir,
}

impl Ca {
    fn start() -> Ca {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("ca").join("admin.sock");
        let db = dir.path().join("warden.db");
        let ds = rt.block_on(Datastore::open(db.to_str().unwrap())).unwrap();
        let mut own = Bundle::new("example.org".parse().unwrap());
        own.add_jwt_authority(JwtAuthority::new(
            "own",
            JwtSigner::generate("own").unwrap().public_key_spki_der(),
            None,
        ));
        let (tx, rx) = watch::channel(Arc::new(own));
        let service = AdminService::new(ds.clone(), "example.org".parse().unwrap(), rx);
        let (stop, stopped) = oneshot::channel::<()>();
        let path = socket.clone();
        rt.spawn(async move {
            let _keep = tx;
            serve(&path, service, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        for _ in 0..200 {
            if socket.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        assert!(socket.exists(), "admin socket came up");
        Ca {
            socket,
            db,
            ds,
            rt,
            stop: Some(stop),
            dir,
        }
    }

    fn warden(&self, args: &[&str]) -> Command {
        let mut cmd = Command::cargo_bin("warden").unwrap();
        cmd.args(args)
            .env("WARDEN_ADMIN_SOCKET", &self.socket)
            .env_remove("WARDEN_LOG");
        cmd
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        serde_json::from_str(&self.text(&all)).unwrap()
    }

    /// The standard output of a successful `warden args...`.
    fn text(&self, args: &[&str]) -> String {
        let out = self
            .warden(args)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        String::from_utf8(out).unwrap()
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn stderr(cmd: &mut Command) -> String {
    let out = cmd.assert().failure().code(1).get_output().clone();
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn token_create_prints_a_token_once_and_its_agent_id() {
    let ca = Ca::start();
    let t = ca.json(&["token", "create", "--ttl", "5m"]);
    let token = t["token"].as_str().unwrap();
    assert_eq!(token.len(), 64);
    assert!(
        t["agent_id"]
            .as_str()
            .unwrap()
            .starts_with("spiffe://example.org/agent/join_token/")
    );
    let table = ca.text(&["token", "create"]);
    assert!(
        table.contains("token:") && table.contains("agent id:") && table.contains("expires at:"),
        "{table}"
    );
    // A bad duration is a usage error (clap's exit code), naming the value.
    let out = ca
        .warden(&["token", "create", "--ttl", "10y"])
        .assert()
        .failure()
        .get_output()
        .clone();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("unknown duration unit `y` in `10y`"), "{err}");
}

/// A token that leaked before it was used can be revoked by the agent ID `token create`
/// printed; the audit log says so. Revoking it again, or naming an ID that is no join token's,
/// fails naming the problem.
#[test]
fn token_revoke_revokes_an_unused_token_by_its_agent_id() {
    let ca = Ca::start();
    let t = ca.json(&["token", "create"]);
    let agent_id = t["agent_id"].as_str().unwrap();
    let done = ca.text(&["token", "revoke", agent_id]);
    assert_eq!(done, format!("join token of `{agent_id}` revoked\n"));
    let audit = ca.text(&["audit", "list"]);
    assert!(audit.contains("token.revoked"), "{audit}");
    let err = stderr(&mut ca.warden(&["token", "revoke", agent_id]));
    assert!(
        err.contains("join token") && err.contains("not found"),
        "{err}"
    );
    let err = stderr(&mut ca.warden(&["token", "revoke", "spiffe://example.org/web"]));
    assert!(err.contains("is not a join token's agent id"), "{err}");
}

#[test]
fn entry_commands_create_list_show_update_and_delete() {
    let ca = Ca::start();
    let parent = "spiffe://example.org/agent/join_token/0123456789abcdef";
    let e = ca.json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--parent-id",
        parent,
        "--selector",
        "unix:uid:1000",
        "--selector",
        "unix:gid:10",
        "--x509-ttl",
        "1h",
        "--dns-name",
        "web.example.org",
        "--hint",
        "web",
    ]);
    let id = e["id"].as_str().unwrap().to_owned();
    assert_eq!(e["x509_svid_ttl"], 3600);
    assert_eq!(e["selectors"].as_array().unwrap().len(), 2);

    let list = ca.text(&["entry", "list", "--selector", "unix:uid:1000"]);
    assert!(list.starts_with("ID"), "{list}");
    assert!(
        list.contains(&id) && list.contains("spiffe://example.org/web"),
        "{list}"
    );
    assert_eq!(
        ca.json(&["entry", "list", "--parent-id", "spiffe://example.org/other"]),
        serde_json::json!([])
    );

    let updated = ca.json(&[
        "entry",
        "update",
        &id,
        "--selector",
        "unix:uid:2000",
        "--jwt-ttl",
        "5m",
    ]);
    assert_eq!(updated["revision"], 2);
    assert_eq!(updated["selectors"], serde_json::json!(["unix:uid:2000"]));
    assert_eq!(
        updated["dns_names"],
        serde_json::json!(["web.example.org"]),
        "unchanged fields are kept"
    );
    let shown = ca
        .warden(&["entry", "show", &id])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert!(
        String::from_utf8(shown)
            .unwrap()
            .contains("revision:       2")
    );
    // A list is cleared by its own flag (an empty list would mean "keep").
    let cleared = ca.json(&["entry", "update", &id, "--clear-dns-names"]);
    assert_eq!(cleared["dns_names"], serde_json::json!([]));
    assert_eq!(cleared["revision"], 3);

    ca.warden(&["entry", "delete", &id])
        .assert()
        .success()
        .stdout(format!("entry `{id}` deleted\n"));
    let err = stderr(&mut ca.warden(&["entry", "show", &id]));
    assert_eq!(err, format!("error: entry `{id}` not found\n"));
}

#[test]
fn bad_entry_input_exits_1_naming_the_problem() {
    let ca = Ca::start();
    let err = stderr(&mut ca.warden(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--parent-id",
        "spiffe://example.org/agent/x",
        "--selector",
        "uid=1000",
    ]));
    assert!(err.contains("invalid selector `uid=1000`"), "{err}");
    let err = stderr(&mut ca.warden(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--parent-id",
        "spiffe://example.org/agent/x",
        "--selector",
        "unix:uid:1",
        "--x509-ttl",
        "2s",
    ]));
    assert!(err.contains("x509_svid_ttl `2` is out of range"), "{err}");
    assert_eq!(ca.json(&["entry", "list"]), serde_json::json!([]));
}

#[test]
fn missing_socket_says_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nope.sock");
    let mut cmd = Command::cargo_bin("warden").unwrap();
    cmd.args(["node", "list", "--admin-socket", socket.to_str().unwrap()]);
    let err = stderr(&mut cmd);
    assert!(
        err.contains(&format!(
            "cannot reach the CA admin socket `{}`: is `warden ca serve` running?",
            socket.display()
        )),
        "{err}"
    );
}

#[test]
fn node_commands_list_ban_and_evict() {
    let ca = Ca::start();
    let id = "spiffe://example.org/agent/x509pop/abcd";
    let rec = AgentRecord {
        spiffe_id: id.parse().unwrap(),
        attestor: "x509pop".into(),
        selectors: vec!["x509pop:subject:cn:web".parse().unwrap()],
        serial: "01".into(),
        previous_serial: None,
        expires_at: 2_000_000_000,
        banned: false,
        attested_at: 1,
        renewed_at: 1,
    };
    ca.rt.block_on(ca.ds.attest_agent(&rec)).unwrap();
    let list = ca.json(&["node", "list"]);
    assert_eq!(list[0]["spiffe_id"], id);
    ca.warden(&["node", "ban", id]).assert().success();
    assert_eq!(ca.json(&["node", "list"])[0]["banned"], true);
    let table = ca
        .warden(&["node", "list"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert!(String::from_utf8(table).unwrap().contains("banned"));
    ca.warden(&["node", "evict", id]).assert().success();
    assert_eq!(ca.json(&["node", "list"]), serde_json::json!([]));
    let err = stderr(&mut ca.warden(&["node", "evict", id]));
    assert!(err.contains(&format!("agent `{id}` not found")), "{err}");
}

#[test]
fn bundle_commands_show_set_list_and_delete() {
    let ca = Ca::start();
    let jwks = ca
        .warden(&["bundle", "show", "--format", "jwks"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let doc: serde_json::Value = serde_json::from_slice(&jwks).unwrap();
    assert_eq!(doc["keys"][0]["kid"], "own");
    // `--output json`, as every admin command takes it: the same JSON document, not PEM.
    let json = ca
        .warden(&["bundle", "show", "--output", "json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&json).unwrap(),
        doc
    );

    let mut other = Bundle::new("other.org".parse().unwrap());
    other.add_jwt_authority(JwtAuthority::new(
        "k1",
        JwtSigner::generate("k1").unwrap().public_key_spki_der(),
        None,
    ));
    other.set_sequence(3);
    let file = ca.dir.path().join("other.json");
    std::fs::write(&file, other.to_jwks()).unwrap();
    ca.warden(&[
        "bundle",
        "set",
        "--trust-domain",
        "other.org",
        "--file",
        file.to_str().unwrap(),
    ])
    .assert()
    .success();
    let list = ca.json(&["bundle", "list"]);
    assert_eq!(list[0]["trust_domain"], "example.org");
    assert_eq!(list[1]["trust_domain"], "other.org");
    assert_eq!(list[1]["sequence"], 3);

    let err = stderr(&mut ca.warden(&[
        "bundle",
        "set",
        "--trust-domain",
        "example.org",
        "--file",
        file.to_str().unwrap(),
    ]));
    assert!(err.contains("own trust domain"), "{err}");
    let err = stderr(&mut ca.warden(&[
        "bundle",
        "set",
        "--trust-domain",
        "x.org",
        "--file",
        "/nonexistent/b.pem",
    ]));
    assert!(
        err.contains("cannot read the bundle file `/nonexistent/b.pem`"),
        "{err}"
    );

    ca.warden(&["bundle", "delete", "other.org"])
        .assert()
        .success();
    assert_eq!(ca.json(&["bundle", "list"]).as_array().unwrap().len(), 1);
}

#[test]
fn audit_verify_exits_1_naming_the_first_tampered_record() {
    let ca = Ca::start();
    for n in 0..3 {
        let id = format!("spiffe://example.org/w{n}");
        ca.warden(&[
            "entry",
            "create",
            "--spiffe-id",
            &id,
            "--parent-id",
            "spiffe://example.org/agent/a",
            "--selector",
            "unix:uid:1",
        ])
        .assert()
        .success();
    }
    let list = ca.json(&["audit", "list", "--after", "1"]);
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["kind"], "entry.created");
    assert_eq!(list[0]["detail"]["spiffe_id"], "spiffe://example.org/w1");
    ca.warden(&["audit", "verify"])
        .assert()
        .success()
        .stdout("audit log verified: 3 records, chain intact\n");

    ca.rt.block_on(async {
        let mut c = sqlx::SqliteConnection::connect(ca.db.to_str().unwrap())
            .await
            .unwrap();
        sqlx::query("UPDATE audit_log SET actor = 'nobody' WHERE seq = 2")
            .execute(&mut c)
            .await
            .unwrap();
    });
    let out = ca
        .warden(&["audit", "verify"])
        .assert()
        .failure()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("first bad record is 2: record 2 was edited"),
        "{out}"
    );
    let v = ca
        .warden(&["audit", "verify", "--output", "json"])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&v).unwrap();
    assert_eq!(v["first_bad_seq"], 2);
}

#[test]
fn audit_list_prints_jwt_svid_issuance_and_failed_attestations() {
    let ca = Ca::start();
    let agent = "spiffe://example.org/agent/join_token/0123456789abcdef";
    let jwt = IssuedJwtSvid {
        spiffe_id: "spiffe://example.org/web".parse().unwrap(),
        entry_id: "e1".into(),
        audience: vec!["billing".into()],
        kid: "k1".into(),
        expires_at: 2_000_000_000,
    };
    let failed = AuditEvent {
        kind: "agent.attestation_failed".into(),
        actor: "anonymous".into(),
        subject: agent.into(),
        detail: serde_json::json!({ "attestor": "join_token", "reason": "join token expired" }),
    };
    // JWT-SVIDs are issued (and audited) only to an attested agent.
    let rec = AgentRecord {
        spiffe_id: agent.parse().unwrap(),
        attestor: "join_token".into(),
        selectors: vec![],
        serial: "01".into(),
        previous_serial: None,
        expires_at: 2_000_000_000,
        banned: false,
        attested_at: 1,
        renewed_at: 1,
    };
    ca.rt.block_on(async {
        ca.ds.attest_agent(&rec).await.unwrap();
        ca.ds
            .record_jwt_svid_issued(&jwt, &agent.parse().unwrap())
            .await
            .unwrap();
        ca.ds.append_audit(&failed).await.unwrap();
    });
    let out = ca.text(&["audit", "list"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[1].contains("agent.attested"), "{out}");
    for (line, words) in lines[2..].iter().zip([
        ["jwt_svid.issued", agent, "spiffe://example.org/web"],
        ["agent.attestation_failed", "anonymous", agent],
    ]) {
        assert!(words.iter().all(|w| line.contains(w)), "{line}");
    }
    let list = ca.json(&["audit", "list"]);
    assert_eq!(
        list[1]["detail"]["audience"],
        serde_json::json!(["billing"])
    );
    assert_eq!(list[1]["detail"]["kid"], "k1");
    assert_eq!(list[2]["detail"]["reason"], "join token expired");
}

/// As root, runs the client as `nobody` (with the socket opened up to it) and expects the peer
/// credential check to refuse it by uid.
#[test]
fn admin_api_refuses_another_uid_by_name() {
    if !nix_is_root()
        || !Path::new("/usr/sbin/runuser").exists() && !Path::new("/sbin/runuser").exists()
    {
        eprintln!("skipped: needs root and runuser to act as another uid");
        return;
    }
    let ca = Ca::start();
    // Open the directory and socket so that only the peer check stands in the way.
    for p in [ca.dir.path(), ca.socket.parent().unwrap()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&ca.socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    let bin = assert_cmd::cargo::cargo_bin("warden");
    let out = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(&bin)
        .args(["node", "list", "--admin-socket"])
        .arg(&ca.socket)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("Permission denied") && err.contains(&bin.display().to_string()) {
        eprintln!("skipped: `nobody` cannot execute {}", bin.display());
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("permission denied: uid 65534 may not use the admin api"),
        "{err}"
    );
}

fn nix_is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}
