//! X.509-SVID chain verification: the SPIFFE profile checks plus RFC 5280 path validation by
//! rustls-webpki against the bundle of the leaf's trust domain.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use webpki::{EndEntityCert, ExtendedKeyUsageValidator, KeyPurposeIdIter, VerifiedPath};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;

use super::{SvidError, checks};
use crate::{BundleSet, SpiffeId, TrustDomain};

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
/// - the bundle authority that anchors the path is valid at `now` and its path length
///   constraint holds;
/// - these profile checks run on every candidate path webpki builds: a path that fails them
///   makes it try the next (a twin intermediate, a renewed root), as RFC 4158 path building
///   would;
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
    // The SPIFFE checks webpki does not make run on every candidate path it builds, so that a
    // path failing them makes webpki try the next one (another intermediate or anchor with the
    // same name) instead of refusing the chain. The latest refusal is kept to report it.
    let refused: RefCell<Option<SvidError>> = RefCell::new(None);
    let check_path = |path: &VerifiedPath<'_>| -> Result<(), webpki::Error> {
        check_path(path, chain, &anchors, &anchor_certs, &trust_domain, now).map_err(|err| {
            *refused.borrow_mut() = Some(err);
            // Non-fatal to webpki: it goes on to other candidate paths.
            webpki::Error::UnknownIssuer
        })
    };
    let verified = end_entity.verify_for_usage(
        algs,
        &anchors,
        intermediates,
        time,
        SpiffeEku,
        None,
        Some(&check_path),
    );
    match verified {
        Ok(_) => Ok(id),
        Err(err) => Err(refused.into_inner().unwrap_or_else(|| match err {
            webpki::Error::CertExpired { .. } => SvidError::Expired,
            webpki::Error::CertNotValidYet { .. } => SvidError::NotYetValid,
            webpki::Error::CaUsedAsEndEntity => SvidError::LeafIsCa,
            other => SvidError::Untrusted {
                trust_domain: trust_domain.clone(),
                reason: webpki_reason(&other),
            },
        })),
    }
}

/// The checks on a path webpki validated that it does not make itself: the anchoring bundle
/// authority is valid at `now` (webpki keeps only a trust anchor's name and key, and would
/// let an expired root anchor new SVIDs) and its path length constraint holds (rule X-10);
/// every intermediate is a SPIFFE signing certificate.
fn check_path(
    path: &VerifiedPath<'_>,
    chain: &[CertificateDer<'_>],
    anchors: &[TrustAnchor<'_>],
    anchor_certs: &[&CertificateDer<'_>],
    trust_domain: &TrustDomain,
    now: SystemTime,
) -> Result<(), SvidError> {
    let untrusted = |reason: &str| SvidError::Untrusted {
        trust_domain: trust_domain.clone(),
        reason: reason.to_owned(),
    };
    let used_anchor = anchors.iter().position(|a| std::ptr::eq(a, path.anchor()));
    let anchor_cert = used_anchor
        .and_then(|i| anchor_certs.get(i))
        .ok_or_else(|| untrusted("path anchored outside the bundle"))?;
    let anchor = match X509Certificate::from_der(anchor_cert.as_ref()) {
        Ok((_, anchor)) => anchor,
        Err(_) => return Err(untrusted("bundle authority is not a valid certificate")),
    };
    let now_secs = now
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .unwrap_or(i64::MAX);
    let validity = anchor.validity();
    if now_secs < validity.not_before.timestamp() {
        return Err(SvidError::NotYetValid);
    }
    if now_secs > validity.not_after.timestamp() {
        return Err(SvidError::Expired);
    }
    let path_len = anchor
        .basic_constraints()
        .ok()
        .flatten()
        .and_then(|bc| bc.value.path_len_constraint);
    let intermediates_on_path = path.intermediate_certificates().count();
    if path_len.is_some_and(|max| intermediates_on_path > max as usize) {
        return Err(untrusted(
            "path length constraint of the bundle authority violated",
        ));
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
    Ok(())
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
