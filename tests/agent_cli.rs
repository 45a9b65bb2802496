//! `warden agent` and `warden svid` as a user runs them: configuration errors, the
//! `SPIFFE_ENDPOINT_SOCKET` fallback (W-4) and clear messages when nothing is running.

use assert_cmd::Command;

fn warden() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warden"));
    cmd.env_remove("SPIFFE_ENDPOINT_SOCKET")
        .env_remove("WARDEN_JOIN_TOKEN")
        .env_remove("WARDEN_AGENT_CONFIG");
    cmd
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn svid_fetch_without_socket_says_how_to_give_one_w4() {
    let out = warden().args(["svid", "fetch"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("SPIFFE_ENDPOINT_SOCKET"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn svid_fetch_uses_spiffe_endpoint_socket_env_w4() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nobody.sock");
    let out = warden()
        .args(["svid", "fetch"])
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix://{}", sock.display()),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "cannot reach the workload api at `{}`",
            sock.display()
        )),
        "{err}"
    );
}

#[test]
fn svid_fetch_rejects_addresses_that_are_not_unix_paths_w4() {
    for addr in ["tcp://127.0.0.1:1", "unix://host/x.sock"] {
        let out = warden()
            .args(["svid", "fetch", "--socket", addr])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).contains(&format!("invalid workload api address `{addr}`")),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn svid_fetch_jwt_requires_an_audience() {
    let out = warden()
        .args(["svid", "fetch", "--socket", "/x.sock", "--jwt"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "usage error (EX_USAGE)");
    assert!(stderr(&out).contains("--audience"));
}

#[test]
fn agent_run_without_server_is_a_config_error() {
    let out = warden()
        .args(["agent", "run", "--trust-bundle", "b.pem", "--data-dir", "d"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("missing `server` (flag `--server` or config key `server`)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn agent_run_rejects_unknown_config_keys_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, "servr = \"127.0.0.1:8081\"\n").unwrap();
    let out = warden()
        .args(["agent", "run", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(
        err.contains("invalid config file") && err.contains("servr"),
        "{err}"
    );
}

#[test]
fn agent_run_with_both_attestation_methods_is_refused() {
    let out = warden()
        .args([
            "agent",
            "run",
            "--server",
            "127.0.0.1:1",
            "--trust-bundle",
            "b.pem",
            "--data-dir",
            "d",
        ])
        .args([
            "--join-token",
            "t",
            "--x509pop-cert",
            "c.pem",
            "--x509pop-key",
            "k.pem",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("either a join token or x509pop"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn agent_run_with_missing_trust_bundle_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = warden()
        .args([
            "agent",
            "run",
            "--server",
            "127.0.0.1:1",
            "--join-token",
            "t",
            "--trust-bundle",
        ])
        .arg(dir.path().join("missing.pem"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(
        err.contains("`trust_bundle` file") && err.contains("missing.pem"),
        "{err}"
    );
    assert!(!err.contains("error: t\n"), "the token must not be echoed");
}

#[test]
fn agent_healthcheck_fails_when_no_agent_listens() {
    let port = warden_identity::test_util::free_port();
    let out = warden()
        .args([
            "agent",
            "healthcheck",
            "--http-listen",
            &format!("127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot reach"), "{}", stderr(&out));
}
