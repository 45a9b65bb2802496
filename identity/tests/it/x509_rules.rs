//! X.509-SVID verification, one test per rule X-1..X-12 (and more where a rule has parts).

use std::time::{Duration, SystemTime};

use warden_identity::test_util::{BadCa, BadLeaf, TestCa, webpki_verify};
use warden_identity::{Bundle, BundleSet, SvidError, TrustDomain, verify_x509_svid};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::support::{TD, WORKLOAD, id, verify_err, verify_valid};

const HOUR: Duration = Duration::from_secs(3600);

fn bad_leaf_error(bad: BadLeaf) -> SvidError {
    let ca = TestCa::new(TD);
    let (chain, _key) = ca.issue_bad_leaf(&id(WORKLOAD), bad);
    verify_err(&chain, &TestCa::bundle_set(&[&ca]))
}

fn bad_intermediate_error(bad: BadCa) -> SvidError {
    let root = TestCa::new(TD);
    let intermediate = root.bad_intermediate(bad);
    let svid = intermediate.issue_svid(&id(WORKLOAD), HOUR);
    verify_err(svid.cert_chain(), &TestCa::bundle_set(&[&root]))
}

#[test]
fn valid_svid_signed_by_root_verifies_with_both_verifiers() {
    let ca = TestCa::new(TD);
    let svid = ca.issue_svid(&id(WORKLOAD), HOUR);
    assert_eq!(
        verify_valid(&svid, &ca, &TestCa::bundle_set(&[&ca])),
        id(WORKLOAD)
    );
}

#[test]
fn valid_svid_through_two_intermediates_verifies_with_both_verifiers() {
    let root = TestCa::new(TD);
    let leaf_ca = root.intermediate().intermediate();
    let svid = leaf_ca.issue_svid(&id(WORKLOAD), HOUR);
    assert_eq!(svid.cert_chain().len(), 3);
    assert_eq!(
        verify_valid(&svid, &root, &TestCa::bundle_set(&[&root])),
        id(WORKLOAD)
    );
}

#[test]
fn leaf_with_two_uri_sans_is_rejected_x1() {
    assert_eq!(
        bad_leaf_error(BadLeaf::TwoUriSans),
        SvidError::MultipleUriSans(2)
    );
}

#[test]
fn leaf_without_uri_san_is_rejected_x1() {
    assert_eq!(bad_leaf_error(BadLeaf::NoUriSan), SvidError::NoUriSan);
}

#[test]
fn leaf_id_without_path_is_rejected_x2() {
    assert_eq!(
        bad_leaf_error(BadLeaf::IdWithoutPath),
        SvidError::LeafIdWithoutPath("spiffe://example.org".to_owned())
    );
}

#[test]
fn leaf_uri_san_that_is_not_spiffe_is_rejected_x2() {
    let err = bad_leaf_error(BadLeaf::NonSpiffeUri);
    assert!(
        matches!(err, SvidError::BadSpiffeId { ref uri, .. } if uri.starts_with("https://")),
        "{err}"
    );
}

