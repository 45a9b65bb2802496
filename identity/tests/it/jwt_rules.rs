//! JWT-SVID signing and validation, one test per rule J-1..J-8.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use serde_json::{Value, json};
use warden_identity::{
    Bundle, BundleSet, JWT_LEEWAY, JwtAuthority, JwtError, JwtSigner, MAX_JWT_LEN, TrustDomain,
    validate_jwt_svid,
};

use crate::support::{TD, WORKLOAD, id};

const AUD: &str = "billing";
const RSA_TEST_KEY: &[u8] = include_bytes!("data/rsa2048-test-key.pk8");

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn exp_in(secs: u64) -> u64 {
    now().duration_since(UNIX_EPOCH).unwrap().as_secs() + secs
}

fn bundles_for(signer: &JwtSigner, td: &str) -> BundleSet {
    let mut bundle = Bundle::new(TrustDomain::new(td).unwrap());
    bundle.add_jwt_authority(JwtAuthority::new(
        signer.kid(),
        signer.public_key_spki_der(),
        None,
    ));
    [bundle].into_iter().collect()
}

fn b64json(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// Signs arbitrary header and claims with the signer's P-256 key (ES256).
fn sign_raw(signer: &JwtSigner, header: Value, claims: Value) -> String {
    let key = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        signer.pkcs8_der(),
        &SystemRandom::new(),
    )
    .unwrap();
    let input = format!("{}.{}", b64json(&header), b64json(&claims));
    let sig = key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

fn good_claims() -> Value {
    json!({"sub": WORKLOAD, "aud": [AUD, "other"], "exp": exp_in(300), "iat": exp_in(0)})
}

fn header(signer: &JwtSigner) -> Value {
    json!({"alg": "ES256", "kid": signer.kid(), "typ": "JWT"})
}

fn validate(token: &str, bundles: &BundleSet) -> Result<warden_identity::JwtSvidClaims, JwtError> {
    validate_jwt_svid(token, AUD, bundles, now())
}

#[test]
fn signed_token_validates_and_returns_claims() {
    let signer = JwtSigner::generate("k1").unwrap();
    let token = signer
        .sign(
            &id(WORKLOAD),
            &[AUD.to_owned()],
            now() + Duration::from_secs(300),
            now(),
        )
        .unwrap();
    let claims = validate(&token, &bundles_for(&signer, TD)).unwrap();
    assert_eq!(claims.spiffe_id(), &id(WORKLOAD));
    assert_eq!(claims.audience(), [AUD.to_owned()]);
    assert_eq!(claims.expires_at(), now() + Duration::from_secs(300));
    assert_eq!(claims.claims()["sub"], WORKLOAD);
    assert!(claims.claims().contains_key("iat"));
}

#[test]
fn signer_key_survives_pkcs8_round_trip_and_debug_is_redacted() {
    let signer = JwtSigner::generate("k1").unwrap();
    let again = JwtSigner::from_pkcs8("k1", signer.pkcs8_der()).unwrap();
    assert_eq!(again.public_key_spki_der(), signer.public_key_spki_der());
    let token = again
        .sign(
            &id(WORKLOAD),
            &[AUD.to_owned()],
            now() + Duration::from_secs(60),
            now(),
        )
        .unwrap();
    validate(&token, &bundles_for(&signer, TD)).unwrap();
    assert!(format!("{signer:?}").contains("<redacted>"));
    assert_eq!(
        JwtSigner::from_pkcs8("k", b"junk").unwrap_err(),
        JwtError::BadKey
    );
}

#[test]
fn signer_refuses_empty_audience_and_past_expiry_j6_j7() {
    let signer = JwtSigner::generate("k1").unwrap();
    let later = now() + Duration::from_secs(60);
    assert_eq!(
        signer.sign(&id(WORKLOAD), &[], later, now()),
        Err(JwtError::NoAudience)
    );
    assert_eq!(
        signer.sign(&id(WORKLOAD), &[AUD.to_owned()], now(), now()),
        Err(JwtError::ExpiryNotInFuture)
    );
    // At most MAX_AUDIENCES audiences of 1 to MAX_AUDIENCE_LEN bytes.
    let most: Vec<String> = (0..warden_identity::MAX_AUDIENCES)
        .map(|i| format!("{}-{i}", "a".repeat(warden_identity::MAX_AUDIENCE_LEN - 4)))
        .collect();
    let token = signer.sign(&id(WORKLOAD), &most, later, now()).unwrap();
    assert!(
        token.len() <= warden_identity::MAX_JWT_LEN,
        "{}",
        token.len()
    );
    let mut one_more = most.clone();
    one_more.push(AUD.to_owned());
    let too_long = vec!["a".repeat(warden_identity::MAX_AUDIENCE_LEN + 1)];
    for bad in [one_more, too_long, vec![String::new()]] {
        assert!(
            matches!(
                signer.sign(&id(WORKLOAD), &bad, later, now()),
                Err(JwtError::BadAudience(_))
            ),
            "{} audiences",
            bad.len()
        );
    }
}

#[test]
fn only_compact_serialization_is_accepted_j1() {
    let signer = JwtSigner::generate("k1").unwrap();
    let bundles = bundles_for(&signer, TD);
    let token = sign_raw(&signer, header(&signer), good_claims());
    let json_serialization =
        json!({"payload": "x", "protected": "y", "signature": "z"}).to_string();
    assert_eq!(
        validate(&json_serialization, &bundles).unwrap_err(),
        JwtError::NotCompact
    );
    assert_eq!(
        validate(&format!("{token}.extra"), &bundles).unwrap_err(),
        JwtError::NotCompact
    );
    let two_parts: String = token.rsplit_once('.').unwrap().0.to_owned();
    assert_eq!(
        validate(&two_parts, &bundles).unwrap_err(),
        JwtError::NotCompact
    );
    let padded = format!("{token}=");
    assert_eq!(
        validate(&padded, &bundles).unwrap_err(),
        JwtError::BadBase64("signature")
    );
    let long = "a".repeat(MAX_JWT_LEN + 1);
    assert_eq!(
        validate(&long, &bundles).unwrap_err(),
        JwtError::TooLong(MAX_JWT_LEN + 1)
    );
}

#[test]
fn none_hs256_and_unknown_algorithms_are_rejected_j2() {
    let signer = JwtSigner::generate("k1").unwrap();
    let bundles = bundles_for(&signer, TD);
    for alg in ["none", "HS256", "EdDSA", "es256"] {
        let token = sign_raw(&signer, json!({"alg": alg, "kid": "k1"}), good_claims());
        assert_eq!(
            validate(&token, &bundles).unwrap_err(),
            JwtError::DisallowedAlg(alg.to_owned())
        );
    }
    let unsigned = format!(
        "{}.{}.",
        b64json(&json!({"alg": "none"})),
        b64json(&good_claims())
    );
    assert_eq!(
        validate(&unsigned, &bundles).unwrap_err(),
        JwtError::DisallowedAlg("none".to_owned())
    );
    let token = sign_raw(&signer, json!({"alg": "ES512", "kid": "k1"}), good_claims());
    assert_eq!(
        validate(&token, &bundles).unwrap_err(),
        JwtError::UnsupportedAlg("ES512".to_owned())
    );
    let token = sign_raw(&signer, json!({"kid": "k1"}), good_claims());
    assert_eq!(
        validate(&token, &bundles).unwrap_err(),
        JwtError::MissingAlg
    );
}

#[test]
fn es384_tokens_validate_with_a_p384_key_from_a_jwks_bundle_j2() {
    let rng = SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        pkcs8.as_ref(),
        &rng,
    )
    .unwrap();
    let point = key.public_key().as_ref();
    let (x, y) = point[1..].split_at(48);
    let doc = json!({"keys": [{"use": "jwt-svid", "kid": "p384", "kty": "EC", "crv": "P-384",
        "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)}]});
    let bundle =
        Bundle::from_jwks(TrustDomain::new(TD).unwrap(), doc.to_string().as_bytes()).unwrap();
    let bundles: BundleSet = [bundle].into_iter().collect();
    let input = format!(
        "{}.{}",
        b64json(&json!({"alg": "ES384", "kid": "p384"})),
        b64json(&good_claims())
    );
    let sig = key.sign(&rng, input.as_bytes()).unwrap();
    let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
    assert_eq!(
        validate(&token, &bundles).unwrap().spiffe_id(),
        &id(WORKLOAD)
    );
    // The same key cannot stand in for ES256.
    let input = format!(
        "{}.{}",
        b64json(&json!({"alg": "ES256", "kid": "p384"})),
        b64json(&good_claims())
    );
    let sig = key.sign(&rng, input.as_bytes()).unwrap();
    let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
    assert_eq!(
        validate(&token, &bundles).unwrap_err(),
        JwtError::KeyAlgMismatch("ES256".to_owned())
    );
}

#[test]
fn rs256_and_ps256_tokens_validate_with_an_rsa_key_from_a_jwks_bundle_j2() {
    let key = RsaKeyPair::from_pkcs8(RSA_TEST_KEY).unwrap();
    let components: ring::rsa::PublicKeyComponents<Vec<u8>> = key.public().into();
    let doc = json!({"keys": [{"use": "jwt-svid", "kid": "rsa", "kty": "RSA",
        "n": URL_SAFE_NO_PAD.encode(&components.n), "e": URL_SAFE_NO_PAD.encode(&components.e)}]});
    let bundle =
        Bundle::from_jwks(TrustDomain::new(TD).unwrap(), doc.to_string().as_bytes()).unwrap();
    let bundles: BundleSet = [bundle].into_iter().collect();
    let rng = SystemRandom::new();
    for (alg, padding) in [
        (
            "RS256",
            &signature::RSA_PKCS1_SHA256 as &dyn signature::RsaEncoding,
        ),
        ("RS512", &signature::RSA_PKCS1_SHA512),
        ("PS256", &signature::RSA_PSS_SHA256),
    ] {
        let input = format!(
            "{}.{}",
            b64json(&json!({"alg": alg, "kid": "rsa"})),
            b64json(&good_claims())
        );
        let mut sig = vec![0; key.public().modulus_len()];
        key.sign(padding, &rng, input.as_bytes(), &mut sig).unwrap();
        let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig));
        assert_eq!(
            validate(&token, &bundles).unwrap().spiffe_id(),
            &id(WORKLOAD),
            "{alg}"
        );
    }
}

#[test]
fn headers_other_than_alg_kid_typ_are_rejected_j3() {
    let signer = JwtSigner::generate("k1").unwrap();
    let mut h = header(&signer);
    h["jku"] = json!("https://attacker.example/keys");
    let token = sign_raw(&signer, h, good_claims());
    assert_eq!(
        validate(&token, &bundles_for(&signer, TD)).unwrap_err(),
        JwtError::UnexpectedHeader("jku".to_owned())
    );
}

#[test]
fn typ_must_be_jwt_or_jose_when_present_j4() {
    let signer = JwtSigner::generate("k1").unwrap();
    let bundles = bundles_for(&signer, TD);
    for typ in ["JWT", "JOSE"] {
        let token = sign_raw(
            &signer,
            json!({"alg": "ES256", "kid": "k1", "typ": typ}),
            good_claims(),
        );
        assert!(validate(&token, &bundles).is_ok(), "{typ}");
    }
    let token = sign_raw(&signer, json!({"alg": "ES256", "kid": "k1"}), good_claims());
    assert!(validate(&token, &bundles).is_ok(), "typ is optional");
    let token = sign_raw(
        &signer,
        json!({"alg": "ES256", "kid": "k1", "typ": "at+jwt"}),
        good_claims(),
    );
    assert_eq!(validate(&token, &bundles).unwrap_err(), JwtError::BadTyp);
}

#[test]
fn sub_must_be_a_spiffe_id_j5() {
    let signer = JwtSigner::generate("k1").unwrap();
    let bundles = bundles_for(&signer, TD);
    let mut claims = good_claims();
    claims["sub"] = json!("https://example.org/x");
    let token = sign_raw(&signer, header(&signer), claims.clone());
    assert_eq!(
        validate(&token, &bundles).unwrap_err(),
        JwtError::BadSubject("https://example.org/x".to_owned())
    );
    claims.as_object_mut().unwrap().remove("sub");
    let token = sign_raw(&signer, header(&signer), claims.clone());
    assert_eq!(
        validate(&token, &bundles).unwrap_err(),
        JwtError::MissingSubject
    );
    // The trust domain's own ID names no workload (as X-2 for X.509-SVIDs): neither signed nor
    // accepted.
    claims["sub"] = json!("spiffe://example.org");
    let token = sign_raw(&signer, header(&signer), claims);
    assert_eq!(
        validate(&token, &bundles).unwrap_err(),
        JwtError::SubjectWithoutPath("spiffe://example.org".to_owned())
    );
    let td_id = "spiffe://example.org".parse().unwrap();
    assert_eq!(
        signer.sign(
            &td_id,
            &[AUD.to_owned()],
            now() + Duration::from_secs(60),
            now()
        ),
        Err(JwtError::SubjectWithoutPath(
            "spiffe://example.org".to_owned()
        ))
    );
}

#[test]
fn aud_must_be_present_and_contain_our_audience_j6() {
    let signer = JwtSigner::generate("k1").unwrap();
    let bundles = bundles_for(&signer, TD);
    let with_aud = |aud: Option<Value>| {
        let mut claims = good_claims();
        match aud {
            Some(aud) => claims["aud"] = aud,
            None => {
                claims.as_object_mut().unwrap().remove("aud");
            }
        }
        validate(&sign_raw(&signer, header(&signer), claims), &bundles)
    };
    assert!(
        with_aud(Some(json!(AUD))).is_ok(),
        "a single string audience"
    );
    assert_eq!(with_aud(None).unwrap_err(), JwtError::MissingAudience);
    assert_eq!(
        with_aud(Some(json!([]))).unwrap_err(),
        JwtError::MissingAudience
    );
    assert_eq!(
        with_aud(Some(json!(["someone-else"]))).unwrap_err(),
        JwtError::AudienceMismatch(AUD.to_owned())
    );
    // Every audience is a string: a list with something else is refused whole.
    assert_eq!(
        with_aud(Some(json!([AUD, 5]))).unwrap_err(),
        JwtError::AudienceNotString
    );
}

#[test]
fn nbf_when_present_is_a_number_and_not_in_the_future() {
    let signer = JwtSigner::generate("k1").unwrap();
    let bundles = bundles_for(&signer, TD);
    let with_nbf = |nbf: Value| {
        let mut claims = good_claims();
        claims["nbf"] = nbf;
        validate(&sign_raw(&signer, header(&signer), claims), &bundles)
    };
    assert!(with_nbf(json!(exp_in(0))).is_ok());
    assert_eq!(
        with_nbf(json!(exp_in(3600))).unwrap_err(),
        JwtError::NotYetValid
    );
    assert_eq!(
        with_nbf(json!(exp_in(3600).to_string())).unwrap_err(),
        JwtError::BadNotBefore
    );
}

#[test]
fn exp_must_be_present_and_not_past_beyond_leeway_j7() {
    let signer = JwtSigner::generate("k1").unwrap();
    let bundles = bundles_for(&signer, TD);
    let with_exp = |exp: Option<Value>| {
        let mut claims = good_claims();
        match exp {
            Some(exp) => claims["exp"] = exp,
            None => {
                claims.as_object_mut().unwrap().remove("exp");
            }
        }
        validate(&sign_raw(&signer, header(&signer), claims), &bundles)
    };
    let now_s = exp_in(0);
    assert_eq!(with_exp(None).unwrap_err(), JwtError::MissingExpiry);
    assert_eq!(
        with_exp(Some(json!("soon"))).unwrap_err(),
        JwtError::MissingExpiry
    );
    assert_eq!(
        with_exp(Some(json!(now_s - 3600))).unwrap_err(),
        JwtError::Expired
    );
    assert_eq!(
        with_exp(Some(json!(now_s - JWT_LEEWAY.as_secs()))).unwrap_err(),
        JwtError::Expired
    );
    assert!(
        with_exp(Some(json!(now_s - JWT_LEEWAY.as_secs() + 5))).is_ok(),
        "within leeway"
    );
}

#[test]
fn nbf_in_the_future_is_rejected() {
    let signer = JwtSigner::generate("k1").unwrap();
    let mut claims = good_claims();
    claims["nbf"] = json!(exp_in(3600));
    let token = sign_raw(&signer, header(&signer), claims);
    assert_eq!(
        validate(&token, &bundles_for(&signer, TD)).unwrap_err(),
        JwtError::NotYetValid
    );
}

#[test]
fn key_comes_from_the_subjects_trust_domain_bundle_j8() {
    let a_signer = JwtSigner::generate("shared-kid").unwrap();
    let b_signer = JwtSigner::generate("shared-kid").unwrap();
    // a.org's key signs a token whose subject claims to be in b.org.
    let claims = json!({"sub": "spiffe://b.org/w", "aud": AUD, "exp": exp_in(300)});
    let token = sign_raw(&a_signer, header(&a_signer), claims);
    let mut both = bundles_for(&a_signer, "a.org");
    both.insert(
        bundles_for(&b_signer, "b.org")
            .iter()
            .next()
            .unwrap()
            .clone(),
    );
    assert_eq!(validate(&token, &both).unwrap_err(), JwtError::BadSignature);
    let only_a = bundles_for(&a_signer, "a.org");
    assert_eq!(
        validate(&token, &only_a).unwrap_err(),
        JwtError::NoBundle("b.org".to_owned())
    );
}

#[test]
fn unknown_kid_is_rejected_and_missing_kid_tries_every_key_j8() {
    let signer = JwtSigner::generate("k1").unwrap();
    let other = JwtSigner::generate("k2").unwrap();
    let mut bundle = Bundle::new(TrustDomain::new(TD).unwrap());
    bundle.add_jwt_authority(JwtAuthority::new("k2", other.public_key_spki_der(), None));
    bundle.add_jwt_authority(JwtAuthority::new("k1", signer.public_key_spki_der(), None));
    let bundles: BundleSet = [bundle].into_iter().collect();
    let token = sign_raw(
        &signer,
        json!({"alg": "ES256", "kid": "nope"}),
        good_claims(),
    );
    assert_eq!(
        validate(&token, &bundles).unwrap_err(),
        JwtError::UnknownKid("nope".to_owned())
    );
    let token = sign_raw(&signer, json!({"alg": "ES256"}), good_claims());
    assert!(validate(&token, &bundles).is_ok());
}

#[test]
fn tampered_claims_fail_signature_verification() {
    let signer = JwtSigner::generate("k1").unwrap();
    let token = sign_raw(&signer, header(&signer), good_claims());
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut claims = good_claims();
    claims["sub"] = json!("spiffe://example.org/admin");
    parts[1] = b64json(&claims);
    assert_eq!(
        validate(&parts.join("."), &bundles_for(&signer, TD)).unwrap_err(),
        JwtError::BadSignature
    );
}

#[test]
fn malformed_header_and_claims_are_rejected_with_named_errors() {
    let signer = JwtSigner::generate("k1").unwrap();
    let bundles = bundles_for(&signer, TD);
    let token = sign_raw(&signer, header(&signer), good_claims());
    let parts: Vec<&str> = token.split('.').collect();
    let with = |h: &str, c: &str| format!("{h}.{c}.{}", parts[2]);
    let not_object = URL_SAFE_NO_PAD.encode("[1]");
    assert_eq!(
        validate(&with(&not_object, parts[1]), &bundles).unwrap_err(),
        JwtError::BadJson("header")
    );
    assert_eq!(
        validate(&with(parts[0], &not_object), &bundles).unwrap_err(),
        JwtError::BadJson("claims")
    );
    assert_eq!(
        validate(&with(parts[0], "***"), &bundles).unwrap_err(),
        JwtError::BadBase64("claims")
    );
    let token = sign_raw(&signer, json!({"alg": "ES256", "kid": 7}), good_claims());
    assert_eq!(validate(&token, &bundles).unwrap_err(), JwtError::BadKid);
    let token = sign_raw(&signer, json!({"alg": "ES256", "typ": 1}), good_claims());
    assert_eq!(validate(&token, &bundles).unwrap_err(), JwtError::BadTyp);
}

#[test]
fn jwt_error_messages_name_the_problem_without_secrets() {
    assert_eq!(
        JwtError::DisallowedAlg("none".to_owned()).to_string(),
        "token algorithm \"none\" is not allowed"
    );
    assert_eq!(
        JwtError::UnknownKid("k9".to_owned()).to_string(),
        "no jwt authority with `kid` \"k9\" in the subject's trust domain"
    );
}

#[test]
fn token_strings_in_errors_are_escaped_and_kept_short() {
    let signer = JwtSigner::generate("k1").unwrap();
    let bundles = bundles_for(&signer, TD);
    let forged = format!("k\n{{\"level\":\"INFO\"}}{}", "x".repeat(5000));
    for (header, what) in [
        (json!({"alg": "ES256", "kid": forged}), "kid"),
        (json!({"alg": forged}), "alg"),
        (json!({"alg": "ES256", forged.clone(): 1}), "header"),
    ] {
        let token = sign_raw(&signer, header, good_claims());
        let message = validate(&token, &bundles).unwrap_err().to_string();
        assert!(!message.contains('\n'), "{what}: {message}");
        assert!(message.contains("k\\n{"), "{what}: escaped: {message}");
        assert!(message.len() < 200, "{what}: {} bytes", message.len());
    }
}
