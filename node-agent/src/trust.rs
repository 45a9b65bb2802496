//! Trust bundles as the agent receives them from the CA (`warden.v1.Bundle`), converted into
//! `identity`'s [`Bundle`]/[`BundleSet`] (which provide the Workload API encodings:
//! concatenated DER and SPIFFE JWKS with only `jwt-svid` keys), and PEM trust-bundle files.

use std::time::{Duration, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use warden_api::v1;
use warden_identity::TrustDomain;
pub use warden_identity::{Bundle, BundleSet, JwtAuthority};

/// Why a bundle from the CA (or a bundle file) was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The trust domain name does not parse.
    #[error("bundle has an invalid trust domain `{0}`")]
    TrustDomain(String),
    /// An X.509 authority does not parse.
    #[error("bundle for `{0}` has an x509 authority that is not a certificate")]
    Certificate(String),
    /// An X.509 authority is not a certificate authority (rule B-5).
    #[error("bundle for `{0}`: {1}")]
    NotCa(String, String),
    /// A bundle file holds no certificate.
    #[error("trust bundle `{0}` holds no pem certificate")]
    NoCertificates(String),
}

/// Converts the CA's wire form of one bundle, checking every certificate parses.
pub fn bundle_from_proto(b: &v1::Bundle) -> Result<Bundle, TrustError> {
    let name = b
        .trust_domain
        .strip_prefix("spiffe://")
        .unwrap_or(&b.trust_domain);
    let td = TrustDomain::new(name).map_err(|_| TrustError::TrustDomain(b.trust_domain.clone()))?;
    let mut bundle = Bundle::new(td);
    for (index, der) in b.x509_authorities.iter().enumerate() {
        x509_parser::parse_x509_certificate(der)
            .map_err(|_| TrustError::Certificate(b.trust_domain.clone()))?;
        bundle
            .add_checked_x509_authority(CertificateDer::from(der.clone()), index)
            .map_err(|e| TrustError::NotCa(b.trust_domain.clone(), e.to_string()))?;
    }
    for k in &b.jwt_authorities {
        let expires = u64::try_from(k.expires_at)
            .ok()
            .filter(|s| *s > 0)
            .map(|s| UNIX_EPOCH + Duration::from_secs(s));
        bundle.add_jwt_authority(JwtAuthority::new(
            k.kid.clone(),
            k.public_key.clone(),
            expires,
        ));
    }
    bundle.set_sequence(b.sequence);
    if b.refresh_hint > 0 {
        bundle.set_refresh_hint(Duration::from_secs(u64::from(b.refresh_hint)));
    }
    Ok(bundle)
}

/// Converts the CA's `Bundles` message (own + federated); bundles of different trust domains
/// stay separate (B-8).
pub fn bundles_from_proto(b: &v1::Bundles) -> Result<BundleSet, TrustError> {
    let mut set = BundleSet::new();
    for bundle in b.own.iter().chain(&b.federated) {
        set.insert(bundle_from_proto(bundle)?);
    }
    Ok(set)
}

/// Reads PEM certificates (a trust-bundle file).
pub fn certificates_from_pem(
    name: &str,
    pem_text: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let certs: Vec<CertificateDer<'static>> = pem::parse_many(pem_text)
        .map_err(|_| TrustError::NoCertificates(name.to_owned()))?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect();
    if certs.is_empty() {
        return Err(TrustError::NoCertificates(name.to_owned()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_with_bad_trust_domain_or_certificate_is_refused() {
        let bad_td = v1::Bundle {
            trust_domain: "Not A TD".into(),
            ..Default::default()
        };
        assert!(matches!(
            bundle_from_proto(&bad_td),
            Err(TrustError::TrustDomain(_))
        ));
        let bad_cert = v1::Bundle {
            trust_domain: "example.org".into(),
            x509_authorities: vec![vec![1, 2, 3]],
            ..Default::default()
        };
        assert!(matches!(
            bundle_from_proto(&bad_cert),
            Err(TrustError::Certificate(_))
        ));
        // A leaf among the authorities would be a trust anchor (B-5).
        let ca = warden_identity::test_util::TestCa::new("example.org");
        let leaf = ca.issue_svid(
            &"spiffe://example.org/w".parse().unwrap(),
            std::time::Duration::from_secs(600),
        );
        let with_leaf = v1::Bundle {
            trust_domain: "example.org".into(),
            x509_authorities: vec![ca.root_cert().to_vec(), leaf.leaf().to_vec()],
            ..Default::default()
        };
        let err = bundle_from_proto(&with_leaf).unwrap_err();
        assert!(
            err.to_string()
                .contains("certificate 1 is not a certificate authority"),
            "{err}"
        );
    }

    #[test]
    fn pem_file_without_certificates_is_named() {
        let err = certificates_from_pem("bundle.pem", b"nothing here").unwrap_err();
        assert_eq!(
            err.to_string(),
            "trust bundle `bundle.pem` holds no pem certificate"
        );
    }
}