/// The certificate is anyone's (the ID is read before the chain is checked): its URI SAN is
/// quoted and escaped in the error, which listeners log, so it cannot forge a log line.
#[test]
fn uri_san_with_a_line_break_is_rejected_x2_and_escaped_in_the_error() {
    let err = bad_leaf_error(BadLeaf::UriWithLineBreak);
    assert!(matches!(err, SvidError::BadSpiffeId { ref uri, .. } if uri.contains('\n')));
    let text = err.to_string();
    assert!(!text.contains('\n'), "{text}");
    assert!(
        text.contains(r#"\n2026-01-01T00:00:00Z  INFO decision allow""#),
        "{text}"
    );
}

#[test]
fn empty_subject_with_non_critical_san_is_rejected_x3() {
    assert_eq!(
        bad_leaf_error(BadLeaf::NonCriticalSanWithEmptySubject),
        SvidError::NonCriticalSanWithEmptySubject { index: 0 }
    );
}

#[test]
fn empty_subject_with_critical_san_is_accepted_x3() {
    let ca = TestCa::new(TD);
    let svid = ca.issue_svid(&id(WORKLOAD), HOUR);
    let (_, cert) = X509Certificate::from_der(svid.leaf().as_ref()).unwrap();
    assert!(
        cert.subject().iter().next().is_none(),
        "test leaf has an empty subject"
    );
    assert!(cert.subject_alternative_name().unwrap().unwrap().critical);
    verify_valid(&svid, &ca, &TestCa::bundle_set(&[&ca]));
}

#[test]
fn ca_leaf_is_rejected_x4() {
    assert_eq!(bad_leaf_error(BadLeaf::CaLeaf), SvidError::LeafIsCa);
}

#[test]
fn intermediate_that_is_not_a_ca_is_rejected_x4() {
    let err = bad_intermediate_error(BadCa::NotCa);
    assert!(matches!(err, SvidError::Untrusted { .. }), "{err}");
}

#[test]
fn leaf_without_key_usage_is_rejected_x5() {
    assert_eq!(
        bad_leaf_error(BadLeaf::MissingKeyUsage),
        SvidError::MissingKeyUsage { index: 0 }
    );
}

#[test]
fn leaf_with_non_critical_key_usage_is_rejected_x5() {
    assert_eq!(
        bad_leaf_error(BadLeaf::NonCriticalKeyUsage),
        SvidError::KeyUsageNotCritical { index: 0 }
    );
}

#[test]
fn intermediate_without_key_usage_is_rejected_x5() {
    assert_eq!(
        bad_intermediate_error(BadCa::MissingKeyUsage),
        SvidError::MissingKeyUsage { index: 1 }
    );
}

#[test]
fn leaf_without_digital_signature_is_rejected_x6() {
    assert_eq!(
        bad_leaf_error(BadLeaf::NoDigitalSignature),
        SvidError::LeafWithoutDigitalSignature
    );
}

#[test]
fn leaf_with_key_cert_sign_is_rejected_x6() {
    assert_eq!(
        bad_leaf_error(BadLeaf::KeyCertSign),
        SvidError::LeafWithKeyCertSign
    );
}

#[test]
fn leaf_with_crl_sign_is_rejected_x6() {
    assert_eq!(bad_leaf_error(BadLeaf::CrlSign), SvidError::LeafWithCrlSign);
}

#[test]
fn intermediate_without_key_cert_sign_is_rejected_x7() {
    assert_eq!(
        bad_intermediate_error(BadCa::NoKeyCertSign),
        SvidError::SigningCertWithoutKeyCertSign { index: 1 }
    );
}

#[test]
fn leaf_eku_without_client_auth_is_rejected_x8() {
    assert_eq!(
        bad_leaf_error(BadLeaf::ServerAuthOnlyEku),
        SvidError::EkuWithoutServerAndClientAuth
    );
}

#[test]
fn leaf_without_eku_is_accepted_x8() {
    let ca = TestCa::new(TD);
    let svid = ca.issue_svid_without_eku(&id(WORKLOAD), HOUR);
    let (_, cert) = X509Certificate::from_der(svid.leaf().as_ref()).unwrap();
    assert!(cert.extended_key_usage().unwrap().is_none());
    verify_valid(&svid, &ca, &TestCa::bundle_set(&[&ca]));
}

#[test]
fn intermediate_id_with_path_is_rejected_x9() {
    assert_eq!(
        bad_intermediate_error(BadCa::IdWithPath),
        SvidError::SigningCertIdWithPath {
            index: 1,
            id: "spiffe://example.org/ca".to_owned()
        }
    );
}

#[test]
fn bundle_authority_path_length_constraint_is_enforced_x10() {
    let root = TestCa::with_path_len(TD, 0);
    let bundles = TestCa::bundle_set(&[&root]);
    // Directly under the root: allowed.
    verify_valid(&root.issue_svid(&id(WORKLOAD), HOUR), &root, &bundles);
    // Under an intermediate: the root allows no intermediate CA.
    let svid = root.intermediate().issue_svid(&id(WORKLOAD), HOUR);
    let err = verify_err(svid.cert_chain(), &bundles);
    assert!(
        matches!(err, SvidError::Untrusted { ref reason, .. } if reason.contains("path length")),
        "{err}"
    );
}

#[test]
fn intermediate_path_length_constraint_is_enforced_x10() {
    let root = TestCa::new(TD);
    let bundles = TestCa::bundle_set(&[&root]);
    let constrained = root.intermediate_with_path_len(0);
    verify_valid(
        &constrained.issue_svid(&id(WORKLOAD), HOUR),
        &root,
        &bundles,
    );
    let svid = constrained.intermediate().issue_svid(&id(WORKLOAD), HOUR);
    let err = verify_err(svid.cert_chain(), &bundles);
    assert!(matches!(err, SvidError::Untrusted { .. }), "{err}");
    assert!(webpki_verify(svid.cert_chain(), &root.bundle(), SystemTime::now()).is_err());
}

#[test]
fn leaf_is_checked_against_its_own_trust_domain_bundle_x11() {
    let a = TestCa::new("a.org");
    let b = TestCa::new("b.org");
    // a.org's CA signs an SVID claiming to be in b.org.
    let svid = a.issue_svid(&id("spiffe://b.org/impostor"), HOUR);
    let err = verify_err(svid.cert_chain(), &TestCa::bundle_set(&[&a, &b]));
    assert!(
        matches!(err, SvidError::Untrusted { ref trust_domain, .. } if trust_domain.name() == "b.org"),
        "{err}"
    );
}

#[test]
fn leaf_without_bundle_for_its_trust_domain_is_untrusted_x11() {
    let a = TestCa::new("a.org");
    let b = TestCa::new("b.org");
    let svid = b.issue_svid(&id("spiffe://b.org/w"), HOUR);
    let err = verify_err(svid.cert_chain(), &TestCa::bundle_set(&[&a]));
    assert_eq!(err, SvidError::NoBundle(TrustDomain::new("b.org").unwrap()));
}

#[test]
fn leaf_signed_by_unknown_authority_of_same_trust_domain_is_untrusted_x11() {
    let trusted = TestCa::new(TD);
    let rogue = TestCa::new(TD);
    let svid = rogue.issue_svid(&id(WORKLOAD), HOUR);
    let err = verify_err(svid.cert_chain(), &TestCa::bundle_set(&[&trusted]));
    assert!(matches!(err, SvidError::Untrusted { .. }), "{err}");
}

#[test]
fn empty_bundle_trusts_nothing_x11_b1() {
    let ca = TestCa::new(TD);
    let svid = ca.issue_svid(&id(WORKLOAD), HOUR);
    let bundles: BundleSet = [Bundle::new(TrustDomain::new(TD).unwrap())]
        .into_iter()
        .collect();
    assert_eq!(
        verify_err(svid.cert_chain(), &bundles),
        SvidError::NoBundle(TrustDomain::new(TD).unwrap())
    );
}

#[test]
fn signing_certificate_cannot_authenticate_x12() {
    let root = TestCa::new(TD);
    let intermediate = root.intermediate();
    let bundles = TestCa::bundle_set(&[&root]);
    // The intermediate's own certificate presented as a peer certificate.
    let err = verify_err(&[intermediate.cert().clone()], &bundles);
    assert!(
        matches!(err, SvidError::LeafIdWithoutPath(_) | SvidError::LeafIsCa),
        "{err}"
    );
    // A CA certificate that does carry a workload path.
    assert_eq!(bad_leaf_error(BadLeaf::CaLeaf), SvidError::LeafIsCa);
}

#[test]
fn expired_leaf_is_rejected() {
    assert_eq!(bad_leaf_error(BadLeaf::Expired), SvidError::Expired);
}

#[test]
fn not_yet_valid_leaf_is_rejected() {
    assert_eq!(bad_leaf_error(BadLeaf::NotYetValid), SvidError::NotYetValid);
}

#[test]
fn svid_is_rejected_after_its_not_after() {
    let ca = TestCa::new(TD);
    let svid = ca.issue_svid(&id(WORKLOAD), HOUR);
    let bundles = TestCa::bundle_set(&[&ca]);
    let later = svid.not_after() + Duration::from_secs(1);
    assert_eq!(
        verify_x509_svid(svid.cert_chain(), &bundles, later),
        Err(SvidError::Expired)
    );
}

#[test]
fn an_expired_bundle_authority_anchors_nothing_x10() {
    let ca = TestCa::new(TD);
    let svid = ca.issue_svid(&id(WORKLOAD), HOUR);
    let now = SystemTime::now();
    let expired = ca.root_valid(now - 2 * HOUR, now - HOUR);
    let not_yet = ca.root_valid(now + HOUR, now + 2 * HOUR);
    // The same name and key as the root that signed the SVID, but not valid now: webpki keeps
    // only an anchor's name and key and would accept the chain.
    let only = |root: &warden_identity::CertificateDer<'static>| -> BundleSet {
        [ca.bundle_of(std::slice::from_ref(root))]
            .into_iter()
            .collect()
    };
    assert_eq!(
        verify_x509_svid(svid.cert_chain(), &only(&expired), now),
        Err(SvidError::Expired)
    );
    assert_eq!(
        verify_x509_svid(svid.cert_chain(), &only(&not_yet), now),
        Err(SvidError::NotYetValid)
    );
    // Beside a copy that is valid now (a renewed root), the chain is anchored by that one.
    let renewed = ca.root_valid(now - HOUR, now + HOUR);
    let both: BundleSet = [ca.bundle_of(&[expired, renewed])].into_iter().collect();
    assert_eq!(
        verify_x509_svid(svid.cert_chain(), &both, now),
        Ok(id(WORKLOAD))
    );
}

