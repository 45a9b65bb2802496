//! The sidecar's configuration: `sidecar.toml` (see `sidecar/README.md`) parsed strictly
//! (unknown keys are errors naming the key), command-line [`Overrides`] applied on top, then
//! validated into a typed [`Config`].

mod raw;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use warden_identity::SpiffeId;

pub use raw::Overrides;

use crate::outbound::Route;

/// The standard environment variable naming the Workload API socket (rule W-4).
pub const SPIFFE_ENDPOINT_SOCKET: &str = "SPIFFE_ENDPOINT_SOCKET";
/// Default admin listener.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:15090";
/// Default inbound listener.
pub const DEFAULT_INBOUND_LISTEN: &str = "0.0.0.0:15443";
/// Default policy directory.
pub const DEFAULT_POLICY_DIR: &str = "policies";
/// Default decision-log rotation size.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 100 * 1024 * 1024;
/// Default number of rotated decision-log files kept.
pub const DEFAULT_LOG_KEEP: u32 = 5;
/// Default TLS handshake timeout (also the time a client has to send a request's headers).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default idle timeout of a connection with no bytes moving either way.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default limit of concurrent inbound connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default limit of a request's header bytes.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 65_536;
/// Default limit of a request's header count.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Default `inbound.session_resumption`: how long a TLS session may be resumed.
pub const DEFAULT_SESSION_RESUMPTION: Duration = Duration::from_secs(300);
/// The smallest `max_header_bytes` accepted (HTTP/1 read buffers cannot be smaller).
pub const MIN_HEADER_BYTES: usize = 8192;

/// Reads environment variables; tests pass a map instead of the process environment.
pub trait Env {
    /// The value of `name`, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

/// A configuration problem, naming the file and the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong type.
    #[error("invalid config `{file}`: {message}")]
    Parse {
        /// The file (or `flags`).
        file: String,
        /// What the TOML parser reported (it names the key and the line).
        message: String,
    },
    /// A value given by a flag is not acceptable.
    #[error("invalid flag `{flag}` (key `{key}`): {message}")]
    InvalidFlag {
        /// The flag (`--idle-timeout`).
        flag: &'static str,
        /// The key it sets, dotted.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A value is well-formed TOML but not acceptable.
    #[error("invalid config `{file}`: key `{key}`: {message}")]
    Invalid {
        /// The file (or `flags`).
        file: String,
        /// The key, dotted (`inbound.app`).
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// Which traffic the inbound listener carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1, HTTP/2 and gRPC, decided per request.
    Http,
    /// Opaque TCP, decided once per connection with action `connect`.
    Tcp,
}

/// How the inbound speaks HTTP to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// As the caller spoke: HTTP/2 (and gRPC) as h2c, HTTP/1.1 as HTTP/1.1. The app must
    /// accept h2c by prior knowledge.
    #[default]
    Auto,
    /// Everything as HTTP/1.1, for apps that do not speak HTTP/2: each HTTP/2 stream takes an
    /// HTTP/1.1 app connection of its own for its exchange. gRPC needs HTTP/2 and does not work.
    Http1,
}

/// Whether the inbound listener also accepts plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mtls {
    /// Mutual TLS only.
    Strict,
    /// Mutual TLS, and plaintext on the same port (principal `Mesh::Unauthenticated`).
    Permissive,
}

/// What a deny does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Denied requests are refused.
    Enforce,
    /// Every decision is made and logged, and every request is forwarded.
    DryRun,
}

/// Where decision-log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard output (`-`).
    Stdout,
    /// A file (mode 0600), rotated by size.
    File(PathBuf),
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) workload_api_socket: PathBuf,
    pub(crate) spiffe_id: Option<SpiffeId>,
    pub(crate) worker_threads: usize,
    pub(crate) inbound: Option<InboundConfig>,
    pub(crate) policy: PolicyConfig,
    pub(crate) outbound: Vec<Route>,
    pub(crate) admin_listen: SocketAddr,
    pub(crate) decision_log: DecisionLogConfig,
    pub(crate) limits: Limits,
}

/// The `[inbound]` table.
#[derive(Debug, Clone)]
pub struct InboundConfig {
    pub(crate) listen: SocketAddr,
    pub(crate) app: SocketAddr,
    pub(crate) protocol: Protocol,
    pub(crate) app_protocol: AppProtocol,
    pub(crate) service: String,
    pub(crate) mtls: Mtls,
    pub(crate) tls12: bool,
    /// How long a session ticket is honoured (`None`: no resumption; always with `tls12`).
    pub(crate) session_resumption: Option<Duration>,
}

/// The `[policy]` table.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub(crate) dir: PathBuf,
    pub(crate) mode: Mode,
}

/// The `[decision_log]` table.
#[derive(Debug, Clone)]
pub struct DecisionLogConfig {
    pub(crate) target: LogTarget,
    pub(crate) max_bytes: u64,
    pub(crate) keep: u32,
}

/// The `[limits]` table.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub(crate) handshake_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_header_bytes: usize,
    pub(crate) max_headers: usize,
}

// === impl Protocol, Mtls, Mode ===

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "http" => Ok(Self::Http),
            "tcp" => Ok(Self::Tcp),
            _ => Err(format!("`{s}` is not `http` or `tcp`")),
        }
    }
}

impl std::str::FromStr for AppProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "http1" => Ok(Self::Http1),
            _ => Err(format!("`{s}` is not `auto` or `http1`")),
        }
    }
}

impl std::str::FromStr for Mtls {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "strict" => Ok(Self::Strict),
            "permissive" => Ok(Self::Permissive),
            _ => Err(format!("`{s}` is not `strict` or `permissive`")),
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "enforce" => Ok(Self::Enforce),
            "dry-run" => Ok(Self::DryRun),
            _ => Err(format!("`{s}` is not `enforce` or `dry-run`")),
        }
    }
}

