//! `warden sidecar run` from the command line: `--check-config` accepts a valid config and policy
//! directory (exit 0, one line), rejects bad ones naming the problem (exit 3), flags override the
//! file, and `--help` documents every key's flag.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test helpers fail fast, like the tests they serve"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn warden() -> Command {
    Command::new(env!("CARGO_BIN_EXE_warden"))
}

fn policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

fn check(dir: &Path, toml: &str, flags: &[&str]) -> Output {
    let config = dir.join("sidecar.toml");
    std::fs::write(&config, toml).unwrap();
    warden()
        .args(["sidecar", "run", "--config"])
        .arg(&config)
        .arg("--check-config")
        .args(flags)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .output()
        .unwrap()
}

fn valid(policy_dir: &Path) -> String {
    format!(
        "workload_api_socket = \"unix:///run/warden/agent.sock\"\n\
         [inbound]\napp = \"127.0.0.1:8080\"\nservice = \"api\"\n\
         [policy]\ndir = \"{}\"\n\
         [[outbound]]\nlisten = \"127.0.0.1:15001\"\nupstream = \"127.0.0.1:15443\"\n\
         expected_ids = [\"spiffe://example.org/ns/prod/sa/api\"]\n",
        policy_dir.display()
    )
}

#[test]
fn check_config_accepts_a_valid_config_with_a_one_line_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let out = check(tmp.path(), &valid(&policies()), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with("config ok: "), "{stdout}");
    assert!(
        stdout.contains("service `api`") && stdout.contains("1 outbound"),
        "{stdout}"
    );
    assert!(stdout.contains("policies, version sha256:"), "{stdout}");
}

#[test]
fn check_config_warns_of_an_admin_listener_beyond_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let out = check(tmp.path(), &valid(&policies()), &[]);
    assert!(out.stderr.is_empty(), "{out:?}");
    let out = check(
        tmp.path(),
        &valid(&policies()),
        &["--admin-listen", "0.0.0.0:15090"],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("warning: admin listener `0.0.0.0:15090` is not on loopback"),
        "{stderr}"
    );
}

#[test]
fn check_config_rejects_unknown_keys_and_bad_values_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    for (toml, needle) in [
        (
            format!("{}colour = \"red\"\n", valid(&policies())),
            "colour",
        ),
        (
            valid(&policies()).replace("app = \"127.0.0.1:8080\"", "app = \"10.1.1.1:80\""),
            "inbound.app",
        ),
        (
            format!("{}[limits]\nidle_timeout = \"soon\"\n", valid(&policies())),
            "limits.idle_timeout",
        ),
        (
            "[inbound]\napp = \"127.0.0.1:1\"\nservice = \"a\"\n".to_owned(),
            "SPIFFE_ENDPOINT_SOCKET",
        ),
    ] {
        let out = check(tmp.path(), &toml, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{needle}: {out:?}");
        assert!(
            stderr.contains(needle) && stderr.contains("sidecar.toml"),
            "{needle}: {stderr}"
        );
    }
}

#[test]
fn check_config_rejects_an_invalid_policy_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad-policies");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("x.cedar"), "permit (principal, action, resource").unwrap();
    let out = check(tmp.path(), &valid(&bad), &[]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad-policies"));
}

#[test]
fn flags_override_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = check(
        tmp.path(),
        &valid(&policies()),
        &[
            "--service",
            "orders",
            "--mode",
            "dry-run",
            "--mtls",
            "permissive",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        stdout.contains("service `orders`")
            && stdout.contains("dry-run")
            && stdout.contains("mtls permissive"),
        "{stdout}"
    );
    let out = check(tmp.path(), &valid(&policies()), &["--mode", "maybe"]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("maybe"));
}

#[test]
fn help_lists_a_flag_for_every_config_key() {
    let out = warden()
        .args(["sidecar", "run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    // Whole flags: `--app` is not found inside `--app-protocol`.
    let flags: std::collections::BTreeSet<&str> = help
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|word| word.starts_with("--") && word.len() > 2)
        .collect();
    for flag in [
        "--config",
        "--check-config",
        "--workload-api-socket",
        "--spiffe-id",
        "--worker-threads",
        "--inbound-listen",
        "--app",
        "--allow-remote-app",
        "--protocol",
        "--app-protocol",
        "--service",
        "--mtls",
        "--tls12",
        "--policy-dir",
        "--mode",
        "--outbound",
        "--admin-listen",
        "--decision-log",
        "--decision-log-max-bytes",
        "--decision-log-keep",
        "--handshake-timeout",
        "--idle-timeout",
        "--max-connections",
        "--max-header-bytes",
        "--max-headers",
    ] {
        assert!(
            flags.contains(flag),
            "{flag} missing from --help: {flags:?}"
        );
    }
}

#[test]
fn each_flag_sets_its_own_key() {
    // A bad value through each flag: the error names the flag and the key it reached, so a
    // flag wired to the wrong key fails here.
    let tmp = tempfile::tempdir().unwrap();
    let toml = valid(&policies());
    for (flag, value, key) in [
        (
            "--workload-api-socket",
            "tcp://1.2.3.4:1",
            "workload_api_socket",
        ),
        ("--spiffe-id", "http://x", "spiffe_id"),
        ("--worker-threads", "5000", "worker_threads"),
        ("--inbound-listen", "nowhere", "inbound.listen"),
        ("--app", "10.0.0.1:80", "inbound.app"),
        ("--service", "", "inbound.service"),
        ("--admin-listen", "nowhere", "admin.listen"),
        ("--decision-log", "", "decision_log.path"),
        ("--decision-log-max-bytes", "10", "decision_log.max_bytes"),
        ("--decision-log-keep", "5000", "decision_log.keep"),
        ("--handshake-timeout", "soon", "limits.handshake_timeout"),
        ("--idle-timeout", "soon", "limits.idle_timeout"),
        ("--max-connections", "0", "limits.max_connections"),
        ("--max-header-bytes", "100", "limits.max_header_bytes"),
        ("--max-headers", "0", "limits.max_headers"),
    ] {
        let out = check(tmp.path(), &toml, &[&format!("{flag}={value}")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{flag}: {stderr}");
        assert!(
            stderr.contains(&format!("invalid flag `{flag}` (key `{key}`)")),
            "{flag}: {stderr}"
        );
    }
}
