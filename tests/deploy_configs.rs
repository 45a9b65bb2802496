//! The examples in `deploy/` are what `warden` accepts: each config passes `--check-config`, a
//! broken copy fails naming the bad key, and the systemd units pass `systemd-analyze verify`
//! (when it is installed) with their hardening in place.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers fail fast, like the tests they serve"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_warden"))
}

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file)
}

fn policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

/// `warden ARGS` with no Warden settings from the environment: (exit code, stdout, stderr).
fn warden(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env_remove("WARDEN_CA_CONFIG")
        .env_remove("WARDEN_AGENT_CONFIG")
        .env_remove("WARDEN_JOIN_TOKEN")
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A copy of `deploy/<file>` with `from` replaced by `to` (which must change it).
fn broken(dir: &Path, file: &str, from: &str, to: &str) -> PathBuf {
    let text = std::fs::read_to_string(deploy(file)).unwrap();
    assert!(text.contains(from), "`{from}` is not in deploy/{file}");
    let path = dir.join(format!("broken-{file}"));
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    path
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A CA made with `ca init`, for `ca serve --check-config` to load.
fn ca_dir(tmp: &Path) -> PathBuf {
    let dir = tmp.join("ca");
    let (code, _, err) = warden(&[
        "ca",
        "init",
        "--trust-domain",
        "example.org",
        "--data-dir",
        s(&dir),
    ]);
    assert_eq!(code, Some(0), "{err}");
    dir
}

/// `warden ca serve --check-config --config <config> --data-dir <ca>`, then `extra`.
fn ca_check(config: &Path, ca: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let mut args = vec![
        "ca",
        "serve",
        "--check-config",
        "--config",
        s(config),
        "--data-dir",
        s(ca),
    ];
    args.extend_from_slice(extra);
    warden(&args)
}

#[test]
fn example_ca_config_passes_check_config() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = ca_dir(tmp.path());
    // `data_dir` points at the CA made above; every other key is the example's.
    let (code, out, err) = ca_check(&deploy("ca.toml"), &ca, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("configuration ok"), "{out}");
}

#[test]
fn broken_ca_configs_fail_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = ca_dir(tmp.path());
    for (from, to, named) in [
        ("http_listen =", "http_lisen =", "http_lisen"),
        ("svid_ttl = \"1h\"", "svid_ttl = \"forever\"", "svid_ttl"),
        (
            "listen = \"0.0.0.0:8081\"",
            "listen = \"everywhere\"",
            "listen",
        ),
    ] {
        let bad = broken(tmp.path(), "ca.toml", from, to);
        let (code, out, err) = ca_check(&bad, &ca, &[]);
        assert_eq!(code, Some(3), "{to}: {out}{err}");
        assert!(err.contains(&format!("`{named}`")), "{to}: {err}");
    }
}

/// The example with the trust bundle a CA would have handed out (the check reads it).
#[test]
fn example_agent_config_passes_check_config() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = ca_dir(tmp.path()).join("root.crt.pem");
    let (code, out, err) = warden(&[
        "agent",
        "run",
        "--check-config",
        "--config",
        s(&deploy("agent.toml")),
        "--trust-bundle",
        s(&bundle),
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("configuration ok") && out.contains("/run/warden/agent.sock"),
        "{out}"
    );
}

#[test]
fn broken_agent_configs_fail_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    for (from, to, named) in [
        ("sync_interval =", "sync_intervall =", "sync_intervall"),
        (
            "sync_interval = \"5s\"",
            "sync_interval = \"soon\"",
            "sync_interval",
        ),
        (
            "http_listen = \"127.0.0.1:8088\"",
            "http_listen = \"localhost\"",
            "http_listen",
        ),
        ("server = \"ca.example.org:8081\"", "", "server"),
    ] {
        let bad = broken(tmp.path(), "agent.toml", from, to);
        let (code, out, err) = warden(&["agent", "run", "--check-config", "--config", s(&bad)]);
        assert_eq!(code, Some(3), "{to}: {out}{err}");
        assert!(err.contains(&format!("`{named}`")), "{to}: {err}");
    }
}

