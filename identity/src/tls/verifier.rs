//! rustls certificate verifiers for SPIFFE mutual TLS: a peer is accepted only when its chain
//! is a valid X.509-SVID (see [`crate::verify_x509_svid`]) and its SPIFFE ID is authorized.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};

use super::chain_cache::{ChainCache, ChainKey};
use super::{Authorize, BundleSource};
use crate::{SpiffeId, SvidError};

/// Why a TLS peer was refused; carried inside `rustls::Error::InvalidCertificate`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsVerifyError {
    /// The chain is not a valid X.509-SVID for the bundles in force.
    #[error("peer x509-svid rejected: {0}")]
    Svid(#[from] SvidError),
    /// The SVID is valid but its SPIFFE ID is not one this endpoint accepts.
    #[error("peer spiffe id `{0}` is not authorized")]
    NotAuthorized(SpiffeId),
}

/// Server-side verifier of client X.509-SVIDs. A client certificate is required.
///
/// Checked, at each handshake with the bundles the source holds then:
/// - everything [`crate::verify_x509_svid`] checks (SPIFFE profile, path validation against
///   the bundle of the client's own trust domain, validity) — for a chain accepted in the last
///   minute against the same bundle set, byte for byte the same, only the validity periods are
///   checked again (its signatures were verified then);
/// - the client's SPIFFE ID is allowed by the [`Authorize`] policy;
/// - the handshake signature, with the ring provider's algorithms (TLS 1.2 and 1.3).
///
/// Not checked: revocation. No CA names are sent as hints.
#[derive(Debug)]
pub struct SpiffeClientCertVerifier {
    inner: Verifier,
}

/// Client-side verifier of server X.509-SVIDs. The DNS server name the client connects with
/// is ignored: the server is identified by its SPIFFE ID alone.
///
/// Checked: the same as [`SpiffeClientCertVerifier`]. Not checked: the server name, OCSP
/// stapling, revocation.
#[derive(Debug)]
pub struct SpiffeServerCertVerifier {
    inner: Verifier,
}

#[derive(Debug)]
struct Verifier {
    bundles: Arc<dyn BundleSource>,
    authorize: Authorize,
    algorithms: WebPkiSupportedAlgorithms,
    /// Chains accepted recently against the bundles in force (see `chain_cache`).
    accepted: ChainCache,
}

// === impl Verifier ===

impl Verifier {
    fn new(bundles: Arc<dyn BundleSource>, authorize: Authorize) -> Self {
        let algorithms = super::crypto_provider().signature_verification_algorithms;
        Self {
            bundles,
            authorize,
            algorithms,
            accepted: ChainCache::default(),
        }
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<SpiffeId, rustls::Error> {
        let mut chain = Vec::with_capacity(intermediates.len() + 1);
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        let secs = now.as_secs();
        let now = UNIX_EPOCH + Duration::from_secs(secs);
        let bundles = self.bundles.bundles();
        let key = ChainKey::of(&chain);
        let verified = match self.accepted.get(key, &bundles, secs) {
            Some(id) => Ok(id),
            None => crate::verify_x509_svid(&chain, &bundles, now)
                .inspect(|id| self.accepted.insert(key, &chain, &bundles, id)),
        };
        let result = verified.map_err(TlsVerifyError::Svid).and_then(|id| {
            match self.authorize.allows(&id) {
                true => Ok(id),
                false => Err(TlsVerifyError::NotAuthorized(id)),
            }
        });
        result.map_err(|err| {
            // Debug only: anyone can connect, and the listener that ran the handshake reports
            // its failure (with this error) in its own line.
            tracing::debug!(error = %err, "tls peer rejected");
            to_rustls_error(err)
        })
    }

    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

fn to_rustls_error(err: TlsVerifyError) -> rustls::Error {
    let cert_err = match err {
        TlsVerifyError::Svid(SvidError::Expired) => CertificateError::Expired,
        TlsVerifyError::Svid(SvidError::NotYetValid) => CertificateError::NotValidYet,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(cert_err)
}

// === impl SpiffeClientCertVerifier ===

impl SpiffeClientCertVerifier {
    /// A verifier reading bundles from `bundles` and accepting clients allowed by `authorize`.
    pub fn new(bundles: Arc<dyn BundleSource>, authorize: Authorize) -> Self {
        Self {
            inner: Verifier::new(bundles, authorize),
        }
    }
}

impl ClientCertVerifier for SpiffeClientCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner.verify(end_entity, intermediates, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.algorithms.supported_schemes()
    }
}

// === impl SpiffeServerCertVerifier ===

impl SpiffeServerCertVerifier {
    /// A verifier reading bundles from `bundles` and accepting servers allowed by `authorize`.
    pub fn new(bundles: Arc<dyn BundleSource>, authorize: Authorize) -> Self {
        Self {
            inner: Verifier::new(bundles, authorize),
        }
    }
}

impl ServerCertVerifier for SpiffeServerCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify(end_entity, intermediates, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.algorithms.supported_schemes()
    }
}
