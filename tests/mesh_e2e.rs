//! The sidecars in a mesh of real processes, driven by real clients. `warden up` starts the CA,
//! the agent, two demo apps and a sidecar in front of each, all as processes of the built binary
//! (two apps, each behind a sidecar, a CA and an agent started by the test). Against that mesh:
//! - HTTP/1.1 and HTTP/2 (h2c by prior knowledge) through the frontend's outbound listener,
//!   mTLS between the sidecars, answered by the api app (`curl`);
//! - gRPC through the same listener with a tonic client: the app's health service, unary
//!   (`Check`, also an error status passing back) and server streaming (`Watch`), and a call of
//!   another service that policy denies (PERMISSION_DENIED naming the decision);
//! - `curl` and `openssl s_client` against the api's inbound with each kind of bad client
//!   certificate (none, another CA's, expired, not an SVID) are refused at the handshake and
//!   counted by reason; a good certificate from the same CA is the control;
//! - a policy file added and removed while the mesh runs changes decisions without a restart;
//! - SVIDs rotating every few seconds (both entries' X.509 TTL set to 8 s while the mesh runs)
//!   lose no request of continuous load, and the api's inbound presents new certificates.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers fail fast, like the tests they serve"
)]

#[allow(dead_code, reason = "shared with up_e2e.rs, which uses the rest")]
#[path = "up_e2e/support.rs"]
mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use warden_identity::SpiffeId;
use warden_identity::test_util::{BadLeaf, TestCa};

use self::support::{START, Up, bin, decision_lines, free_base, repo};

const FRONTEND: &str = "spiffe://example.org/ns/prod/sa/frontend";
const API: &str = "spiffe://example.org/ns/prod/sa/api";
/// Bounds every wait for the mesh to notice something (a policy change, a new SVID).
const NOTICE: Duration = Duration::from_secs(60);

#[test]
fn real_mesh_http1_http2_bad_certificates_policy_edits_and_rotation_under_load() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mesh");
    let policies = tmp.path().join("policies");
    copy_dir(&repo().join("policies"), &policies);
    let base = free_base(7);
    let mut up = Up::start(&dir, base, &["--policies", policies.to_str().unwrap()]);
    up.wait_for("ready", START);
    let outbound = format!("http://127.0.0.1:{}", base + 1);
    let (api_inbound, api_admin) = (base + 2, base + 8);

    // HTTP/1.1 and HTTP/2 through the frontend's outbound listener.
    assert_eq!(curl(&[&format!("{outbound}/v1/orders")]), "200 1.1");
    assert_eq!(
        curl(&["--http2-prior-knowledge", &format!("{outbound}/v1/orders")]),
        "200 2"
    );
    assert_eq!(curl(&[&format!("{outbound}/internal/debug")]), "403 1.1");
    grpc_through_the_outbound(&outbound, &dir);

    bad_certificates_are_refused_at_the_handshake(tmp.path(), &dir, api_inbound, api_admin);
    editing_policies_changes_decisions_without_restart(&policies, &dir, &outbound);
    rotation_under_load_loses_no_request(&dir, &outbound, api_inbound, api_admin);
}

fn grpc_through_the_outbound(outbound: &str, dir: &Path) {
    use warden_api::health::health_check_response::ServingStatus;
    use warden_api::health::health_client::HealthClient;
    use warden_api::health::{HealthCheckRequest, HealthCheckResponse};

    let request = |service: &str| HealthCheckRequest {
        service: service.to_owned(),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(outbound.to_owned())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = HealthClient::new(channel.clone());
        // Unary, allowed by `prod-checks-api-health`.
        let r = health.check(request("")).await.unwrap();
        assert_eq!(r.get_ref().status(), ServingStatus::Serving);
        // The app's own error status comes back through both sidecars (trailers).
        let e = health.check(request("billing")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
        assert!(e.message().contains("billing"), "{e:?}");
        // Server streaming: the first message arrives while the stream stays open.
        let mut watch = health.watch(request("api")).await.unwrap().into_inner();
        let first = tokio::time::timeout(NOTICE, watch.message()).await.unwrap();
        assert_eq!(first.unwrap().unwrap().status(), ServingStatus::Serving);
        drop(watch);
        // Another service of the api: the policies allow prod callers only the health service.
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
        let e = grpc
            .unary(
                tonic::Request::new(request("")),
                http::uri::PathAndQuery::from_static("/demo.Billing/Check"),
                codec,
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("decision"), "{e:?}");
    });
    wait_for_line(dir, "the allowed gRPC call", |r| {
        r["action"] == "grpc"
            && r["decision"] == "allow"
            && r["path"] == "/grpc.health.v1.Health/Check"
    });
    wait_for_line(dir, "the denied gRPC call", |r| {
        r["action"] == "grpc" && r["decision"] == "deny" && r["path"] == "/demo.Billing/Check"
    });
}

