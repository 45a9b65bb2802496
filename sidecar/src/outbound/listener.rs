//! The accept loop of an outbound route: a bounded number of local connections at a time, each
//! served on its own task, and a drain on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::Instrument;

use super::connect::{ALPN_H2, ALPN_HTTP1, MtlsConnector, with_alpn};
use super::http::HttpProxy;
use super::route::{Http1Upstream, Protocol};
use super::tcp::TcpProxy;
use super::{Outbound, OutboundError, OutboundLimits};
use crate::h2_client::KeepAlive;
use crate::h2_server::{Conn, H2Server};
use crate::sniff;
use crate::upgrade::Tunnel;

/// How long to pause after a failed `accept` (such as EMFILE) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// hyper's smallest allowed HTTP/1 read buffer.
const MIN_H1_BUF: usize = 8192;
/// Most concurrent streams a local HTTP/2 client may open per connection.
const MAX_CONCURRENT_STREAMS: u32 = 256;

/// How long connections get to close once told to after the drain timeout.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Where the route is in its life; connections watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Accepting and serving.
    Serve,
    /// Not accepting; open connections finish what they carry (HTTP connections close once
    /// idle).
    Drain,
    /// Drain timeout passed: close everything now.
    Close,
}

/// What serves one accepted local connection.
#[derive(Clone)]
enum Handler {
    Http {
        proxy: Arc<HttpProxy>,
        servers: Arc<Servers>,
    },
    Tcp(Arc<TcpProxy>),
}

/// The local servers of a route, configured once: HTTP/1.1 (hyper) and h2c (ours).
struct Servers {
    http1: http1::Builder,
    h2: H2Server,
    /// How long a new connection may take to show which of the two it speaks.
    sniff_timeout: Duration,
}

