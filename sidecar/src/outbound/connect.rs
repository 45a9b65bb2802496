//! Mutual TLS origination: the route's TLS client configuration, and the connector that dials
//! the upstream, runs the handshake under timeouts and classifies failures.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::Resumption;
use rustls::{CertificateError, ClientConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use warden_identity::tls::{
    Authorize, BundleSource, SpiffeServerCertVerifier, SvidCertResolver, TlsVerifyError,
};

use super::OutboundHooks;
use super::route::Upstream;
use crate::lapse::{Credentials, Validity, Verified};

/// ALPN of the upstream connections that carry local HTTP/1.x requests.
pub(crate) const ALPN_HTTP1: &[u8] = b"http/1.1";
/// ALPN of the upstream connections that carry local HTTP/2 (h2c, gRPC) requests.
pub(crate) const ALPN_H2: &[u8] = b"h2";

/// Why a TLS handshake with an upstream failed; [`HandshakeFailure::as_str`] gives the metric
/// label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// The upstream's SVID is valid but its SPIFFE ID is not one of the expected IDs.
    UnexpectedId,
    /// The upstream's certificate is not a valid X.509-SVID for the bundles in force (other
    /// CA, other trust domain, not an SVID).
    InvalidSvid,
    /// The upstream's SVID has expired.
    Expired,
    /// The upstream's SVID is not valid yet.
    NotYetValid,
    /// The upstream aborted the handshake with an alert (for instance it refused our SVID).
    PeerRejected,
    /// This sidecar holds no SVID to present.
    NoSvid,
    /// The handshake did not finish within the handshake timeout.
    Timeout,
    /// The connection failed during the handshake.
    Io,
    /// Any other TLS protocol error.
    Protocol,
}

/// Why a connection to the upstream could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("upstream `{upstream}` could not be resolved: {source}")]
    Resolve { upstream: String, source: io::Error },
    #[error("upstream `{upstream}` is unreachable: {source}")]
    Connect { upstream: String, source: io::Error },
    #[error("connecting to upstream `{upstream}` timed out after {after:?}")]
    ConnectTimeout { upstream: String, after: Duration },
    #[error("tls handshake with upstream `{upstream}` failed: {detail}")]
    Handshake {
        upstream: String,
        failure: HandshakeFailure,
        detail: String,
    },
}

/// Dials the route's upstream and runs the mutual TLS handshake. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct MtlsConnector {
    inner: Arc<Inner>,
}

struct Inner {
    upstream: Upstream,
    tls: TlsConnector,
    resolver: Arc<SvidCertResolver>,
    bundles: Arc<dyn BundleSource>,
    hooks: Arc<dyn OutboundHooks>,
    connect_timeout: Duration,
    handshake_timeout: Duration,
}

/// A mutual TLS connection to the upstream, with what its handshake verified.
#[derive(Debug)]
pub(crate) struct UpstreamStream {
    tls: TlsStream<TcpStream>,
    validity: Arc<Validity>,
}

/// Builds the TLS client configuration of a route: TLS 1.3 only, ring, the client certificate
/// from `resolver` at each handshake, the server verified by [`SpiffeServerCertVerifier`] with
/// `authorize`, no session resumption (a resumed session would skip both the SVID swap and
/// the upstream's re-verification), no ALPN (see [`with_alpn`]).
///
/// This is `warden_identity::tls::client_config` restricted to TLS 1.3.
pub(crate) fn client_config(
    resolver: Arc<SvidCertResolver>,
    bundles: Arc<dyn BundleSource>,
    authorize: Authorize,
) -> Result<ClientConfig, rustls::Error> {
    let verifier = Arc::new(SpiffeServerCertVerifier::new(bundles, authorize));
    let mut config = ClientConfig::builder_with_provider(warden_identity::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        // Safe: the replacement verifier validates the chain against the trust domain's
        // bundle, the SVID profile and validity, and authorizes the SPIFFE ID; only the DNS
        // name check is dropped, since SPIFFE names servers by URI SAN, not DNS name.
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(resolver);
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// `config` offering the single ALPN protocol `alpn`.
pub(crate) fn with_alpn(config: &ClientConfig, alpn: &[u8]) -> Arc<ClientConfig> {
    let mut config = config.clone();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

// === impl HandshakeFailure ===

impl HandshakeFailure {
    /// Every reason, for registering metric label values up front.
    pub const ALL: [Self; 9] = [
        Self::UnexpectedId,
        Self::InvalidSvid,
        Self::Expired,
        Self::NotYetValid,
        Self::PeerRejected,
        Self::NoSvid,
        Self::Timeout,
        Self::Io,
        Self::Protocol,
    ];

    /// A short snake_case label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnexpectedId => "unexpected_id",
            Self::InvalidSvid => "invalid_svid",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::PeerRejected => "peer_rejected",
            Self::NoSvid => "no_svid",
            Self::Timeout => "timeout",
            Self::Io => "io",
            Self::Protocol => "protocol",
        }
    }

    /// Classifies the error tokio-rustls returns from a failed handshake, with a message fit
    /// for the local client (it names the problem, never key material).
    fn classify(err: &io::Error) -> (Self, String) {
        let Some(tls) = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        else {
            return (Self::Io, err.to_string());
        };
        let failure = match tls {
            rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
                return match other.0.downcast_ref::<TlsVerifyError>() {
                    Some(TlsVerifyError::NotAuthorized(id)) => (
                        Self::UnexpectedId,
                        format!("upstream spiffe id `{id}` is not one of the expected ids"),
                    ),
                    Some(verify) => (Self::InvalidSvid, verify.to_string()),
                    None => (Self::InvalidSvid, other.0.to_string()),
                };
            }
            rustls::Error::InvalidCertificate(CertificateError::Expired) => Self::Expired,
            rustls::Error::InvalidCertificate(CertificateError::NotValidYet) => Self::NotYetValid,
            rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
                Self::InvalidSvid
            }
            rustls::Error::AlertReceived(_) => Self::PeerRejected,
            _ => Self::Protocol,
        };
        (failure, tls.to_string())
    }
}

