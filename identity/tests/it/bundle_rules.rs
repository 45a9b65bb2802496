//! Trust bundles in the SPIFFE bundle format and in PEM, one test per rule B-1..B-8.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use warden_identity::test_util::TestCa;
use warden_identity::{Bundle, BundleError, BundleSet, JwtAuthority, JwtSigner, TrustDomain};

use crate::support::TD;

fn td() -> TrustDomain {
    TrustDomain::new(TD).unwrap()
}

fn parse(doc: Value) -> Result<Bundle, BundleError> {
    Bundle::from_jwks(td(), doc.to_string().as_bytes())
}

/// A bundle with one X.509 authority and one JWT authority.
fn full_bundle() -> (Bundle, TestCa, JwtSigner) {
    let ca = TestCa::new(TD);
    let signer = JwtSigner::generate("kid-1").unwrap();
    let mut bundle = ca.bundle();
    bundle.add_jwt_authority(JwtAuthority::new(
        "kid-1",
        signer.public_key_spki_der(),
        None,
    ));
    bundle.set_sequence(7);
    bundle.set_refresh_hint(Duration::from_secs(300));
    (bundle, ca, signer)
}

fn keys_of(json: &str) -> Vec<Value> {
    let doc: Value = serde_json::from_str(json).unwrap();
    doc["keys"].as_array().unwrap().clone()
}

#[test]
fn jwks_round_trip_keeps_every_authority() {
    let (bundle, _, _) = full_bundle();
    let again = Bundle::from_jwks(td(), bundle.to_jwks().as_bytes()).unwrap();
    assert_eq!(again, bundle);
}

#[test]
fn bundle_without_keys_member_is_rejected_b1() {
    assert_eq!(
        parse(json!({"spiffe_sequence": 1})),
        Err(BundleError::MissingKeys)
    );
    assert_eq!(parse(json!({"keys": {}})), Err(BundleError::KeysNotArray));
}

#[test]
fn bundle_with_empty_keys_is_valid_and_empty_b1() {
    let bundle = parse(json!({"keys": []})).unwrap();
    assert!(bundle.is_empty());
}

#[test]
fn sequence_is_written_and_parsed_as_u64_b2() {
    let (bundle, _, _) = full_bundle();
    let doc: Value = serde_json::from_str(&bundle.to_jwks()).unwrap();
    assert_eq!(doc["spiffe_sequence"], json!(7));
    let big = parse(json!({"keys": [], "spiffe_sequence": u64::MAX})).unwrap();
    assert_eq!(big.sequence(), u64::MAX);
    assert_eq!(
        parse(json!({"keys": [], "spiffe_sequence": -1})),
        Err(BundleError::BadSequence)
    );
    assert_eq!(
        parse(json!({"keys": [], "spiffe_sequence": "1"})),
        Err(BundleError::BadSequence)
    );
}

#[test]
fn refresh_hint_is_integer_seconds_b3() {
    let (bundle, _, _) = full_bundle();
    let doc: Value = serde_json::from_str(&bundle.to_jwks()).unwrap();
    assert_eq!(doc["spiffe_refresh_hint"], json!(300));
    let parsed = parse(json!({"keys": [], "spiffe_refresh_hint": 60})).unwrap();
    assert_eq!(parsed.refresh_hint(), Some(Duration::from_secs(60)));
    assert_eq!(
        parse(json!({"keys": [], "spiffe_refresh_hint": 1.5})),
        Err(BundleError::BadRefreshHint)
    );
}

#[test]
fn keys_with_unknown_or_missing_use_or_kty_are_ignored_b4() {
    let (bundle, _, _) = full_bundle();
    let mut keys = keys_of(&bundle.to_jwks());
    keys.push(
        json!({"kty": "EC", "use": "wit-svid", "kid": "w", "crv": "P-256", "x": "AA", "y": "AA"}),
    );
    keys.push(json!({"kty": "EC", "kid": "no-use", "crv": "P-256", "x": "AA", "y": "AA"}));
    keys.push(json!({"kty": "oct", "use": "jwt-svid", "kid": "symmetric", "k": "AAAA"}));
    keys.push(json!({"use": "jwt-svid", "kid": "no-kty"}));
    // An unknown `kty` is ignored even without the `kid` a jwt-svid key needs (B-6).
    keys.push(json!({"kty": "oct", "use": "jwt-svid", "k": "AA"}));
    keys.push(json!({"kty": "EC", "use": "JWT-SVID", "kid": "wrong-case", "crv": "P-256"}));
    let parsed =
        parse(json!({"keys": keys, "spiffe_sequence": 7, "spiffe_refresh_hint": 300})).unwrap();
    assert_eq!(parsed, bundle);
}

