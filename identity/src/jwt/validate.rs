//! JWT-SVID validation (JWT-SVID.md, rules J-1..J-8).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use serde_json::{Map, Value};

use super::{JwtError, JwtSvidClaims};
use crate::jwk::{Curve, PublicKey};
use crate::{BundleSet, JwtAuthority, SpiffeId};

/// Longest token accepted, in bytes.
pub const MAX_JWT_LEN: usize = 16 * 1024;
/// Clock skew allowed when checking `exp` and `nbf` (rule J-7).
pub const JWT_LEEWAY: Duration = Duration::from_secs(30);

/// Headers the JWT-SVID spec allows (rule J-3).
const ALLOWED_HEADERS: [&str; 3] = ["alg", "kid", "typ"];

/// A signature algorithm the JWT-SVID spec allows and ring verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Es256,
    Es384,
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
}

/// Validates a JWT-SVID presented to a workload whose audience is `audience`, with the JWT
/// bundles in `bundles`, at `now`, and returns its claims.
///
/// Checked:
/// - JWS compact serialization, at most [`MAX_JWT_LEN`] bytes (J-1);
/// - `alg` is one of RS/ES/PS 256/384/512 (`none`, `HS*` and the rest are rejected) (J-2);
///   ES512 is allowed by the spec but ring cannot verify it, so it is rejected as unsupported;
/// - the header holds only `alg`, `kid` and `typ` (J-3), and `typ`, if present, is `JWT` or
///   `JOSE` (J-4);
/// - `sub` is a SPIFFE ID (J-5);
/// - the signature verifies with a key from the JWT bundle of **`sub`'s** trust domain: the
///   key with the token's `kid`, or, with no `kid`, any key of that bundle (J-8);
/// - `exp` is present and, allowing [`JWT_LEEWAY`], not past; `nbf`, if present, is not in
///   the future (J-7);
/// - `aud` is present, non-empty and contains `audience` (J-6).
///
/// Not checked: `iat`, `iss` (not part of the spec), the authority's own expiry.
pub fn validate_jwt_svid(
    token: &str,
    audience: &str,
    bundles: &BundleSet,
    now: SystemTime,
) -> Result<JwtSvidClaims, JwtError> {
    if token.len() > MAX_JWT_LEN {
        return Err(JwtError::TooLong(token.len()));
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::NotCompact);
    };
    let header = decode_object(header_b64, "header")?;
    let claims = decode_object(claims_b64, "claims")?;
    let signature = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|_| JwtError::BadBase64("signature"))?;

    if let Some(name) = header
        .keys()
        .find(|k| !ALLOWED_HEADERS.contains(&k.as_str()))
    {
        return Err(JwtError::UnexpectedHeader(super::excerpt(name)));
    }
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => Alg::parse(alg)?,
        _ => return Err(JwtError::MissingAlg),
    };
    match header.get("typ") {
        None => {}
        Some(Value::String(typ)) if typ == "JWT" || typ == "JOSE" => {}
        Some(_) => return Err(JwtError::BadTyp),
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.as_str()),
        Some(_) => return Err(JwtError::BadKid),
    };

    let spiffe_id = match claims.get("sub") {
        Some(Value::String(sub)) => sub
            .parse::<SpiffeId>()
            .map_err(|_| JwtError::BadSubject(sub.clone()))?,
        Some(other) => return Err(JwtError::BadSubject(other.to_string())),
        None => return Err(JwtError::MissingSubject),
    };
    if spiffe_id.path().is_empty() {
        return Err(JwtError::SubjectWithoutPath(spiffe_id.to_string()));
    }

    let trust_domain = spiffe_id.trust_domain();
    let authorities = bundles
        .get(&trust_domain)
        .map(|b| b.jwt_authorities())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| JwtError::NoBundle(trust_domain.to_string()))?;
    let candidates: Vec<&JwtAuthority> = match kid {
        Some(kid) => {
            let found = authorities.iter().find(|a| a.kid() == kid);
            vec![found.ok_or_else(|| JwtError::UnknownKid(super::excerpt(kid)))?]
        }
        None => authorities.iter().collect(),
    };
    let signing_input = header_b64.len() + 1 + claims_b64.len();
    let signed = token
        .get(..signing_input)
        .ok_or(JwtError::NotCompact)?
        .as_bytes();
    verify_signature(alg, &candidates, signed, &signature)?;

    let exp = claims
        .get("exp")
        .and_then(Value::as_f64)
        .ok_or(JwtError::MissingExpiry)?;
    let expires_at = to_time(exp);
    if expires_at + JWT_LEEWAY <= now {
        return Err(JwtError::Expired);
    }
    match claims.get("nbf") {
        None => {}
        Some(nbf) => match nbf.as_f64() {
            Some(nbf) if to_time(nbf) > now + JWT_LEEWAY => return Err(JwtError::NotYetValid),
            Some(_) => {}
            None => return Err(JwtError::BadNotBefore),
        },
    }
    let audiences: Vec<String> = match claims.get("aud") {
        Some(Value::String(aud)) => vec![aud.clone()],
        // Every audience is a string (RFC 7519 §4.1.3): a list with anything else is refused,
        // not read without it.
        Some(Value::Array(auds)) => auds
            .iter()
            .map(|aud| aud.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or(JwtError::AudienceNotString)?,
        _ => Vec::new(),
    };
    if audiences.is_empty() {
        return Err(JwtError::MissingAudience);
    }
    if !audiences.iter().any(|a| a == audience) {
        return Err(JwtError::AudienceMismatch(audience.to_owned()));
    }
    Ok(JwtSvidClaims {
        spiffe_id,
        audience: audiences,
        expires_at,
        claims,
    })
}

