//! Config parsing and validation tests.

use std::collections::HashMap;

use super::*;

const FULL: &str = r#"
workload_api_socket = "unix:///run/warden/agent.sock"
spiffe_id = "spiffe://example.org/ns/prod/sa/api"
worker_threads = 1

[inbound]
listen = "0.0.0.0:15443"
app = "127.0.0.1:8080"
protocol = "http"
app_protocol = "http1"
service = "api"
mtls = "permissive"
tls12 = true

[policy]
dir = "policies"
mode = "dry-run"

[[outbound]]
listen = "127.0.0.1:15001"
upstream = "127.0.0.1:15443"
expected_ids = ["spiffe://example.org/ns/prod/sa/api"]
protocol = "http"

[admin]
listen = "127.0.0.1:15090"

[decision_log]
path = "/var/log/warden/decisions.log"
max_bytes = 1048576
keep = 3

[limits]
handshake_timeout = "5s"
idle_timeout = "2m"
max_connections = 100
max_header_bytes = 16384
max_headers = 50
"#;

fn env() -> HashMap<String, String> {
    HashMap::new()
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, "sidecar.toml", &Overrides::default(), &env())
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

const MIN: &str =
    "workload_api_socket = \"/s\"\n[inbound]\napp = \"127.0.0.1:1\"\nservice = \"api\"\n";

#[test]
fn full_example_parses_into_typed_values() {
    let c = parse(FULL).unwrap();
    assert_eq!(
        c.workload_api_socket,
        PathBuf::from("/run/warden/agent.sock")
    );
    assert_eq!(
        c.spiffe_id.as_ref().unwrap().as_str(),
        "spiffe://example.org/ns/prod/sa/api"
    );
    assert_eq!(c.worker_threads(), 1);
    let i = c.inbound.as_ref().unwrap();
    assert_eq!(i.mtls, Mtls::Permissive);
    assert_eq!(i.app_protocol, AppProtocol::Http1);
    assert!(i.tls12);
    assert_eq!(c.policy.mode, Mode::DryRun);
    assert_eq!(c.outbound.len(), 1);
    assert_eq!(
        c.decision_log.target,
        LogTarget::File("/var/log/warden/decisions.log".into())
    );
    assert_eq!(c.decision_log.keep, 3);
    assert_eq!(c.limits.handshake_timeout, Duration::from_secs(5));
    assert_eq!(c.limits.idle_timeout, Duration::from_secs(120));
    assert_eq!(c.limits.max_headers, 50);
}

