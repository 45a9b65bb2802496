#![doc = include_str!("../README.md")]
//! Warden's enforcing sidecar: terminates SPIFFE mutual TLS in front of a local app, decides every
//! request with the Cedar policy engine, and originates mutual TLS for the app's outbound calls.
//!
//! - [`config`]: `sidecar.toml` and its command-line overrides.
//! - `identity_source`: the SVID and bundles, streamed from the agent's Workload API.
//! - `inbound`: mTLS termination, HTTP/gRPC/TCP proxying to the app, authorization.
//! - [`outbound`]: local plaintext listeners, mTLS origination, connection pools.
//! - `h2_client`, `h2_server`, `h2_body`: HTTP/2 on the `h2` crate directly: the shared client
//!   connection (to the app, and to each upstream), the server for ALPN `h2` callers (inbound)
//!   and h2c clients (outbound), and the bodies streamed on their streams.
//! - `orig_proto`: HTTP/1.1 carried over HTTP/2 between sidecars (`http1_upstream = "h2"`).
//! - `decision_log`, `metrics`, `admin`: one JSON line per decision, Prometheus metrics,
//!   `/healthz` `/readyz` `/metrics`.

mod admin;
pub mod config;
mod decision_log;
mod h1_client;
mod h2_body;
mod h2_client;
mod h2_server;
mod hop_by_hop;
mod identity_source;
mod idle;
mod inbound;
mod lapse;
mod metrics;
mod orig_proto;
pub mod outbound;
mod runner;
mod sniff;
mod upgrade;

use std::net::SocketAddr;

pub use config::{
    AppProtocol, Config, ConfigError, Env, Mode, Mtls, Overrides, ProcessEnv, Protocol,
};
pub use runner::{Bound, Sidecar, run};

/// Why the sidecar could not start, or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The policy directory does not load.
    #[error("policy: {0}")]
    Policy(String),
    /// A listener cannot be bound.
    #[error("cannot bind the {what} listener on `{addr}`: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS configuration cannot be built.
    #[error("tls configuration: {0}")]
    Tls(String),
    /// The decision log cannot be opened.
    #[error("{0}")]
    DecisionLog(String),
    /// The Workload API refused us for good.
    #[error("{0}")]
    WorkloadApi(String),
    /// An outbound route cannot be set up.
    #[error("outbound: {0}")]
    Outbound(String),
    /// A background task failed unexpectedly.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The size of a request's header fields as HTTP/1.1 sends them (`name: value` and CRLF each),
/// the measure of `limits.max_header_bytes`. hyper's HTTP/1 read buffer bounds the header
/// section only roughly (a read that completes it may carry the buffer past its limit), so the
/// proxies check this too.
pub(crate) fn header_bytes(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum()
}