/// Whether `err` (or an error in its source chain) is a fatal alert by which the upstream
/// refused this sidecar's certificate. With TLS 1.3 the client finishes its side of the
/// handshake before the server has checked the client certificate, so the refusal arrives on
/// the first read after [`MtlsConnector::connect`] returned. Returns the alert's description.
pub(crate) fn refused_certificate_alert(
    err: &(dyn std::error::Error + 'static),
) -> Option<rustls::AlertDescription> {
    use rustls::AlertDescription as A;
    const REFUSALS: [A; 8] = [
        A::BadCertificate,
        A::UnsupportedCertificate,
        A::CertificateRevoked,
        A::CertificateExpired,
        A::CertificateUnknown,
        A::UnknownCA,
        A::CertificateRequired,
        A::AccessDenied,
    ];
    let mut current = Some(err);
    while let Some(err) = current {
        // The h2 crate's error names its I/O error without offering it as its source.
        let io = err
            .downcast_ref::<io::Error>()
            .or_else(|| err.downcast_ref::<h2::Error>().and_then(h2::Error::get_io));
        let tls = err.downcast_ref::<rustls::Error>().or_else(|| {
            io.and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::AlertReceived(alert)) = tls {
            return REFUSALS.contains(alert).then_some(*alert);
        }
        // An HTTP/2 connection keeps an I/O error only as its kind and text (the h2 crate copies
        // it to every stream), so the alert is recognised by rustls's own text for it.
        if let Some(io) = io
            && tls.is_none()
        {
            let text = io.to_string();
            if let Some(alert) = REFUSALS
                .iter()
                .find(|a| text == rustls::Error::AlertReceived(**a).to_string())
            {
                return Some(*alert);
            }
        }
        current = err.source();
    }
    None
}

// === impl ConnectError ===

impl ConnectError {
    /// Whether a timeout caused it (the local client gets 504 rather than 502).
    pub(crate) fn is_timeout(&self) -> bool {
        matches!(
            self,
            Self::ConnectTimeout { .. }
                | Self::Handshake {
                    failure: HandshakeFailure::Timeout,
                    ..
                }
        )
    }
}

// === impl MtlsConnector ===

impl MtlsConnector {
    pub(crate) fn new(
        upstream: Upstream,
        tls: Arc<ClientConfig>,
        resolver: Arc<SvidCertResolver>,
        bundles: Arc<dyn BundleSource>,
        hooks: Arc<dyn OutboundHooks>,
        connect_timeout: Duration,
        handshake_timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                upstream,
                tls: TlsConnector::from(tls),
                resolver,
                bundles,
                hooks,
                connect_timeout,
                handshake_timeout,
            }),
        }
    }

    /// The upstream as configured, `host:port`.
    pub(crate) fn upstream(&self) -> &str {
        &self.inner.upstream.host_port
    }

    /// Connects and completes the mutual TLS handshake; a handshake failure is reported to the
    /// hooks.
    pub(crate) async fn connect(&self) -> Result<UpstreamStream, ConnectError> {
        let inner = &*self.inner;
        // Before the handshake: a bundle change while it runs is checked at the first use.
        let bundles = inner.bundles.bundles();
        let result = match inner.resolver.current() {
            // Fail closed without dialing: a handshake without a client certificate would
            // only be refused by the upstream.
            None => Err(ConnectError::Handshake {
                upstream: inner.upstream.host_port.clone(),
                failure: HandshakeFailure::NoSvid,
                detail: "this sidecar holds no svid yet".to_owned(),
            }),
            Some(_) => match inner.dial().await {
                Ok(tcp) => inner.handshake(tcp).await,
                Err(err) => return Err(err),
            },
        };
        match result.and_then(|tls| match credentials(&tls) {
            Some(credentials) => Ok((tls, credentials)),
            // Unreachable after the verifier accepted the upstream; refuse rather than assume.
            None => Err(ConnectError::Handshake {
                upstream: inner.upstream.host_port.clone(),
                failure: HandshakeFailure::InvalidSvid,
                detail: "the upstream's certificate could not be read".to_owned(),
            }),
        }) {
            Ok((tls, credentials)) => Ok(UpstreamStream {
                tls,
                validity: Arc::new(Validity::new(credentials, &inner.bundles, bundles)),
            }),
            Err(err) => {
                if let ConnectError::Handshake { failure, .. } = &err {
                    inner.hooks.handshake_failed(failure.as_str());
                }
                tracing::warn!(error = %err, "outbound handshake failed");
                Err(err)
            }
        }
    }
}

