//! The TCP side of an outbound route: one mutual TLS connection upstream per local connection,
//! bytes copied both ways until both sides are done or nothing moves for the idle timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::connect::{self, MtlsConnector};
use super::{HandshakeFailure, OutboundHooks};
use crate::idle::IdleIo;
use crate::lapse::Verified;

/// Proxies opaque local connections.
#[derive(Debug)]
pub(crate) struct TcpProxy {
    connector: MtlsConnector,
    hooks: Arc<dyn OutboundHooks>,
    idle_timeout: Duration,
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
        let mut upstream = match self.connector.connect().await {
            Ok(upstream) => upstream,
            Err(err) => {
                tracing::warn!(src.addr = %peer, error = %err, "outbound tcp connect failed");
                self.hooks.tcp_connection_done(0, 0, started.elapsed());
                return;
            }
        };
        // Every byte either way passes the local side: read from it to go upstream, written to
        // it when it comes back.
        let (mut local, activity) = IdleIo::new(local);
        let validity = upstream.validity();
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
            () = Arc::clone(&activity).expired(self.idle_timeout) => {
                tracing::debug!(src.addr = %peer, "outbound tcp connection idle; closing");
            }
            () = crate::lapse::no_longer_holds(validity) => {
                tracing::info!(src.addr = %peer, "outbound tcp upstream's credentials lapsed; closing");
            }
        }
        self.hooks.tcp_connection_done(
            activity.bytes_read(),
            activity.bytes_written(),
            started.elapsed(),
        );
    }
}
