//! The manual path an operator walks (and the README shows), with the built binary as separate
//! processes: `ca init` → `ca serve` → `token create` → `entry create` → `agent run` →
//! `agent healthcheck` → `svid fetch --write` → `demo-app` → `sidecar run` (inbound, in front of
//! the demo app) → `curl` with the fetched SVID as its client certificate: an allowed path
//! answers 200, a path the policies forbid answers 403, and no client certificate means no TLS.
//!
//! Why `--resolve`: an X.509-SVID names its workload by a `spiffe://` URI SAN, which curl does not
//! check; curl checks a host name. The api's entry therefore also asks for the DNS SAN
//! `api.example.org`, and `--resolve api.example.org:PORT:127.0.0.1` lets curl verify the whole
//! chain against `bundle.pem` *and* the name, instead of `-k`, which would verify nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers fail fast, like the tests they serve"
)]

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use warden_identity::test_util::free_port;

#[path = "support/procs.rs"]
#[allow(dead_code, reason = "each test binary uses some of the helpers")]
mod procs;

use procs::*;

const API: &str = "spiffe://example.org/ns/prod/sa/api";
const FRONTEND: &str = "spiffe://example.org/ns/prod/sa/frontend";

/// The value after `label:` in `warden`'s table output.
fn field<'a>(out: &'a str, label: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no `{label}` in:\n{out}"))
        .trim()
}

