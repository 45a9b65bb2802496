//! The TOML shape of `sidecar.toml` (every table `deny_unknown_fields`), the command-line
//! overrides, and the conversion into the typed [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{
    AppProtocol, Config, ConfigError, DEFAULT_ADMIN_LISTEN, DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_INBOUND_LISTEN, DEFAULT_LOG_KEEP, DEFAULT_LOG_MAX_BYTES,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_HEADERS, DEFAULT_POLICY_DIR,
    DecisionLogConfig, Env, InboundConfig, Limits, LogTarget, MIN_HEADER_BYTES, Mode, Mtls,
    PolicyConfig, Protocol, SPIFFE_ENDPOINT_SOCKET,
};
use crate::outbound::Route;

/// Most rotated decision-log files kept.
const MAX_KEEP: u32 = 1000;
/// Most concurrent inbound connections accepted as a limit.
const MAX_MAX_CONNECTIONS: usize = 1_000_000;
/// Most `limits.max_header_bytes` (Envoy's cap on `max_request_headers_kb`).
const MAX_MAX_HEADER_BYTES: usize = 8 * 1024 * 1024;
/// Most `limits.max_headers`: hyper sets aside a slot per allowed header for every HTTP/1
/// request it parses, so the limit is memory per request.
const MAX_MAX_HEADERS: usize = 1000;
/// Most `worker_threads`.
const MAX_WORKER_THREADS: usize = 1024;
/// Smallest decision-log rotation size.
const MIN_LOG_BYTES: u64 = 4096;

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    workload_api_socket: Option<String>,
    spiffe_id: Option<String>,
    #[serde(default)]
    worker_threads: usize,
    inbound: Option<RawInbound>,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    outbound: Vec<Route>,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    decision_log: RawDecisionLog,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInbound {
    listen: Option<String>,
    app: Option<String>,
    #[serde(default)]
    allow_remote_app: bool,
    protocol: Option<Protocol>,
    app_protocol: Option<AppProtocol>,
    service: Option<String>,
    mtls: Option<Mtls>,
    #[serde(default)]
    tls12: bool,
    session_resumption: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    dir: Option<PathBuf>,
    mode: Option<Mode>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDecisionLog {
    path: Option<String>,
    max_bytes: Option<u64>,
    keep: Option<u32>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    handshake_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_connections: Option<usize>,
    max_header_bytes: Option<usize>,
    max_headers: Option<usize>,
}

/// Command-line values that replace the file's (`None` = keep the file's value). Each field is
/// the flag of the same name (`--inbound-listen` for `inbound_listen`).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Overrides {
    /// `workload_api_socket`.
    pub workload_api_socket: Option<String>,
    /// `spiffe_id`.
    pub spiffe_id: Option<String>,
    /// `worker_threads`.
    pub worker_threads: Option<usize>,
    /// `inbound.listen` (creates the `[inbound]` table if absent).
    pub inbound_listen: Option<String>,
    /// `inbound.app`.
    pub app: Option<String>,
    /// `inbound.allow_remote_app`.
    pub allow_remote_app: Option<bool>,
    /// `inbound.protocol`: `http` or `tcp`.
    pub protocol: Option<Protocol>,
    /// `inbound.app_protocol`: `auto` or `http1`.
    pub app_protocol: Option<AppProtocol>,
    /// `inbound.service`.
    pub service: Option<String>,
    /// `inbound.mtls`: `strict` or `permissive`.
    pub mtls: Option<Mtls>,
    /// `inbound.tls12`.
    pub tls12: Option<bool>,
    /// `inbound.session_resumption`.
    pub session_resumption: Option<String>,
    /// `policy.dir`.
    pub policy_dir: Option<PathBuf>,
    /// `policy.mode`: `enforce` or `dry-run`.
    pub mode: Option<Mode>,
    /// More `[[outbound]]` routes, each a TOML inline table
    /// (`{ listen = "...", upstream = "...", expected_ids = ["..."] }`, optionally with
    /// `protocol` and `response_timeout`).
    pub outbound: Vec<String>,
    /// `admin.listen`.
    pub admin_listen: Option<String>,
    /// `decision_log.path` (`-` = stdout).
    pub decision_log: Option<String>,
    /// `decision_log.max_bytes`.
    pub decision_log_max_bytes: Option<u64>,
    /// `decision_log.keep`.
    pub decision_log_keep: Option<u32>,
    /// `limits.handshake_timeout` (humantime, `10s`).
    pub handshake_timeout: Option<String>,
    /// `limits.idle_timeout`.
    pub idle_timeout: Option<String>,
    /// `limits.max_connections`.
    pub max_connections: Option<usize>,
    /// `limits.max_header_bytes`.
    pub max_header_bytes: Option<usize>,
    /// `limits.max_headers`.
    pub max_headers: Option<usize>,
}

