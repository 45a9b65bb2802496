//! gRPC over rustls for Warden's own APIs, without tonic's TLS features (and so without
//! aws-lc-rs): the two halves every server and client of the agent API needs.
//!
//! - Server: [`tls_incoming`] turns a bound `TcpListener` and a rustls `ServerConfig` into a
//!   stream of TLS connections for `tonic::transport::Server::serve_with_incoming`. Handshakes
//!   run concurrently (one task each, bounded by [`HANDSHAKE_TIMEOUT`]), so a slow or hostile
//!   client never stalls the accept loop; failed handshakes are logged and dropped. What
//!   clients can hold is bounded ([`Limits`]): a connection past them is closed (at accept, or
//!   after its handshake for the limits on connections without a client certificate). Each
//!   connection implements tonic's `Connected`: handlers read the peer's address and verified
//!   certificate chain with `request.extensions().get::<TlsConnectInfo>()`.
//! - Client: [`connect_tls`] opens a tonic `Channel` that dials TCP and runs the rustls
//!   handshake with the given `ClientConfig` (ALPN `h2` is set if the config has none).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

/// How long a server waits for a client to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many completed handshakes may wait for the gRPC server to pick them up.
const ACCEPT_BACKLOG: usize = 256;

/// Bounds on what clients, authenticated or not, can hold on a server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once, in their handshake or established; one more is closed as
    /// soon as it is accepted.
    pub max_connections: usize,
    /// Handshakes in progress at once; one more is closed as soon as it is accepted.
    pub max_handshakes: usize,
    /// Handshakes in progress at once from one source (an IPv4 address, or an IPv6 /64, which
    /// one host commonly holds whole): one host cannot take every handshake place. Agents
    /// behind one NAT share it (they retry with backoff).
    pub max_handshakes_per_source: usize,
    /// Established connections without a client certificate at once (attestation needs one
    /// each, briefly); one more is closed after its handshake.
    pub max_unauthenticated: usize,
    /// Established connections without a client certificate at once from one source (as for
    /// [`Limits::max_handshakes_per_source`]): one host cannot take every such place (and so
    /// keep new nodes from attesting).
    pub max_unauthenticated_per_source: usize,
    /// How long a connection without a client certificate lasts: enough to attest, not to
    /// hold a place for good.
    pub unauthenticated_lifetime: Duration,
}

impl Default for Limits {
    /// 16,384 connections (an agent keeps one), 512 of them in their handshake, 32 of those
    /// from one address; 1,024 without a client certificate, 8 of those from one address, for
    /// 60 s each.
    fn default() -> Self {
        Self {
            max_connections: 16_384,
            max_handshakes: 512,
            max_handshakes_per_source: 32,
            max_unauthenticated: 1_024,
            max_unauthenticated_per_source: 8,
            unauthenticated_lifetime: Duration::from_secs(60),
        }
    }
}

/// Places taken per source address (handshakes in progress, or connections without a client
/// certificate here; connections to the CA's bundle endpoint).
#[derive(Debug, Default)]
pub struct PerSource(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// A place counted against its source; uncounted when dropped.
#[derive(Debug)]
pub struct SourceSlot {
    ip: std::net::IpAddr,
    per_source: Arc<PerSource>,
}

/// The source a connection from `ip` counts against: an IPv4 address (an IPv4-mapped IPv6
/// one included), or the /64 of an IPv6 one.
fn source_of(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => std::net::IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !u128::from(u64::MAX),
            )),
        },
        v4 => v4,
    }
}

