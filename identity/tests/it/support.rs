//! Helpers shared by the integration tests.

use std::time::SystemTime;

use warden_identity::test_util::{TestCa, webpki_verify};
use warden_identity::{BundleSet, SpiffeId, SvidError, X509Svid, verify_x509_svid};

pub(crate) const TD: &str = "example.org";
pub(crate) const WORKLOAD: &str = "spiffe://example.org/ns/prod/sa/api";

pub(crate) fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

/// Verifies a valid SVID with both our verifier and rustls-webpki on its own, and returns
/// the SPIFFE ID our verifier found.
pub(crate) fn verify_valid(svid: &X509Svid, ca: &TestCa, bundles: &BundleSet) -> SpiffeId {
    let now = SystemTime::now();
    webpki_verify(svid.cert_chain(), &ca.bundle(), now).expect("webpki accepts the svid");
    verify_x509_svid(svid.cert_chain(), bundles, now).expect("svid verifies")
}

/// The error our verifier reports for a chain, now.
pub(crate) fn verify_err(
    chain: &[warden_identity::CertificateDer<'static>],
    bundles: &BundleSet,
) -> SvidError {
    verify_x509_svid(chain, bundles, SystemTime::now()).unwrap_err()
}