// === impl Overrides ===

impl Overrides {
    /// The flag that set `key` (a dotted config key), when one did: errors about the value
    /// name the flag, not the file.
    pub(super) fn flag_for(&self, key: &str) -> Option<&'static str> {
        let (set, flag) = match key {
            "workload_api_socket" => (self.workload_api_socket.is_some(), "--workload-api-socket"),
            "spiffe_id" => (self.spiffe_id.is_some(), "--spiffe-id"),
            "worker_threads" => (self.worker_threads.is_some(), "--worker-threads"),
            "inbound.listen" => (self.inbound_listen.is_some(), "--inbound-listen"),
            "inbound.app" => (self.app.is_some(), "--app"),
            "inbound.protocol" => (self.protocol.is_some(), "--protocol"),
            "inbound.app_protocol" => (self.app_protocol.is_some(), "--app-protocol"),
            "inbound.service" => (self.service.is_some(), "--service"),
            "inbound.mtls" => (self.mtls.is_some(), "--mtls"),
            "inbound.session_resumption" => {
                (self.session_resumption.is_some(), "--session-resumption")
            }
            "policy.dir" => (self.policy_dir.is_some(), "--policy-dir"),
            "policy.mode" => (self.mode.is_some(), "--mode"),
            "admin.listen" => (self.admin_listen.is_some(), "--admin-listen"),
            "decision_log.path" => (self.decision_log.is_some(), "--decision-log"),
            "decision_log.max_bytes" => (
                self.decision_log_max_bytes.is_some(),
                "--decision-log-max-bytes",
            ),
            "decision_log.keep" => (self.decision_log_keep.is_some(), "--decision-log-keep"),
            "limits.handshake_timeout" => (self.handshake_timeout.is_some(), "--handshake-timeout"),
            "limits.idle_timeout" => (self.idle_timeout.is_some(), "--idle-timeout"),
            "limits.max_connections" => (self.max_connections.is_some(), "--max-connections"),
            "limits.max_header_bytes" => (self.max_header_bytes.is_some(), "--max-header-bytes"),
            "limits.max_headers" => (self.max_headers.is_some(), "--max-headers"),
            _ => return None,
        };
        set.then_some(flag)
    }

    pub(super) fn apply(&self, raw: &mut RawConfig, file: &str) -> Result<(), ConfigError> {
        fn set<T: Clone>(slot: &mut Option<T>, value: &Option<T>) {
            if let Some(v) = value {
                *slot = Some(v.clone());
            }
        }
        set(&mut raw.workload_api_socket, &self.workload_api_socket);
        set(&mut raw.spiffe_id, &self.spiffe_id);
        if let Some(n) = self.worker_threads {
            raw.worker_threads = n;
        }
        let touches_inbound = self.inbound_listen.is_some()
            || self.app.is_some()
            || self.allow_remote_app.is_some()
            || self.protocol.is_some()
            || self.app_protocol.is_some()
            || self.service.is_some()
            || self.mtls.is_some()
            || self.tls12.is_some()
            || self.session_resumption.is_some();
        if touches_inbound {
            let inbound = raw.inbound.get_or_insert_with(RawInbound::default);
            set(&mut inbound.listen, &self.inbound_listen);
            set(&mut inbound.app, &self.app);
            set(&mut inbound.protocol, &self.protocol);
            set(&mut inbound.app_protocol, &self.app_protocol);
            set(&mut inbound.service, &self.service);
            set(&mut inbound.mtls, &self.mtls);
            set(&mut inbound.session_resumption, &self.session_resumption);
            if let Some(v) = self.allow_remote_app {
                inbound.allow_remote_app = v;
            }
            if let Some(v) = self.tls12 {
                inbound.tls12 = v;
            }
        }
        set(&mut raw.policy.dir, &self.policy_dir);
        set(&mut raw.policy.mode, &self.mode);
        for route in &self.outbound {
            let parsed: Route = toml::from_str(&format!("route = {route}"))
                .map(|w: RouteWrapper| w.route)
                .map_err(|e| ConfigError::Parse {
                    file: file.to_owned(),
                    message: format!("--outbound `{route}`: {}", super::one_line(&e.to_string())),
                })?;
            raw.outbound.push(parsed);
        }
        set(&mut raw.admin.listen, &self.admin_listen);
        set(&mut raw.decision_log.path, &self.decision_log);
        set(
            &mut raw.decision_log.max_bytes,
            &self.decision_log_max_bytes,
        );
        set(&mut raw.decision_log.keep, &self.decision_log_keep);
        set(&mut raw.limits.handshake_timeout, &self.handshake_timeout);
        set(&mut raw.limits.idle_timeout, &self.idle_timeout);
        set(&mut raw.limits.max_connections, &self.max_connections);
        set(&mut raw.limits.max_header_bytes, &self.max_header_bytes);
        set(&mut raw.limits.max_headers, &self.max_headers);
        Ok(())
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteWrapper {
    route: Route,
}

// === impl RawConfig ===

impl RawConfig {
    pub(super) fn validate(self, file: &str, env: &dyn Env) -> Result<Config, ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            file: file.to_owned(),
            key,
            message,
        };
        let socket = match self.workload_api_socket {
            Some(s) => s,
            None => env.var(SPIFFE_ENDPOINT_SOCKET).ok_or_else(|| {
                invalid(
                    "workload_api_socket",
                    format!("not set, and {SPIFFE_ENDPOINT_SOCKET} is not set either"),
                )
            })?,
        };
        let workload_api_socket =
            super::socket_path(&socket).map_err(|m| invalid("workload_api_socket", m))?;
        let spiffe_id = self
            .spiffe_id
            .map(|s| {
                s.parse()
                    .map_err(|e| invalid("spiffe_id", format!("`{s}` is not a spiffe id: {e}")))
            })
            .transpose()?;
        let inbound = self.inbound.map(|i| i.validate(&invalid)).transpose()?;
        let policy = PolicyConfig {
            dir: self
                .policy
                .dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_POLICY_DIR)),
            mode: self.policy.mode.unwrap_or(Mode::Enforce),
        };
        let admin_listen = addr(
            self.admin.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN),
            "admin.listen",
            &invalid,
        )?;
        let decision_log = self.decision_log.validate(&invalid)?;
        let limits = self.limits.validate(&invalid)?;
        if self.worker_threads > MAX_WORKER_THREADS {
            return Err(invalid(
                "worker_threads",
                format!(
                    "`{}` is above the maximum of {MAX_WORKER_THREADS}",
                    self.worker_threads
                ),
            ));
        }
        for route in &self.outbound {
            route
                .validate()
                .map_err(|e| invalid("outbound", e.to_string()))?;
        }
        if inbound.is_none() && self.outbound.is_empty() {
            return Err(invalid(
                "inbound",
                "neither `[inbound]` nor any `[[outbound]]` is configured: nothing to do".into(),
            ));
        }
        Ok(Config {
            workload_api_socket,
            spiffe_id,
            worker_threads: self.worker_threads,
            inbound,
            policy,
            outbound: self.outbound,
            admin_listen,
            decision_log,
            limits,
        })
    }
}

