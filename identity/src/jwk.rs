//! Public keys as they appear in a JWK (RFC 7517/7518) and in a DER SubjectPublicKeyInfo:
//! the conversions that SPIFFE bundles need (EC P-256/P-384, RSA, Ed25519).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer as _;
use x509_parser::public_key::PublicKey as ParsedKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// DER of `AlgorithmIdentifier { id-ecPublicKey, prime256v1 }` wrapped up to the BIT STRING
/// header of a P-256 SubjectPublicKeyInfo with an uncompressed point.
const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// The same for P-384 (`secp384r1`).
const P384_SPKI_PREFIX: &[u8] = &[
    0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b,
    0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
];
/// The same for Ed25519.
const ED25519_SPKI_PREFIX: &[u8] = &[
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// DER of `AlgorithmIdentifier { rsaEncryption, NULL }`.
const RSA_ALGORITHM_ID: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];
/// Largest RSA modulus accepted from a JWK, in bytes (8192 bits, ring's limit).
const MAX_RSA_MODULUS_LEN: usize = 1024;

/// An elliptic curve that a JWT-SVID key may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Curve {
    P256,
    P384,
}

/// A public key, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PublicKey {
    /// Coordinates are fixed-length big-endian.
    Ec {
        curve: Curve,
        x: Vec<u8>,
        y: Vec<u8>,
    },
    /// Modulus and exponent without leading zero bytes.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    Ed25519(Vec<u8>),
}

// === impl Curve ===

impl Curve {
    fn coordinate_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }

    fn jwk_name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
        }
    }
}

// === impl PublicKey ===

impl PublicKey {
    /// Decodes a DER SubjectPublicKeyInfo.
    pub(crate) fn from_spki(der: &[u8]) -> Result<Self, String> {
        let (rest, spki) = SubjectPublicKeyInfo::from_der(der)
            .map_err(|_| "public key is not a DER SubjectPublicKeyInfo".to_owned())?;
        if !rest.is_empty() {
            return Err("public key has trailing bytes".to_owned());
        }
        let alg = &spki.algorithm.algorithm;
        if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve_oid = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            let curve = match curve_oid {
                Some(oid) if oid == OID_EC_P256 => Curve::P256,
                Some(oid) if oid == OID_NIST_EC_P384 => Curve::P384,
                _ => return Err("elliptic curve is not P-256 or P-384".to_owned()),
            };
            let point: &[u8] = &spki.subject_public_key.data;
            let len = curve.coordinate_len();
            match point.split_first() {
                Some((0x04, xy)) if xy.len() == 2 * len => {
                    let (x, y) = xy.split_at(len);
                    Ok(Self::Ec {
                        curve,
                        x: x.to_vec(),
                        y: y.to_vec(),
                    })
                }
                _ => Err("elliptic curve point is not an uncompressed point".to_owned()),
            }
        } else if *alg == OID_PKCS1_RSAENCRYPTION {
            match spki.parsed() {
                Ok(ParsedKey::RSA(rsa)) => Ok(Self::Rsa {
                    n: strip_leading_zeros(rsa.modulus).to_vec(),
                    e: strip_leading_zeros(rsa.exponent).to_vec(),
                }),
                _ => Err("rsa public key is malformed".to_owned()),
            }
        } else if *alg == OID_SIG_ED25519 {
            let raw: &[u8] = &spki.subject_public_key.data;
            if raw.len() != 32 {
                return Err("ed25519 public key is not 32 bytes".to_owned());
            }
            Ok(Self::Ed25519(raw.to_vec()))
        } else {
            Err(format!("public key algorithm `{alg}` is not supported"))
        }
    }

    /// Encodes the key as a DER SubjectPublicKeyInfo.
    pub(crate) fn to_spki(&self) -> Vec<u8> {
        match self {
            Self::Ec { curve, x, y } => {
                let prefix = match curve {
                    Curve::P256 => P256_SPKI_PREFIX,
                    Curve::P384 => P384_SPKI_PREFIX,
                };
                let mut out = prefix.to_vec();
                out.push(0x04);
                out.extend_from_slice(x);
                out.extend_from_slice(y);
                out
            }
            Self::Rsa { n, e } => {
                let rsa_key = der_tlv(0x30, &[der_uint(n), der_uint(e)].concat());
                let mut bits = vec![0u8];
                bits.extend_from_slice(&rsa_key);
                der_tlv(
                    0x30,
                    &[RSA_ALGORITHM_ID.to_vec(), der_tlv(0x03, &bits)].concat(),
                )
            }
            Self::Ed25519(raw) => [ED25519_SPKI_PREFIX, raw.as_slice()].concat(),
        }
    }

    /// The key in the form ring verifies with: an uncompressed point for EC, a DER
    /// `RSAPublicKey` for RSA, the raw 32 bytes for Ed25519.
    pub(crate) fn ring_public_key(&self) -> Vec<u8> {
        match self {
            Self::Ec { x, y, .. } => [&[0x04][..], x, y].concat(),
            Self::Rsa { n, e } => der_tlv(0x30, &[der_uint(n), der_uint(e)].concat()),
            Self::Ed25519(raw) => raw.clone(),
        }
    }

    /// Writes `kty` and the key parameters into a JWK object.
    pub(crate) fn write_jwk(&self, jwk: &mut Map<String, Value>) {
        let b64 = |b: &[u8]| Value::String(URL_SAFE_NO_PAD.encode(b));
        match self {
            Self::Ec { curve, x, y } => {
                jwk.insert("kty".into(), "EC".into());
                jwk.insert("crv".into(), curve.jwk_name().into());
                jwk.insert("x".into(), b64(x));
                jwk.insert("y".into(), b64(y));
            }
            Self::Rsa { n, e } => {
                jwk.insert("kty".into(), "RSA".into());
                jwk.insert("n".into(), b64(n));
                jwk.insert("e".into(), b64(e));
            }
            Self::Ed25519(raw) => {
                jwk.insert("kty".into(), "OKP".into());
                jwk.insert("crv".into(), "Ed25519".into());
                jwk.insert("x".into(), b64(raw));
            }
        }
    }

    /// Reads the key parameters of a JWK. `Ok(None)` when `kty` (or the curve) is one this
    /// implementation does not know, which callers ignore (rule B-4).
    pub(crate) fn from_jwk(jwk: &Map<String, Value>) -> Result<Option<Self>, String> {
        let kty = match jwk.get("kty") {
            Some(Value::String(kty)) => kty.as_str(),
            Some(_) => return Err("`kty` is not a string".to_owned()),
            None => return Ok(None),
        };
        match kty {
            "EC" => {
                let curve = match str_member(jwk, "crv")? {
                    "P-256" => Curve::P256,
                    "P-384" => Curve::P384,
                    _ => return Ok(None),
                };
                let len = curve.coordinate_len();
                let x = b64_member(jwk, "x")?;
                let y = b64_member(jwk, "y")?;
                if x.len() != len || y.len() != len {
                    return Err(format!(
                        "`x` and `y` must be {len} bytes for `{}`",
                        curve.jwk_name()
                    ));
                }
                Ok(Some(Self::Ec { curve, x, y }))
            }
            "RSA" => {
                let n = b64_member(jwk, "n")?;
                let e = b64_member(jwk, "e")?;
                let (n, e) = (strip_leading_zeros(&n), strip_leading_zeros(&e));
                if n.is_empty() || e.is_empty() || n.len() > MAX_RSA_MODULUS_LEN || e.len() > 8 {
                    return Err("rsa `n` or `e` has an invalid length".to_owned());
                }
                Ok(Some(Self::Rsa {
                    n: n.to_vec(),
                    e: e.to_vec(),
                }))
            }
            "OKP" => {
                if str_member(jwk, "crv")? != "Ed25519" {
                    return Ok(None);
                }
                let x = b64_member(jwk, "x")?;
                if x.len() != 32 {
                    return Err("ed25519 `x` must be 32 bytes".to_owned());
                }
                Ok(Some(Self::Ed25519(x)))
            }
            _ => Ok(None),
        }
    }
}

