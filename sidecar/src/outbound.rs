//! Outbound listeners: local plaintext in, mutual TLS with this sidecar's SVID out, to an upstream
//! whose SPIFFE ID must be one of the expected ones.
//!
//! One [`Outbound`] serves one [`Route`]: a loopback listener that the local app talks plaintext
//! to, mapped to one upstream address (normally the upstream sidecar's inbound listener).
//!
//! - **HTTP** ([`Protocol::Http`]): the listener speaks HTTP/1.1 and HTTP/2 with prior knowledge
//!   (h2c, which is what gRPC clients use). Each request keeps its protocol upstream, as the
//!   HAProxy and Istio pairs do: HTTP/1.x goes over a keep-alive pool of mutual TLS connections
//!   negotiated with ALPN `http/1.1` (reused one request at a time), HTTP/2 over one mutual TLS
//!   connection negotiated with ALPN `h2` that multiplexes every local stream (an upstream that
//!   cannot speak `h2` refuses it at the handshake, and h2c requests then get 502). Only
//!   hop-by-hop headers are removed, and a local `x-forwarded-client-cert` header is never
//!   forwarded. Bodies and trailers stream through without buffering.
//! - **TCP** ([`Protocol::Tcp`]): each local connection gets its own mutual TLS connection
//!   upstream, and bytes are copied both ways.
//!
//! The TLS client configuration is built once per route: TLS 1.3 only, ring, no session
//! resumption (so every handshake presents the SVID in force and re-verifies the upstream), the
//! client certificate read from the [`SvidCertResolver`] at each handshake (rotation applies to
//! new connections, established ones are not dropped) and the upstream's SVID verified against
//! the live [`BundleSource`] with [`Authorize::AnyOf`] the route's expected IDs. An upstream
//! with another SPIFFE ID is refused during the handshake, before any request byte is sent; the
//! local client then gets `502 Bad Gateway` with a body naming the problem.
//!
//! Where a request goes is fixed by the route: the local client's `Host`/`:authority` is
//! forwarded as it is, but never selects an upstream. HTTP/1.0 requests go upstream as
//! HTTP/1.1 (so they share the keep-alive pool). HTTP/1.1 upgrades (WebSocket) pass through and
//! become a tunnel ([`crate::upgrade`]). Not supported: `CONNECT` (405).

mod connect;
mod http;
mod listener;
mod reply;
mod route;
mod tcp;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::Instrument;
use warden_identity::tls::{Authorize, BundleSource, SvidCertResolver};

pub use connect::HandshakeFailure;
pub use route::{Http1Upstream, Protocol, Route};

/// Why an outbound route could not be set up or served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboundError {
    /// `listen` is not a loopback address.
    #[error("outbound listen address `{0}` is not a loopback address")]
    ListenNotLoopback(SocketAddr),
    /// `expected_ids` is empty.
    #[error("outbound route `{0}` has no expected upstream spiffe ids")]
    NoExpectedIds(SocketAddr),
    /// `upstream` is not `host:port`.
    #[error("outbound upstream `{upstream}` is invalid: {reason}")]
    InvalidUpstream {
        /// The configured value.
        upstream: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `http1_upstream = "h2"` is set on a TCP route.
    #[error(
        "outbound route `{0}` sets http1_upstream = \"h2\", but it is a tcp route: only http routes carry HTTP requests"
    )]
    Http1UpstreamOnTcp(SocketAddr),
    /// `response_timeout` is not a duration in range, or is set on a TCP route.
    #[error("outbound route `{listen}` response_timeout `{value}` is invalid: {reason}")]
    InvalidResponseTimeout {
        /// The route's listen address.
        listen: SocketAddr,
        /// The configured value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS client configuration could not be built.
    #[error("outbound tls configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Timeouts and limits of one outbound route. [`Default`] gives the values documented on each
/// field.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OutboundLimits {
    /// Time allowed for the TCP connect to the upstream (default 5 s).
    pub connect_timeout: Duration,
    /// Time allowed for the TLS handshake with the upstream (default 10 s).
    pub handshake_timeout: Duration,
    /// A pooled upstream connection unused for half of this is closed (before a peer with the
    /// same idle timeout would close it under a request); a local HTTP/1.1 connection that
    /// sends no request head for this long is closed, and a TCP connection on which no
    /// byte moves either way for this long is closed too; local HTTP/2
    /// connections are pinged every half of it and closed when a ping goes unanswered; so is
    /// the HTTP/2 upstream connection while requests on it are in flight, each ping to be
    /// answered within `handshake_timeout` (default 60 s).
    pub idle_timeout: Duration,
    /// Local connections served at once; further ones wait in the listen backlog
    /// (default 10 000).
    pub max_connections: usize,
    /// Largest request head a local client may send, in bytes (default 65 536).
    pub max_header_bytes: usize,
    /// Most request headers a local HTTP/1.1 client may send (default 100).
    pub max_headers: usize,
    /// After shutdown is signalled, how long open connections get to finish (default 5 s).
    pub drain_timeout: Duration,
}

