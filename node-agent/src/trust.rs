//! Trust bundles as the agent receives them from the CA (`warden.v1.Bundle`): X.509
//! authorities and JWT signing keys per trust domain, with the encodings the Workload API
//! needs (concatenated DER, SPIFFE JWKS with only `jwt-svid` keys).
//!
//! NOTE: the `identity` crate was planned to provide `Bundle`/`BundleSet`; they did not exist
//! when the agent was written, so the agent keeps this small wire-level model. It can be
//! replaced by `identity::BundleSet` without changing the Workload API code.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::CertificateDer;
use warden_api::v1;
use warden_identity::TrustDomain;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

/// Why a bundle from the CA was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The trust domain name does not parse.
    #[error("bundle has an invalid trust domain `{0}`")]
    TrustDomain(String),
    /// An X.509 authority does not parse.
    #[error("bundle for `{0}` has an x509 authority that is not a certificate")]
    Certificate(String),
    /// A bundle file could not be read.
    #[error("trust bundle `{0}` holds no pem certificate")]
    NoCertificates(String),
}

/// A JWT signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtKey {
    /// Key id (`kid`).
    pub kid: String,
    /// DER SubjectPublicKeyInfo.
    pub public_key: Vec<u8>,
}

/// One trust domain's bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    x509_authorities: Vec<CertificateDer<'static>>,
    jwt_keys: Vec<JwtKey>,
    sequence: u64,
}

// === impl TrustBundle ===

impl TrustBundle {
    /// A bundle with X.509 authorities only (e.g. from a PEM trust-bundle file).
    pub fn from_authorities(trust_domain: TrustDomain, x509: Vec<CertificateDer<'static>>) -> Self {
        Self {
            trust_domain,
            x509_authorities: x509,
            jwt_keys: Vec::new(),
            sequence: 0,
        }
    }

    /// Adds a JWT key.
    pub fn add_jwt_key(&mut self, key: JwtKey) {
        self.jwt_keys.push(key);
    }

    /// Converts the CA's wire form, checking every certificate parses.
    pub fn from_proto(b: &v1::Bundle) -> Result<Self, TrustError> {
        let name = b
            .trust_domain
            .strip_prefix("spiffe://")
            .unwrap_or(&b.trust_domain);
        let trust_domain =
            TrustDomain::new(name).map_err(|_| TrustError::TrustDomain(b.trust_domain.clone()))?;
        let mut x509 = Vec::with_capacity(b.x509_authorities.len());
        for der in &b.x509_authorities {
            x509_parser::parse_x509_certificate(der)
                .map_err(|_| TrustError::Certificate(b.trust_domain.clone()))?;
            x509.push(CertificateDer::from(der.clone()));
        }
        let jwt_keys = b
            .jwt_authorities
            .iter()
            .map(|k| JwtKey {
                kid: k.kid.clone(),
                public_key: k.public_key.clone(),
            })
            .collect();
        Ok(Self {
            trust_domain,
            x509_authorities: x509,
            jwt_keys,
            sequence: b.sequence,
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The X.509 authorities.
    pub fn x509_authorities(&self) -> &[CertificateDer<'static>] {
        &self.x509_authorities
    }

    /// The JWT keys.
    pub fn jwt_keys(&self) -> &[JwtKey] {
        &self.jwt_keys
    }

    /// The bundle sequence number.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// X.509 authorities as concatenated DER (Workload API encoding).
    pub fn x509_authorities_der(&self) -> Vec<u8> {
        self.x509_authorities
            .iter()
            .flat_map(|c| c.as_ref().iter().copied())
            .collect()
    }

    /// X.509 authorities as PEM.
    pub fn to_pem(&self) -> String {
        self.x509_authorities
            .iter()
            .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec())))
            .collect()
    }

