//! What the agent API writes to the audit log: `jwt_svid.issued` for every JWT-SVID (never the
//! token), and `agent.attestation_failed` for a known join token that is refused.

use std::os::unix::fs::PermissionsExt;

use warden_api::v1::SignJwtSvidRequest;
use warden_ca::datastore::AuditRecord;

use super::support::*;

async fn audit_of_kind(ca: &TestCa, kind: &str) -> Vec<AuditRecord> {
    let all = ca.ds().list_audit(0, 1000).await.unwrap();
    all.into_iter().filter(|r| r.kind == kind).collect()
}

#[tokio::test]
async fn jwt_svid_issuance_is_audited_without_the_token() {
    let ca = start_ca().await;
    let agent = ca.attest("tok-jwt-audit").await;
    let entry = ca
        .entry("spiffe://example.org/web", agent.spiffe_id(), &[])
        .await;
    let jwt = ca
        .as_agent(&agent)
        .await
        .sign_jwt_svid(SignJwtSvidRequest {
            entry_id: entry.clone(),
            audience: vec!["billing".into(), "ledger".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let records = audit_of_kind(&ca, "jwt_svid.issued").await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.actor, agent.spiffe_id().as_str());
    assert_eq!(r.subject, "spiffe://example.org/web");
    let detail: serde_json::Value = serde_json::from_str(&r.detail).unwrap();
    assert_eq!(detail["entry_id"], entry.as_str());
    assert_eq!(detail["audience"], serde_json::json!(["billing", "ledger"]));
    assert_eq!(detail["expires_at"], jwt.expires_at);
    let kid = detail["kid"].as_str().unwrap();
    let bundle = ca.running.authority.bundle();
    assert!(
        bundle.jwt_authorities().iter().any(|k| k.kid() == kid),
        "kid `{kid}` is a published jwt authority"
    );
    let signature = jwt.token.rsplit('.').next().unwrap();
    for r in ca.ds().list_audit(0, 1000).await.unwrap() {
        assert!(
            !r.detail.contains(&jwt.token) && !r.detail.contains(signature),
            "token in {r:?}"
        );
    }
}

#[tokio::test]
async fn a_refused_known_join_token_is_audited_and_an_unknown_one_is_not() {
    let ca = start_ca().await;
    let _ = ca.attest("tok-replayed").await;
    let (key, csr) = key_and_csr(None);
    let err = ca.attest_csr("tok-replayed", &key, csr).await.unwrap_err();
    assert!(err.message().contains("already used"), "{}", err.message());
    let (key, csr) = key_and_csr(None);
    let err = ca
        .attest_csr("tok-never-made", &key, csr)
        .await
        .unwrap_err();
    assert!(err.message().contains("unknown"), "{}", err.message());

    // Replayed again: not audited again within the minute.
    for _ in 0..3 {
        let (key, csr) = key_and_csr(None);
        let err = ca.attest_csr("tok-replayed", &key, csr).await.unwrap_err();
        assert!(err.message().contains("already used"), "{}", err.message());
    }

    let records = audit_of_kind(&ca, "agent.attestation_failed").await;
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r.actor, "anonymous");
    assert_eq!(
        r.subject,
        warden_ca::datastore::join_token_agent_id(&td(), "tok-replayed").as_str()
    );
    let detail: serde_json::Value = serde_json::from_str(&r.detail).unwrap();
    assert_eq!(detail["attestor"], "join_token");
    assert_eq!(detail["refused_since_last_record"], 0);
    assert!(
        detail["reason"].as_str().unwrap().contains("already used"),
        "{detail}"
    );
    assert!(
        detail["src_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{detail}"
    );
    for r in ca.ds().list_audit(0, 1000).await.unwrap() {
        assert!(!format!("{r:?}").contains("tok-"), "a token in {r:?}");
    }
    assert!(ca.ds().verify_audit().await.unwrap().is_ok());
}

/// `ca init` makes the audit key (0600) and keys the chain from the first record; the CA
/// verifies its chain with it and starts again with it.
#[tokio::test]
async fn init_keys_the_audit_chain_and_the_ca_verifies_with_the_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    init(dir.path()).await;
    let key_file = dir.path().join(warden_ca::authority::AUDIT_KEY_FILE);
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&key_file).unwrap();
    assert!(
        text.starts_with("warden audit key v1\nkeyed-from 1\nsecret "),
        "{text}"
    );
    let cfg = config(dir.path(), default_ttls(), vec![]);
    for _ in 0..2 {
        let running = warden_ca::server::start(&cfg).await.unwrap();
        let ds = running.authority.datastore().clone();
        assert_eq!(ds.audit_keying().await.unwrap().unwrap().keyed_from, 1);
        let v = ds.verify_audit().await.unwrap();
        assert!(v.is_ok() && v.records > 0, "{v:?}");
        running.shutdown().await.unwrap();
    }
    // A store opened without the key cannot verify the chain, and says why.
    let plain = warden_ca::datastore::Datastore::open(&cfg.datastore)
        .await
        .unwrap();
    let err = plain.verify_audit().await.unwrap_err().to_string();
    assert!(
        err.contains("keyed from record 1") && err.contains("audit.key"),
        "{err}"
    );
}

