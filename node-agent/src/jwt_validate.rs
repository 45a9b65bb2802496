//! JWT-SVID validation for `ValidateJWTSVID` (rules J-1..J-8): compact serialization only,
//! `alg` ES256/ES384 (every other value, `none` and `HS256` included, is refused), only the
//! `alg`/`kid`/`typ` headers, `typ` JWT or JOSE, `sub` a SPIFFE ID, the audience among `aud`,
//! `exp` in the future (30 s leeway), signature checked with the key named by `kid` in the
//! bundle of the subject's trust domain.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, UnparsedPublicKey};
use warden_identity::SpiffeId;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::trust::BundleSet;

const LEEWAY: Duration = Duration::from_secs(30);

/// Why a JWT-SVID was refused. Messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtValidationError {
    /// Not three base64url parts (J-1).
    #[error("token is not a jws compact serialization")]
    Malformed,
    /// Header problem (J-2, J-3, J-4).
    #[error("token header is not allowed: {0}")]
    Header(String),
    /// Claims problem (J-5, J-6, J-7).
    #[error("token claims are not valid: {0}")]
    Claims(String),
    /// No key for the subject's trust domain and `kid` (J-8).
    #[error("no jwt authority `{kid}` in the bundle of `{trust_domain}`")]
    UnknownKey {
        /// The header's kid.
        kid: String,
        /// The subject's trust domain.
        trust_domain: String,
    },
    /// Bad signature.
    #[error("token signature is invalid")]
    Signature,
}

/// A validated JWT-SVID.
#[derive(Debug, Clone)]
pub struct ValidatedJwt {
    /// The subject.
    pub spiffe_id: SpiffeId,
    /// All claims.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

fn decode_json(
    part: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, JwtValidationError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtValidationError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        _ => Err(JwtValidationError::Malformed),
    }
}

/// Validates `token` for `audience` against `bundles` at `now`.
pub fn validate_jwt_svid(
    token: &str,
    audience: &str,
    bundles: &BundleSet,
    now: SystemTime,
) -> Result<ValidatedJwt, JwtValidationError> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtValidationError::Malformed);
    };
    let header = decode_json(h)?;
    if let Some(extra) = header
        .keys()
        .find(|k| !matches!(k.as_str(), "alg" | "kid" | "typ"))
    {
        return Err(JwtValidationError::Header(format!(
            "header `{extra}` is not permitted"
        )));
    }
    if let Some(typ) = header.get("typ")
        && !matches!(typ.as_str(), Some("JWT" | "JOSE"))
    {
        return Err(JwtValidationError::Header(
            "`typ` must be `JWT` or `JOSE`".into(),
        ));
    }
    let alg = header
        .get("alg")
        .and_then(|a| a.as_str())
        .unwrap_or_default();
    let algorithm = match alg {
        "ES256" => &ECDSA_P256_SHA256_FIXED,
        "ES384" => &ECDSA_P384_SHA384_FIXED,
        other => {
            return Err(JwtValidationError::Header(format!(
                "algorithm `{other}` is not supported"
            )));
        }
    };
    let kid = header
        .get("kid")
        .and_then(|k| k.as_str())
        .ok_or_else(|| JwtValidationError::Header("`kid` is required".into()))?;

    let claims = decode_json(c)?;
    let sub = claims
        .get("sub")
        .and_then(|v| v.as_str())
        .ok_or_else(|| JwtValidationError::Claims("`sub` is missing".into()))?;
    let spiffe_id: SpiffeId = sub
        .parse()
        .map_err(|_| JwtValidationError::Claims(format!("`sub` `{sub}` is not a spiffe id")))?;
    let auds: Vec<&str> = match claims.get("aud") {
        Some(serde_json::Value::String(a)) => vec![a.as_str()],
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect(),
        _ => Vec::new(),
    };
    if auds.is_empty() {
        return Err(JwtValidationError::Claims("`aud` is missing".into()));
    }
    if !auds.contains(&audience) {
        return Err(JwtValidationError::Claims(format!(
            "audience `{audience}` is not in `aud`"
        )));
    }
    let exp = claims
        .get("exp")
        .and_then(|v| v.as_f64())
        .ok_or_else(|| JwtValidationError::Claims("`exp` is missing".into()))?;
    let now_secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    if exp + LEEWAY.as_secs_f64() < now_secs {
        return Err(JwtValidationError::Claims("token has expired".into()));
    }

    let td = spiffe_id.trust_domain();
    let unknown = || JwtValidationError::UnknownKey {
        kid: kid.to_owned(),
        trust_domain: td.to_string(),
    };
    let key = bundles
        .get(&td)
        .and_then(|b| b.jwt_keys().iter().find(|k| k.kid == kid))
        .ok_or_else(unknown)?;
    let (_, spki) = SubjectPublicKeyInfo::from_der(&key.public_key).map_err(|_| unknown())?;
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| JwtValidationError::Malformed)?;
    let signed = token
        .get(..h.len() + 1 + c.len())
        .ok_or(JwtValidationError::Malformed)?;
    UnparsedPublicKey::new(algorithm, spki.subject_public_key.data.as_ref())
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| JwtValidationError::Signature)?;
    Ok(ValidatedJwt { spiffe_id, claims })
}