#[test]
fn a_path_failing_the_profile_gives_way_to_another_path_x9() {
    let root = TestCa::new(TD);
    let bundles = TestCa::bundle_set(&[&root]);
    let (good, bad_twin) = root.intermediate_twins(BadCa::IdWithPath);
    let svid = good.issue_svid(&id(WORKLOAD), HOUR);
    let leaf = svid.cert_chain()[0].clone();
    // The profile-breaking twin comes first, so it is the first path webpki finds.
    let chain = [leaf.clone(), bad_twin.clone(), good.cert().clone()];
    assert_eq!(
        verify_x509_svid(&chain, &bundles, SystemTime::now()),
        Ok(id(WORKLOAD))
    );
    // With the bad twin alone, the chain is refused for what the twin breaks.
    assert_eq!(
        verify_err(&[leaf, bad_twin], &bundles),
        SvidError::SigningCertIdWithPath {
            index: 1,
            id: "spiffe://example.org/ca".to_owned()
        }
    );
}

#[test]
fn empty_chain_and_garbage_certificates_are_rejected() {
    let bundles = BundleSet::new();
    assert_eq!(verify_err(&[], &bundles), SvidError::EmptyChain);
    let garbage = warden_identity::CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
    assert_eq!(
        verify_err(&[garbage], &bundles),
        SvidError::BadCertificate { index: 0 }
    );
}