type Invalid<'a> = dyn Fn(&'static str, String) -> ConfigError + 'a;

fn addr(value: &str, key: &'static str, invalid: &Invalid<'_>) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| invalid(key, format!("`{value}` is not an `ip:port` address")))
}

fn duration(
    value: Option<&str>,
    default: Duration,
    key: &'static str,
    invalid: &Invalid<'_>,
) -> Result<Duration, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let d = humantime::parse_duration(value)
        .map_err(|e| invalid(key, format!("`{value}` is not a duration like `10s`: {e}")))?;
    if !(MIN_DURATION..=MAX_DURATION).contains(&d) {
        return Err(invalid(
            key,
            format!("`{value}` is outside the allowed range of 100ms to 7d"),
        ));
    }
    Ok(d)
}

/// The shortest timeout a key takes: below it a connection could not finish a handshake, and
/// timers derived from it (half the idle timeout) would be zero.
const MIN_DURATION: Duration = Duration::from_millis(100);
/// The longest: deadlines are computed as now + timeout, which must not overflow, and a
/// connection with a week of silence is not idle-but-alive.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

// === impl RawInbound ===

impl RawInbound {
    fn validate(self, invalid: &Invalid<'_>) -> Result<InboundConfig, ConfigError> {
        let listen = addr(
            self.listen.as_deref().unwrap_or(DEFAULT_INBOUND_LISTEN),
            "inbound.listen",
            invalid,
        )?;
        let app_str = self
            .app
            .ok_or_else(|| invalid("inbound.app", "is required (`127.0.0.1:8080`)".into()))?;
        let app = addr(&app_str, "inbound.app", invalid)?;
        if !app.ip().is_loopback() && !self.allow_remote_app {
            return Err(invalid(
                "inbound.app",
                format!(
                    "`{app}` is not a loopback address; plaintext to the app must stay on this \
                     host (set `allow_remote_app = true` to override)"
                ),
            ));
        }
        let service = self
            .service
            .ok_or_else(|| invalid("inbound.service", "is required (`api`)".into()))?;
        if service.is_empty() || service.chars().any(char::is_control) {
            return Err(invalid(
                "inbound.service",
                format!("`{}` is not a service name", service.escape_debug()),
            ));
        }
        Ok(InboundConfig {
            listen,
            app,
            protocol: self.protocol.unwrap_or(Protocol::Http),
            app_protocol: self.app_protocol.unwrap_or_default(),
            service,
            mtls: self.mtls.unwrap_or(Mtls::Strict),
            tls12: self.tls12,
            session_resumption: session_resumption(
                self.session_resumption.as_deref(),
                self.tls12,
                invalid,
            )?,
        })
    }
}

