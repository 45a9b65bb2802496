//! The agent API's TLS: TLS 1.3 only, the CA's own SVID (`spiffe://<td>/warden/ca`) as server
//! certificate (reissued by the server loop), and an optional client certificate verified as
//! an X.509-SVID of the trust domain by identity's SPIFFE verifier.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use warden_identity::{
    Authorize, BundleSource, SpiffeClientCertVerifier, SvidCertResolver, X509Svid, crypto_provider,
};

use crate::authority::Authority;
use crate::datastore::ca_spiffe_id;

/// Makes identity's SPIFFE client verifier optional: connections without a client certificate
/// are accepted (the handlers then refuse every RPC but attestation); a presented certificate
/// must still verify.
#[derive(Debug)]
struct OptionalClientAuth(SpiffeClientCertVerifier);

impl ClientCertVerifier for OptionalClientAuth {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The agent API server config.
pub(crate) fn server_config(
    authority: &Authority,
    resolver: Arc<SvidCertResolver>,
    bundles: Arc<dyn BundleSource>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let verifier = OptionalClientAuth(SpiffeClientCertVerifier::new(
        bundles,
        Authorize::AnyInTrustDomain(authority.trust_domain().clone()),
    ));
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec()];
    // Our suite order (`warden_identity::tls::CIPHER_SUITES`), whatever the client prefers.
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// Issues the CA's own SVID (`spiffe://<td>/warden/ca`) with a fresh P-256 key.
pub(crate) fn issue_server_svid(authority: &Authority, ttl: Duration) -> Result<X509Svid, String> {
    let id = ca_spiffe_id(authority.trust_domain());
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = CertificateParams::default();
    let uri = id
        .to_string()
        .try_into()
        .map_err(|_| "ca id is not ia5".to_owned())?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
    let signed = authority
        .sign_x509_svid(csr.der(), &id, &[], ttl)
        .map_err(|e| e.to_string())?;
    X509Svid::new(
        signed.cert_chain,
        PrivatePkcs8KeyDer::from(key.serialize_der()),
    )
    .map_err(|e| e.to_string())
}
