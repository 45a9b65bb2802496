//! The inbound TLS server configuration, the verified peer of an established session, and the
//! classification of failed handshakes into metric reasons.

use std::sync::Arc;

use rustls::server::{NoServerSessionStorage, ServerConnection};
use rustls::{CertificateError, ProtocolVersion};
use warden_identity::tls::{Authorize, BundleSource, SpiffeClientCertVerifier, SvidCertResolver};
use warden_identity::{SvidError, TlsVerifyError};

use super::Peer;
use crate::config::Protocol;
use crate::metrics::HandshakeFailure;

/// TLS 1.3 (and 1.2 when `tls12`), ring, a client SVID required and verified against the live
/// bundles (any trusted SPIFFE ID: Cedar decides), ALPN `h2` + `http/1.1` for HTTP. Session
/// resumption is off, so every connection verifies the client's current certificate.
pub(crate) fn server_config(
    resolver: Arc<SvidCertResolver>,
    bundles: Arc<dyn BundleSource>,
    tls12: bool,
    protocol: Protocol,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let verifier = Arc::new(SpiffeClientCertVerifier::new(
        bundles,
        Authorize::AnyTrusted,
    ));
    let versions: &[&'static rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut config =
        rustls::ServerConfig::builder_with_provider(warden_identity::tls::crypto_provider())
            .with_protocol_versions(versions)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(resolver);
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    if protocol == Protocol::Http {
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    }
    Ok(config)
}

/// The verified peer of an established session.
pub(super) fn peer(session: &ServerConnection) -> Option<Peer> {
    let certs = session.peer_certificates()?;
    let id = warden_identity::peer_spiffe_id(certs)?;
    let leaf = certs.first()?;
    let digest = ring::digest::digest(&ring::digest::SHA256, leaf.as_ref());
    Some(Peer {
        id,
        leaf_hash: hex(digest.as_ref()),
    })
}

/// The negotiated version, as policies see it.
pub(super) fn version(session: &ServerConnection) -> Option<&'static str> {
    match session.protocol_version()? {
        ProtocolVersion::TLSv1_3 => Some("TLSv1.3"),
        ProtocolVersion::TLSv1_2 => Some("TLSv1.2"),
        _ => None,
    }
}

/// Why a handshake failed, from the error tokio-rustls returned.
pub(super) fn classify(err: &std::io::Error) -> HandshakeFailure {
    let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return HandshakeFailure::Other;
    };
    match tls {
        rustls::Error::NoCertificatesPresented => HandshakeFailure::NoCert,
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => HandshakeFailure::Expired,
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                HandshakeFailure::Untrusted
            }
            CertificateError::Other(other) => match other.0.downcast_ref::<TlsVerifyError>() {
                Some(TlsVerifyError::Svid(svid)) => classify_svid(svid),
                Some(TlsVerifyError::NotAuthorized(_)) => HandshakeFailure::Untrusted,
                _ => HandshakeFailure::Other,
            },
            _ => HandshakeFailure::Other,
        },
        _ => HandshakeFailure::Other,
    }
}

fn classify_svid(err: &SvidError) -> HandshakeFailure {
    match err {
        SvidError::EmptyChain => HandshakeFailure::NoCert,
        SvidError::NoBundle(_) | SvidError::Untrusted { .. } => HandshakeFailure::Untrusted,
        SvidError::Expired | SvidError::NotYetValid => HandshakeFailure::Expired,
        _ => HandshakeFailure::NotSvid,
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(err: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, err)
    }

    #[test]
    fn handshake_errors_map_to_reasons() {
        assert_eq!(
            classify(&io(rustls::Error::NoCertificatesPresented)),
            HandshakeFailure::NoCert
        );
        assert_eq!(
            classify(&io(rustls::Error::InvalidCertificate(
                CertificateError::Expired
            ))),
            HandshakeFailure::Expired
        );
        let other = |e: TlsVerifyError| {
            io(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(e)),
            )))
        };
        assert_eq!(
            classify(&other(TlsVerifyError::Svid(SvidError::NoUriSan))),
            HandshakeFailure::NotSvid
        );
        let td = warden_identity::TrustDomain::new("other.org").unwrap();
        assert_eq!(
            classify(&other(TlsVerifyError::Svid(SvidError::NoBundle(td)))),
            HandshakeFailure::Untrusted
        );
        assert_eq!(
            classify(&std::io::Error::other("reset")),
            HandshakeFailure::Other
        );
    }

    #[test]
    fn hex_is_lowercase_pairs() {
        assert_eq!(hex(&[0x00, 0xab, 0x10]), "00ab10");
    }
}
