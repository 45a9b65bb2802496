//! X.509-SVID chain verification: the SPIFFE profile checks plus RFC 5280 path validation by
//! rustls-webpki against the bundle of the leaf's trust domain.

use std::time::{SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use webpki::{EndEntityCert, ExtendedKeyUsageValidator, KeyPurposeIdIter};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;

use super::{SvidError, checks};
use crate::{BundleSet, SpiffeId};

/// Extended key usage policy handed to webpki. The leaf's EKU is checked by
/// `checks::check_leaf` (rule X-8: both serverAuth and clientAuth when present); a CA's EKU is
/// optional and not restricted, so here only the encoding is checked.
struct SpiffeEku;

/// Verifies a peer's X.509-SVID chain (leaf first, then intermediates) at `now` and returns
/// the leaf's SPIFFE ID.
///
/// Checked:
/// - the leaf has exactly one URI SAN, a SPIFFE ID with a path;
/// - an empty subject comes with a critical SAN extension;
/// - the leaf is not a CA; its key usage is present, critical, has
///   `digitalSignature` and neither `keyCertSign` nor `cRLSign`;
/// - the leaf's extended key usage, when present, has both `serverAuth` and `clientAuth`;
/// - the chain validates per RFC 5280 (signatures, validity at `now`, basic constraints and
///   path length, DNS and IP name constraints) against the X.509 authorities of the bundle for
///   the **leaf's** trust domain only; no bundle means untrusted;
/// - every intermediate on the validated path is a CA with a critical key usage that has
///   `keyCertSign`, and its SPIFFE ID, if any, has no path;
/// - the path length constraint of the bundle authority that anchors the path;
/// - only the bundle's CA certificates (cA true, `keyCertSign` when a key usage is present)
///   anchor a path: webpki anchors any certificate (B-5).
///
/// Not supported: URI name constraints on a CA (X-10 says a CA MAY use them). rustls-webpki
/// does not evaluate them and fails closed, so every SVID under such a CA is refused as
/// untrusted ("name constraint violated"); Warden's own CA does not set them.
///
/// Not checked: revocation (SPIFFE relies on short lifetimes); the rest of the key usage, the
/// criticality and the SPIFFE ID of the bundle's own authorities (they are configured trust);
/// whether intermediates are in the leaf's trust domain (a SHOULD in X-9).
pub fn verify_x509_svid(
    chain: &[CertificateDer<'_>],
    bundles: &BundleSet,
    now: SystemTime,
) -> Result<SpiffeId, SvidError> {
    let (leaf_der, intermediates) = chain.split_first().ok_or(SvidError::EmptyChain)?;
    let leaf = parse(leaf_der, 0)?;
    let id = checks::check_leaf(&leaf)?;

    let trust_domain = id.trust_domain();
    let bundle = bundles.get(&trust_domain);
    // Bundle certificates and the trust anchors made from them, in the same order.
    let mut anchor_certs = Vec::new();
    let mut anchors: Vec<TrustAnchor<'_>> = Vec::new();
    for cert in bundle.map(|b| b.x509_authorities()).unwrap_or_default() {
        // webpki makes an anchor of any certificate: a leaf that reached a bundle (one built in
        // code, not parsed, which refuses it) must not sign SVIDs (rule B-5).
        if let Err(reason) = crate::bundle::ca_certificate(cert) {
            tracing::debug!(trust_domain = %trust_domain, reason, "ignoring an x509 authority in the bundle that is not a certificate authority");
            continue;
        }
        match webpki::anchor_from_trusted_cert(cert) {
            Ok(anchor) => {
                anchor_certs.push(cert);
                anchors.push(anchor);
            }
            Err(err) => {
                tracing::warn!(trust_domain = %trust_domain, error = %err, "unusable x509 authority in bundle");
            }
        }
    }
    if anchors.is_empty() {
        return Err(SvidError::NoBundle(trust_domain));
    }

    let end_entity =
        EndEntityCert::try_from(leaf_der).map_err(|_| SvidError::BadCertificate { index: 0 })?;
    let time = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
    let algs = crate::tls::crypto_provider()
        .signature_verification_algorithms
        .all;
    let path = end_entity
        .verify_for_usage(algs, &anchors, intermediates, time, SpiffeEku, None, None)
        .map_err(|err| match err {
            webpki::Error::CertExpired { .. } => SvidError::Expired,
            webpki::Error::CertNotValidYet { .. } => SvidError::NotYetValid,
            webpki::Error::CaUsedAsEndEntity => SvidError::LeafIsCa,
            other => SvidError::Untrusted {
                trust_domain: trust_domain.clone(),
                reason: webpki_reason(&other),
            },
        })?;

    // webpki keeps only the name and key of a trust anchor, so the bundle authority's own
    // path length constraint (rule X-10) is enforced here.
    let used_anchor = anchors.iter().position(|a| std::ptr::eq(a, path.anchor()));
    if let Some(anchor_cert) = used_anchor.and_then(|i| anchor_certs.get(i)) {
        let intermediates_on_path = path.intermediate_certificates().count();
        let path_len = match X509Certificate::from_der(anchor_cert.as_ref()) {
            Ok((_, anchor)) => anchor
                .basic_constraints()
                .ok()
                .flatten()
                .and_then(|bc| bc.value.path_len_constraint),
            Err(_) => {
                return Err(SvidError::Untrusted {
                    trust_domain,
                    reason: "bundle authority is not a valid certificate".to_owned(),
                });
            }
        };
        if path_len.is_some_and(|max| intermediates_on_path > max as usize) {
            return Err(SvidError::Untrusted {
                trust_domain,
                reason: "path length constraint of the bundle authority violated".to_owned(),
            });
        }
    }

    for cert in path.intermediate_certificates() {
        let der = cert.der();
        let index = chain
            .iter()
            .position(|c| c.as_ref() == der.as_ref())
            .unwrap_or_default();
        let parsed = parse(&der, index)?;
        checks::check_signing_cert(&parsed, index)?;
    }
    Ok(id)
}

fn parse<'a>(der: &'a CertificateDer<'_>, index: usize) -> Result<X509Certificate<'a>, SvidError> {
    match X509Certificate::from_der(der.as_ref()) {
        Ok(([], cert)) => Ok(cert),
        _ => Err(SvidError::BadCertificate { index }),
    }
}

/// A short lowercase reason for a path validation failure.
fn webpki_reason(err: &webpki::Error) -> String {
    match err {
        webpki::Error::UnknownIssuer => "issuer is not a known authority".to_owned(),
        webpki::Error::InvalidSignatureForPublicKey => "a signature does not verify".to_owned(),
        webpki::Error::PathLenConstraintViolated => "path length constraint violated".to_owned(),
        webpki::Error::NameConstraintViolation => "name constraint violated".to_owned(),
        webpki::Error::EndEntityUsedAsCa => "an end-entity certificate signed another".to_owned(),
        other => format!("path validation failed ({other:?})").to_lowercase(),
    }
}

// === impl SpiffeEku ===

impl ExtendedKeyUsageValidator for SpiffeEku {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        for purpose in iter {
            purpose?;
        }
        Ok(())
    }
}