/// `--check-config` reads the files the config names, as starting would: a missing or garbled
/// trust bundle or node CA file, or a server that is no `host:port`, fails the check (exit 3)
/// naming the setting, not the start after it.
#[test]
fn check_config_fails_for_what_would_fail_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = ca_dir(tmp.path());
    let bundle = ca.join("root.crt.pem");
    let junk = tmp.path().join("junk.pem");
    std::fs::write(&junk, "not pem").unwrap();
    let example = deploy("agent.toml");
    let agent = |extra: &[&str]| {
        let mut args = vec!["agent", "run", "--check-config", "--config", s(&example)];
        args.extend_from_slice(extra);
        warden(&args)
    };
    for (extra, named) in [
        (
            vec!["--trust-bundle", "/nonexistent/bundle.pem"],
            "`trust_bundle` file `/nonexistent/bundle.pem`",
        ),
        (vec!["--trust-bundle", s(&junk)], "`trust_bundle` file"),
        (
            vec!["--trust-bundle", s(&bundle), "--server", "nohostport"],
            "invalid `server`: `nohostport`",
        ),
        (
            vec![
                "--trust-bundle",
                s(&bundle),
                "--x509pop-cert",
                s(&junk),
                "--x509pop-key",
                s(&junk),
            ],
            "`x509pop_cert` file",
        ),
    ] {
        let (code, out, err) = agent(&extra);
        assert_eq!(code, Some(3), "{extra:?}: {out}{err}");
        assert!(err.contains(named), "{extra:?}: {err}");
    }
    for node_ca in ["/nonexistent/node-ca.pem", s(&junk)] {
        let (code, out, err) = ca_check(&deploy("ca.toml"), &ca, &["--node-ca", node_ca]);
        assert_eq!(code, Some(3), "{node_ca}: {out}{err}");
        assert!(
            err.contains("invalid node ca file") && err.contains(node_ca),
            "{err}"
        );
    }
}

#[test]
fn example_sidecar_config_passes_check_config() {
    // The policy dir is where the README installs it; here the repository's copy.
    let (code, out, err) = warden(&[
        "sidecar",
        "run",
        "--check-config",
        "--config",
        s(&deploy("sidecar.toml")),
        "--policy-dir",
        s(&policies()),
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("api"), "{out}");
}

#[test]
fn broken_sidecar_configs_fail_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    for (from, to, named) in [
        ("max_headers =", "max_headerz =", "max_headerz"),
        ("mode = \"enforce\"", "mode = \"maybe\"", "mode"),
        ("mtls = \"strict\"", "mtls = \"sometimes\"", "mtls"),
    ] {
        let bad = broken(tmp.path(), "sidecar.toml", from, to);
        let (code, out, err) = warden(&[
            "sidecar",
            "run",
            "--check-config",
            "--config",
            s(&bad),
            "--policy-dir",
            s(&policies()),
        ]);
        assert_eq!(code, Some(3), "{to}: {out}");
        // Unknown keys are named; a bad value is named with the line of its key.
        let line = std::fs::read_to_string(&bad)
            .unwrap()
            .lines()
            .position(|l| l.starts_with(to))
            .unwrap()
            + 1;
        assert!(
            err.contains(&format!("`{named}`")) || err.contains(&format!("line {line}")),
            "{to}: {err}"
        );
    }
}

const UNITS: [&str; 3] = [
    "warden-ca.service",
    "warden-agent.service",
    "warden-sidecar@.service",
];

#[test]
fn units_keep_their_hardening() {
    for unit in UNITS {
        let text = std::fs::read_to_string(deploy(unit)).unwrap();
        let has = |line: &str| text.lines().any(|l| l.trim() == line);
        for line in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "PrivateDevices=yes",
            "UMask=0077",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
            "RestrictSUIDSGID=yes",
            "SystemCallFilter=@system-service",
        ] {
            assert!(has(line), "{unit} lacks `{line}`");
        }
        assert!(
            text.lines().any(|l| l.starts_with("ProtectHome=")),
            "{unit}"
        );
        assert!(
            text.lines().any(|l| l.starts_with("User=warden-")),
            "{unit} runs as a dedicated user"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("RuntimeDirectoryMode=0")),
            "{unit}"
        );
        assert!(!has("User=root"), "{unit}");
    }
    for unit in ["warden-ca.service", "warden-sidecar@.service"] {
        let text = std::fs::read_to_string(deploy(unit)).unwrap();
        assert!(
            text.lines().any(|l| l.trim() == "CapabilityBoundingSet="),
            "{unit} keeps no capability"
        );
    }
}

#[test]
fn units_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // verify checks that ExecStart exists: point it at the binary under test, and instantiate
    // the sidecar template.
    let mut files = Vec::new();
    for unit in UNITS {
        let text = std::fs::read_to_string(deploy(unit))
            .unwrap()
            .replace("/usr/local/bin/warden", s(&bin()));
        let name = unit.replace("@.service", "@api.service");
        let path = tmp.path().join(&name);
        std::fs::write(&path, text).unwrap();
        files.push(path);
    }
    let verify = |files: &[PathBuf]| {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .args(files)
            .env("SYSTEMD_LOG_COLOR", "0")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = verify(&files);
    // systemd-analyze reports unknown keys and bad values as warnings with exit 0: none allowed.
    assert!(ok && err.trim().is_empty(), "{err}");

    // ...and it does notice a typo, so the empty output above means something.
    let typo = tmp.path().join("typo.service");
    let text = std::fs::read_to_string(&files[0])
        .unwrap()
        .replace("ProtectSystem=strict", "ProtectSystm=strict");
    std::fs::write(&typo, text).unwrap();
    let (_, err) = verify(&[typo]);
    assert!(err.contains("ProtectSystm"), "{err}");
}
