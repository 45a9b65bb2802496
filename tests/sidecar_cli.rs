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

/// The open-files soft and hard limits of process `pid`, from `/proc/<pid>/limits`.
fn open_files_limits(pid: u32) -> Option<(String, String)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut fields = line.trim_start_matches("Max open files").split_whitespace();
    Some((fields.next()?.to_owned(), fields.next()?.to_owned()))
}

/// Starts `warden sidecar run` (no agent behind its socket) after `ulimit` runs `ulimit_args`
/// in the shell that becomes it; returns its log up to "starting sidecar" and its open-files
/// limits then.
fn run_with_ulimit(ulimit_args: &str) -> (String, Option<(String, String)>) {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("sidecar.toml");
    std::fs::write(
        &config,
        format!(
            "workload_api_socket = \"unix://{}\"\n\
             [inbound]\nlisten = \"127.0.0.1:0\"\napp = \"127.0.0.1:8080\"\nservice = \"api\"\n\
             [policy]\ndir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [decision_log]\npath = \"{}\"\n",
            tmp.path().join("no-agent.sock").display(),
            policies().display(),
            tmp.path().join("decisions.log").display()
        ),
    )
    .unwrap();
    let mut child = Command::new("bash")
        .args(["-c", &format!("ulimit {ulimit_args} && exec \"$0\" \"$@\"")])
        .arg(env!("CARGO_BIN_EXE_warden"))
        .args(["sidecar", "run", "--config"])
        .arg(&config)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .env_remove("WARDEN_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The log, line by line, until the sidecar says it is starting (after the limit is set).
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(stderr).map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut log = String::new();
    while !log.contains("starting sidecar") {
        match rx.recv_timeout(std::time::Duration::from_secs(20)) {
            Ok(line) => log.push_str(&(line + "\n")),
            Err(_) => break,
        }
    }
    let seen = open_files_limits(child.id());
    let _ = child.kill();
    let _ = child.wait();
    assert!(log.contains("starting sidecar"), "{log}");
    (log, seen)
}

/// Started with a soft open-files limit of 256 (systemd's and containerd 2's default is 1024),
/// the sidecar raises it to the hard limit before it serves.
#[test]
fn run_raises_the_open_files_soft_limit_to_the_hard_limit() {
    let hard = open_files_limits(std::process::id()).unwrap().1;
    let (log, seen) = run_with_ulimit("-Sn 256");
    assert_eq!(seen, Some((hard.clone(), hard.clone())), "{log}");
    assert!(
        log.contains("raised the open-files limit (RLIMIT_NOFILE) to its hard limit")
            && log.contains("from=256"),
        "{log}"
    );
}

/// A hard limit below what `limits.max_connections` may need is named in a warning, with the
/// number needed and where to raise it.
#[test]
fn run_warns_when_the_hard_open_files_limit_is_below_what_max_connections_needs() {
    let (log, seen) = run_with_ulimit("-n 300");
    assert_eq!(seen, Some(("300".to_owned(), "300".to_owned())), "{log}");
    assert!(
        log.contains(
            "the open-files limit (RLIMIT_NOFILE) is 300, below the 30256 that \
             limits.max_connections = 10000 on 1 listener(s), two descriptors per connection \
             and one per HTTP/2 stream to an HTTP/1.1 app, may need"
        ) && log.contains("LimitNOFILE="),
        "{log}"
    );
    assert!(!log.contains("raised the open-files limit"), "{log}");
}
