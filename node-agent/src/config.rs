//! Agent configuration: a TOML file (`--config`) whose values command-line flags override,
//! parsed into a raw struct (unknown keys refused) and converted into a typed [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default health/metrics listener.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8088";
/// Default sync interval with the CA.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(5);
/// Default Workload API socket file name inside the data dir.
pub const DEFAULT_SOCKET_NAME: &str = "agent.sock";

/// The config file (and flags), as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// CA agent API address, `host:port`.
    pub server: Option<String>,
    /// PEM file with the trust domain's root(s).
    pub trust_bundle: Option<PathBuf>,
    /// Single-use join token.
    pub join_token: Option<String>,
    /// x509pop certificate chain (PEM).
    pub x509pop_cert: Option<PathBuf>,
    /// x509pop private key (PKCS#8 PEM).
    pub x509pop_key: Option<PathBuf>,
    /// Workload API socket path.
    pub socket: Option<PathBuf>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Health/metrics listener.
    pub http_listen: Option<String>,
    /// Sync interval, humantime (`5s`).
    pub sync_interval: Option<String>,
}

/// How the node attests.
#[derive(Clone, PartialEq, Eq)]
pub enum NodeAttestation {
    /// A join token (redacted in Debug).
    JoinToken(String),
    /// x509pop with a certificate and key file.
    X509Pop {
        /// Certificate chain PEM.
        cert: PathBuf,
        /// PKCS#8 key PEM.
        key: PathBuf,
    },
}

impl std::fmt::Debug for NodeAttestation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::JoinToken(_) => f.write_str("JoinToken(<redacted>)"),
            Self::X509Pop { cert, key } => f
                .debug_struct("X509Pop")
                .field("cert", cert)
                .field("key", key)
                .finish(),
        }
    }
}

/// The typed agent configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// CA agent API address.
    pub server: String,
    /// Trust bundle PEM file.
    pub trust_bundle: PathBuf,
    /// Node attestation; `None` when only a stored SVID is to be reused.
    pub attestation: Option<NodeAttestation>,
    /// Workload API socket.
    pub socket: PathBuf,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Health/metrics listener.
    pub http_listen: SocketAddr,
    /// Sync interval.
    pub sync_interval: Duration,
}

