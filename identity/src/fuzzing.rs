//! Entry points shared by the `fuzz/` targets and by the test that replays their seed corpus.
//! Each takes arbitrary bytes, must never panic, and asserts the properties that must hold
//! for any input that parses (round trips).

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use crate::{Bundle, BundleSet, JwtAuthority, Selector, SpiffeId, TrustDomain};

/// Trust domain of the fixed bundle [`jwt_svid`] validates against.
pub const FUZZ_TRUST_DOMAIN: &str = "example.org";
/// Key id of the fixed JWT authority in that bundle.
pub const FUZZ_KID: &str = "fuzz-kid";
/// Audience [`jwt_svid`] validates for.
pub const FUZZ_AUDIENCE: &str = "fuzz-audience";
/// The validation time [`jwt_svid`] uses (2026-01-01T00:00:00Z).
pub const FUZZ_NOW_UNIX: u64 = 1_767_225_600;

/// A fixed P-256 public key (SubjectPublicKeyInfo DER) for the fuzzing bundle.
const FUZZ_SPKI: [u8; 91] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04, 0x6b, 0x17, 0xd1, 0xf2, 0xe1,
    0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63, 0xa4, 0x40, 0xf2, 0x77, 0x03, 0x7d, 0x81, 0x2d,
    0xeb, 0x33, 0xa0, 0xf4, 0xa1, 0x39, 0x45, 0xd8, 0x98, 0xc2, 0x96, 0x4f, 0xe3, 0x42, 0xe2, 0xfe,
    0x1a, 0x7f, 0x9b, 0x8e, 0xe7, 0xeb, 0x4a, 0x7c, 0x0f, 0x9e, 0x16, 0x2b, 0xce, 0x33, 0x57, 0x6b,
    0x31, 0x5e, 0xce, 0xcb, 0xb6, 0x40, 0x68, 0x37, 0xbf, 0x51, 0xf5,
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
        assert_eq!(td.as_ref(), Ok(&id.trust_domain()), "trust domain does not round-trip");
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

/// Validates `data` as a JWT-SVID against a fixed bundle; must not panic, and (having no
/// private key for the bundle's key) must never accept.
pub fn jwt_svid(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let now = UNIX_EPOCH + Duration::from_secs(FUZZ_NOW_UNIX);
    let result = crate::validate_jwt_svid(token, FUZZ_AUDIENCE, fuzz_bundles(), now);
    assert!(result.is_err(), "a token was accepted without a valid signature");
}

/// Parses `data` as a SPIFFE bundle; a parsed bundle must encode and re-parse to itself.
pub fn bundle_jwks(data: &[u8]) {
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
            bundle.add_jwt_authority(JwtAuthority::new(FUZZ_KID, FUZZ_SPKI.to_vec(), None));
            set.insert(bundle);
        }
        set
    })
}