/// The longest `inbound.session_resumption`: rustls's ticket key is replaced every 6 hours and
/// the one before kept, so a ticket decrypts for 6 to 12 hours at most.
const MAX_SESSION_RESUMPTION: Duration = Duration::from_secs(6 * 3600);

/// `inbound.session_resumption`: `"off"`, or a duration of 1 s to 6 h (default 5 min; `off`
/// when `tls12` is on, and an error to ask for both: a resumed TLS 1.2 session has no fresh
/// key exchange, so the ticket key would open its traffic).
fn session_resumption(
    value: Option<&str>,
    tls12: bool,
    invalid: &Invalid<'_>,
) -> Result<Option<Duration>, ConfigError> {
    const KEY: &str = "inbound.session_resumption";
    let Some(value) = value else {
        return Ok((!tls12).then_some(super::DEFAULT_SESSION_RESUMPTION));
    };
    if value == "off" {
        return Ok(None);
    }
    let d = humantime::parse_duration(value).map_err(|e| {
        invalid(
            KEY,
            format!("`{value}` is neither `off` nor a duration like `5m`: {e}"),
        )
    })?;
    if !(Duration::from_secs(1)..=MAX_SESSION_RESUMPTION).contains(&d) {
        return Err(invalid(
            KEY,
            format!("`{value}` is outside the allowed range of 1s to 6h (or `off`)"),
        ));
    }
    if tls12 {
        return Err(invalid(
            KEY,
            format!(
                "`{value}` needs `tls12 = false`: a resumed TLS 1.2 session has no fresh key \
                 exchange (set `off`)"
            ),
        ));
    }
    Ok(Some(d))
}