/// A configuration problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file `{0}`: {1}")]
    Read(String, String),
    /// The file is not valid TOML for the agent.
    #[error("invalid config file `{0}`: {1}")]
    Parse(String, String),
    /// A required setting is missing.
    #[error("missing `{0}` (flag `--{1}` or config key `{0}`)")]
    Missing(&'static str, &'static str),
    /// A value is invalid.
    #[error("invalid `{0}`: `{1}`")]
    Invalid(&'static str, String),
    /// Both attestation methods given, or half of x509pop.
    #[error("{0}")]
    Attestation(&'static str),
    /// A file the configuration names is unusable.
    #[error("`{key}` file `{path}`: {reason}")]
    File {
        /// The setting that names it.
        key: &'static str,
        /// The path.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

// === impl RawConfig ===

impl RawConfig {
    /// Reads a TOML config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read(path.display().to_string(), e.to_string()))?;
        toml::from_str(&text)
            .map_err(|e| ConfigError::Parse(path.display().to_string(), e.message().to_owned()))
    }

    /// Values set in `flags` replace those of `self`.
    pub fn merge(self, flags: RawConfig) -> RawConfig {
        RawConfig {
            server: flags.server.or(self.server),
            trust_bundle: flags.trust_bundle.or(self.trust_bundle),
            join_token: flags.join_token.or(self.join_token),
            x509pop_cert: flags.x509pop_cert.or(self.x509pop_cert),
            x509pop_key: flags.x509pop_key.or(self.x509pop_key),
            socket: flags.socket.or(self.socket),
            data_dir: flags.data_dir.or(self.data_dir),
            http_listen: flags.http_listen.or(self.http_listen),
            sync_interval: flags.sync_interval.or(self.sync_interval),
        }
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, Self::Error> {
        let server = raw.server.ok_or(ConfigError::Missing("server", "server"))?;
        if !is_host_port(&server) {
            return Err(ConfigError::Invalid("server", server));
        }
        let trust_bundle = raw
            .trust_bundle
            .ok_or(ConfigError::Missing("trust_bundle", "trust-bundle"))?;
        let data_dir = raw
            .data_dir
            .ok_or(ConfigError::Missing("data_dir", "data-dir"))?;
        let attestation = match (raw.join_token, raw.x509pop_cert, raw.x509pop_key) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(ConfigError::Attestation(
                    "give either a join token or x509pop, not both",
                ));
            }
            (Some(t), None, None) if t.is_empty() => {
                return Err(ConfigError::Invalid("join_token", String::new()));
            }
            (Some(t), None, None) => Some(NodeAttestation::JoinToken(t)),
            (None, Some(cert), Some(key)) => Some(NodeAttestation::X509Pop { cert, key }),
            (None, Some(_), None) | (None, None, Some(_)) => {
                return Err(ConfigError::Attestation(
                    "x509pop needs both `x509pop_cert` and `x509pop_key`",
                ));
            }
            (None, None, None) => None,
        };
        let http = raw
            .http_listen
            .unwrap_or_else(|| DEFAULT_HTTP_LISTEN.to_owned());
        let http_listen = http
            .parse()
            .map_err(|_| ConfigError::Invalid("http_listen", http.clone()))?;
        let sync_interval = match raw.sync_interval {
            Some(s) => humantime::parse_duration(&s)
                .map_err(|_| ConfigError::Invalid("sync_interval", s.clone()))?,
            None => DEFAULT_SYNC_INTERVAL,
        };
        if sync_interval.is_zero() {
            return Err(ConfigError::Invalid("sync_interval", "0s".into()));
        }
        let socket = raw
            .socket
            .unwrap_or_else(|| data_dir.join(DEFAULT_SOCKET_NAME));
        Ok(Self {
            server,
            trust_bundle,
            attestation,
            socket,
            data_dir,
            http_listen,
            sync_interval,
        })
    }
}

// === impl Config ===

impl Config {
    /// Reads the files the configuration names, as starting would: the trust bundle (PEM
    /// certificates) and the x509pop certificate and key. `--check-config` runs this, so that
    /// a configuration it passes does not fail to start for a missing or garbled file.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        let file = |key: &'static str, path: &Path| -> Result<Vec<u8>, ConfigError> {
            std::fs::read(path).map_err(|e| ConfigError::File {
                key,
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        };
        let bad = |key: &'static str, path: &Path, reason: String| ConfigError::File {
            key,
            path: path.display().to_string(),
            reason,
        };
        let bundle = file("trust_bundle", &self.trust_bundle)?;
        crate::trust::certificates_from_pem("trust bundle", &bundle)
            .map_err(|e| bad("trust_bundle", &self.trust_bundle, e.to_string()))?;
        if let Some(NodeAttestation::X509Pop { cert, key }) = &self.attestation {
            let chain = file("x509pop_cert", cert)?;
            crate::trust::certificates_from_pem("x509pop certificate", &chain)
                .map_err(|e| bad("x509pop_cert", cert, e.to_string()))?;
            let key_pem = file("x509pop_key", key)?;
            pem::parse(&key_pem)
                .map_err(|_| bad("x509pop_key", key, "holds no pem private key".into()))?;
        }
        Ok(())
    }
}

