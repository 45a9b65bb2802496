//! `warden ca serve` configuration: a TOML file (every key optional, unknown keys rejected)
//! overlaid by command-line flags, resolved into a typed [`Config`] with defaults.
//!
//! ```toml
//! data_dir = "/var/lib/warden/ca"
//! listen = "127.0.0.1:8081"          # agent API (gRPC over TLS 1.3)
//! http_listen = "127.0.0.1:8082"     # /healthz /readyz /metrics /bundle
//! bundle_endpoint_listen = "0.0.0.0:8443"   # SPIFFE bundle endpoint (https_spiffe); default off
//! bundle_endpoint_cert_file = "/etc/warden/endpoint.crt"   # serve it https_web with these
//! bundle_endpoint_key_file = "/etc/warden/endpoint.key"    # (re-read every minute; 0600)
//! admin_socket = "/var/lib/warden/ca/admin.sock"
//! datastore = "postgres://warden@db/warden"   # default: DATA_DIR/datastore.sqlite3
//! ca_ttl = "24h"                     # intermediate CA and JWT key lifetime
//! svid_ttl = "1h"                    # default X.509-SVID lifetime
//! jwt_ttl = "5m"                     # default JWT-SVID lifetime
//! agent_ttl = "1h"                   # agent SVID lifetime
//! node_ca = ["/etc/warden/node-ca.pem"]   # x509pop trust anchors
//!
//! [[federation]]                     # keep a federated trust domain's bundle fresh
//! trust_domain = "partner.org"
//! url = "https://ca.partner.org:8443/"
//! endpoint_spiffe_id = "spiffe://partner.org/warden/ca"   # profile https_spiffe (default)
//!
//! [[federation]]                     # an endpoint with a webpki certificate (SPIRE's https_web)
//! trust_domain = "other.example"
//! url = "https://spiffe.other.example/bundle"
//! profile = "https_web"              # checked against the system's roots
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::authority::Ttls;
#[cfg(test)]
use crate::federation::Endpoint;
use crate::federation::{RawRelationship, Relationship};

/// The configuration as written (file or flags): everything optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// CA data directory.
    pub data_dir: Option<PathBuf>,
    /// Agent API address.
    pub listen: Option<String>,
    /// HTTP address.
    pub http_listen: Option<String>,
    /// SPIFFE bundle endpoint address (`https_spiffe`).
    pub bundle_endpoint_listen: Option<String>,
    /// PEM certificate chain the bundle endpoint presents instead of the CA's SVID
    /// (`https_web`); with `bundle_endpoint_key_file`.
    pub bundle_endpoint_cert_file: Option<PathBuf>,
    /// PEM private key of `bundle_endpoint_cert_file` (0600).
    pub bundle_endpoint_key_file: Option<PathBuf>,
    /// Admin API Unix socket.
    pub admin_socket: Option<PathBuf>,
    /// Datastore URL or SQLite path.
    pub datastore: Option<String>,
    /// Intermediate CA lifetime, e.g. `24h`.
    pub ca_ttl: Option<String>,
    /// Default X.509-SVID lifetime.
    pub svid_ttl: Option<String>,
    /// Default JWT-SVID lifetime.
    pub jwt_ttl: Option<String>,
    /// Agent SVID lifetime.
    pub agent_ttl: Option<String>,
    /// PEM files of node CAs for x509pop.
    pub node_ca: Option<Vec<PathBuf>>,
    /// Federated trust domains whose bundles are fetched from their bundle endpoints.
    pub federation: Option<Vec<RawRelationship>>,
}