impl PerSource {
    /// A place for a connection from `ip` (its IPv4 address, or its IPv6 /64), unless `max`
    /// are taken already.
    pub fn enter(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<SourceSlot> {
        if max == 0 {
            return None;
        }
        let ip = source_of(ip);
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = counts.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            ip,
            per_source: Arc::clone(self),
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut counts = self
            .per_source
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// What a server handler can learn about its peer (tonic `ConnectInfo` of [`TlsConnection`]).
#[derive(Debug, Clone)]
pub struct TlsConnectInfo {
    /// The peer's TCP address.
    pub remote_addr: Option<SocketAddr>,
    /// The certificate chain the client presented, leaf first, as accepted by the server
    /// config's client certificate verifier; `None` when the client sent none.
    pub peer_certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// A server-side TLS connection, ready for tonic.
#[derive(Debug)]
pub struct TlsConnection {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: TlsConnectInfo,
    /// This connection's place under [`Limits::max_connections`] (and, without a client
    /// certificate, [`Limits::max_unauthenticated`]), given back when it closes.
    _slots: (
        tokio::sync::OwnedSemaphorePermit,
        Option<(tokio::sync::OwnedSemaphorePermit, SourceSlot)>,
    ),
    /// When a connection without a client certificate ends
    /// ([`Limits::unauthenticated_lifetime`]).
    ends: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Accepts TCP connections on `listener` and yields those that complete a TLS handshake with
/// `config`, for `Server::serve_with_incoming`. ALPN `h2` is added to the config if it has no
/// ALPN protocols. The accept loop ends when the returned stream is dropped.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> ReceiverStream<Result<TlsConnection, io::Error>> {
    tls_incoming_with(listener, config, Limits::default())
}

/// [`tls_incoming`] with `limits` instead of the default ones.
pub fn tls_incoming_with(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: Limits,
) -> ReceiverStream<Result<TlsConnection, io::Error>> {
    let config = if config.alpn_protocols.is_empty() {
        let mut c = (*config).clone();
        c.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(c)
    } else {
        config
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let handshakes = Arc::new(Semaphore::new(limits.max_handshakes));
    let unauthenticated = Arc::new(Semaphore::new(limits.max_unauthenticated));
    let per_source = Arc::new(PerSource::default());
    let unauthenticated_per_source = Arc::new(PerSource::default());
    let refused = Arc::new(std::sync::Mutex::new(Refused::default()));
    let failed = Arc::new(std::sync::Mutex::new(Refused::default()));
    let (tx, rx) = tokio::sync::mpsc::channel(ACCEPT_BACKLOG);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => break,
            };
            let (tcp, remote) = match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::warn!(error = %err, "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (Ok(slot), Ok(handshaking), Some(from_source)) = (
                Arc::clone(&connections).try_acquire_owned(),
                Arc::clone(&handshakes).try_acquire_owned(),
                per_source.enter(remote.ip(), limits.max_handshakes_per_source),
            ) else {
                // Closed at once: no task, no buffer for it.
                drop(tcp);
                Refused::count(&refused, remote, "connection or handshake limit", &limits);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let unauthenticated = Arc::clone(&unauthenticated);
            let unauthenticated_per_source = Arc::clone(&unauthenticated_per_source);
            let refused = Arc::clone(&refused);
            let failed = Arc::clone(&failed);
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop((handshaking, from_source));
                match handshake {
                    Ok(Ok(stream)) => {
                        let peer_certificates =
                            stream.get_ref().1.peer_certificates().map(|c| {
                                Arc::new(c.iter().map(|d| d.clone().into_owned()).collect())
                            });
                        let (unauthenticated_slot, ends) = match peer_certificates {
                            Some(_) => (None, None),
                            None => match (
                                unauthenticated.try_acquire_owned(),
                                unauthenticated_per_source
                                    .enter(remote.ip(), limits.max_unauthenticated_per_source),
                            ) {
                                (Ok(permit), Some(from_source)) => (
                                    Some((permit, from_source)),
                                    Some(Box::pin(tokio::time::sleep(
                                        limits.unauthenticated_lifetime,
                                    ))),
                                ),
                                _ => {
                                    Refused::count(
                                        &refused,
                                        remote,
                                        "limit on connections without a client certificate",
                                        &limits,
                                    );
                                    return;
                                }
                            },
                        };
                        let info = TlsConnectInfo {
                            remote_addr: Some(remote),
                            peer_certificates,
                        };
                        let _ = tx
                            .send(Ok(TlsConnection {
                                inner: stream,
                                info,
                                _slots: (slot, unauthenticated_slot),
                                ends,
                            }))
                            .await;
                    }
                    // Anyone can connect: at most one info line a second (with how many failed
                    // since the last), the rest at debug.
                    Ok(Err(err)) => match Refused::due(&failed) {
                        Some(failed) => {
                            tracing::info!(peer = %remote, error = %err, failed, "tls handshake failed")
                        }
                        None => {
                            tracing::debug!(peer = %remote, error = %err, "tls handshake failed")
                        }
                    },
                    Err(_) => match Refused::due(&failed) {
                        Some(failed) => {
                            tracing::info!(peer = %remote, failed, "tls handshake timed out")
                        }
                        None => tracing::debug!(peer = %remote, "tls handshake timed out"),
                    },
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Events anyone can cause (connections closed for a limit, failed handshakes), logged at most
/// once a second with how many happened since the last line, so that a flood does not flood
/// the log too.
#[derive(Debug, Default)]
struct Refused {
    since_warning: u64,
    warned: Option<std::time::Instant>,
}

impl Refused {
    fn count(
        this: &std::sync::Mutex<Self>,
        remote: SocketAddr,
        limit: &'static str,
        limits: &Limits,
    ) {
        if let Some(refused) = Self::due(this) {
            tracing::warn!(
                peer = %remote,
                limit,
                refused,
                ?limits,
                "connection limit reached: closing new connections"
            );
        }
    }

    /// Notes one event; `Some(n)` when it is time to log the `n` since the last line.
    fn due(this: &std::sync::Mutex<Self>) -> Option<u64> {
        let mut this = this
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        this.since_warning += 1;
        let now = std::time::Instant::now();
        if this
            .warned
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
        {
            return None;
        }
        this.warned = Some(now);
        Some(std::mem::take(&mut this.since_warning))
    }
}

/// Opens a gRPC channel to `addr` (`host:port`) over TLS with `config`. The server name sent
/// (SNI) is the host part of `addr`; SPIFFE verifiers ignore it and check the SPIFFE ID.
/// ALPN `h2` is added if the config has no ALPN protocols. Connects eagerly: an unreachable
/// server or a failed handshake is an error here.
pub async fn connect_tls(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<Channel, tonic::transport::Error> {
    let config = if config.alpn_protocols.is_empty() {
        let mut c = (*config).clone();
        c.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(c)
    } else {
        config
    };
    let connector = tokio_rustls::TlsConnector::from(config);
    let target = addr.to_owned();
    Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(10))
        .connect_with_connector(tower::service_fn(move |_uri: http::Uri| {
            let connector = connector.clone();
            let target = target.clone();
            async move {
                let host = host_of(&target);
                let name = ServerName::try_from(host.to_owned())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let tcp = TcpStream::connect(&target).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, io::Error>(TokioIo::new(tls))
            }
        }))
        .await
}

/// The host of `host:port` (IPv6 brackets removed).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

// === impl TlsConnection ===

impl TlsConnection {
    /// The peer's address and certificates.
    pub fn info(&self) -> &TlsConnectInfo {
        &self.info
    }
}

impl Connected for TlsConnection {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> TlsConnectInfo {
        self.info.clone()
    }
}

impl TlsConnection {
    /// An error once a connection without a client certificate has lasted its lifetime (the
    /// server then closes it); registers for the wake-up until then.
    fn ended(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(ends) = &mut self.ends else {
            return Ok(());
        };
        match ends.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection without a client certificate lasted its lifetime",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.ended(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.ended(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.ended(cx)?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests;