/// Whether `s` is `host:port`: a host name or IP address (IPv6 in brackets) and a port.
fn is_host_port(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        }
    };
    host_ok && port.parse::<u16>().is_ok_and(|p| p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> RawConfig {
        RawConfig {
            server: Some("127.0.0.1:8081".into()),
            trust_bundle: Some("b.pem".into()),
            data_dir: Some("/d".into()),
            join_token: Some("t".into()),
            ..Default::default()
        }
    }

    #[test]
    fn flags_override_file_values_and_defaults_apply() {
        let file: RawConfig =
            toml::from_str("server = \"ca:1\"\nsync_interval = \"2s\"\nsocket = \"/f.sock\"")
                .unwrap();
        let flags = RawConfig {
            socket: Some("/flag.sock".into()),
            ..base()
        };
        let cfg = Config::try_from(file.merge(flags)).unwrap();
        assert_eq!(cfg.server, "127.0.0.1:8081");
        assert_eq!(cfg.socket, PathBuf::from("/flag.sock"));
        assert_eq!(cfg.sync_interval, Duration::from_secs(2));
        assert_eq!(cfg.http_listen, DEFAULT_HTTP_LISTEN.parse().unwrap());
        let cfg = Config::try_from(base()).unwrap();
        assert_eq!(cfg.socket, PathBuf::from("/d/agent.sock"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<RawConfig>("servr = \"x\"").unwrap_err();
        assert!(err.to_string().contains("servr"), "{err}");
    }

    #[test]
    fn missing_and_conflicting_settings_are_named() {
        let err = Config::try_from(RawConfig {
            server: None,
            ..base()
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing `server` (flag `--server` or config key `server`)"
        );
        let both = RawConfig {
            x509pop_cert: Some("c".into()),
            x509pop_key: Some("k".into()),
            ..base()
        };
        assert!(matches!(
            Config::try_from(both),
            Err(ConfigError::Attestation(_))
        ));
        let half = RawConfig {
            join_token: None,
            x509pop_cert: Some("c".into()),
            ..base()
        };
        assert!(matches!(
            Config::try_from(half),
            Err(ConfigError::Attestation(_))
        ));
        let bad = RawConfig {
            sync_interval: Some("soon".into()),
            ..base()
        };
        assert_eq!(
            Config::try_from(bad).unwrap_err().to_string(),
            "invalid `sync_interval`: `soon`"
        );
    }

    #[test]
    fn a_server_that_is_not_host_and_port_is_named() {
        for good in [
            "ca.example.org:8081",
            "127.0.0.1:8081",
            "[::1]:8081",
            "ca:1",
        ] {
            let raw = RawConfig {
                server: Some(good.into()),
                ..base()
            };
            assert!(Config::try_from(raw).is_ok(), "{good}");
        }
        for bad in [
            "nohostport",
            "ca:",
            ":8081",
            "ca:0",
            "ca:99999",
            "http://ca:8081",
            "[::1:8081",
        ] {
            let raw = RawConfig {
                server: Some(bad.into()),
                ..base()
            };
            assert_eq!(
                Config::try_from(raw).unwrap_err(),
                ConfigError::Invalid("server", bad.into()),
                "{bad}"
            );
        }
    }

    /// What starting would read, `--check-config` reads: a missing or garbled trust bundle or
    /// x509pop file is named with its setting.
    #[test]
    fn files_the_config_names_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let config = |bundle: &str, pop: Option<(&str, &str)>| {
            Config::try_from(RawConfig {
                trust_bundle: Some(path(bundle)),
                join_token: pop.is_none().then(|| "t".into()),
                x509pop_cert: pop.map(|(c, _)| path(c)),
                x509pop_key: pop.map(|(_, k)| path(k)),
                ..base()
            })
            .unwrap()
        };
        let key = |e: ConfigError| match e {
            ConfigError::File { key, .. } => key,
            other => panic!("{other}"),
        };
        let ca = rcgen::CertificateParams::new(vec!["n".into()]).unwrap();
        let pair = rcgen::KeyPair::generate().unwrap();
        std::fs::write(path("good.pem"), ca.self_signed(&pair).unwrap().pem()).unwrap();
        std::fs::write(path("good.key"), pair.serialize_pem()).unwrap();
        std::fs::write(path("junk.pem"), "junk").unwrap();
        assert!(config("good.pem", None).check_files().is_ok());
        assert!(
            config("good.pem", Some(("good.pem", "good.key")))
                .check_files()
                .is_ok()
        );
        assert_eq!(
            key(config("nope.pem", None).check_files().unwrap_err()),
            "trust_bundle"
        );
        let junk = config("junk.pem", None).check_files().unwrap_err();
        assert!(junk.to_string().contains("junk.pem"), "{junk}");
        assert_eq!(key(junk), "trust_bundle");
        let pop = |c, k| key(config("good.pem", Some((c, k))).check_files().unwrap_err());
        assert_eq!(pop("junk.pem", "good.key"), "x509pop_cert");
        assert_eq!(pop("good.pem", "nope.key"), "x509pop_key");
        assert_eq!(pop("good.pem", "junk.pem"), "x509pop_key");
    }

    #[test]
    fn join_token_is_redacted_in_debug() {
        let cfg = Config::try_from(RawConfig {
            join_token: Some("s3cret-token".into()),
            ..base()
        })
        .unwrap();
        assert!(!format!("{cfg:?}").contains("s3cret"));
    }
}
