//! The TCP side of an outbound route: one mutual TLS connection upstream per local connection,
//! bytes copied both ways until both sides are done or nothing moves for the idle timeout.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::connect::{self, MtlsConnector};
use super::{HandshakeFailure, OutboundHooks};

/// Proxies opaque local connections.
#[derive(Debug)]
pub(crate) struct TcpProxy {
    connector: MtlsConnector,
    hooks: Arc<dyn OutboundHooks>,
    idle_timeout: Duration,
}

/// A stream that counts the bytes read from it.
struct Counted<'a, S> {
    inner: S,
    read: &'a AtomicU64,
}

// === impl TcpProxy ===

impl TcpProxy {
    pub(crate) fn new(
        connector: MtlsConnector,
        hooks: Arc<dyn OutboundHooks>,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            connector,
            hooks,
            idle_timeout,
        }
    }

    /// Connects upstream and copies until both sides are done, or until no byte has moved
    /// either way for the idle timeout. When the upstream cannot be reached the local
    /// connection is closed without a byte.
    pub(crate) async fn serve(&self, local: TcpStream, peer: SocketAddr) {
        let started = Instant::now();
        let upstream = match self.connector.connect().await {
            Ok(upstream) => upstream,
            Err(err) => {
                tracing::warn!(src.addr = %peer, error = %err, "outbound tcp connect failed");
                self.hooks.tcp_connection_done(0, 0, started.elapsed());
                return;
            }
        };
        let (sent, received) = (AtomicU64::new(0), AtomicU64::new(0));
        let mut local = Counted {
            inner: local,
            read: &sent,
        };
        let mut upstream = Counted {
            inner: upstream,
            read: &received,
        };
        tokio::select! {
            result = tokio::io::copy_bidirectional(&mut local, &mut upstream) => {
                if let Err(err) = result {
                    if let Some(alert) = connect::refused_certificate_alert(&err) {
                        self.hooks.handshake_failed(HandshakeFailure::PeerRejected.as_str());
                        tracing::warn!(
                            src.addr = %peer,
                            upstream = %self.connector.upstream(),
                            ?alert,
                            "outbound tcp upstream refused this sidecar's svid"
                        );
                    } else {
                        tracing::debug!(src.addr = %peer, error = %err, "outbound tcp copy ended");
                    }
                }
            }
            () = idle(&sent, &received, self.idle_timeout) => {
                tracing::debug!(src.addr = %peer, "outbound tcp connection idle; closing");
            }
        }
        self.hooks.tcp_connection_done(
            sent.load(Ordering::Relaxed),
            received.load(Ordering::Relaxed),
            started.elapsed(),
        );
    }
}

/// Resolves once neither counter has moved for a whole `timeout` (so after between one and
/// two timeouts of silence).
async fn idle(a: &AtomicU64, b: &AtomicU64, timeout: Duration) {
    let total = || {
        a.load(Ordering::Relaxed)
            .wrapping_add(b.load(Ordering::Relaxed))
    };
    let mut seen = total();
    loop {
        tokio::time::sleep(timeout).await;
        let now = total();
        if now == seen {
            return;
        }
        seen = now;
    }
}

// === impl Counted ===

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        if read > 0 {
            self.read
                .fetch_add(u64::try_from(read).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
