//! The node agent with real processes: `warden ca init` and `warden ca serve` (short TTLs),
//! `warden agent run` attesting with a join token, and `warden svid fetch` as the workload.
//! Join tokens and entries are written straight into the CA's datastore (the library the CA
//! uses), the way the admin API does. Covers: first fetch, key files 0600, JWT-SVIDs, rotation
//! before expiry, agent killed and restarted without a new token, CA outage and resync, and an
//! entry deleted at the CA being withdrawn.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failure panics with its message, which is the report"
)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use warden_ca::datastore::{Datastore, NewEntry, join_token_agent_id, join_token_hash};
use warden_identity::TrustDomain;
use warden_identity::test_util::free_port;

const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "e2e-join-token-0123456789abcdef";

/// The binary under test; `WARDEN_BIN` may point at another build (e.g. release, for the
/// memory measurement).
fn bin() -> PathBuf {
    std::env::var_os("WARDEN_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_warden")),
        PathBuf::from,
    )
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str], log: &Path) -> Proc {
    let out = std::fs::File::create(log).unwrap();
    let child = Command::new(bin())
        .args(args)
        .env("WARDEN_LOG", "info")
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .unwrap();
    Proc(child)
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `warden svid fetch`: (exit code, stdout, stderr).
fn fetch(socket: &Path, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(["svid", "fetch", "--socket"])
        .arg(socket)
        .args(extra)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `svid fetch` until `ok(stdout)` holds.
fn fetch_until(
    socket: &Path,
    extra: &[&str],
    what: &str,
    ok: impl Fn(i32, &str, &str) -> bool,
) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, out, err) = fetch(socket, extra);
        if ok(code, &out, &err) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: last answer {code} {out} {err}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn entry(td: &TrustDomain, path: &str, uid: u32) -> NewEntry {
    NewEntry {
        spiffe_id: td.id(path).unwrap(),
        parent_id: join_token_agent_id(td, TOKEN),
        selectors: vec![format!("unix:uid:{uid}").parse().unwrap()],
        x509_svid_ttl: 0,
        jwt_svid_ttl: 0,
        dns_names: vec![],
        federates_with: vec![],
        hint: String::new(),
    }
}

struct Ca {
    dir: PathBuf,
    port: u16,
    http: u16,
}

impl Ca {
    fn serve(&self) -> Proc {
        let p = spawn(
            &[
                "ca",
                "serve",
                "--data-dir",
                self.dir.to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--http-listen",
                &format!("127.0.0.1:{}", self.http),
                "--svid-ttl",
                "8s",
            ],
            &self.dir.join("../ca.log"),
        );
        wait_port(self.port);
        p
    }
}

#[test]
fn agent_serves_rotates_survives_restarts_and_outages_with_real_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    let ca_dir = tmp.path().join("ca");
    let status = Command::new(bin())
        .args(["ca", "init", "--trust-domain", "example.org", "--data-dir"])
        .arg(&ca_dir)
        .status()
        .unwrap();
    assert!(status.success());
    let td = TrustDomain::new("example.org").unwrap();
    let db = ca_dir.join("datastore.sqlite3");
    let db_url = db.to_str().unwrap().to_owned();
    let web_id = rt().block_on(async {
        let ds = Datastore::open(&db_url).await.unwrap();
        let expires = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap()
            + 600;
        ds.create_join_token(&join_token_hash(TOKEN), expires, "e2e")
            .await
            .unwrap();
        let e = ds
            .create_entry(&entry(&td, "/web", uid), "e2e")
            .await
            .unwrap();
        ds.close().await;
        e.id
    });

    let ca = Ca {
        dir: ca_dir.clone(),
        port: free_port(),
        http: free_port(),
    };
    let ca_proc = ca.serve();

    let agent_dir = tmp.path().join("agent");
    let socket = tmp.path().join("agent.sock");
    let agent_http = free_port();
    let agent_args = |token: bool| {
        let mut a = vec![
            "agent".to_owned(),
            "run".into(),
            "--server".into(),
            format!("127.0.0.1:{}", ca.port),
            "--trust-bundle".into(),
            ca_dir.join("root.crt.pem").display().to_string(),
            "--data-dir".into(),
            agent_dir.display().to_string(),
            "--socket".into(),
            socket.display().to_string(),
            "--http-listen".into(),
            format!("127.0.0.1:{agent_http}"),
            "--sync-interval".into(),
            "1s".into(),
        ];
        if token {
            a.extend(["--join-token".into(), TOKEN.into()]);
        }
        a
    };
    let args = agent_args(true);
    let agent = spawn(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &tmp.path().join("agent.log"),
    );

    // First fetch, files written, key 0600.
    let out_dir = tmp.path().join("out");
    let out = fetch_until(
        &socket,
        &["--write", out_dir.to_str().unwrap()],
        "first svid",
        |c, o, _| c == 0 && o.contains("spiffe://example.org/web"),
    );
    assert!(out.contains("expires"), "{out}");
    let mode = std::fs::metadata(out_dir.join("svid.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let agent_key_mode = std::fs::metadata(agent_dir.join("agent.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(agent_key_mode, 0o600);
    let first_pem = std::fs::read_to_string(out_dir.join("svid.pem")).unwrap();

    // Another user reaches the socket and is attested as itself: no entry, no identity.
    if uid == 0 && Path::new("/usr/sbin/runuser").exists() {
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let out = Command::new("/usr/sbin/runuser")
            .args(["-u", "nobody", "--"])
            .arg(bin())
            .args(["svid", "fetch", "--socket"])
            .arg(&socket)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no identity issued"), "{err}");
    }

    // JWT-SVID minted by the CA.
    let (code, jwt, err) = fetch(&socket, &["--jwt", "--audience", "backend"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        jwt.contains("spiffe://example.org/web") && jwt.matches('.').count() >= 2,
        "{jwt}"
    );

    // Rotation: a new SVID is served before the first one (8 s TTL) expires.
    let started = Instant::now();
    fetch_until(
        &socket,
        &["--write", out_dir.to_str().unwrap()],
        "rotated svid",
        |c, _, _| c == 0 && std::fs::read_to_string(out_dir.join("svid.pem")).unwrap() != first_pem,
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "rotation came after the old svid expired"
    );

    // Kill the agent, restart it without a token: it reuses its stored SVID.
    drop(agent);
    let args = agent_args(false);
    let agent = spawn(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &tmp.path().join("agent2.log"),
    );
    fetch_until(&socket, &[], "svid after agent restart", |c, o, _| {
        c == 0 && o.contains("/web")
    });

    // Stop the CA for longer than a sync interval: the workload still gets its SVID.
    drop(ca_proc);
    std::thread::sleep(Duration::from_secs(3));
    let (code, out, err) = fetch(&socket, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("/web"));

    // While the CA is down, an entry is added; when it returns, the agent resyncs.
    let db_url2 = db_url.clone();
    rt().block_on(async {
        let ds = Datastore::open(&db_url2).await.unwrap();
        ds.create_entry(&entry(&td, "/api", uid), "e2e")
            .await
            .unwrap();
        ds.close().await;
    });
    let _ca_proc = ca.serve();
    fetch_until(&socket, &[], "resync after ca returned", |c, o, _| {
        c == 0 && o.contains("/api")
    });

    // An entry deleted at the CA is withdrawn.
    rt().block_on(async {
        let ds = Datastore::open(&db_url).await.unwrap();
        ds.delete_entry(&web_id, "e2e").await.unwrap();
        ds.close().await;
    });
    fetch_until(&socket, &[], "withdrawn entry", |c, o, _| {
        c == 0 && !o.contains("/web") && o.contains("/api")
    });
    drop(agent);
}

/// Measurement, not a test of behaviour: resident memory of a real `warden agent run` holding
/// 1,000 entries and their X.509-SVIDs. Run with
/// `cargo test -p warden --test agent_e2e -- --ignored --nocapture measure_agent_rss`.
#[test]
#[ignore = "measurement; prints the agent's VmRSS"]
fn measure_agent_rss_with_1000_cached_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    let ca_dir = tmp.path().join("ca");
    let status = Command::new(bin())
        .args(["ca", "init", "--trust-domain", "example.org", "--data-dir"])
        .arg(&ca_dir)
        .status()
        .unwrap();
    assert!(status.success());
    let td = TrustDomain::new("example.org").unwrap();
    let db_url = ca_dir
        .join("datastore.sqlite3")
        .to_str()
        .unwrap()
        .to_owned();
    rt().block_on(async {
        let ds = Datastore::open(&db_url).await.unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let expires = i64::try_from(now.as_secs()).unwrap() + 600;
        ds.create_join_token(&join_token_hash(TOKEN), expires, "e2e")
            .await
            .unwrap();
        ds.create_entry(&entry(&td, "/mine", uid), "e2e")
            .await
            .unwrap();
        for i in 1..1000 {
            ds.create_entry(&entry(&td, &format!("/w{i}"), 100_000 + i), "e2e")
                .await
                .unwrap();
        }
        ds.close().await;
    });
    let ca = Ca {
        dir: ca_dir.clone(),
        port: free_port(),
        http: free_port(),
    };
    let _ca_proc = ca.serve();
    let socket = tmp.path().join("agent.sock");
    let agent_http = free_port();
    let args = [
        "agent".to_owned(),
        "run".into(),
        "--server".into(),
        format!("127.0.0.1:{}", ca.port),
        "--trust-bundle".into(),
        ca_dir.join("root.crt.pem").display().to_string(),
        "--data-dir".into(),
        tmp.path().join("agent").display().to_string(),
        "--socket".into(),
        socket.display().to_string(),
        "--http-listen".into(),
        format!("127.0.0.1:{agent_http}"),
        "--join-token".into(),
        TOKEN.into(),
    ];
    let agent = spawn(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &tmp.path().join("agent.log"),
    );
    fetch_until(&socket, &[], "first svid", |c, o, _| {
        c == 0 && o.contains("/mine")
    });
    // Wait for the whole cache: metrics report 1000 SVIDs.
    let deadline = Instant::now() + WAIT;
    loop {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", agent_http)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        if text.contains("warden_agent_svids_cached 1000") {
            break;
        }
        assert!(Instant::now() < deadline, "cache never filled");
        std::thread::sleep(Duration::from_millis(200));
    }
    for _ in 0..100 {
        fetch(&socket, &[]);
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.0.id())).unwrap();
    let rss = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let hwm = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    println!("warden agent run with 1000 cached entries + svids: {rss}; peak {hwm}");
}