fn decode_object(part: &str, name: &'static str) -> Result<Map<String, Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::BadBase64(name))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtError::BadJson(name)),
    }
}

fn verify_signature(
    alg: Alg,
    candidates: &[&JwtAuthority],
    signed: &[u8],
    signature: &[u8],
) -> Result<(), JwtError> {
    let mut any_key_fits = false;
    for authority in candidates {
        let Ok(key) = PublicKey::from_spki(authority.public_key()) else {
            continue;
        };
        let Some(ring_alg) = alg.ring_algorithm(&key) else {
            continue;
        };
        any_key_fits = true;
        let public = UnparsedPublicKey::new(ring_alg, key.ring_public_key());
        if public.verify(signed, signature).is_ok() {
            return Ok(());
        }
    }
    match any_key_fits {
        true => Err(JwtError::BadSignature),
        false => Err(JwtError::KeyAlgMismatch(alg.name().to_owned())),
    }
}

fn to_time(secs: f64) -> SystemTime {
    if !secs.is_finite() || secs <= 0.0 {
        return UNIX_EPOCH;
    }
    // Far-future values saturate instead of overflowing.
    let secs = secs.min(1e11);
    UNIX_EPOCH + Duration::from_secs_f64(secs)
}

// === impl Alg ===

impl Alg {
    fn parse(name: &str) -> Result<Self, JwtError> {
        Ok(match name {
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "PS256" => Self::Ps256,
            "PS384" => Self::Ps384,
            "PS512" => Self::Ps512,
            "ES512" => return Err(JwtError::UnsupportedAlg(name.to_owned())),
            _ => return Err(JwtError::DisallowedAlg(super::excerpt(name))),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Ps256 => "PS256",
            Self::Ps384 => "PS384",
            Self::Ps512 => "PS512",
        }
    }

    /// The ring algorithm for this `alg` and key, or `None` when the key cannot verify it.
    fn ring_algorithm(self, key: &PublicKey) -> Option<&'static dyn VerificationAlgorithm> {
        match (self, key) {
            (
                Self::Es256,
                PublicKey::Ec {
                    curve: Curve::P256, ..
                },
            ) => Some(&signature::ECDSA_P256_SHA256_FIXED),
            (
                Self::Es384,
                PublicKey::Ec {
                    curve: Curve::P384, ..
                },
            ) => Some(&signature::ECDSA_P384_SHA384_FIXED),
            (Self::Rs256, PublicKey::Rsa { .. }) => Some(&signature::RSA_PKCS1_2048_8192_SHA256),
            (Self::Rs384, PublicKey::Rsa { .. }) => Some(&signature::RSA_PKCS1_2048_8192_SHA384),
            (Self::Rs512, PublicKey::Rsa { .. }) => Some(&signature::RSA_PKCS1_2048_8192_SHA512),
            (Self::Ps256, PublicKey::Rsa { .. }) => Some(&signature::RSA_PSS_2048_8192_SHA256),
            (Self::Ps384, PublicKey::Rsa { .. }) => Some(&signature::RSA_PSS_2048_8192_SHA384),
            (Self::Ps512, PublicKey::Rsa { .. }) => Some(&signature::RSA_PSS_2048_8192_SHA512),
            _ => None,
        }
    }
}
