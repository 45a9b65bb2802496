//! gRPC over rustls for Warden's own APIs, without tonic's TLS features (and so without
//! aws-lc-rs): the two halves every server and client of the agent API needs.
//!
//! - Server: [`tls_incoming`] turns a bound `TcpListener` and a rustls `ServerConfig` into a
//!   stream of TLS connections for `tonic::transport::Server::serve_with_incoming`. Handshakes
//!   run concurrently (one task each, bounded by [`HANDSHAKE_TIMEOUT`]), so a slow or hostile
//!   client never stalls the accept loop; failed handshakes are logged and dropped. Each
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
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

/// How long a server waits for a client to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many completed handshakes may wait for the gRPC server to pick them up.
const ACCEPT_BACKLOG: usize = 256;

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
}

/// Accepts TCP connections on `listener` and yields those that complete a TLS handshake with
/// `config`, for `Server::serve_with_incoming`. ALPN `h2` is added to the config if it has no
/// ALPN protocols. The accept loop ends when the returned stream is dropped.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> ReceiverStream<Result<TlsConnection, io::Error>> {
    let config = if config.alpn_protocols.is_empty() {
        let mut c = (*config).clone();
        c.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(c)
    } else {
        config
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
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
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let peer_certificates =
                            stream.get_ref().1.peer_certificates().map(|c| {
                                Arc::new(c.iter().map(|d| d.clone().into_owned()).collect())
                            });
                        let info = TlsConnectInfo {
                            remote_addr: Some(remote),
                            peer_certificates,
                        };
                        let _ = tx
                            .send(Ok(TlsConnection {
                                inner: stream,
                                info,
                            }))
                            .await;
                    }
                    Ok(Err(err)) => {
                        tracing::info!(peer = %remote, error = %err, "tls handshake failed");
                    }
                    Err(_) => {
                        tracing::info!(peer = %remote, "tls handshake timed out");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
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

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
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

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("127.0.0.1:8081"), "127.0.0.1");
        assert_eq!(host_of("[::1]:8081"), "::1");
        assert_eq!(host_of("ca.example.org:443"), "ca.example.org");
    }
}