#[test]
fn every_written_key_has_kty_and_use_b4() {
    let (bundle, _, _) = full_bundle();
    for key in keys_of(&bundle.to_jwks()) {
        assert!(key["kty"].is_string(), "{key}");
        assert!(
            key["use"] == "x509-svid" || key["use"] == "jwt-svid",
            "{key}"
        );
    }
}

#[test]
fn x509_authority_is_written_as_one_x5c_without_kid_b5() {
    let (bundle, ca, _) = full_bundle();
    let keys = keys_of(&bundle.to_jwks());
    let x509: Vec<&Value> = keys.iter().filter(|k| k["use"] == "x509-svid").collect();
    assert_eq!(x509.len(), 1);
    let key = x509[0];
    assert!(key.get("kid").is_none());
    assert_eq!(key["kty"], "EC");
    assert_eq!(key["crv"], "P-256");
    let x5c = key["x5c"].as_array().unwrap();
    assert_eq!(x5c.len(), 1);
    assert_eq!(
        STANDARD.decode(x5c[0].as_str().unwrap()).unwrap(),
        ca.root_cert().as_ref()
    );
}

#[test]
fn x509_authority_with_kid_is_rejected_b5() {
    let ca = TestCa::new(TD);
    let x5c = STANDARD.encode(ca.root_cert());
    let doc = json!({"keys": [{"kty": "EC", "use": "x509-svid", "kid": "k", "x5c": [x5c]}]});
    assert_eq!(
        parse(doc),
        Err(BundleError::X509AuthorityWithKid { index: 0 })
    );
}

#[test]
fn x509_authority_without_x5c_is_ignored_and_only_first_x5c_is_used_b5() {
    let ca = TestCa::new(TD);
    let other = TestCa::new(TD);
    let first = STANDARD.encode(ca.root_cert());
    let second = STANDARD.encode(other.root_cert());
    let doc = json!({"keys": [
        {"kty": "EC", "use": "x509-svid"},
        {"kty": "EC", "use": "x509-svid", "x5c": []},
        {"kty": "EC", "use": "x509-svid", "x5c": [first, second]},
    ]});
    let bundle = parse(doc).unwrap();
    assert_eq!(
        bundle.x509_authorities(),
        std::slice::from_ref(ca.root_cert())
    );
}

#[test]
fn x509_authority_with_bad_x5c_is_rejected_with_a_named_error_b5() {
    let doc = json!({"keys": [{"kty": "EC", "use": "x509-svid", "x5c": ["%%%"]}]});
    assert_eq!(
        parse(doc),
        Err(BundleError::BadX5c {
            index: 0,
            reason: "value is not base64".to_owned()
        })
    );
    let doc = json!({"keys": [{"kty": "EC", "use": "x509-svid", "x5c": [STANDARD.encode(b"not a cert")]}]});
    assert!(matches!(
        parse(doc),
        Err(BundleError::BadX5c { index: 0, .. })
    ));
    let doc = json!({"keys": [{"kty": "EC", "use": "x509-svid", "x5c": "abc"}]});
    assert!(matches!(
        parse(doc),
        Err(BundleError::BadX5c { index: 0, .. })
    ));
}

#[test]
fn jwt_authority_is_written_with_kid_and_ec_coordinates_b6() {
    let (bundle, _, _) = full_bundle();
    let keys = keys_of(&bundle.to_jwks());
    let jwt: Vec<&Value> = keys.iter().filter(|k| k["use"] == "jwt-svid").collect();
    assert_eq!(jwt.len(), 1);
    let key = jwt[0];
    assert_eq!(key["kid"], "kid-1");
    assert_eq!(
        (key["kty"].as_str(), key["crv"].as_str()),
        (Some("EC"), Some("P-256"))
    );
    assert_eq!(key["x"].as_str().unwrap().len(), 43);
    assert_eq!(key["y"].as_str().unwrap().len(), 43);
}

#[test]
fn jwt_authority_without_kid_is_rejected_b6() {
    let (bundle, _, _) = full_bundle();
    let mut keys = keys_of(&bundle.jwt_jwks());
    keys[0].as_object_mut().unwrap().remove("kid");
    assert_eq!(
        parse(json!({"keys": keys})),
        Err(BundleError::JwtAuthorityWithoutKid { index: 0 })
    );
}

#[test]
fn jwt_authorities_with_the_same_kid_are_rejected() {
    let (bundle, _, _) = full_bundle();
    let key = keys_of(&bundle.jwt_jwks())[0].clone();
    let doc = json!({"keys": [key.clone(), key]});
    assert_eq!(
        parse(doc),
        Err(BundleError::DuplicateKid("kid-1".to_owned()))
    );
}

