//! JWT-SVIDs: signing with an ES256 [`JwtSigner`] and validation of a presented token
//! against the JWT bundle of its subject's trust domain (rules J-1..J-8, in
//! [`validate_jwt_svid`]).

mod validate;

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::{Map, Value, json};

pub use validate::{JWT_LEEWAY, MAX_JWT_LEN, validate_jwt_svid};

use crate::SpiffeId;
use crate::jwk::{Curve, PublicKey};

/// Most audiences a JWT-SVID may carry.
pub const MAX_AUDIENCES: usize = 16;
/// Longest audience, in bytes. With [`MAX_AUDIENCES`], a token stays well under
/// [`MAX_JWT_LEN`], so that every validator accepts what is signed.
pub const MAX_AUDIENCE_LEN: usize = 512;

/// Whether `audience` may go into a JWT-SVID: at least one (rule J-6), at most
/// [`MAX_AUDIENCES`], each 1 to [`MAX_AUDIENCE_LEN`] bytes. What a workload asks for reaches
/// the signer and the CA's audit log; this bounds both.
pub fn check_audience(audience: &[String]) -> Result<(), JwtError> {
    if audience.is_empty() {
        return Err(JwtError::NoAudience);
    }
    if audience.len() > MAX_AUDIENCES {
        return Err(JwtError::BadAudience(format!("{} given", audience.len())));
    }
    if let Some(bad) = audience
        .iter()
        .find(|a| a.is_empty() || a.len() > MAX_AUDIENCE_LEN)
    {
        return Err(JwtError::BadAudience(format!("one is {} bytes", bad.len())));
    }
    Ok(())
}

/// Why a JWT-SVID could not be signed or was rejected. Strings taken from a token (`alg`, a
/// header name, `kid`) are anyone's: they are kept to [`MAX_SHOWN`] characters and shown
/// quoted and escaped, so a log line gets neither a forged line nor a megabyte from them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// Key generation or parsing failed.
    #[error("jwt signing key is not a valid pkcs#8 p-256 key")]
    BadKey,
    /// Signing failed.
    #[error("signing the jwt failed")]
    Signing,
    /// No audience was given (rule J-6).
    #[error("a jwt-svid needs at least one audience")]
    NoAudience,
    /// More audiences, or a longer one, than a JWT-SVID may carry ([`check_audience`]).
    #[error(
        "a jwt-svid carries at most {MAX_AUDIENCES} audiences of 1 to {MAX_AUDIENCE_LEN} bytes each: {0}"
    )]
    BadAudience(String),
    /// The expiry is not after the issue time.
    #[error("jwt-svid expiry must be in the future")]
    ExpiryNotInFuture,
    /// The token is longer than [`MAX_JWT_LEN`].
    #[error("token is {0} bytes long; the limit is {MAX_JWT_LEN}")]
    TooLong(usize),
    /// Not a JWS compact serialization `header.payload.signature` (rule J-1).
    #[error("token is not in jws compact serialization (three base64url parts)")]
    NotCompact,
    /// A part is not unpadded base64url.
    #[error("token {0} is not unpadded base64url")]
    BadBase64(&'static str),
    /// The header or claims are not a JSON object.
    #[error("token {0} is not a json object")]
    BadJson(&'static str),
    /// `alg` is missing or not a string (rule J-2).
    #[error("token header has no `alg`")]
    MissingAlg,
    /// `alg` is not one the JWT-SVID spec allows (rule J-2).
    #[error("token algorithm {0:?} is not allowed")]
    DisallowedAlg(String),
    /// `alg` is allowed by the spec but not supported here (ES512).
    #[error("token algorithm {0:?} is not supported")]
    UnsupportedAlg(String),
    /// A header other than `alg`, `kid`, `typ` (rule J-3).
    #[error("token header {0:?} is not allowed")]
    UnexpectedHeader(String),
    /// `typ` is not `JWT` or `JOSE` (rule J-4).
    #[error("token `typ` must be `JWT` or `JOSE`")]
    BadTyp,
    /// `kid` is not a string.
    #[error("token `kid` must be a string")]
    BadKid,
    /// `sub` is missing (rule J-5).
    #[error("token has no `sub` claim")]
    MissingSubject,
    /// `sub` is not a SPIFFE ID (rule J-5).
    #[error("token `sub` {0:?} is not a spiffe id")]
    BadSubject(String),
    /// `sub` is a trust domain's own ID, which names no workload (rule J-5, as X-2 for
    /// X.509-SVIDs).
    #[error(
        "jwt-svid `sub` `{0}` names a trust domain, not a workload (its spiffe id has no path)"
    )]
    SubjectWithoutPath(String),
    /// `nbf` is present but not a number.
    #[error("token `nbf` claim is not a number")]
    BadNotBefore,
    /// `aud` is a list with a value that is not a string (RFC 7519 §4.1.3).
    #[error("token `aud` claim has a value that is not a string")]
    AudienceNotString,
    /// `aud` is missing or empty (rule J-6).
    #[error("token has no `aud` claim")]
    MissingAudience,
    /// `aud` does not contain the validator's audience (rule J-6).
    #[error("token audience does not include `{0}`")]
    AudienceMismatch(String),
    /// `exp` is missing or not a number (rule J-7).
    #[error("token has no numeric `exp` claim")]
    MissingExpiry,
    /// `exp` is in the past (rule J-7).
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token is not yet valid")]
    NotYetValid,
    /// No JWT bundle for the subject's trust domain (rule J-8).
    #[error("no jwt bundle for trust domain `{0}`")]
    NoBundle(String),
    /// The bundle has no key with the token's `kid` (rule J-8).
    #[error("no jwt authority with `kid` {0:?} in the subject's trust domain")]
    UnknownKid(String),
    /// The authority's key cannot verify this `alg`.
    #[error("token algorithm `{0}` does not match the authority's key")]
    KeyAlgMismatch(String),
    /// The signature does not verify.
    #[error("token signature does not verify")]
    BadSignature,
}