#[test]
fn defaults_apply_to_a_minimal_config() {
    let c = parse(MIN).unwrap();
    let i = c.inbound.as_ref().unwrap();
    assert_eq!(i.listen.to_string(), DEFAULT_INBOUND_LISTEN);
    assert_eq!(i.protocol, Protocol::Http);
    assert_eq!(i.app_protocol, AppProtocol::Auto);
    assert_eq!(i.mtls, Mtls::Strict);
    assert!(!i.tls12);
    assert_eq!(i.session_resumption, Some(DEFAULT_SESSION_RESUMPTION));
    assert_eq!(c.policy.mode, Mode::Enforce);
    assert_eq!(c.policy.dir, PathBuf::from(DEFAULT_POLICY_DIR));
    assert_eq!(c.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
    assert_eq!(c.decision_log.target, LogTarget::Stdout);
    assert_eq!(c.decision_log.max_bytes, DEFAULT_LOG_MAX_BYTES);
    assert_eq!(c.limits.max_connections, DEFAULT_MAX_CONNECTIONS);
}

#[test]
fn unknown_keys_are_errors_naming_the_key_and_file() {
    let e = err(&format!("{MIN}colour = \"red\"\n"));
    assert!(e.contains("sidecar.toml") && e.contains("colour"), "{e}");
    let e = err("workload_api_socket = \"/s\"\nbogus_top = 1\n");
    assert!(e.contains("bogus_top"), "{e}");
    let e = err(&format!("{MIN}[limits]\nmax_conns = 1\n"));
    assert!(e.contains("max_conns"), "{e}");
}

#[test]
fn bad_values_name_their_key() {
    for (text, key) in [
        (format!("{MIN}[limits]\nidle_timeout = \"soon\"\n"), "limits.idle_timeout"),
        (format!("{MIN}[limits]\nhandshake_timeout = \"0s\"\n"), "limits.handshake_timeout"),
        (format!("{MIN}[limits]\nidle_timeout = \"1ns\"\n"), "limits.idle_timeout"),
        (format!("{MIN}[limits]\nidle_timeout = \"99ms\"\n"), "limits.idle_timeout"),
        (format!("{MIN}[limits]\nidle_timeout = \"8days\"\n"), "limits.idle_timeout"),
        (
            format!("{MIN}[limits]\nhandshake_timeout = \"500000000years\"\n"),
            "limits.handshake_timeout",
        ),
        (format!("{MIN}session_resumption = \"0s\"\n"), "inbound.session_resumption"),
        (format!("{MIN}session_resumption = \"999ms\"\n"), "inbound.session_resumption"),
        (format!("{MIN}session_resumption = \"7h\"\n"), "inbound.session_resumption"),
        (
            format!("{MIN}tls12 = true\nsession_resumption = \"5m\"\n"),
            "inbound.session_resumption",
        ),
        (format!("{MIN}session_resumption = \"no\"\n"), "inbound.session_resumption"),
        (format!("{MIN}[limits]\nmax_connections = 0\n"), "limits.max_connections"),
        (format!("{MIN}[limits]\nmax_connections = 5000000\n"), "limits.max_connections"),
        (format!("{MIN}[limits]\nmax_header_bytes = 100\n"), "limits.max_header_bytes"),
        (
            format!("{MIN}[limits]\nmax_header_bytes = 8388609\n"),
            "limits.max_header_bytes",
        ),
        (format!("{MIN}[limits]\nmax_headers = 0\n"), "limits.max_headers"),
        (format!("{MIN}[limits]\nmax_headers = 1001\n"), "limits.max_headers"),
        (format!("worker_threads = 1025\n{MIN}"), "worker_threads"),
        (format!("{MIN}[admin]\nlisten = \"nowhere\"\n"), "admin.listen"),
        (format!("{MIN}[decision_log]\nkeep = 5000\n"), "decision_log.keep"),
        (format!("{MIN}[decision_log]\nmax_bytes = 10\n"), "decision_log.max_bytes"),
        (format!("spiffe_id = \"http://x\"\n{MIN}"), "spiffe_id"),
        (
            "workload_api_socket = \"tcp://1.2.3.4:1\"\n[inbound]\napp = \"127.0.0.1:1\"\nservice = \"a\"\n".to_owned(),
            "workload_api_socket",
        ),
        (
            "workload_api_socket = \"/s\"\n[inbound]\napp = \"10.0.0.1:80\"\nservice = \"a\"\n".to_owned(),
            "inbound.app",
        ),
        (
            "workload_api_socket = \"/s\"\n[inbound]\nservice = \"a\"\n".to_owned(),
            "inbound.app",
        ),
        (
            "workload_api_socket = \"/s\"\n[inbound]\napp = \"127.0.0.1:1\"\n".to_owned(),
            "inbound.service",
        ),
        ("workload_api_socket = \"/s\"\n".to_owned(), "inbound"),
    ] {
        let e = err(&text);
        assert!(e.contains(&format!("`{key}`")), "{key}: {e}");
    }
    let e = err(&format!("{MIN}[policy]\nmode = \"maybe\"\n"));
    assert!(e.contains("maybe"), "{e}");
    let e = err(&format!("{MIN}app_protocol = \"h3\"\n"));
    assert!(
        e.contains("h3") && e.contains("`http1`") && e.contains("line 5"),
        "{e}"
    );
    let e = err(&format!(
        "{MIN}[[outbound]]\nlisten = \"0.0.0.0:1\"\nupstream = \"127.0.0.1:2\"\nexpected_ids = [\"spiffe://a.org/b\"]\n"
    ));
    assert!(e.contains("outbound") && e.contains("loopback"), "{e}");
}

#[test]
fn session_resumption_is_off_or_a_duration_of_1s_to_6h_and_off_with_tls12() {
    for (value, want) in [
        ("off", None),
        ("1s", Some(Duration::from_secs(1))),
        ("10m", Some(Duration::from_secs(600))),
        ("6h", Some(Duration::from_secs(6 * 3600))),
    ] {
        let c = parse(&format!("{MIN}session_resumption = \"{value}\"\n")).unwrap();
        assert_eq!(c.inbound.unwrap().session_resumption, want, "{value}");
    }
    let o = Overrides {
        session_resumption: Some("off".into()),
        ..Overrides::default()
    };
    let c = Config::from_toml(MIN, "sidecar.toml", &o, &env()).unwrap();
    assert_eq!(c.inbound.unwrap().session_resumption, None);
    let c = parse(&format!("{MIN}tls12 = true\n")).unwrap();
    assert_eq!(
        c.inbound.unwrap().session_resumption,
        None,
        "tls12 turns it off"
    );
    let c = parse(&format!(
        "{MIN}tls12 = true\nsession_resumption = \"off\"\n"
    ))
    .unwrap();
    assert_eq!(c.inbound.unwrap().session_resumption, None);
    let e = err(&format!("{MIN}session_resumption = \"no\"\n"));
    assert!(e.contains("`no` is neither `off` nor a duration"), "{e}");
}

#[test]
fn remote_app_needs_allow_remote_app() {
    let text = "workload_api_socket = \"/s\"\n[inbound]\napp = \"10.0.0.1:80\"\nservice = \"a\"\nallow_remote_app = true\n";
    assert!(parse(text).is_ok());
}

#[test]
fn socket_falls_back_to_spiffe_endpoint_socket_w4() {
    let text = "[inbound]\napp = \"127.0.0.1:1\"\nservice = \"a\"\n";
    let mut env = env();
    let e = Config::from_toml(text, "f", &Overrides::default(), &env).unwrap_err();
    assert!(e.to_string().contains(SPIFFE_ENDPOINT_SOCKET), "{e}");
    env.insert(
        SPIFFE_ENDPOINT_SOCKET.to_owned(),
        "unix:///tmp/agent.sock".to_owned(),
    );
    let c = Config::from_toml(text, "f", &Overrides::default(), &env).unwrap();
    assert_eq!(c.workload_api_socket, PathBuf::from("/tmp/agent.sock"));
}

#[test]
fn flags_override_the_file() {
    let o = Overrides {
        workload_api_socket: Some("/other.sock".into()),
        app: Some("127.0.0.1:9999".into()),
        mode: Some(Mode::DryRun),
        mtls: Some(Mtls::Permissive),
        max_headers: Some(7),
        idle_timeout: Some("3s".into()),
        decision_log: Some("-".into()),
        outbound: vec![
            r#"{ listen = "127.0.0.1:15002", upstream = "127.0.0.1:1", expected_ids = ["spiffe://example.org/x"] }"#.into(),
        ],
        ..Overrides::default()
    };
    let c = Config::from_toml(FULL, "sidecar.toml", &o, &env()).unwrap();
    assert_eq!(c.workload_api_socket, PathBuf::from("/other.sock"));
    let i = c.inbound.as_ref().unwrap();
    assert_eq!(i.app.to_string(), "127.0.0.1:9999");
    assert_eq!(i.mtls, Mtls::Permissive);
    assert_eq!(c.policy.mode, Mode::DryRun);
    assert_eq!(c.limits.max_headers, 7);
    assert_eq!(c.limits.idle_timeout, Duration::from_secs(3));
    assert_eq!(c.decision_log.target, LogTarget::Stdout);
    assert_eq!(c.outbound.len(), 2);
    // Flags alone make a config.
    let o = Overrides {
        workload_api_socket: Some("/s".into()),
        app: Some("127.0.0.1:1".into()),
        service: Some("api".into()),
        ..Overrides::default()
    };
    assert!(Config::load(None, &o, &env()).is_ok());
    let bad = Overrides {
        outbound: vec!["{ listen = 1 }".into()],
        ..o
    };
    let e = Config::load(None, &bad, &env()).unwrap_err().to_string();
    assert!(e.contains("--outbound"), "{e}");
}

#[test]
fn unreadable_file_is_named() {
    let e = Config::load(
        Some(Path::new("/nonexistent/sidecar.toml")),
        &Overrides::default(),
        &env(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("/nonexistent/sidecar.toml"), "{e}");
}

#[test]
fn summary_is_one_line() {
    let s = parse(FULL).unwrap().summary();
    assert!(!s.contains('\n'));
    assert!(
        s.contains("service `api`") && s.contains("1 outbound"),
        "{s}"
    );
}

#[test]
fn limits_at_their_maxima_are_accepted() {
    let c = parse(&format!(
        "worker_threads = 1024\n{MIN}[limits]\nmax_header_bytes = 8388608\nmax_headers = 1000\nmax_connections = 1000000\n"
    ))
    .unwrap();
    assert_eq!(c.worker_threads(), 1024);
    assert_eq!(c.limits.max_header_bytes, 8 * 1024 * 1024);
    assert_eq!(c.limits.max_headers, 1000);
    assert_eq!(c.limits.max_connections, 1_000_000);
}

#[test]
fn type_errors_and_unknown_keys_name_the_dotted_key_and_the_line() {
    let e = err(&format!("{MIN}[limits]\nmax_connections = \"ten\"\n"));
    assert!(
        e.contains("sidecar.toml")
            && e.contains("key `limits.max_connections` (line 6, column 19)")
            && e.contains("\"ten\""),
        "{e}"
    );
    let e = err(&format!("{MIN}[limits]\nmax_conns = 1\n"));
    assert!(e.contains("key `limits.max_conns` (line 6"), "{e}");
    let e = err(&format!(
        "{MIN}[[outbound]]\nlisten = \"localhost:1\"\nupstream = \"a:1\"\nexpected_ids = [\"spiffe://a.org/b\"]\n"
    ));
    assert!(e.contains("key `outbound.listen` (line 6"), "{e}");
    // Not a `key = value` line: the position alone.
    let e = err(&format!("{MIN}[limits\n"));
    assert!(e.contains("at line 5"), "{e}");
}

#[test]
fn a_bad_value_from_a_flag_names_the_flag_not_the_file() {
    for (o, flag) in [
        (
            Overrides {
                idle_timeout: Some("soon".into()),
                ..Overrides::default()
            },
            "--idle-timeout",
        ),
        (
            Overrides {
                max_connections: Some(0),
                ..Overrides::default()
            },
            "--max-connections",
        ),
        (
            Overrides {
                app: Some("10.0.0.1:80".into()),
                ..Overrides::default()
            },
            "--app",
        ),
        (
            Overrides {
                session_resumption: Some("forever".into()),
                ..Overrides::default()
            },
            "--session-resumption",
        ),
    ] {
        let e = Config::from_toml(MIN, "sidecar.toml", &o, &env())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("invalid flag `{flag}`")) && !e.contains("sidecar.toml"),
            "{flag}: {e}"
        );
    }
    // The same bad value in the file names the file.
    let e = err(&format!("{MIN}[limits]\nidle_timeout = \"soon\"\n"));
    assert!(
        e.contains("sidecar.toml") && !e.contains("--idle-timeout"),
        "{e}"
    );
}