// === impl RawDecisionLog ===

impl RawDecisionLog {
    fn validate(self, invalid: &Invalid<'_>) -> Result<DecisionLogConfig, ConfigError> {
        let target = match self.path.as_deref() {
            None | Some("-") => LogTarget::Stdout,
            Some("") => return Err(invalid("decision_log.path", "is empty".into())),
            Some(p) => LogTarget::File(PathBuf::from(p)),
        };
        let max_bytes = self.max_bytes.unwrap_or(DEFAULT_LOG_MAX_BYTES);
        if max_bytes < MIN_LOG_BYTES {
            return Err(invalid(
                "decision_log.max_bytes",
                format!("`{max_bytes}` is below the minimum of {MIN_LOG_BYTES}"),
            ));
        }
        let keep = self.keep.unwrap_or(DEFAULT_LOG_KEEP);
        if keep > MAX_KEEP {
            return Err(invalid(
                "decision_log.keep",
                format!("`{keep}` is above the maximum of {MAX_KEEP}"),
            ));
        }
        Ok(DecisionLogConfig {
            target,
            max_bytes,
            keep,
        })
    }
}

// === impl RawLimits ===

impl RawLimits {
    fn validate(self, invalid: &Invalid<'_>) -> Result<Limits, ConfigError> {
        let positive = |v: Option<usize>, default: usize, key: &'static str| match v {
            Some(0) => Err(invalid(key, "must be at least 1".into())),
            Some(v) => Ok(v),
            None => Ok(default),
        };
        let max_header_bytes = positive(
            self.max_header_bytes,
            DEFAULT_MAX_HEADER_BYTES,
            "limits.max_header_bytes",
        )?;
        if self
            .max_connections
            .is_some_and(|n| n > MAX_MAX_CONNECTIONS)
        {
            return Err(invalid(
                "limits.max_connections",
                format!("is above the maximum of {MAX_MAX_CONNECTIONS}"),
            ));
        }
        for (key, value, max) in [
            (
                "limits.max_header_bytes",
                max_header_bytes,
                MAX_MAX_HEADER_BYTES,
            ),
            (
                "limits.max_headers",
                self.max_headers.unwrap_or(DEFAULT_MAX_HEADERS),
                MAX_MAX_HEADERS,
            ),
        ] {
            if value > max {
                return Err(invalid(
                    key,
                    format!("`{value}` is above the maximum of {max}"),
                ));
            }
        }
        if max_header_bytes < MIN_HEADER_BYTES {
            return Err(invalid(
                "limits.max_header_bytes",
                format!("`{max_header_bytes}` is below the minimum of {MIN_HEADER_BYTES}"),
            ));
        }
        Ok(Limits {
            handshake_timeout: duration(
                self.handshake_timeout.as_deref(),
                DEFAULT_HANDSHAKE_TIMEOUT,
                "limits.handshake_timeout",
                invalid,
            )?,
            idle_timeout: duration(
                self.idle_timeout.as_deref(),
                DEFAULT_IDLE_TIMEOUT,
                "limits.idle_timeout",
                invalid,
            )?,
            max_connections: positive(
                self.max_connections,
                DEFAULT_MAX_CONNECTIONS,
                "limits.max_connections",
            )?,
            max_header_bytes,
            max_headers: positive(self.max_headers, DEFAULT_MAX_HEADERS, "limits.max_headers")?,
        })
    }
}