/// What an outbound route reports as it works; the sidecar's metrics implement it. Every
/// method has an empty default, and calls happen on the request path, so implementations must
/// be cheap and must not block.
pub trait OutboundHooks: Send + Sync + fmt::Debug {
    /// An HTTP request finished: `status` is what the local client got (`502`/`504` when the
    /// sidecar answered because the upstream could not be reached, also when a gRPC client got
    /// that as `grpc-status: 14`), `None` when the local client went away before the response
    /// head; `latency` runs from receiving the request head to sending the response head.
    fn request_done(&self, status: Option<u16>, latency: Duration) {
        let _ = (status, latency);
    }

    /// A TLS handshake with the upstream failed (or timed out); `reason` is one of
    /// [`HandshakeFailure::as_str`]'s values.
    fn handshake_failed(&self, reason: &str) {
        let _ = reason;
    }

    /// A bodiless request was sent to the upstream once more: it refused the first attempt's
    /// stream or went away below it, so it never processed it.
    fn request_resent(&self) {}

    /// A proxied TCP connection ended after carrying `sent` bytes upstream and `received`
    /// bytes back (zero and zero when the upstream could not be reached).
    fn tcp_connection_done(&self, sent: u64, received: u64, duration: Duration) {
        let _ = (sent, received, duration);
    }
}

/// [`OutboundHooks`] that record nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

/// One outbound route, ready to serve: built once with its TLS client configuration, then
/// [`Outbound::serve`]d on a listener the caller bound.
pub struct Outbound {
    route: Route,
    upstream: route::Upstream,
    tls: Arc<rustls::ClientConfig>,
    resolver: Arc<SvidCertResolver>,
    /// What the TLS verifier trusts: pooled connections are checked against it again when it
    /// changes.
    bundles: Arc<dyn BundleSource>,
    hooks: Arc<dyn OutboundHooks>,
    limits: OutboundLimits,
}

// === impl OutboundLimits ===

impl Default for OutboundLimits {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_header_bytes: 65_536,
            max_headers: 100,
            drain_timeout: Duration::from_secs(5),
        }
    }
}

// === impl NoHooks ===

impl OutboundHooks for NoHooks {}

// === impl Outbound ===

impl fmt::Debug for Outbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbound")
            .field("route", &self.route)
            .field("limits", &self.limits)
            .field("svid", &self.resolver)
            .finish_non_exhaustive()
    }
}

impl Outbound {
    /// Validates `route` and builds its TLS client configuration: the client certificate comes
    /// from `resolver` at each handshake, the upstream must present an SVID valid for the
    /// bundles in `bundles` whose SPIFFE ID is one of `route.expected_ids`.
    pub fn new(
        route: Route,
        resolver: Arc<SvidCertResolver>,
        bundles: Arc<dyn BundleSource>,
        hooks: Arc<dyn OutboundHooks>,
    ) -> Result<Self, OutboundError> {
        route.validate()?;
        let upstream = route.validate_upstream()?;
        let authorize = Authorize::AnyOf(route.expected_ids.clone());
        let tls = connect::client_config(resolver.clone(), Arc::clone(&bundles), authorize)?;
        Ok(Self {
            route,
            upstream,
            tls: Arc::new(tls),
            resolver,
            bundles,
            hooks,
            limits: OutboundLimits::default(),
        })
    }

    /// Replaces the default timeouts and limits.
    pub fn with_limits(mut self, limits: OutboundLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The route this serves.
    pub fn route(&self) -> &Route {
        &self.route
    }

    /// Accepts local connections on `listener` (normally bound to `route().listen`) and proxies
    /// them until `shutdown` completes; then stops accepting, lets open connections finish what
    /// they carry for up to [`OutboundLimits::drain_timeout`], closes the rest and returns.
    /// Accept errors (such as running out of file descriptors) are logged and retried after a
    /// short pause, never fatal.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), OutboundError> {
        let span = tracing::info_span!(
            "outbound",
            listen = %self.route.listen,
            upstream = %self.route.upstream,
        );
        listener::serve(self, listener, shutdown)
            .instrument(span)
            .await
    }
}
