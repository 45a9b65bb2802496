//! The command line itself: usage errors exit 64 (never 2, which means "denied"), `--help` and
//! `--version` exit 0, and every subcommand documents itself.

use std::process::Command;

fn warden() -> Command {
    Command::new(env!("CARGO_BIN_EXE_warden"))
}

#[test]
fn an_unknown_subcommand_is_a_usage_error_naming_it() {
    let out = warden().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("frobnicate"));
}

#[test]
fn an_unknown_flag_is_a_usage_error_naming_it() {
    let out = warden()
        .args(["policy", "validate", "--no-such-flag", "policies"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
}

#[test]
fn help_and_version_exit_zero() {
    let help = warden().arg("--help").output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage: warden"));
    let version = warden().arg("--version").output().unwrap();
    assert_eq!(version.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("warden "));
}

/// Every subcommand (and sub-subcommand) answers `--help` with a description of its options.
#[test]
fn every_subcommand_has_help() {
    let top = warden().arg("--help").output().unwrap();
    let top = String::from_utf8_lossy(&top.stdout).into_owned();
    let subcommands = command_names(&top);
    assert!(subcommands.len() >= 9, "too few subcommands in:\n{top}");
    for sub in subcommands {
        let out = warden().args([sub.as_str(), "--help"]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "warden {sub} --help");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("Usage:"), "warden {sub} --help:\n{text}");
        for leaf in command_names(&text) {
            let out = warden()
                .args([sub.as_str(), leaf.as_str(), "--help"])
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(0), "warden {sub} {leaf} --help");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                text.contains("Options:"),
                "warden {sub} {leaf} --help:\n{text}"
            );
        }
    }
}

/// The names listed under "Commands:" in a clap help text, without `help`.
fn command_names(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// A lifetime of 0 (which the CA would read as "its default") and an `audit list --limit`
/// outside 1..=1000 are usage errors, caught before any CA is asked.
#[test]
fn out_of_range_admin_flags_are_usage_errors() {
    for args in [
        &["token", "create", "--ttl", "0"][..],
        &["token", "create", "--ttl", "0s"],
        &["audit", "list", "--limit", "0"],
        &["audit", "list", "--limit", "5000"],
    ] {
        let out = warden()
            .args(args)
            .args(["--admin-socket", "/nonexistent/admin.sock"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains(args[2]), "{args:?}: {err}");
    }
}

/// An error is said once: the cause is not repeated after a message that already names it.
/// Log lines written to a pipe carry no colour codes.
#[test]
fn errors_name_their_cause_once_and_piped_logs_are_plain() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let out = warden()
        .args(["ca", "init", "--trust-domain", "example.org", "--data-dir"])
        .arg(file.join("ca"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.matches("Not a directory").count(), 1, "{err}");
    let out = warden()
        .args(["ca", "init", "--trust-domain", "example.org", "--data-dir"])
        .arg(dir.path().join("ca"))
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ca initialised"), "{err}");
    assert!(!err.contains('\u{1b}'), "{err:?}");
}

/// A Workload API socket that is there but does not answer is named with what the socket did,
/// and an agent health listener that does not answer is called that.
#[test]
fn unreachable_agent_endpoints_are_named_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_socket = dir.path().join("plain-file");
    std::fs::write(&not_a_socket, "").unwrap();
    let out = warden()
        .args(["svid", "fetch", "--socket"])
        .arg(&not_a_socket)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("plain-file") && err.contains("refused"),
        "{err}"
    );
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
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("health listener"), "{err}");
}

/// `bundle fetch`'s profiles take the flags that fit them: `https_spiffe` (the default) needs
/// the endpoint's SPIFFE ID, `https_web` takes neither it nor a trust bundle, and no other
/// profile exists. Each is refused before anything is fetched or connected to, naming why.
#[test]
fn bundle_fetch_flags_must_fit_the_profile() {
    let fetch = |extra: &[&str]| {
        let out = warden()
            .args([
                "bundle",
                "fetch",
                "--trust-domain",
                "partner.org",
                "--url",
                "https://localhost:1/",
                "--admin-socket",
                "/nonexistent/admin.sock",
            ])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (extra, says) in [
        (&[][..], "--endpoint-spiffe-id is missing"),
        (
            &[
                "--profile",
                "https_web",
                "--endpoint-spiffe-id",
                "spiffe://partner.org/ca",
            ][..],
            "--endpoint-spiffe-id is for --profile https_spiffe",
        ),
        (
            &["--profile", "https_web", "--trust-bundle", "/tmp/x.pem"][..],
            "--trust-bundle is for --profile https_spiffe",
        ),
    ] {
        let (code, err) = fetch(extra);
        assert_eq!(code, Some(1), "{extra:?}: {err}");
        assert!(err.contains(says), "{extra:?}: {err}");
        assert!(!err.contains("admin.sock"), "connected first: {err}");
    }
    // No roots to verify an https_web endpoint with: named, before connecting to the CA.
    let empty = tempfile::NamedTempFile::new().unwrap();
    let out = warden()
        .args([
            "bundle",
            "fetch",
            "--profile",
            "https_web",
            "--trust-domain",
            "partner.org",
        ])
        .args([
            "--url",
            "https://localhost:1/",
            "--admin-socket",
            "/nonexistent/admin.sock",
        ])
        .env("SSL_CERT_FILE", empty.path())
        .env_remove("SSL_CERT_DIR")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no root certificates") && !err.contains("admin.sock"),
        "{err}"
    );
    let (code, err) = fetch(&["--profile", "https"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("https_web"), "{err}");
}

/// An `https_web` federation needs root certificates: the system's, or those `SSL_CERT_FILE`
/// names (as OpenSSL and Go read it); a file with none stops the CA before it starts.
#[test]
fn an_https_web_federation_needs_root_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let init = warden()
        .args(["ca", "init", "--trust-domain", "example.org", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let empty = tmp.path().join("no-roots.pem");
    std::fs::write(&empty, "").unwrap();
    let check = |roots: &std::path::Path| {
        let mut cmd = warden();
        cmd.args(["ca", "serve", "--check-config", "--data-dir"])
            .arg(&dir)
            .args([
                "--federation",
                r#"{ trust_domain = "partner.org", url = "https://spiffe.partner.org/", profile = "https_web" }"#,
            ])
            .env_remove("SSL_CERT_DIR")
            .env("SSL_CERT_FILE", roots);
        cmd.output().unwrap()
    };
    let out = check(&empty);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no root certificates") && err.contains("SSL_CERT_FILE"),
        "{err}"
    );
    // A file with a certificate in it (any root will do for the check).
    let out = check(&dir.join("root.crt.pem"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