/// An initialised data dir, the CA's config for it, and its audit key file.
async fn initialised() -> (
    tempfile::TempDir,
    warden_ca::config::Config,
    std::path::PathBuf,
) {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path()).await;
    let cfg = config(dir.path(), default_ttls(), vec![]);
    let key_file = dir.path().join(warden_ca::authority::AUDIT_KEY_FILE);
    (dir, cfg, key_file)
}

/// A CA whose data dir lost its audit key, or holds another CA's, or a damaged one, does not
/// start: each error names the file and never shows the secret.
#[tokio::test]
async fn a_missing_foreign_or_damaged_audit_key_stops_the_ca() {
    let (_dir, cfg, key_file) = initialised().await;
    let original = std::fs::read_to_string(&key_file).unwrap();
    let secret = original
        .lines()
        .nth(2)
        .unwrap()
        .strip_prefix("secret ")
        .unwrap()
        .to_owned();
    let start_err = || async {
        warden_ca::server::start(&cfg)
            .await
            .unwrap_err()
            .to_string()
    };

    std::fs::remove_file(&key_file).unwrap();
    let err = start_err().await;
    assert!(
        err.contains("audit.key") && err.contains("missing"),
        "{err}"
    );
    assert!(!key_file.exists(), "a new key was made over a keyed chain");

    let foreign = format!(
        "warden audit key v1\nkeyed-from 1\nsecret {}\n",
        "11".repeat(32)
    );
    std::fs::write(&key_file, foreign).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = start_err().await;
    assert!(
        err.contains("audit.key") && err.contains("another CA's key"),
        "{err}"
    );

    let damaged = original.replace("secret ", "secret zz");
    std::fs::write(&key_file, &damaged).unwrap();
    let err = start_err().await;
    assert!(err.contains("audit.key") && err.contains("64 hex"), "{err}");
    assert!(!err.contains(&secret), "{err}");

    std::fs::write(&key_file, &original).unwrap();
    let running = warden_ca::server::start(&cfg).await.unwrap();
    running.shutdown().await.unwrap();
}

/// The CA's own secret files are written 0600; one that group or others may read or write
/// stops the CA, naming the file and its mode (someone else may hold the key). An intermediate
/// or JWT key in that state is not used: the CA signs with new ones.
#[tokio::test]
async fn key_files_group_or_others_may_access_stop_the_ca_or_go_unused() {
    let (dir, cfg, key_file) = initialised().await;
    let chmod = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let root_key = dir.path().join("root.key.pem");
    let root_pem = std::fs::read_to_string(&root_key).unwrap();
    let audit_text = std::fs::read_to_string(&key_file).unwrap();
    for (file, mode) in [(&root_key, 0o640), (&key_file, 0o604)] {
        chmod(file, mode);
        let err = warden_ca::server::start(&cfg)
            .await
            .unwrap_err()
            .to_string();
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(
            err.contains(name) && err.contains(&format!("mode {mode:04o}")),
            "{err}"
        );
        // Nothing of either secret in the error.
        for secret in [&root_pem, &audit_text] {
            let inner = secret.lines().nth(1).unwrap();
            assert!(!err.contains(inner), "{err}");
        }
        chmod(file, 0o600);
    }
    // Both back to 0600: the CA starts, and writes its intermediate and JWT keys.
    let active = |running: &warden_ca::server::Running| -> String {
        let all = running.authority.intermediates();
        let active = all.iter().find(|(_, phase)| *phase == "active");
        active.map(|(serial, _)| serial.clone()).unwrap()
    };
    let running = warden_ca::server::start(&cfg).await.unwrap();
    let first_root = running.authority.root_cert().clone();
    let first_active = active(&running);
    running.shutdown().await.unwrap();
    let keys = std::fs::read_dir(dir.path().join("keys")).unwrap();
    let mut exposed = 0;
    for key in keys {
        chmod(&key.unwrap().path(), 0o644);
        exposed += 1;
    }
    assert!(exposed >= 2, "{exposed}");
    let running = warden_ca::server::start(&cfg).await.unwrap();
    assert_eq!(running.authority.root_cert(), &first_root);
    let now_active = active(&running);
    running.shutdown().await.unwrap();
    assert_ne!(
        now_active, first_active,
        "the exposed intermediate key still signs"
    );
}

fn event(n: u32) -> warden_ca::datastore::AuditEvent {
    warden_ca::datastore::AuditEvent {
        kind: "test.event".into(),
        actor: "tester".into(),
        subject: format!("s{n}"),
        detail: serde_json::json!({ "n": n }),
    }
}