#[test]
fn a_duplicate_kid_is_shown_escaped_and_short() {
    let (bundle, _, _) = full_bundle();
    let mut key = keys_of(&bundle.jwt_jwks())[0].clone();
    let forged = format!("k\n{{\"level\":\"INFO\"}}{}", "x".repeat(5000));
    key["kid"] = Value::String(forged);
    let message = parse(json!({"keys": [key.clone(), key]}))
        .unwrap_err()
        .to_string();
    assert!(!message.contains('\n'), "{message}");
    assert!(message.contains("k\\n{"), "escaped: {message}");
    assert!(message.len() < 200, "{} bytes", message.len());
}

#[test]
fn jwt_authority_with_malformed_coordinates_is_rejected() {
    let doc = json!({"keys": [{"kty": "EC", "use": "jwt-svid", "kid": "k", "crv": "P-256", "x": "AAAA", "y": "AAAA"}]});
    let err = parse(doc).unwrap_err();
    assert!(matches!(err, BundleError::BadJwk { index: 0, .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "bundle key 0: `x` and `y` must be 32 bytes for `P-256`"
    );
}

#[test]
fn bundles_of_different_trust_domains_are_never_merged_b8() {
    let a = TestCa::new("a.org");
    let b = TestCa::new("b.org");
    let a2 = TestCa::new("a.org");
    let mut set = BundleSet::new();
    set.insert(a.bundle());
    set.insert(b.bundle());
    let replaced = set.insert(a2.bundle()).unwrap();
    assert_eq!(replaced, a.bundle());
    assert_eq!(set.len(), 2);
    let a_td = TrustDomain::new("a.org").unwrap();
    assert_eq!(
        set.get(&a_td).unwrap().x509_authorities(),
        std::slice::from_ref(a2.root_cert())
    );
    assert_eq!(
        set.get(&TrustDomain::new("b.org").unwrap()),
        Some(&b.bundle())
    );
    assert!(set.remove(&a_td).is_some());
    assert_eq!(set.iter().count(), 1);
}

#[test]
fn jwt_jwks_holds_only_jwt_keys_w10() {
    let (bundle, _, _) = full_bundle();
    let keys = keys_of(&bundle.jwt_jwks());
    assert_eq!(keys.len(), 1);
    assert!(keys.iter().all(|k| k["use"] == "jwt-svid"));
}

#[test]
fn malformed_documents_are_rejected_with_named_errors() {
    assert!(matches!(
        Bundle::from_jwks(td(), b"{"),
        Err(BundleError::Json(_))
    ));
    assert_eq!(
        Bundle::from_jwks(td(), b"[]"),
        Err(BundleError::NotAnObject)
    );
    assert_eq!(
        parse(json!({"keys": [1]})),
        Err(BundleError::KeyNotObject { index: 0 })
    );
}

#[test]
fn pem_round_trip_and_der_concatenation() {
    let a = TestCa::new(TD);
    let b = TestCa::new(TD);
    let mut bundle = a.bundle();
    bundle.add_x509_authority(b.root_cert().clone());
    bundle.add_x509_authority(b.root_cert().clone());
    assert_eq!(
        bundle.x509_authorities().len(),
        2,
        "duplicates are not added"
    );
    let again = Bundle::from_pem(td(), bundle.to_pem().as_bytes()).unwrap();
    assert_eq!(again.x509_authorities(), bundle.x509_authorities());
    let der = bundle.x509_authorities_der();
    assert_eq!(
        der,
        [a.root_cert().as_ref(), b.root_cert().as_ref()].concat()
    );
}

#[test]
fn pem_with_wrong_label_or_bad_certificate_is_rejected() {
    let key_pem = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    assert_eq!(
        Bundle::from_pem(td(), key_pem.as_bytes()),
        Err(BundleError::PemLabel {
            index: 0,
            label: "PRIVATE KEY".to_owned()
        })
    );
    let bad_cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    assert_eq!(
        Bundle::from_pem(td(), bad_cert.as_bytes()),
        Err(BundleError::BadCertificate { index: 0 })
    );
    assert_eq!(
        Bundle::from_pem(td(), b""),
        Err(BundleError::NoCertificates)
    );
}

#[test]
fn bundle_map_round_trips_and_omits_member_refresh_hints_b7() {
    let a = TestCa::new("a.org");
    let b = TestCa::new("b.org");
    let mut a_bundle = a.bundle();
    a_bundle.set_refresh_hint(Duration::from_secs(60));
    a_bundle.set_sequence(3);
    let set: BundleSet = [a_bundle.clone(), b.bundle()].into_iter().collect();
    let text = set.to_bundle_map();
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert!(
        doc["trust_domains"]["a.org"]
            .get("spiffe_refresh_hint")
            .is_none()
    );
    let again = BundleSet::from_bundle_map(&text).unwrap();
    assert_eq!(again.len(), 2);
    assert_eq!(
        again
            .get(&TrustDomain::new("a.org").unwrap())
            .unwrap()
            .sequence(),
        3
    );
    assert_eq!(
        again
            .get(&TrustDomain::new("b.org").unwrap())
            .unwrap()
            .x509_authorities(),
        b.bundle().x509_authorities()
    );
}

#[test]
fn bundle_map_requires_trust_domains_and_rejects_duplicates_b7() {
    assert_eq!(
        BundleSet::from_bundle_map(r#"{"keys": []}"#),
        Err(BundleError::MissingTrustDomains)
    );
    let dup = r#"{"trust_domains": {"a.org": {"keys": []}, "a.org": {"keys": []}}}"#;
    assert_eq!(
        BundleSet::from_bundle_map(dup),
        Err(BundleError::DuplicateTrustDomain("a.org".to_owned()))
    );
    let folded = r#"{"trust_domains": {"a.org": {"keys": []}, "spiffe://A.org": {"keys": []}}}"#;
    assert_eq!(
        BundleSet::from_bundle_map(folded),
        Err(BundleError::DuplicateTrustDomain("a.org".to_owned()))
    );
    let bad_key = r#"{"trust_domains": {"a org": {"keys": []}}}"#;
    assert!(matches!(
        BundleSet::from_bundle_map(bad_key),
        Err(BundleError::BadTrustDomain { .. })
    ));
    let bad_member = r#"{"trust_domains": {"a.org": {"nokeys": []}}}"#;
    let err = BundleSet::from_bundle_map(bad_member).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bundle map member `a.org`: bundle has no `keys` member"
    );
}

/// A leaf (here an SVID pasted with its root, as a full-chain PEM) is no certificate authority:
/// as a trust anchor its key could sign any SVID of the trust domain.
#[test]
fn a_leaf_in_a_pem_bundle_is_refused_b5() {
    let ca = TestCa::new(TD);
    let svid = ca.issue_svid(
        &crate::support::id(crate::support::WORKLOAD),
        Duration::from_secs(600),
    );
    let root = pem::encode(&pem::Pem::new("CERTIFICATE", ca.root_cert().to_vec()));
    let err = Bundle::from_pem(td(), svid.cert_chain_pem() + &root).unwrap_err();
    assert!(
        matches!(err, BundleError::NotCa { index: 0, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("certificate 0 is not a certificate authority"),
        "{err}"
    );
    assert!(Bundle::from_pem(td(), root).is_ok());
}

#[test]
fn a_leaf_as_x509_authority_in_a_spiffe_bundle_is_refused_b5() {
    let (bundle, ca, _) = full_bundle();
    let svid = ca.issue_svid(
        &crate::support::id(crate::support::WORKLOAD),
        Duration::from_secs(600),
    );
    let mut doc: Value = serde_json::from_str(&bundle.to_jwks()).unwrap();
    let keys = doc["keys"].as_array_mut().unwrap();
    let x509 = keys.iter_mut().find(|k| k["use"] == "x509-svid").unwrap();
    x509["x5c"] = json!([STANDARD.encode(svid.leaf().as_ref())]);
    let err = parse(doc).unwrap_err();
    assert!(
        err.to_string().contains("is not a certificate authority"),
        "{err}"
    );
}

/// A token without `kid` is checked against every JWT key of its trust domain: the number of
/// keys a bundle may hold bounds that work.
#[test]
fn a_bundle_of_more_than_256_keys_or_certificates_is_refused() {
    let (bundle, ca, _) = full_bundle();
    let mut keys = keys_of(&bundle.to_jwks());
    let jwt = keys
        .iter()
        .find(|k| k["use"] == "jwt-svid")
        .unwrap()
        .clone();
    while keys.len() < 256 {
        let mut k = jwt.clone();
        k["kid"] = json!(format!("kid-{}", keys.len()));
        keys.push(k);
    }
    assert!(parse(json!({"keys": keys.clone()})).is_ok());
    let mut k = jwt.clone();
    k["kid"] = json!("one-too-many");
    keys.push(k);
    let err = parse(json!({"keys": keys})).unwrap_err();
    assert!(
        matches!(err, BundleError::TooManyKeys { count: 257 }),
        "{err:?}"
    );
    let root = pem::encode(&pem::Pem::new("CERTIFICATE", ca.root_cert().to_vec()));
    assert!(Bundle::from_pem(td(), root.repeat(256)).is_ok());
    let err = Bundle::from_pem(td(), root.repeat(257)).unwrap_err();
    assert!(
        err.to_string().contains("257 keys or certificates"),
        "{err}"
    );
}
