//! The inbound TLS server configuration, the verified peer of an established session, and the
//! classification of failed handshakes into metric reasons.

use std::sync::Arc;
use std::time::Duration;

use rustls::server::{NoServerSessionStorage, ServerConnection};
use rustls::{CertificateError, ProtocolVersion};
use warden_identity::tls::{Authorize, BundleSource, SpiffeClientCertVerifier, SvidCertResolver};
use warden_identity::{SvidError, TlsVerifyError};

use super::Peer;
use super::resumption::{Tickets, TrustEpochs};
use crate::config::Protocol;
use crate::lapse::Credentials;
use crate::metrics::HandshakeFailure;

/// Tickets sent after each handshake (rustls's default, and BoringSSL's): a client holds a
/// spare for its next connection when the one in flight takes the other.
const TICKETS_PER_HANDSHAKE: usize = 2;

/// TLS 1.3 (and 1.2 when `tls12`), ring, a client SVID required and verified against the live
/// bundles (any trusted SPIFFE ID: Cedar decides), ALPN `h2` + `http/1.1` for HTTP, the cipher
/// suite chosen in [`warden_identity::tls::CIPHER_SUITES`] order. Sessions are resumed by
/// the rules of [`super::resumption`] (stateless tickets) when `resumption` is given: the
/// longest a session may be resumed, and the handshake timeout; never otherwise.
pub(crate) fn server_config(
    resolver: Arc<SvidCertResolver>,
    bundles: Arc<dyn BundleSource>,
    tls12: bool,
    protocol: Protocol,
    resumption: Option<(Duration, Duration)>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    // With resumption, the verifier reads the bundles through the trust epochs, so that the
    // tickets see every set a chain was verified against.
    let epochs = resumption.map(|_| Arc::new(TrustEpochs::new(bundles.clone())));
    let source: Arc<dyn BundleSource> = match &epochs {
        Some(epochs) => Arc::clone(epochs) as Arc<dyn BundleSource>,
        None => bundles,
    };
    let verifier = Arc::new(SpiffeClientCertVerifier::new(source, Authorize::AnyTrusted));
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
    // Never sessions kept here by id: only the bounded tickets.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    match (resumption, epochs) {
        (Some((lifetime, settle)), Some(epochs)) => {
            config.ticketer = Arc::new(Tickets::new(epochs, lifetime, settle)?);
            config.send_tls13_tickets = TICKETS_PER_HANDSHAKE;
        }
        _ => config.send_tls13_tickets = 0,
    }
    // Our suite order (AES-128-GCM first), whatever the client prefers.
    config.ignore_client_order = true;
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

/// The verified peer's chain and its leaf's `notAfter`, for [`crate::lapse`].
pub(super) fn credentials(session: &ServerConnection) -> Option<Credentials> {
    Credentials::of(session.peer_certificates()?)
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
        rustls::Error::PeerIncompatible(_) => HandshakeFailure::Incompatible,
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
        assert_eq!(
            classify(&io(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::Tls12NotOfferedOrEnabled
            ))),
            HandshakeFailure::Incompatible
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

    /// Moves what `from` has to send into `to`; whether there was anything.
    fn transfer<A, B>(
        from: &mut rustls::ConnectionCommon<A>,
        to: &mut rustls::ConnectionCommon<B>,
    ) -> bool {
        let mut moved = false;
        while from.wants_write() {
            let mut buf = Vec::new();
            from.write_tls(&mut buf).unwrap();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                to.read_tls(&mut rd).unwrap();
                to.process_new_packets().unwrap();
            }
            moved = true;
        }
        moved
    }

    /// Runs a handshake between `client` and `server` in memory; the suite the server chose.
    fn negotiate(
        client: rustls::ClientConfig,
        server: rustls::ServerConfig,
    ) -> Option<rustls::CipherSuite> {
        let name = rustls::pki_types::ServerName::try_from("backend.invalid").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let mut server = ServerConnection::new(Arc::new(server)).unwrap();
        while client.is_handshaking() || server.is_handshaking() {
            let sent = transfer(&mut client, &mut server);
            let answered = transfer(&mut server, &mut client);
            assert!(sent || answered, "handshake stalled");
        }
        server.negotiated_cipher_suite().map(|s| s.suite())
    }

    #[test]
    fn inbound_picks_aes_128_gcm_over_a_client_preferring_aes_256() {
        use warden_identity::test_util::TestCa;
        use warden_identity::{SharedBundles, SpiffeId, SvidCertResolver};
        let ca = TestCa::new("example.org");
        let hour = std::time::Duration::from_secs(3600);
        let id = |s: &str| s.parse::<SpiffeId>().unwrap();
        let server_svid = ca.issue_svid(&id("spiffe://example.org/backend"), hour);
        let client_svid = ca.issue_svid(&id("spiffe://example.org/client"), hour);
        let bundles: Arc<dyn BundleSource> =
            Arc::new(SharedBundles::new(TestCa::bundle_set(&[&ca])));
        let resolver = |svid| Arc::new(SvidCertResolver::from_svid(svid).unwrap());
        for (version, want) in [
            (
                &rustls::version::TLS13,
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
            ),
            (
                &rustls::version::TLS12,
                rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            ),
        ] {
            let server = server_config(
                resolver(&server_svid),
                Arc::clone(&bundles),
                true,
                Protocol::Http,
                None,
            )
            .unwrap();
            // rustls's own ring provider lists AES-256-GCM first.
            let provider = rustls::crypto::ring::default_provider();
            assert_eq!(
                provider.cipher_suites[0].suite(),
                rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
            );
            let verifier = Arc::new(warden_identity::SpiffeServerCertVerifier::new(
                Arc::clone(&bundles),
                Authorize::AnyTrusted,
            ));
            let client = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(&[version])
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_client_cert_resolver(resolver(&client_svid));
            assert_eq!(negotiate(client, server), Some(want), "{version:?}");
        }
    }

    #[test]
    fn hex_is_lowercase_pairs() {
        assert_eq!(hex(&[0x00, 0xab, 0x10]), "00ab10");
    }
}
