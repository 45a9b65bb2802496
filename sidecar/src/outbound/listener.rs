//! The accept loop of an outbound route: a bounded number of local connections at a time, each
//! served on its own task, and a drain on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::Instrument;

use super::connect::{ALPN_H2, ALPN_HTTP1, MtlsConnector, with_alpn};
use super::http::HttpProxy;
use super::route::Protocol;
use super::tcp::TcpProxy;
use super::{Outbound, OutboundError, OutboundLimits};

/// How long to pause after a failed `accept` (such as EMFILE) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// hyper's smallest allowed HTTP/1 read buffer.
const MIN_H1_BUF: usize = 8192;

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
        server: Arc<auto::Builder<TokioExecutor>>,
    },
    Tcp(Arc<TcpProxy>),
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
        hooks,
        limits,
    } = outbound;
    let connector = |tls| {
        MtlsConnector::new(
            upstream.clone(),
            tls,
            resolver.clone(),
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
                proxy: Arc::new(HttpProxy::new(http1, h2, hooks.clone(), &limits)),
                server: Arc::new(server_builder(&limits)),
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

/// The local HTTP/1.1 + h2c server, configured once per route.
fn server_builder(limits: &OutboundLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_H1_BUF))
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(limits.idle_timeout / 2)
        .keep_alive_timeout(limits.handshake_timeout);
    builder
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
            Self::Http { proxy, server } => {
                let service = service_fn(move |req| proxy.clone().handle(req));
                let conn = server.serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                let result = tokio::select! {
                    result = conn.as_mut() => result,
                    () = reached(&mut phase, Phase::Drain) => {
                        // Finish the requests in flight, then close (HTTP/1.1 `connection:
                        // close`, HTTP/2 GOAWAY).
                        conn.as_mut().graceful_shutdown();
                        tokio::select! {
                            result = conn.as_mut() => result,
                            () = reached(&mut phase, Phase::Close) => Ok(()),
                        }
                    }
                };
                if let Err(err) = result {
                    tracing::debug!(src.addr = %peer, error = %err, "outbound local connection error");
                }
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