/// A data dir from before keying (no key file, an unkeyed chain) gets a key at start, keying
/// the chain from its next record; the records before stay verifiable.
#[tokio::test]
async fn a_ca_from_before_keying_keys_its_chain_from_the_next_record() {
    let (_dir, cfg, key_file) = initialised().await;
    // As a CA of an earlier version left it: no key file, and a chain of unkeyed records.
    std::fs::remove_file(&key_file).unwrap();
    let plain = warden_ca::datastore::Datastore::open(&cfg.datastore)
        .await
        .unwrap();
    let mut c = <sqlx::SqliteConnection as sqlx::Connection>::connect(&cfg.datastore)
        .await
        .unwrap();
    for sql in [
        "DELETE FROM audit_log",
        "UPDATE audit_head SET seq = 0, keyed_from = NULL, key_id = NULL WHERE id = 1",
    ] {
        sqlx::query(sql).execute(&mut c).await.unwrap();
    }
    sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
        .bind("00".repeat(32))
        .execute(&mut c)
        .await
        .unwrap();
    for n in 0..3 {
        plain.append_audit(&event(n)).await.unwrap();
    }
    let unkeyed = plain.audit_head_seq().await.unwrap();
    assert_eq!(unkeyed, 3);
    assert!(plain.verify_audit().await.unwrap().is_ok());
    plain.close().await;

    let running = warden_ca::server::start(&cfg).await.unwrap();
    let ds = running.authority.datastore().clone();
    let keying = ds.audit_keying().await.unwrap().unwrap();
    assert!(keying.keyed_from > unkeyed, "{keying:?} after {unkeyed}");
    assert!(key_file.exists());
    let next = ds.append_audit(&event(3)).await.unwrap();
    assert!(next >= keying.keyed_from);
    let v = ds.verify_audit().await.unwrap();
    assert!(v.is_ok() && v.records == next, "{v:?}");
    running.shutdown().await.unwrap();
}

/// A data dir a CA has served from (so `keys/` holds intermediate keys), its audit key file and
/// how many keys `keys/` holds.
async fn served() -> (tempfile::TempDir, std::path::PathBuf, usize) {
    let (dir, cfg, key_file) = initialised().await;
    let running = warden_ca::server::start(&cfg).await.unwrap();
    running.shutdown().await.unwrap();
    let keys = intermediate_keys(dir.path());
    assert!(keys > 0);
    (dir, key_file, keys)
}

fn intermediate_keys(data_dir: &std::path::Path) -> usize {
    std::fs::read_dir(data_dir.join("keys")).unwrap().count()
}

/// `warden ca init --force` on `data_dir`, with `upstream`; its error.
async fn force_init(
    data_dir: &std::path::Path,
    upstream: Option<(std::path::PathBuf, std::path::PathBuf)>,
) -> String {
    warden_ca::authority::init_ca(&warden_ca::authority::InitOptions {
        trust_domain: td(),
        data_dir: data_dir.to_path_buf(),
        datastore: None,
        upstream,
        key_type: warden_ca::authority::KeyType::EcP256,
        root_ttl: std::time::Duration::from_secs(86_400),
        force: true,
    })
    .await
    .unwrap_err()
    .to_string()
}

/// `warden ca init --force` with another CA's audit key stops before it replaces anything: the
/// root key and the intermediate keys are as they were.
#[tokio::test]
async fn init_force_with_a_foreign_audit_key_changes_nothing() {
    let (dir, key_file, intermediates) = served().await;
    let root = std::fs::read(dir.path().join("root.key.pem")).unwrap();
    let foreign = format!(
        "warden audit key v1\nkeyed-from 1\nsecret {}\n",
        "22".repeat(32)
    );
    std::fs::write(&key_file, foreign).unwrap();
    let err = force_init(dir.path(), None).await;
    assert!(err.contains("audit.key"), "{err}");
    assert_eq!(intermediate_keys(dir.path()), intermediates);
    assert_eq!(
        std::fs::read(dir.path().join("root.key.pem")).unwrap(),
        root
    );
}

/// `warden ca init --force --upstream-…` with an upstream key that does not match its
/// certificate stops before it replaces anything.
#[tokio::test]
async fn init_force_with_a_bad_upstream_changes_nothing() {
    let (dir, _key_file, intermediates) = served().await;
    // The CA's own root certificate with a key that is not its.
    let other_key = dir.path().join("other.key.pem");
    std::fs::write(
        &other_key,
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let upstream = Some((dir.path().join("root.crt.pem"), other_key));
    let err = force_init(dir.path(), upstream).await;
    assert!(err.contains("other.key.pem"), "{err}");
    assert_eq!(intermediate_keys(dir.path()), intermediates);
}
