//! SPIFFE-aware rustls: the ring crypto provider, verifiers that accept a peer only when its
//! chain is a valid X.509-SVID of an authorized SPIFFE ID, a live-swappable SVID certificate
//! resolver, and helpers that put them into `ServerConfig`/`ClientConfig`.

mod authorize;
mod chain_cache;
mod resolver;
mod source;
mod verifier;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls_pki_types::CertificateDer;

pub use authorize::Authorize;
pub use resolver::SvidCertResolver;
pub use source::{BundleSource, SharedBundles};
pub use verifier::{SpiffeClientCertVerifier, SpiffeServerCertVerifier, TlsVerifyError};

use crate::SpiffeId;

/// The process-wide rustls crypto provider: ring, never aws-lc-rs, with ring's cipher suites
/// in [`CIPHER_SUITES`] order.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            Arc::new(CryptoProvider {
                cipher_suites: CIPHER_SUITES.to_vec(),
                ..rustls::crypto::ring::default_provider()
            })
        })
        .clone()
}

/// The cipher suites, most preferred first: ring's, with AES-128-GCM ahead of AES-256-GCM (as
/// BoringSSL and Go order them). With P-256 certificates and X25519 or P-256 key exchange a
/// session has 128-bit security whichever AES it uses; AES-128 runs 10 rounds rather than 14,
/// and its TLS 1.3 suite's key schedule and transcript use SHA-256, which x86 and Arm CPUs
/// compute in hardware, where SHA-384's runs in software (8 % of an inbound sidecar's CPU in a
/// run of one full handshake per request, by `perf`). Our servers pick by this order, not the
/// client's (`ignore_client_order`).
pub const CIPHER_SUITES: &[rustls::SupportedCipherSuite] = &[
    rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
    rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
    rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    rustls::crypto::ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    rustls::crypto::ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    rustls::crypto::ring::cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// The SPIFFE ID of a peer from the certificates rustls hands back after a handshake
/// (`peer_certificates()`), leaf first. Only meaningful on a connection whose verifier is one
/// of this module's; `None` when there is no certificate or no single SPIFFE URI SAN.
pub fn peer_spiffe_id(certs: &[CertificateDer<'_>]) -> Option<SpiffeId> {
    certs
        .first()
        .and_then(|leaf| crate::spiffe_id_from_cert(leaf.as_ref()).ok())
}

/// A server config: presents the SVID from `resolver`, requires a client SVID accepted by
/// `authorize` against `bundles`. TLS 1.2 and 1.3, ring provider, no session resumption.
pub fn server_config(
    resolver: Arc<SvidCertResolver>,
    bundles: Arc<dyn BundleSource>,
    authorize: Authorize,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let verifier = Arc::new(SpiffeClientCertVerifier::new(bundles, authorize));
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    // No session resumption: a resumed session is not verified again, so it would outlive a
    // bundle change that no longer trusts the peer, or the rotation of the peer's SVID.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.ignore_client_order = true;
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// A client config: presents the SVID from `resolver`, accepts a server SVID accepted by
/// `authorize` against `bundles` (the DNS server name is ignored).
pub fn client_config(
    resolver: Arc<SvidCertResolver>,
    bundles: Arc<dyn BundleSource>,
    authorize: Authorize,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let verifier = Arc::new(SpiffeServerCertVerifier::new(bundles, authorize));
    let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(resolver);
    // No session resumption (see `server_config`): every handshake verifies the server's SVID
    // against the bundles in force and presents our current SVID.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}
