//! The SPIFFE bundle format: an RFC 7517 JWK Set with `spiffe_sequence` and
//! `spiffe_refresh_hint` (SPIFFE_Trust_Domain_and_Bundle.md §4, rules B-1..B-6).

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::CertificateDer;
use serde_json::{Map, Value};

use super::{Bundle, BundleError, JwtAuthority, is_certificate};
use crate::TrustDomain;
use crate::jwk::PublicKey;

const USE_X509: &str = "x509-svid";
const USE_JWT: &str = "jwt-svid";
/// Most keys a bundle may hold. A JWT-SVID without `kid` is checked against every JWT key of
/// its trust domain, so the number of keys bounds the work one token can cause; trust domains
/// keep a few keys across a rotation, not hundreds.
pub(crate) const MAX_KEYS: usize = 256;

/// Encodes `bundle`; `with_x509` adds the X.509 authorities, `with_sequence` the sequence,
/// `with_hint` the refresh hint (when set).
pub(super) fn encode(
    bundle: &Bundle,
    with_x509: bool,
    with_sequence: bool,
    with_hint: bool,
) -> String {
    encode_value(bundle, with_x509, with_sequence, with_hint).to_string()
}

/// [`encode`], as a JSON value.
pub(super) fn encode_value(
    bundle: &Bundle,
    with_x509: bool,
    with_sequence: bool,
    with_hint: bool,
) -> Value {
    let mut keys = Vec::new();
    if with_x509 {
        for cert in &bundle.x509_authorities {
            let mut jwk = Map::new();
            jwk.insert("use".into(), USE_X509.into());
            match spki_of(cert).and_then(|spki| PublicKey::from_spki(&spki)) {
                Ok(key) => key.write_jwk(&mut jwk),
                Err(err) => {
                    tracing::warn!(error = %err, "x509 authority left out of the jwks: its key cannot be expressed as a jwk");
                    continue;
                }
            }
            jwk.insert(
                "x5c".into(),
                Value::Array(vec![STANDARD.encode(cert.as_ref()).into()]),
            );
            keys.push(Value::Object(jwk));
        }
    }
    for authority in &bundle.jwt_authorities {
        let mut jwk = Map::new();
        jwk.insert("use".into(), USE_JWT.into());
        jwk.insert("kid".into(), authority.kid.clone().into());
        match PublicKey::from_spki(&authority.public_key) {
            Ok(key) => key.write_jwk(&mut jwk),
            Err(err) => {
                tracing::warn!(kid = %authority.kid, error = %err, "jwt authority left out of the jwks");
                continue;
            }
        }
        keys.push(Value::Object(jwk));
    }
    let mut doc = Map::new();
    doc.insert("keys".into(), Value::Array(keys));
    if with_sequence {
        doc.insert("spiffe_sequence".into(), bundle.sequence.into());
    }
    if let Some(hint) = bundle.refresh_hint.filter(|_| with_hint) {
        doc.insert("spiffe_refresh_hint".into(), hint.as_secs().into());
    }
    Value::Object(doc)
}