fn bad_certificates_are_refused_at_the_handshake(
    tmp: &Path,
    dir: &Path,
    api_inbound: u16,
    api_admin: u16,
) {
    // Leaves signed by the mesh's own root (its files in the CA's data dir), and by another.
    let root = |f: &str| std::fs::read_to_string(dir.join("ca").join(f)).unwrap();
    let ca = TestCa::from_root_pem("example.org", &root("root.crt.pem"), &root("root.key.pem"));
    let frontend: SpiffeId = FRONTEND.parse().unwrap();
    let good = ca.issue_svid(&frontend, Duration::from_secs(600));
    let good = write_pair(tmp, "good", &good.cert_chain_pem(), &good.private_key_pem());
    let other = TestCa::new("example.org").issue_svid(&frontend, Duration::from_secs(600));
    let other = write_pair(
        tmp,
        "other-ca",
        &other.cert_chain_pem(),
        &other.private_key_pem(),
    );
    let bad = |name: &str, kind: BadLeaf| {
        let (chain, key) = ca.issue_bad_leaf(&frontend, kind);
        let chain: Vec<pem::Pem> = chain
            .iter()
            .map(|c| pem::Pem::new("CERTIFICATE", c.to_vec()))
            .collect();
        let key = pem::Pem::new("PRIVATE KEY", key.secret_pkcs8_der().to_vec());
        write_pair(tmp, name, &pem::encode_many(&chain), &pem::encode(&key))
    };
    let expired = bad("expired", BadLeaf::Expired);
    let not_svid = bad("not-svid", BadLeaf::NoUriSan);
    let url = format!("https://127.0.0.1:{api_inbound}/v1/orders");

    // The control: the same clients with a good SVID get through.
    assert_eq!(curl_tls(&url, Some(&good)), (0, "200".to_owned()));
    let out = s_client(api_inbound, Some(&good));
    assert!(out.contains("HTTP/1.1 200"), "{out}");
    let before = handshake_failures(api_admin);

    let cases: [(&str, Option<&Pair>, &str); 4] = [
        ("no certificate", None, "no_cert"),
        ("another CA's", Some(&other), "untrusted"),
        ("expired", Some(&expired), "expired"),
        ("not an SVID", Some(&not_svid), "not_svid"),
    ];
    for (what, pair, reason) in cases {
        let (code, status) = curl_tls(&url, pair);
        assert!(
            code != 0 && status == "000",
            "curl, {what}: exit {code}, {status}"
        );
        let out = s_client(api_inbound, pair);
        assert!(!out.contains("HTTP/1.1"), "openssl s_client, {what}: {out}");
        assert!(out.contains("alert"), "openssl s_client, {what}: {out}");
        // Two refusals (curl, openssl) of this reason, counted by the api's sidecar.
        let deadline = Instant::now() + NOTICE;
        loop {
            let now = handshake_failures(api_admin);
            let counted =
                now.get(reason).copied().unwrap_or(0) - before.get(reason).copied().unwrap_or(0);
            if counted >= 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {reason} counted {counted}: {now:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // A refused caller gets no decision at all: every line in the api's log is the frontend's.
    wait_for_line(dir, "the control's request", |r| {
        r["headers"].to_string().contains("\"api\"")
    });
    let log = decision_lines(&dir.join("logs/decisions-api.jsonl"));
    assert!(
        log.iter().all(|r| r["peer_spiffe_id"] == FRONTEND),
        "{log:?}"
    );
}

fn editing_policies_changes_decisions_without_restart(policies: &Path, dir: &Path, outbound: &str) {
    let url = format!("{outbound}/v1/orders");
    let added = policies.join("zz-e2e-freeze.cedar");
    std::fs::write(
        &added,
        "@id(\"e2e-freeze-orders\")\n\
         forbid (\n  principal,\n  action == Mesh::Action::\"GET\",\n  \
         resource == Mesh::Service::\"api\"\n)\nwhen { context.path == \"/v1/orders\" };\n",
    )
    .unwrap();
    wait_for_status(&url, "403 1.1");
    wait_for_line(dir, "a deny by the new forbid", |r| {
        r["decision"] == "deny"
            && r["policy_ids"]
                .as_array()
                .is_some_and(|ids| ids.iter().any(|i| i == "e2e-freeze-orders"))
    });
    std::fs::remove_file(&added).unwrap();
    wait_for_status(&url, "200 1.1");
}

fn rotation_under_load_loses_no_request(
    dir: &Path,
    outbound: &str,
    api_inbound: u16,
    api_admin: u16,
) {
    let socket = dir.join("ca/admin.sock");
    let admin = ["--admin-socket", socket.to_str().unwrap()];
    let entries = warden(&[&["entry", "list", "--output", "json"], &admin[..]].concat());
    let entries: serde_json::Value = serde_json::from_str(&entries).unwrap();
    for id in [FRONTEND, API] {
        let entry = entries
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["spiffe_id"] == id)
            .unwrap_or_else(|| panic!("no entry for {id}: {entries}"));
        let eid = entry["id"].as_str().unwrap();
        warden(&[&["entry", "update", eid, "--x509-ttl", "8s"], &admin[..]].concat());
    }
    // The agent re-issues both SVIDs with the new lifetime on its next sync.
    let deadline = Instant::now() + NOTICE;
    while svid_expires_in(api_admin) > 8.0 {
        assert!(Instant::now() < deadline, "the api never got an 8 s SVID");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Continuous load through the pair while the SVIDs rotate; the api's certificate sampled.
    let stop = Arc::new(AtomicBool::new(false));
    let url = format!("{outbound}/v1/orders");
    let load = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                answers.push(curl(&[&url]));
            }
            answers
        })
    };
    let mut serials = BTreeSet::new();
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        serials.extend(server_serial(api_inbound));
        std::thread::sleep(Duration::from_secs(1));
    }
    stop.store(true, Ordering::Relaxed);
    let answers = load.join().unwrap();
    let failed: Vec<&String> = answers.iter().filter(|a| *a != "200 1.1").collect();
    assert!(
        answers.len() >= 50,
        "only {} requests in 20 s",
        answers.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        answers.len()
    );
    assert!(
        serials.len() >= 3,
        "the api's inbound presented {} certificates in 20 s of 8 s SVIDs: {serials:?}",
        serials.len()
    );
}

