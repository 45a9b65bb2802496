//! Entry points shared by the `fuzz/` targets and by the test that replays their seed corpus.
//! Each takes arbitrary bytes, must never panic, and asserts the properties that must hold
//! for any input that parses (round trips).

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use crate::{
    Bundle, BundleSet, JwtAuthority, JwtError, JwtSigner, JwtSvidClaims, Selector, SpiffeId,
    TrustDomain,
};

/// Trust domain of the fixed bundle [`jwt_svid`] validates against.
pub const FUZZ_TRUST_DOMAIN: &str = "example.org";
/// Key id of the fixed JWT authority in that bundle.
pub const FUZZ_KID: &str = "fuzz-kid";
/// Audience [`jwt_svid`] validates for.
pub const FUZZ_AUDIENCE: &str = "fuzz-audience";
/// The validation time [`jwt_svid`] uses (2026-01-01T00:00:00Z).
pub const FUZZ_NOW_UNIX: u64 = 1_767_225_600;

/// A fixed P-256 private key (PKCS#8) that signs the JWT-SVID seeds in
/// `fuzz/corpus/jwt_svid`. It is public test material: never trust it anywhere else.
const FUZZ_KEY_PKCS8: [u8; 138] = [
    0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02,
    0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x04, 0x6d, 0x30, 0x6b, 0x02,
    0x01, 0x01, 0x04, 0x20, 0xef, 0x48, 0x40, 0x74, 0x62, 0xce, 0x04, 0xa1, 0x15, 0x85, 0x3a, 0xed,
    0x6d, 0xb5, 0x6b, 0x4f, 0xf4, 0x73, 0x1b, 0x69, 0x63, 0x86, 0x25, 0x3b, 0x89, 0x2d, 0x6e, 0x89,
    0x7a, 0x3c, 0x58, 0xe6, 0xa1, 0x44, 0x03, 0x42, 0x00, 0x04, 0x78, 0x93, 0x1d, 0x42, 0x36, 0xc6,
    0x00, 0xa3, 0xfc, 0xa0, 0xb0, 0xd7, 0x7a, 0xa3, 0x27, 0x89, 0x35, 0xb1, 0xf4, 0x2b, 0xae, 0x01,
    0xe1, 0x83, 0xe8, 0x2d, 0x1f, 0x49, 0x59, 0x91, 0xa7, 0x19, 0xbc, 0x7b, 0x59, 0x9b, 0x85, 0xb2,
    0xb2, 0xbf, 0x0b, 0x1b, 0x96, 0x53, 0x61, 0xbd, 0x86, 0xa9, 0x38, 0x37, 0x30, 0xf3, 0x15, 0x28,
    0xc1, 0x60, 0x41, 0x7e, 0xd0, 0x3d, 0x46, 0x59, 0x38, 0x48,
];

/// Parses `data` as a SPIFFE ID; a parsed ID must print and re-parse to itself.
pub fn spiffe_id(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = s.parse::<SpiffeId>() {
        let again: Result<SpiffeId, _> = id.as_str().parse();
        assert_eq!(again.as_ref(), Ok(&id), "spiffe id does not round-trip");
        assert!(id.as_str().len() <= crate::MAX_SPIFFE_ID_LEN);
        let td = TrustDomain::new(id.trust_domain_name());
        assert_eq!(
            td.as_ref(),
            Ok(&id.trust_domain()),
            "trust domain does not round-trip"
        );
        let _ = id.prefixes();
    }
    let _ = TrustDomain::new(s);
}

/// Parses `data` as a selector; a parsed selector must print and re-parse to itself.
pub fn selector(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(sel) = s.parse::<Selector>() {
        let again: Result<Selector, _> = sel.to_string().parse();
        assert_eq!(again.as_ref(), Ok(&sel), "selector does not round-trip");
    }
}

/// Validates `data` as a JWT-SVID against a fixed bundle; must not panic, and whatever it
/// accepts must satisfy rules J-5..J-8.
pub fn jwt_svid(data: &[u8]) {
    if let Ok(claims) = jwt_svid_validate(data) {
        let now = UNIX_EPOCH + Duration::from_secs(FUZZ_NOW_UNIX);
        assert_eq!(claims.spiffe_id().trust_domain_name(), FUZZ_TRUST_DOMAIN);
        assert!(claims.audience().iter().any(|a| a == FUZZ_AUDIENCE));
        assert!(claims.expires_at() + crate::JWT_LEEWAY > now);
    }
}

/// The validation [`jwt_svid`] runs: `data` as a token, for audience [`FUZZ_AUDIENCE`] at
/// [`FUZZ_NOW_UNIX`], against a bundle for [`FUZZ_TRUST_DOMAIN`] holding the fuzzing key.
pub fn jwt_svid_validate(data: &[u8]) -> Result<JwtSvidClaims, JwtError> {
    let token = std::str::from_utf8(data).map_err(|_| JwtError::NotCompact)?;
    let now = UNIX_EPOCH + Duration::from_secs(FUZZ_NOW_UNIX);
    crate::validate_jwt_svid(token, FUZZ_AUDIENCE, fuzz_bundles(), now)
}

/// Parses `data` as a SPIFFE bundle; a parsed bundle must encode and re-parse to itself.
/// Also parses it as a bundle map (rule B-7), which must not panic.
pub fn bundle_jwks(data: &[u8]) {
    if let Ok(set) = BundleSet::from_bundle_map(data) {
        let again = BundleSet::from_bundle_map(set.to_bundle_map());
        assert_eq!(
            again.map(|s| s.len()),
            Ok(set.len()),
            "bundle map does not round-trip"
        );
    }
    let Ok(td) = TrustDomain::new(FUZZ_TRUST_DOMAIN) else {
        return;
    };
    if let Ok(bundle) = Bundle::from_jwks(td.clone(), data) {
        let again = Bundle::from_jwks(td, bundle.to_jwks().as_bytes());
        assert_eq!(again.as_ref(), Ok(&bundle), "bundle does not round-trip");
        let _ = bundle.jwt_jwks();
        let _ = bundle.to_pem();
    }
}

fn fuzz_bundles() -> &'static BundleSet {
    static BUNDLES: OnceLock<BundleSet> = OnceLock::new();
    BUNDLES.get_or_init(|| {
        let mut set = BundleSet::new();
        if let Ok(td) = TrustDomain::new(FUZZ_TRUST_DOMAIN) {
            let mut bundle = Bundle::new(td);
            if let Ok(signer) = JwtSigner::from_pkcs8(FUZZ_KID, &FUZZ_KEY_PKCS8) {
                let spki = signer.public_key_spki_der();
                bundle.add_jwt_authority(JwtAuthority::new(FUZZ_KID, spki, None));
            }
            set.insert(bundle);
        }
        set
    })
}