// === impl ProcessEnv ===

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<S: std::hash::BuildHasher> Env for std::collections::HashMap<String, String, S> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

// === impl Config ===

impl Config {
    /// Reads `file` (if any), applies `overrides` on top, and validates the result.
    pub fn load(
        file: Option<&Path>,
        overrides: &Overrides,
        env: &dyn Env,
    ) -> Result<Self, ConfigError> {
        let (text, name) = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                (text, path.display().to_string())
            }
            None => (String::new(), "flags".to_owned()),
        };
        Self::from_toml(&text, &name, overrides, env)
    }

    /// Parses TOML `text` (named `file` in errors), applies `overrides`, validates.
    pub fn from_toml(
        text: &str,
        file: &str,
        overrides: &Overrides,
        env: &dyn Env,
    ) -> Result<Self, ConfigError> {
        let mut raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_owned(),
            message: describe_toml_error(text, &e),
        })?;
        overrides.apply(&mut raw, file)?;
        raw.validate(file, env).map_err(|e| match e {
            ConfigError::Invalid { key, message, .. } if overrides.flag_for(key).is_some() => {
                ConfigError::InvalidFlag {
                    flag: overrides.flag_for(key).unwrap_or_default(),
                    key,
                    message,
                }
            }
            e => e,
        })
    }

    /// Most concurrent inbound connections (`limits.max_connections`).
    pub fn max_connections(&self) -> usize {
        self.limits.max_connections
    }

    /// How many `[[outbound]]` routes there are.
    pub fn outbound_routes(&self) -> usize {
        self.outbound.len()
    }

    /// Tokio worker threads (0 = one per core).
    pub fn worker_threads(&self) -> usize {
        self.worker_threads
    }

    /// The policy directory, when there is an inbound listener to enforce it.
    pub fn policy_dir(&self) -> Option<&Path> {
        self.inbound.as_ref().map(|_| self.policy.dir.as_path())
    }

    /// A one-line summary of what this config runs.
    /// What is allowed but worth an operator's attention: today, an admin listener
    /// (`/metrics`, `/healthz`, `/readyz`, no authentication) bound beyond loopback, as a
    /// kubelet probing the pod IP needs.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if !self.admin_listen.ip().is_loopback() {
            warnings.push(format!(
                "admin listener `{}` is not on loopback: /metrics, /healthz and /readyz are \
                 reachable from the network without authentication",
                self.admin_listen
            ));
        }
        warnings
    }

    pub fn summary(&self) -> String {
        let inbound = match &self.inbound {
            Some(i) => format!(
                "inbound {} -> {} ({}, mtls {}, service `{}`, policy `{}` {})",
                i.listen,
                i.app,
                match i.protocol {
                    Protocol::Http => "http",
                    Protocol::Tcp => "tcp",
                },
                match i.mtls {
                    Mtls::Strict => "strict",
                    Mtls::Permissive => "permissive",
                },
                i.service,
                self.policy.dir.display(),
                match self.policy.mode {
                    Mode::Enforce => "enforce",
                    Mode::DryRun => "dry-run",
                },
            ),
            None => "no inbound".to_owned(),
        };
        let id = self
            .spiffe_id
            .as_ref()
            .map_or_else(|| "the default svid".to_owned(), |id| format!("`{id}`"));
        format!(
            "{inbound}; {} outbound; admin {}; identity {id} from `{}`",
            self.outbound.len(),
            self.admin_listen,
            self.workload_api_socket.display()
        )
    }
}

/// Parses a Workload API address: a path or `unix:///path` (rule W-4).
pub(crate) fn socket_path(value: &str) -> Result<PathBuf, String> {
    match value.strip_prefix("unix://") {
        Some(p) if p.starts_with('/') => Ok(PathBuf::from(p)),
        Some(_) => Err(format!("`{value}` is not `unix:///absolute/path`")),
        None if value.contains("://") => Err(format!(
            "`{value}` is not a unix socket (`unix:///path` or a path)"
        )),
        None if value.is_empty() => Err("the socket path is empty".to_owned()),
        None => Ok(PathBuf::from(value)),
    }
}

/// A TOML error in `text`, on one line: the dotted key it is about when the error points into
/// a `key = value` line (`limits.max_connections`), its line and column, and the message.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let Some(at) = e.span().map(|span| span.start) else {
        return one_line(&e.to_string());
    };
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |l| l.chars().count()) + 1;
    let message = e.message().trim();
    match key_at(text, line_start) {
        Some(key) => format!("key `{key}` (line {line}, column {column}): {message}"),
        None => format!("at line {line}, column {column}: {message}"),
    }
}

/// The dotted key of the `key = value` line starting at byte `line_start`: its table (the last
/// `[table]` or `[[table]]` header above it) and its bare key. `None` for any other line.
fn key_at(text: &str, line_start: usize) -> Option<String> {
    let line = text.get(line_start..)?.lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let bare = |k: &str| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    if !bare(key) {
        return None;
    }
    let table = text
        .get(..line_start)?
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_start_matches('[').trim_end_matches(']').trim());
    Some(match table {
        Some(table) if bare(table) => format!("{table}.{key}"),
        _ => key.to_owned(),
    })
}

/// The TOML error without its source snippet: "at line N, column M" and the message.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| {
            let snippet = l.starts_with('|')
                || l.split_once(" |")
                    .is_some_and(|(n, _)| n.chars().all(|c| c.is_ascii_digit()));
            !l.is_empty() && !snippet
        })
        .map(|l| l.trim_start_matches("TOML parse error "))
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests;