// === impl Inner ===

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtlsConnector")
            .field("upstream", &self.upstream.host_port)
            .field("connect_timeout", &self.connect_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl Inner {
    async fn dial(&self) -> Result<TcpStream, ConnectError> {
        let upstream = &self.upstream;
        let connect = async {
            let stream = match upstream.addr {
                Some(addr) => TcpStream::connect(addr).await,
                None => {
                    let addrs =
                        tokio::net::lookup_host(&upstream.host_port)
                            .await
                            .map_err(|source| ConnectError::Resolve {
                                upstream: upstream.host_port.clone(),
                                source,
                            })?;
                    connect_first(addrs).await
                }
            };
            stream.map_err(|source| ConnectError::Connect {
                upstream: upstream.host_port.clone(),
                source,
            })
        };
        let tcp = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| ConnectError::ConnectTimeout {
                upstream: upstream.host_port.clone(),
                after: self.connect_timeout,
            })??;
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "outbound upstream nodelay");
        }
        Ok(tcp)
    }

    async fn handshake(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, ConnectError> {
        let failed = |failure, detail| ConnectError::Handshake {
            upstream: self.upstream.host_port.clone(),
            failure,
            detail,
        };
        let server_name = self.upstream.server_name.clone();
        match tokio::time::timeout(self.handshake_timeout, self.tls.connect(server_name, tcp)).await
        {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(err)) => {
                let (failure, detail) = HandshakeFailure::classify(&err);
                Err(failed(failure, detail))
            }
            Err(_) => Err(failed(
                HandshakeFailure::Timeout,
                format!("no answer within {:?}", self.handshake_timeout),
            )),
        }
    }
}

/// Tries each resolved address in turn; the error of the last one if none connects.
async fn connect_first(addrs: impl Iterator<Item = std::net::SocketAddr>) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address resolved");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(err) => last = err,
        }
    }
    Err(last)
}

/// The upstream's verified chain and its leaf's `notAfter`.
fn credentials(tls: &TlsStream<TcpStream>) -> Option<Credentials> {
    let certs = tls.get_ref().1.peer_certificates()?;
    Credentials::of(certs)
}

// === impl UpstreamStream ===

impl Verified for UpstreamStream {
    fn validity(&self) -> Option<Arc<Validity>> {
        Some(Arc::clone(&self.validity))
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_alerts_are_found_inside_io_errors_and_in_their_text() {
        use rustls::AlertDescription as A;
        let wrapped = io::Error::other(rustls::Error::AlertReceived(A::UnknownCA));
        assert_eq!(refused_certificate_alert(&wrapped), Some(A::UnknownCA));
        // What an HTTP/2 connection error keeps of it: the kind and the text.
        let flattened = io::Error::other(wrapped.to_string());
        assert_eq!(refused_certificate_alert(&flattened), Some(A::UnknownCA));
        // Alerts that are not about our certificate, and other errors, are not refusals.
        let other = io::Error::other(rustls::Error::AlertReceived(A::HandshakeFailure));
        assert_eq!(refused_certificate_alert(&other), None);
        let other_text = io::Error::other(other.to_string());
        assert_eq!(refused_certificate_alert(&other_text), None);
        let unrelated = io::Error::new(io::ErrorKind::ConnectionReset, "connection reset");
        assert_eq!(refused_certificate_alert(&unrelated), None);
    }
}