/// The resolved configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// CA data directory.
    pub data_dir: PathBuf,
    /// Agent API address (port 0: any free port).
    pub listen: SocketAddr,
    /// HTTP address (port 0: any free port).
    pub http_listen: SocketAddr,
    /// SPIFFE bundle endpoint address, if it is served.
    pub bundle_endpoint_listen: Option<SocketAddr>,
    /// The certificate files the bundle endpoint presents (`https_web` profile); `None`: the
    /// CA's own SVID (`https_spiffe`).
    pub bundle_endpoint_web: Option<WebCertFiles>,
    /// Admin API Unix socket.
    pub admin_socket: PathBuf,
    /// Datastore URL or SQLite path.
    pub datastore: String,
    /// CA, SVID and JWT lifetimes.
    pub ttls: Ttls,
    /// Agent SVID lifetime.
    pub agent_ttl: Duration,
    /// PEM files of x509pop node CAs.
    pub node_cas: Vec<PathBuf>,
    /// Federated trust domains whose bundles the CA keeps fresh from their endpoints.
    pub federation: Vec<Relationship>,
}

/// The certificate and key files of an `https_web` bundle endpoint (a WebPKI certificate, as
/// an ACME client renews it), checked every `sync_interval` and read again when they changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebCertFiles {
    /// PEM certificate chain, the endpoint's certificate first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1), 0600.
    pub key_file: PathBuf,
    /// How often the files are checked for a change.
    pub sync_interval: Duration,
}

impl WebCertFiles {
    /// How often the files are checked for a change.
    pub const SYNC_INTERVAL: Duration = Duration::from_secs(60);
}

/// A configuration problem, naming the setting and the bad value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file cannot be read.
    #[error("cannot read the config file `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has unknown keys.
    #[error("invalid config file `{path}`: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A setting has a bad value.
    #[error("invalid `{key}` value `{value}`: {reason}")]
    Value {
        /// The setting.
        key: &'static str,
        /// The value given.
        value: String,
        /// Why it is bad.
        reason: String,
    },
    /// A required setting is missing.
    #[error("`{0}` is required (flag or config file)")]
    Missing(&'static str),
}

// === impl RawConfig ===