// === helpers ===

/// A client certificate chain file and its key file.
type Pair = (PathBuf, PathBuf);

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn write_pair(dir: &Path, name: &str, chain: &str, key: &str) -> Pair {
    let (c, k) = (
        dir.join(format!("{name}.crt.pem")),
        dir.join(format!("{name}.key.pem")),
    );
    std::fs::write(&c, chain).unwrap();
    std::fs::write(&k, key).unwrap();
    (c, k)
}

/// `warden ARGS`, which must succeed; its stdout.
fn warden(args: &[&str]) -> String {
    let out = Command::new(bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "`warden {}`: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `curl -s ARGS`: "<status> <http version>" (`000 0` when there was no answer).
fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "10"])
        .args(["-w", "%{http_code} %{http_version}"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `curl` straight to the api's inbound presenting `pair`: (exit code, status). The server's
/// SVID names no host, so its chain is not checked here (`-k`): what is tested is the server's
/// check of the client.
fn curl_tls(url: &str, pair: Option<&Pair>) -> (i32, String) {
    let mut c = Command::new("curl");
    c.args([
        "-sk",
        "-o",
        "/dev/null",
        "--max-time",
        "10",
        "-w",
        "%{http_code}",
    ]);
    if let Some((cert, key)) = pair {
        c.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let out = c.arg(url).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `openssl s_client` to the api's inbound presenting `pair`, sending one HTTP/1.1 request;
/// everything it printed.
fn s_client(port: u16, pair: Option<&Pair>) -> String {
    let mut c = Command::new("openssl");
    c.args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-alpn", "http/1.1", "-ign_eof", "-brief"]);
    if let Some((cert, key)) = pair {
        c.arg("-cert").arg(cert).arg("-key").arg(key);
    }
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        let _ =
            stdin.write_all(b"GET /v1/orders HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n");
    }
    let out = child.wait_with_output().unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text
}

/// The serial number of the certificate the api's inbound presents now (`openssl s_client`
/// reads it before the server asks for ours), if the connection got that far.
fn server_serial(port: u16) -> Option<String> {
    let cert = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} </dev/null 2>/dev/null \
             | openssl x509 -noout -serial"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&cert.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("serial="))
        .map(str::to_owned)
}

fn admin_get(port: u16, path: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The inbound's handshake failures by reason, from `/metrics`.
fn handshake_failures(admin: u16) -> std::collections::BTreeMap<String, u64> {
    let text = admin_get(admin, "/metrics");
    text.lines()
        .filter(|l| l.starts_with("warden_sidecar_handshake_failures_total{"))
        .filter(|l| l.contains("direction=\"inbound\""))
        .filter_map(|l| {
            let reason = l.split("reason=\"").nth(1)?.split('"').next()?.to_owned();
            let value = l.rsplit(' ').next()?.parse::<f64>().ok()?;
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Some((reason, value as u64))
        })
        .collect()
}

/// Seconds until the api sidecar's SVID expires, from `/metrics`.
fn svid_expires_in(admin: u16) -> f64 {
    let text = admin_get(admin, "/metrics");
    text.lines()
        .find(|l| l.starts_with("warden_sidecar_svid_expiry_seconds"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(f64::MAX)
}

fn wait_for_status(url: &str, want: &str) {
    let deadline = Instant::now() + NOTICE;
    loop {
        let got = curl(&[url]);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{url}: still {got}, not {want}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until a line of the api's decision log (written off the request path) matches.
fn wait_for_line(dir: &Path, what: &str, matches: impl Fn(&serde_json::Value) -> bool) {
    let path = dir.join("logs/decisions-api.jsonl");
    let deadline = Instant::now() + NOTICE;
    loop {
        let log = decision_lines(&path);
        if log.iter().any(&matches) {
            return;
        }
        assert!(Instant::now() < deadline, "no line for {what}: {log:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