    /// A SPIFFE JWKS with only the `jwt-svid` keys (W-10; B-4, B-6: `use` and `kid` set).
    /// Keys of a type the agent cannot express (not EC P-256/P-384) are left out.
    pub fn jwt_jwks(&self) -> String {
        let keys: Vec<serde_json::Value> = self.jwt_keys.iter().filter_map(jwk).collect();
        serde_json::json!({ "keys": keys }).to_string()
    }

    /// A full SPIFFE bundle document (both uses; B-5: `x5c` with one cert, no `kid`).
    pub fn to_jwks(&self) -> String {
        let mut keys: Vec<serde_json::Value> = self
            .x509_authorities
            .iter()
            .filter_map(|c| {
                let (_, cert) = x509_parser::parse_x509_certificate(c.as_ref()).ok()?;
                let mut k = ec_jwk(cert.public_key())?;
                k.insert("use".into(), "x509-svid".into());
                k.insert(
                    "x5c".into(),
                    serde_json::json!([STANDARD.encode(c.as_ref())]),
                );
                Some(serde_json::Value::Object(k))
            })
            .collect();
        keys.extend(self.jwt_keys.iter().filter_map(jwk));
        serde_json::json!({ "keys": keys, "spiffe_sequence": self.sequence }).to_string()
    }
}

fn jwk(key: &JwtKey) -> Option<serde_json::Value> {
    let (_, spki) = SubjectPublicKeyInfo::from_der(&key.public_key).ok()?;
    let mut k = ec_jwk(&spki)?;
    k.insert("use".into(), "jwt-svid".into());
    k.insert("kid".into(), key.kid.clone().into());
    Some(serde_json::Value::Object(k))
}

/// `kty`, `crv`, `x`, `y` of an uncompressed EC point key.
fn ec_jwk(spki: &SubjectPublicKeyInfo<'_>) -> Option<serde_json::Map<String, serde_json::Value>> {
    let point = spki.subject_public_key.data.as_ref();
    let (crv, len) = match point.len() {
        65 => ("P-256", 32),
        97 => ("P-384", 48),
        _ => return None,
    };
    if point.first() != Some(&4) {
        return None;
    }
    let x = point.get(1..1 + len)?;
    let y = point.get(1 + len..)?;
    let mut m = serde_json::Map::new();
    m.insert("kty".into(), "EC".into());
    m.insert("crv".into(), crv.into());
    m.insert("x".into(), URL_SAFE_NO_PAD.encode(x).into());
    m.insert("y".into(), URL_SAFE_NO_PAD.encode(y).into());
    Some(m)
}

/// Bundles by trust domain; bundles of different trust domains are never merged (B-8).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundleSet {
    bundles: BTreeMap<TrustDomain, TrustBundle>,
}

// === impl BundleSet ===

impl BundleSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts (replaces) the bundle of its trust domain.
    pub fn insert(&mut self, b: TrustBundle) {
        self.bundles.insert(b.trust_domain.clone(), b);
    }

    /// The bundle of `td`.
    pub fn get(&self, td: &TrustDomain) -> Option<&TrustBundle> {
        self.bundles.get(td)
    }

    /// All bundles.
    pub fn iter(&self) -> impl Iterator<Item = &TrustBundle> {
        self.bundles.values()
    }

    /// Converts the CA's `Bundles` message (own + federated).
    pub fn from_proto(b: &v1::Bundles) -> Result<Self, TrustError> {
        let mut set = Self::new();
        for bundle in b.own.iter().chain(&b.federated) {
            set.insert(TrustBundle::from_proto(bundle)?);
        }
        Ok(set)
    }
}

/// Reads PEM certificates (a trust-bundle file).
pub fn certificates_from_pem(
    name: &str,
    pem_text: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let certs: Vec<CertificateDer<'static>> = pem::parse_many(pem_text)
        .map_err(|_| TrustError::NoCertificates(name.to_owned()))?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect();
    if certs.is_empty() {
        return Err(TrustError::NoCertificates(name.to_owned()));
    }
    Ok(certs)
}