pub(super) fn decode(trust_domain: TrustDomain, json: &[u8]) -> Result<Bundle, BundleError> {
    let doc: Value = serde_json::from_slice(json).map_err(|e| BundleError::Json(e.to_string()))?;
    let Value::Object(doc) = doc else {
        return Err(BundleError::NotAnObject);
    };
    let keys = match doc.get("keys") {
        None => return Err(BundleError::MissingKeys),
        Some(Value::Array(keys)) => keys,
        Some(_) => return Err(BundleError::KeysNotArray),
    };
    if keys.len() > MAX_KEYS {
        return Err(BundleError::TooManyKeys { count: keys.len() });
    }
    let mut bundle = Bundle::new(trust_domain);
    match doc.get("spiffe_sequence") {
        None => {}
        Some(v) => bundle.sequence = v.as_u64().ok_or(BundleError::BadSequence)?,
    }
    match doc.get("spiffe_refresh_hint") {
        None => {}
        Some(v) => {
            bundle.refresh_hint = Some(Duration::from_secs(
                v.as_u64().ok_or(BundleError::BadRefreshHint)?,
            ));
        }
    }
    let mut kids = BTreeSet::new();
    for (index, key) in keys.iter().enumerate() {
        let Value::Object(jwk) = key else {
            return Err(BundleError::KeyNotObject { index });
        };
        match jwk.get("use").and_then(Value::as_str) {
            Some(USE_X509) => {
                if let Some(cert) = decode_x509_authority(index, jwk)? {
                    bundle.add_x509_authority(cert);
                }
            }
            Some(USE_JWT) => {
                if let Some(authority) = decode_jwt_authority(index, jwk)? {
                    if !kids.insert(authority.kid.clone()) {
                        return Err(BundleError::DuplicateKid(crate::jwt::excerpt(
                            &authority.kid,
                        )));
                    }
                    bundle.jwt_authorities.push(authority);
                }
            }
            // Rule B-4: a missing or unknown `use` means the key is ignored.
            other => {
                tracing::debug!(index, r#use = ?other, "ignoring bundle key with unknown `use`");
            }
        }
    }
    Ok(bundle)
}

fn decode_x509_authority(
    index: usize,
    jwk: &Map<String, Value>,
) -> Result<Option<CertificateDer<'static>>, BundleError> {
    if jwk.contains_key("kid") {
        return Err(BundleError::X509AuthorityWithKid { index });
    }
    if !known_kty(jwk) {
        tracing::debug!(index, "ignoring x509-svid bundle key with unknown `kty`");
        return Ok(None);
    }
    // Rule B-5: consumers ignore entries whose `x5c` is missing or empty and use only the
    // first value.
    let first = match jwk.get("x5c") {
        None => return Ok(None),
        Some(Value::Array(values)) => match values.first() {
            None => return Ok(None),
            Some(first) => first,
        },
        Some(_) => {
            return Err(BundleError::BadX5c {
                index,
                reason: "is not an array".to_owned(),
            });
        }
    };
    let Value::String(b64) = first else {
        return Err(BundleError::BadX5c {
            index,
            reason: "value is not a string".to_owned(),
        });
    };
    let der = STANDARD.decode(b64).map_err(|_| BundleError::BadX5c {
        index,
        reason: "value is not base64".to_owned(),
    })?;
    if !is_certificate(&der) {
        return Err(BundleError::BadX5c {
            index,
            reason: "value is not a der x.509 certificate".to_owned(),
        });
    }
    if let Err(reason) = super::ca_certificate(&der) {
        return Err(BundleError::BadX5c {
            index,
            reason: format!("value is not a certificate authority ({reason})"),
        });
    }
    let cert = CertificateDer::from(der);
    // A key type this implementation cannot express is an unknown `kty` in effect (rule B-4).
    if let Err(err) = spki_of(&cert).and_then(|spki| PublicKey::from_spki(&spki)) {
        tracing::debug!(index, error = %err, "ignoring x509-svid bundle key with unsupported key type");
        return Ok(None);
    }
    Ok(Some(cert))
}

fn decode_jwt_authority(
    index: usize,
    jwk: &Map<String, Value>,
) -> Result<Option<JwtAuthority>, BundleError> {
    // An unknown `kty` is ignored whatever else the key lacks (rule B-4), before B-6's `kid`.
    let Some(key) =
        PublicKey::from_jwk(jwk).map_err(|reason| BundleError::BadJwk { index, reason })?
    else {
        tracing::debug!(
            index,
            "ignoring jwt-svid bundle key with unknown `kty` or curve"
        );
        return Ok(None);
    };
    let kid = match jwk.get("kid") {
        Some(Value::String(kid)) if !kid.is_empty() => kid.clone(),
        _ => return Err(BundleError::JwtAuthorityWithoutKid { index }),
    };
    Ok(Some(JwtAuthority::new(kid, key.to_spki(), None)))
}

/// Whether `kty` names a key type this implementation knows (rule B-4).
fn known_kty(jwk: &Map<String, Value>) -> bool {
    matches!(
        jwk.get("kty").and_then(Value::as_str),
        Some("EC" | "RSA" | "OKP")
    )
}

fn spki_of(cert: &CertificateDer<'_>) -> Result<Vec<u8>, String> {
    use x509_parser::prelude::FromDer as _;
    x509_parser::certificate::X509Certificate::from_der(cert.as_ref())
        .map(|(_, c)| c.public_key().raw.to_vec())
        .map_err(|_| "certificate does not parse".to_owned())
}
