//! The TCP side of an outbound route: one mutual TLS connection upstream per local connection,
//! bytes copied both ways.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;

use super::OutboundHooks;
use super::connect::MtlsConnector;

/// Proxies opaque local connections.
#[derive(Debug)]
pub(crate) struct TcpProxy {
    connector: MtlsConnector,
    hooks: Arc<dyn OutboundHooks>,
}

// === impl TcpProxy ===

impl TcpProxy {
    pub(crate) fn new(connector: MtlsConnector, hooks: Arc<dyn OutboundHooks>) -> Self {
        Self { connector, hooks }
    }

    /// Connects upstream and copies until both sides are done. When the upstream cannot be
    /// reached the local connection is closed without a byte.
    pub(crate) async fn serve(&self, mut local: TcpStream, peer: SocketAddr) {
        let started = Instant::now();
        let mut upstream = match self.connector.connect().await {
            Ok(upstream) => upstream,
            Err(err) => {
                tracing::warn!(src.addr = %peer, error = %err, "outbound tcp connect failed");
                self.hooks.tcp_connection_done(0, 0, started.elapsed());
                return;
            }
        };
        match tokio::io::copy_bidirectional(&mut local, &mut upstream).await {
            Ok((sent, received)) => {
                self.hooks
                    .tcp_connection_done(sent, received, started.elapsed());
            }
            Err(err) => {
                tracing::debug!(src.addr = %peer, error = %err, "outbound tcp copy ended");
                self.hooks.tcp_connection_done(0, 0, started.elapsed());
            }
        }
    }
}
