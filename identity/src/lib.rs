#![doc = include_str!("../README.md")]
//! Warden's identity core: SPIFFE IDs and trust domains (parsed, never merely validated),
//! workload selectors, X.509-SVID and JWT-SVID handling, trust bundles and the SPIFFE-aware
//! rustls verifiers that every Warden process uses.

mod bundle;
mod civil;
pub mod fuzzing;
mod jwk;
mod jwt;
mod rotation;
mod selector;
mod spiffe_id;
#[cfg(feature = "test-util")]
pub mod test_util;
pub mod tls;
mod x509;

pub use bundle::{Bundle, BundleError, BundleSet, JwtAuthority};
pub use civil::civil_from_days;
pub use jwt::{
    JWT_LEEWAY, JwtError, JwtSigner, JwtSvidClaims, MAX_AUDIENCE_LEN, MAX_AUDIENCES, MAX_JWT_LEN,
    check_audience, validate_jwt_svid,
};
pub use rotation::{MAX_JITTER, random_jitter, refresh_at};
pub use selector::{MAX_SELECTOR_LEN, Selector, SelectorError};
pub use spiffe_id::{
    MAX_SPIFFE_ID_LEN, MAX_TRUST_DOMAIN_LEN, SpiffeId, SpiffeIdError, TrustDomain,
};
pub use tls::{
    Authorize, BundleSource, SharedBundles, SpiffeClientCertVerifier, SpiffeServerCertVerifier,
    SvidCertResolver, TlsVerifyError, crypto_provider, peer_spiffe_id,
};
pub use x509::{SvidError, X509Svid, spiffe_id_from_cert, verify_x509_svid};

// Re-exported so that users name the same types this crate uses.
pub use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