/// Most characters of a token's own string an error keeps.
pub(crate) const MAX_SHOWN: usize = 64;

/// At most [`MAX_SHOWN`] characters of `s`, with `…` when cut.
pub(crate) fn excerpt(s: &str) -> String {
    match s.char_indices().nth(MAX_SHOWN) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

/// Signs JWT-SVIDs with ES256. `Debug` never shows the key.
pub struct JwtSigner {
    kid: String,
    key: EcdsaKeyPair,
    pkcs8: Vec<u8>,
    rng: SystemRandom,
}

/// The claims of a validated JWT-SVID.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtSvidClaims {
    spiffe_id: SpiffeId,
    audience: Vec<String>,
    expires_at: SystemTime,
    claims: Map<String, Value>,
}

// === impl JwtSigner ===

impl JwtSigner {
    /// A new random P-256 key with key id `kid`.
    pub fn generate(kid: impl Into<String>) -> Result<Self, JwtError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| JwtError::BadKey)?;
        Self::from_pkcs8(kid, pkcs8.as_ref())
    }

    /// A signer from a stored PKCS#8 P-256 key.
    pub fn from_pkcs8(kid: impl Into<String>, der: &[u8]) -> Result<Self, JwtError> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|_| JwtError::BadKey)?;
        Ok(Self {
            kid: kid.into(),
            key,
            pkcs8: der.to_vec(),
            rng,
        })
    }

    /// The key as PKCS#8 DER, for storing (with file mode 0600).
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public key as a DER SubjectPublicKeyInfo, for [`crate::JwtAuthority`].
    pub fn public_key_spki_der(&self) -> Vec<u8> {
        let point = self.key.public_key().as_ref();
        let (x, y) = point
            .get(1..)
            .unwrap_or_default()
            .split_at(point.len().saturating_sub(1) / 2);
        PublicKey::Ec {
            curve: Curve::P256,
            x: x.to_vec(),
            y: y.to_vec(),
        }
        .to_spki()
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs a JWT-SVID for `sub` with the given audiences, issued at `now`.
    pub fn sign(
        &self,
        sub: &SpiffeId,
        audience: &[String],
        expires_at: SystemTime,
        now: SystemTime,
    ) -> Result<String, JwtError> {
        check_audience(audience)?;
        if sub.path().is_empty() {
            return Err(JwtError::SubjectWithoutPath(sub.to_string()));
        }
        let iat = unix_secs(now);
        let exp = unix_secs(expires_at);
        if exp <= iat {
            return Err(JwtError::ExpiryNotInFuture);
        }
        let header = json!({ "alg": "ES256", "kid": self.kid, "typ": "JWT" });
        let aud = match audience {
            [one] => Value::String(one.clone()),
            many => Value::from(many.to_vec()),
        };
        let claims = json!({ "sub": sub.as_str(), "aud": aud, "exp": exp, "iat": iat });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| JwtError::Signing)?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(sig.as_ref())
        ))
    }
}

impl fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSigner")
            .field("kid", &self.kid)
            .field("key", &"<redacted>")
            .finish()
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

// === impl JwtSvidClaims ===

impl JwtSvidClaims {
    /// The subject's SPIFFE ID (`sub`).
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// The audiences (`aud`).
    pub fn audience(&self) -> &[String] {
        &self.audience
    }

    /// The expiry (`exp`).
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// Every claim of the token, as JSON (for `ValidateJWTSVIDResponse.claims`).
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }
}
