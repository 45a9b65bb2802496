//! Verifies the CA's TLS certificate: the chain must validate (rustls-webpki, server-auth
//! usage) against the agent's trust anchors, and the leaf must carry exactly one SPIFFE ID,
//! `spiffe://<td>/warden/ca` (any trust domain before the agent knows its own, then exactly
//! its own). The DNS server name is not checked: the SPIFFE ID is the server's identity.

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use warden_identity::TrustDomain;

/// The path of the CA's own SPIFFE ID.
pub(crate) const CA_PATH: &str = "/warden/ca";

/// A rustls verifier for the CA's SVID.
#[derive(Debug)]
pub(crate) struct CaServerVerifier {
    anchors: Vec<TrustAnchor<'static>>,
    trust_domain: Option<TrustDomain>,
    provider: Arc<CryptoProvider>,
}

// === impl CaServerVerifier ===

impl CaServerVerifier {
    pub(crate) fn new(
        roots: &[CertificateDer<'static>],
        trust_domain: Option<TrustDomain>,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        let anchors = roots
            .iter()
            .filter_map(|r| {
                webpki::anchor_from_trusted_cert(r)
                    .ok()
                    .map(|a| a.to_owned())
            })
            .collect();
        Self {
            anchors,
            trust_domain,
            provider,
        }
    }
}

impl ServerCertVerifier for CaServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))?;
        let id = crate::cache::spiffe_id_of(end_entity.as_ref()).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
        })?;
        let td_ok = self
            .trust_domain
            .as_ref()
            .is_none_or(|td| id.is_member_of(td));
        if id.path() != CA_PATH || !td_ok {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