impl RawConfig {
    /// Parses TOML text; `path` is only used in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            reason: e.message().to_owned(),
        })
    }

    /// Reads and parses a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// `self` with every setting of `over` replacing its own.
    pub fn overlay(self, over: RawConfig) -> RawConfig {
        RawConfig {
            data_dir: over.data_dir.or(self.data_dir),
            listen: over.listen.or(self.listen),
            http_listen: over.http_listen.or(self.http_listen),
            bundle_endpoint_listen: over.bundle_endpoint_listen.or(self.bundle_endpoint_listen),
            bundle_endpoint_cert_file: over
                .bundle_endpoint_cert_file
                .or(self.bundle_endpoint_cert_file),
            bundle_endpoint_key_file: over
                .bundle_endpoint_key_file
                .or(self.bundle_endpoint_key_file),
            admin_socket: over.admin_socket.or(self.admin_socket),
            datastore: over.datastore.or(self.datastore),
            ca_ttl: over.ca_ttl.or(self.ca_ttl),
            svid_ttl: over.svid_ttl.or(self.svid_ttl),
            jwt_ttl: over.jwt_ttl.or(self.jwt_ttl),
            agent_ttl: over.agent_ttl.or(self.agent_ttl),
            node_ca: over.node_ca.or(self.node_ca),
            federation: over.federation.or(self.federation),
        }
    }

    /// Applies defaults and checks every value.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let data_dir = self.data_dir.ok_or(ConfigError::Missing("data_dir"))?;
        let listen = addr("listen", self.listen.as_deref().unwrap_or("127.0.0.1:8081"))?;
        let http_listen = addr(
            "http_listen",
            self.http_listen.as_deref().unwrap_or("127.0.0.1:8082"),
        )?;
        let bundle_endpoint_listen = self
            .bundle_endpoint_listen
            .as_deref()
            .map(|a| addr("bundle_endpoint_listen", a))
            .transpose()?;
        let bundle_endpoint_web = match (
            self.bundle_endpoint_cert_file,
            self.bundle_endpoint_key_file,
        ) {
            (None, None) => None,
            (Some(cert_file), Some(key_file)) if bundle_endpoint_listen.is_some() => {
                Some(WebCertFiles {
                    cert_file,
                    key_file,
                    sync_interval: WebCertFiles::SYNC_INTERVAL,
                })
            }
            (Some(file), Some(_)) => {
                return Err(ConfigError::Value {
                    key: "bundle_endpoint_cert_file",
                    value: file.display().to_string(),
                    reason: "the bundle endpoint is not served: set bundle_endpoint_listen".into(),
                });
            }
            (Some(file), None) => {
                return Err(ConfigError::Value {
                    key: "bundle_endpoint_cert_file",
                    value: file.display().to_string(),
                    reason: "bundle_endpoint_key_file, its private key, is missing".into(),
                });
            }
            (None, Some(file)) => {
                return Err(ConfigError::Value {
                    key: "bundle_endpoint_key_file",
                    value: file.display().to_string(),
                    reason: "bundle_endpoint_cert_file, its certificate, is missing".into(),
                });
            }
        };
        let ca = ttl(
            "ca_ttl",
            self.ca_ttl.as_deref(),
            "24h",
            Duration::from_secs(6),
        )?;
        let x509_svid = ttl(
            "svid_ttl",
            self.svid_ttl.as_deref(),
            "1h",
            Duration::from_secs(1),
        )?;
        let jwt_svid = ttl(
            "jwt_ttl",
            self.jwt_ttl.as_deref(),
            "5m",
            Duration::from_secs(1),
        )?;
        let agent_ttl = ttl(
            "agent_ttl",
            self.agent_ttl.as_deref(),
            "1h",
            Duration::from_secs(1),
        )?;
        let datastore = match self.datastore {
            Some(d) if d.trim().is_empty() => {
                return Err(ConfigError::Value {
                    key: "datastore",
                    value: d,
                    reason: "empty".into(),
                });
            }
            Some(d) => d,
            None => crate::authority::default_datastore(&data_dir),
        };
        let mut federation: Vec<Relationship> = Vec::new();
        for raw in self.federation.unwrap_or_default() {
            let invalid = |reason: String| ConfigError::Value {
                key: "federation",
                value: raw.trust_domain.clone(),
                reason,
            };
            let rel = raw.resolve().map_err(invalid)?;
            if federation
                .iter()
                .any(|r| r.trust_domain == rel.trust_domain)
            {
                return Err(invalid("listed twice".into()));
            }
            federation.push(rel);
        }
        let admin_socket = self
            .admin_socket
            .unwrap_or_else(|| data_dir.join("admin.sock"));
        Ok(Config {
            data_dir,
            listen,
            http_listen,
            bundle_endpoint_listen,
            bundle_endpoint_web,
            admin_socket,
            datastore,
            ttls: Ttls {
                ca,
                x509_svid,
                jwt_svid,
            },
            agent_ttl,
            node_cas: self.node_ca.unwrap_or_default(),
            federation,
        })
    }
}

/// Loads `file` (if any), overlays `flags`, resolves.
pub fn load(file: Option<&Path>, flags: RawConfig) -> Result<Config, ConfigError> {
    let base = match file {
        Some(f) => RawConfig::from_file(f)?,
        None => RawConfig::default(),
    };
    base.overlay(flags).resolve()
}

fn addr(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| ConfigError::Value {
        key,
        value: value.to_owned(),
        reason: "expected ip:port, e.g. 127.0.0.1:8081".into(),
    })
}

fn ttl(
    key: &'static str,
    value: Option<&str>,
    default: &str,
    min: Duration,
) -> Result<Duration, ConfigError> {
    let text = value.unwrap_or(default);
    let d = humantime::parse_duration(text).map_err(|e| ConfigError::Value {
        key,
        value: text.to_owned(),
        reason: format!("not a duration like `24h` or `90s` ({e})"),
    })?;
    if d < min {
        return Err(ConfigError::Value {
            key,
            value: text.to_owned(),
            reason: format!(
                "shorter than the minimum {}",
                humantime::format_duration(min)
            ),
        });
    }
    Ok(d)
}

#[cfg(test)]
mod tests;