/// Runs the accept loop until `shutdown`, then drains.
pub(super) async fn serve(
    outbound: Outbound,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), OutboundError> {
    let Outbound {
        route,
        upstream,
        tls,
        resolver,
        bundles,
        hooks,
        limits,
    } = outbound;
    let connector = |tls| {
        MtlsConnector::new(
            upstream.clone(),
            tls,
            resolver.clone(),
            Arc::clone(&bundles),
            hooks.clone(),
            limits.connect_timeout,
            limits.handshake_timeout,
        )
    };
    let handler = match route.protocol {
        Protocol::Http => {
            let http1 = connector(with_alpn(&tls, ALPN_HTTP1));
            let h2 = connector(with_alpn(&tls, ALPN_H2));
            Handler::Http {
                proxy: Arc::new(
                    HttpProxy::new(http1, h2, hooks.clone(), &limits, route.response_timeout()?)
                        .with_http1_over_h2(route.http1_upstream == Http1Upstream::H2),
                ),
                servers: Arc::new(Servers::new(&limits)),
            }
        }
        Protocol::Tcp => Handler::Tcp(Arc::new(TcpProxy::new(
            connector(tls.clone()),
            hooks.clone(),
            limits.idle_timeout,
        ))),
    };
    let listen = listener.local_addr().unwrap_or(route.listen);
    tracing::info!(
        listen = %listen,
        upstream = %route.upstream,
        protocol = ?route.protocol,
        "outbound listening"
    );

    let permits = Arc::new(Semaphore::new(
        limits.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let (phase_tx, phase_rx) = watch::channel(Phase::Serve);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => permit,
        };
        let Ok(permit) = permit else { break };
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(listen = %listen, error = %err, "outbound accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let handler = handler.clone();
        let phase = phase_rx.clone();
        let task = async move {
            handler.serve_connection(stream, peer, phase).await;
            drop(permit);
        };
        tokio::spawn(task.instrument(tracing::Span::current()));
    }

    // Every connection task holds a receiver: `closed` resolves once they have all ended.
    drop(listener);
    drop(phase_rx);
    phase_tx.send_replace(Phase::Drain);
    let drained = tokio::time::timeout(limits.drain_timeout, phase_tx.closed()).await;
    if drained.is_err() {
        tracing::info!(listen = %listen, "outbound drain timed out; closing open connections");
        phase_tx.send_replace(Phase::Close);
        let _ = tokio::time::timeout(CLOSE_GRACE, phase_tx.closed()).await;
    }
    tracing::info!(listen = %listen, "outbound stopped");
    Ok(())
}

/// Resolves once the route has reached `phase`.
async fn reached(rx: &mut watch::Receiver<Phase>, phase: Phase) {
    // An error means the sender is gone, which only happens once `serve` has returned.
    let _ = rx.wait_for(|now| *now >= phase).await;
}

// === impl Servers ===

impl Servers {
    fn new(limits: &OutboundLimits) -> Self {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits.idle_timeout)
            .max_buf_size(limits.max_header_bytes.max(MIN_H1_BUF))
            .max_headers(limits.max_headers);
        // Pinged every half idle timeout; closed when a ping goes unanswered.
        let keep_alive = KeepAlive {
            interval: limits.idle_timeout / 2,
            timeout: limits.handshake_timeout,
        };
        // A local client that keeps a connection without a stream open for the idle timeout
        // gets a GOAWAY (gRPC clients reconnect on their next call).
        let h2 = H2Server::new(
            limits.max_header_bytes,
            MAX_CONCURRENT_STREAMS,
            Some(keep_alive),
            limits.idle_timeout,
        );
        Self {
            http1,
            h2,
            sniff_timeout: limits.idle_timeout,
        }
    }

    /// Serves a local HTTP/1.x or h2c connection until it ends; from `Drain` on, finishes the
    /// requests in flight and closes (HTTP/1.1 `connection: close`, HTTP/2 GOAWAY); at `Close`,
    /// closes at once.
    async fn serve(
        &self,
        proxy: &Arc<HttpProxy>,
        stream: TcpStream,
        peer: SocketAddr,
        phase: &mut watch::Receiver<Phase>,
    ) {
        let mut drain = phase.clone();
        let sniffed = tokio::select! {
            sniffed = tokio::time::timeout(self.sniff_timeout, sniff::is_h2c(&stream)) => sniffed,
            () = reached(&mut drain, Phase::Drain) => return,
        };
        let h2 = match sniffed {
            Ok(Ok(h2)) => h2,
            Ok(Err(err)) => {
                tracing::debug!(src.addr = %peer, error = %err, "outbound local connection error");
                return;
            }
            Err(_) => {
                tracing::debug!(src.addr = %peer, "outbound local client sent no request in time");
                return;
            }
        };
        if h2 {
            let conn = Conn {
                io: stream,
                peer,
                idle: std::future::pending(),
                stop: reached(&mut drain, Phase::Drain),
            };
            let served = self.h2.serve(conn, |req| proxy.handle_h2(req));
            tokio::select! {
                () = served => {}
                () = reached(phase, Phase::Close) => {}
            }
            return;
        }
        let proxy = Arc::clone(proxy);
        let tunnel = Tunnel::default();
        let svc_tunnel = tunnel.clone();
        // This local connection's own HTTP/1.1 upstream connection.
        let upstream = Arc::new(proxy.http1_conn());
        let service = service_fn(move |req| {
            Arc::clone(&proxy).handle(req, svc_tunnel.clone(), Arc::clone(&upstream))
        });
        let conn = self
            .http1
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::pin!(conn);
        let result = tokio::select! {
            result = conn.as_mut() => result,
            () = reached(&mut drain, Phase::Drain) => {
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    result = conn.as_mut() => result,
                    () = reached(phase, Phase::Close) => Ok(()),
                }
            }
        };
        if let Err(err) = result {
            tracing::debug!(src.addr = %peer, error = %err, "outbound local connection error");
        }
        // An upgraded connection: its tunnel runs in this task until it ends or the route
        // closes.
        if let Some(tunnel) = tunnel.take() {
            tokio::select! {
                () = tunnel => {}
                () = reached(phase, Phase::Close) => {}
            }
        }
    }
}

// === impl Handler ===

impl Handler {
    async fn serve_connection(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        mut phase: watch::Receiver<Phase>,
    ) {
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "outbound local nodelay");
        }
        match self {
            Self::Http { proxy, servers } => {
                servers.serve(&proxy, stream, peer, &mut phase).await;
            }
            Self::Tcp(proxy) => {
                tokio::select! {
                    () = proxy.serve(stream, peer) => {}
                    () = reached(&mut phase, Phase::Close) => {}
                }
            }
        }
    }
}