fn str_member<'a>(jwk: &'a Map<String, Value>, name: &str) -> Result<&'a str, String> {
    match jwk.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("`{name}` is not a string")),
        None => Err(format!("`{name}` is missing")),
    }
}

fn b64_member(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(str_member(jwk, name)?)
        .map_err(|_| format!("`{name}` is not unpadded base64url"))
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    b.get(start..).unwrap_or_default()
}

/// A DER INTEGER holding the unsigned big-endian `b`.
fn der_uint(b: &[u8]) -> Vec<u8> {
    let b = strip_leading_zeros(b);
    let mut content = Vec::with_capacity(b.len() + 1);
    if b.first().is_none_or(|&first| first & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(b);
    der_tlv(0x02, &content)
}

/// A DER tag-length-value with definite length.
fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let len_bytes = strip_leading_zeros(&bytes);
        out.push(0x80 | len_bytes.len() as u8);
        out.extend_from_slice(len_bytes);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_key_round_trips_through_spki_and_jwk() {
        let key = PublicKey::Ec {
            curve: Curve::P256,
            x: vec![1; 32],
            y: vec![2; 32],
        };
        let spki = key.to_spki();
        assert_eq!(PublicKey::from_spki(&spki).unwrap(), key);
        let mut jwk = Map::new();
        key.write_jwk(&mut jwk);
        assert_eq!(PublicKey::from_jwk(&jwk).unwrap(), Some(key));
    }

    #[test]
    fn rsa_key_round_trips_through_spki_and_jwk() {
        let mut n = vec![0xc5; 256];
        n[255] = 0x01;
        let key = PublicKey::Rsa {
            n,
            e: vec![1, 0, 1],
        };
        let spki = key.to_spki();
        assert_eq!(PublicKey::from_spki(&spki).unwrap(), key);
        let mut jwk = Map::new();
        key.write_jwk(&mut jwk);
        assert_eq!(PublicKey::from_jwk(&jwk).unwrap(), Some(key));
    }

    #[test]
    fn unknown_kty_and_curve_are_not_errors() {
        let jwk: Map<String, Value> = serde_json::from_str(r#"{"kty":"oct","k":"AA"}"#).unwrap();
        assert_eq!(PublicKey::from_jwk(&jwk).unwrap(), None);
        let jwk: Map<String, Value> =
            serde_json::from_str(r#"{"kty":"EC","crv":"P-521","x":"AA","y":"AA"}"#).unwrap();
        assert_eq!(PublicKey::from_jwk(&jwk).unwrap(), None);
    }

    #[test]
    fn short_ec_coordinates_are_rejected() {
        let jwk: Map<String, Value> =
            serde_json::from_str(r#"{"kty":"EC","crv":"P-256","x":"AAAA","y":"AAAA"}"#).unwrap();
        assert!(PublicKey::from_jwk(&jwk).unwrap_err().contains("32 bytes"));
    }
}