#[test]
fn error_messages_are_lowercase_and_name_the_problem() {
    let err = bad_leaf_error(BadLeaf::TwoUriSans).to_string();
    assert_eq!(
        err,
        "leaf certificate has 2 uri sans; exactly one is allowed"
    );
    let err = SvidError::NoBundle(TrustDomain::new("b.org").unwrap()).to_string();
    assert_eq!(err, "no x.509 bundle for trust domain `b.org`");
}

/// A leaf that reached a bundle built in code (parsing refuses one) is no trust anchor: its key
/// signs a leaf for another workload, which must not verify (B-5; webpki itself makes an anchor
/// of any certificate).
#[test]
fn a_leaf_among_a_bundles_authorities_signs_nothing_b5() {
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
    let ca = TestCa::new(TD);
    let svid = ca.issue_svid(&id(WORKLOAD), HOUR);
    let mut bundle = Bundle::new(TrustDomain::new(TD).unwrap());
    bundle.add_x509_authority(svid.leaf().clone());
    bundle.add_x509_authority(ca.root_cert().clone());
    let bundles: BundleSet = std::iter::once(bundle).collect();
    let key = KeyPair::try_from(svid.private_key().secret_pkcs8_der()).unwrap();
    let issuer = Issuer::from_ca_cert_der(svid.leaf(), key).unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::ExplicitNoCa;
    params.not_before = (SystemTime::now() - Duration::from_secs(60)).into();
    params.not_after = (SystemTime::now() + HOUR).into();
    params.subject_alt_names = vec![SanType::URI(
        "spiffe://example.org/admin".try_into().unwrap(),
    )];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let forged = params
        .signed_by(&KeyPair::generate().unwrap(), &issuer)
        .unwrap();
    let chain = [forged.der().clone()];
    let err = verify_err(&chain, &bundles);
    assert!(matches!(err, SvidError::Untrusted { .. }), "{err:?}");
    // The root in the same bundle still anchors the workload's own SVID.
    verify_valid(&svid, &ca, &bundles);
}