#[test]
fn manual_path_from_ca_init_to_curl_with_the_fetched_svid() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    let (ca_port, ca_http, agent_http) = (free_port(), free_port(), free_port());
    let (app_port, inbound, admin) = (free_port(), free_port(), free_port());
    let ca_dir = t.join("ca");
    let admin_socket = ca_dir.join("admin.sock");

    // 1. The CA.
    warden(&[
        "ca",
        "init",
        "--trust-domain",
        "example.org",
        "--data-dir",
        &s(&ca_dir),
    ]);
    let mut ca = spawn(
        &bin(),
        &[
            "ca",
            "serve",
            "--data-dir",
            &s(&ca_dir),
            "--listen",
            &format!("127.0.0.1:{ca_port}"),
            "--http-listen",
            &format!("127.0.0.1:{ca_http}"),
        ],
        &t.join("ca.log"),
    );
    wait_until("the CA ready", &mut ca, || {
        http_ok(ca_http, "/readyz") && admin_socket.exists()
    });

    // 2. A join token and the two entries. The sidecar runs from its own link to the binary, so
    //    the agent tells it (api) from `warden svid fetch` (frontend, the curl client) by path.
    let conn = ["--admin-socket", admin_socket.to_str().unwrap()];
    let token_out = warden(&[&["token", "create", "--ttl", "10m"], &conn[..]].concat());
    let token = field(&token_out, "token:").to_owned();
    let agent_id = field(&token_out, "agent id:").to_owned();
    let sidecar_exe = t.join("bin/warden-sidecar");
    std::fs::create_dir_all(sidecar_exe.parent().unwrap()).unwrap();
    std::fs::hard_link(bin(), &sidecar_exe)
        .or_else(|_| std::fs::copy(bin(), &sidecar_exe).map(drop))
        .unwrap();
    let uid_sel = format!("unix:uid:{uid}");
    let api_path = format!("unix:path:{}", sidecar_exe.display());
    let client_path = format!("unix:path:{}", bin().display());
    let entry = warden(
        &[
            &[
                "entry",
                "create",
                "--spiffe-id",
                API,
                "--parent-id",
                &agent_id,
                "--selector",
                &uid_sel,
                "--selector",
                &api_path,
                "--dns-name",
                "api.example.org",
            ],
            &conn[..],
        ]
        .concat(),
    );
    assert_eq!(field(&entry, "spiffe id:"), API);
    warden(
        &[
            &[
                "entry",
                "create",
                "--spiffe-id",
                FRONTEND,
                "--parent-id",
                &agent_id,
                "--selector",
                &uid_sel,
                "--selector",
                &client_path,
            ],
            &conn[..],
        ]
        .concat(),
    );

    // 3. The agent, attesting with the token.
    let socket = t.join("agent.sock");
    let agent_listen = format!("127.0.0.1:{agent_http}");
    let mut agent = spawn(
        &bin(),
        &[
            "agent",
            "run",
            "--server",
            &format!("127.0.0.1:{ca_port}"),
            "--trust-bundle",
            &s(&ca_dir.join("root.crt.pem")),
            "--join-token",
            &token,
            "--data-dir",
            &s(&t.join("agent")),
            "--socket",
            &s(&socket),
            "--http-listen",
            &agent_listen,
        ],
        &t.join("agent.log"),
    );
    wait_until("`warden agent healthcheck` ready", &mut agent, || {
        Command::new(bin())
            .args(["agent", "healthcheck", "--http-listen", &agent_listen])
            .output()
            .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"ready"))
    });

    // 4. The client's SVID, written for curl.
    let client = t.join("client");
    let mut fetched = String::new();
    wait_until("the frontend svid", &mut agent, || {
        let out = Command::new(bin())
            .args([
                "svid",
                "fetch",
                "--socket",
                &s(&socket),
                "--write",
                &s(&client),
            ])
            .output()
            .unwrap();
        fetched = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success() && fetched.contains(FRONTEND)
    });
    assert!(
        !fetched.contains(API),
        "the client is not the api: {fetched}"
    );
    for f in ["svid.pem", "svid.key", "bundle.pem"] {
        assert!(client.join(f).exists(), "{f}");
    }

    // 5. The demo app and, in front of it, the sidecar.
    let mut app = spawn(
        &bin(),
        &[
            "demo-app",
            "--listen",
            &format!("127.0.0.1:{app_port}"),
            "--name",
            "api",
        ],
        &t.join("app.log"),
    );
    wait_until("the demo app", &mut app, || http_ok(app_port, "/healthz"));
    let decisions = t.join("decisions.jsonl");
    let config = t.join("sidecar.toml");
    std::fs::write(
        &config,
        format!(
            "workload_api_socket = \"{}\"\n\
             spiffe_id = \"{API}\"\n\
             [inbound]\n\
             listen = \"127.0.0.1:{inbound}\"\n\
             app = \"127.0.0.1:{app_port}\"\n\
             service = \"api\"\n\
             [policy]\n\
             dir = \"{}\"\n\
             [admin]\n\
             listen = \"127.0.0.1:{admin}\"\n\
             [decision_log]\n\
             path = \"{}\"\n",
            socket.display(),
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("policies")
                .display(),
            decisions.display()
        ),
    )
    .unwrap();
    let check = warden(&["sidecar", "run", "--check-config", "--config", &s(&config)]);
    assert!(!check.trim().is_empty(), "--check-config prints a summary");
    let mut sidecar = spawn(
        &sidecar_exe,
        &["sidecar", "run", "--config", &s(&config)],
        &t.join("sidecar.log"),
    );
    wait_until("the sidecar ready", &mut sidecar, || {
        http_ok(admin, "/readyz")
    });

    // 6. curl as the frontend: chain verified against the bundle, name by the DNS SAN.
    let curl = |path: &str, with_cert: bool| {
        let mut c = Command::new("curl");
        c.args(["-s", "-w", "\n%{http_code}", "--cacert"])
            .arg(client.join("bundle.pem"))
            .arg("--resolve")
            .arg(format!("api.example.org:{inbound}:127.0.0.1"));
        if with_cert {
            c.arg("--cert")
                .arg(client.join("svid.pem"))
                .arg("--key")
                .arg(client.join("svid.key"));
        }
        let out = c
            .arg(format!("https://api.example.org:{inbound}{path}"))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = curl("/v1/orders", true);
    assert_eq!(code, Some(0), "{out}");
    let (body, status) = out.rsplit_once('\n').unwrap();
    assert_eq!(status, "200", "{out}");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["service"], "api");

    let (_, out) = curl("/internal/debug", true);
    let (body, status) = out.rsplit_once('\n').unwrap();
    assert_eq!(status, "403", "{out}");
    assert!(body.contains("decision"), "{body}");

    // Strict mTLS: without a client certificate there is no HTTP at all.
    let (code, out) = curl("/v1/orders", false);
    assert_ne!(code, Some(0), "no client certificate must fail: {out}");
    assert!(out.ends_with("000"), "{out}");

    // The decisions, as JSON lines; written off the request path, so poll (bounded) for both.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (log, recs) = loop {
        let text = std::fs::read_to_string(&decisions).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]).to_owned();
        let recs: Vec<serde_json::Value> = complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if recs.len() >= 2 || Instant::now() > deadline {
            break (complete, recs);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        recs.iter().any(|r| r["decision"] == "allow"
            && r["path"] == "/v1/orders"
            && r["peer_spiffe_id"] == FRONTEND),
        "{log}"
    );
    assert!(
        recs.iter()
            .any(|r| r["decision"] == "deny" && r["path"] == "/internal/debug"),
        "{log}"
    );
    drop((sidecar, app, agent, ca));
}
