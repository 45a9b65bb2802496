//! X.509-SVID issuance from PKCS#10 CSRs, and JWT-SVID issuance.
//!
//! The CA decides every field itself (PITFALLS 6, 7): the CSR contributes only its public key
//! (after its signature is verified); its URI SAN, if any, must equal the SPIFFE ID being
//! issued, and its subject and other fields are ignored (the leaf's subject is empty). The leaf gets exactly one URI SAN, the entry's DNS SANs,
//! cA=false, keyUsage digitalSignature (critical, X-6), EKU serverAuth+clientAuth, SKI and
//! AKI, a random serial, NotBefore = now - 10s and NotAfter = min(now + ttl, CA NotAfter).

use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, ExtendedKeyUsagePurpose,
    IsCa, KeyUsagePurpose, PublicKeyData, SanType, SignatureAlgorithm,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use warden_identity::SpiffeId;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use super::{Authority, Phase, keys};

/// The largest CSR accepted, in bytes.
pub const MAX_CSR_LEN: usize = 16 * 1024;

/// Why an SVID was not issued. Messages name the problem, never key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The CSR is larger than [`MAX_CSR_LEN`].
    #[error("csr is {0} bytes, more than the {MAX_CSR_LEN} allowed (oversize csr)")]
    CsrTooLarge(usize),
    /// The CSR is not a DER PKCS#10 request rcgen understands.
    #[error("malformed csr: {0}")]
    MalformedCsr(String),
    /// The CSR's self-signature does not verify.
    #[error("malformed csr: its signature does not verify")]
    BadCsrSignature,
    /// The CSR's key is not an allowed type.
    #[error("csr key type not allowed: {0} (allowed: ec p-256, ec p-384, ed25519, rsa >= 2048)")]
    UnsupportedKey(String),
    /// The CSR asks for a different SPIFFE ID.
    #[error("csr id mismatch: the csr asks for `{requested}`, the entry is `{expected}`")]
    CsrIdMismatch {
        /// The URI in the CSR.
        requested: String,
        /// The ID being issued.
        expected: String,
    },
    /// The CSR has more than one URI SAN.
    #[error("csr id mismatch: the csr has {0} uri sans (at most one, equal to the entry's id)")]
    CsrManyUris(usize),
    /// The ID is not in the CA's trust domain.
    #[error("id `{id}` is from another trust domain than `{trust_domain}`")]
    ForeignTrustDomain {
        /// The ID.
        id: String,
        /// The CA's trust domain.
        trust_domain: String,
    },
    /// A DNS name is unusable.
    #[error("invalid dns name `{0}`")]
    BadDnsName(String),
    /// The audience of a JWT-SVID is empty.
    #[error("jwt-svid audience is empty (at least one audience is required)")]
    NoAudience,
    /// The audiences are more, or longer, than a JWT-SVID may carry.
    #[error("jwt-svid audience refused: {0}")]
    BadAudience(String),
    /// No active signing key (should not happen once loaded).
    #[error("the ca has no active {0} signing key")]
    NoActiveKey(&'static str),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Signing(String),
}

/// An issued X.509-SVID.
#[derive(Debug, Clone)]
pub struct SignedSvid {
    /// Its SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// Leaf, then the intermediate that signed it.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// Serial, lowercase hex.
    pub serial: String,
    /// Issue time.
    pub issued_at: SystemTime,
    /// NotAfter.
    pub not_after: SystemTime,
}

/// An issued JWT-SVID.
#[derive(Debug, Clone)]
pub struct SignedJwtSvid {
    /// Its subject.
    pub spiffe_id: SpiffeId,
    /// The compact JWS.
    pub token: String,
    /// `kid` of the key that signed it.
    pub kid: String,
    /// `exp`.
    pub expires_at: SystemTime,
}

/// A checked CSR: rcgen's view of what it requests, and its key as the certificate carries it.
#[derive(Debug)]
pub struct ParsedCsr {
    request: CertificateSigningRequestParams,
    key: CsrKey,
}

/// A CSR's public key, named by its own algorithm. rcgen names a CSR's key by the CSR's
/// signature algorithm, so a P-384 key in a CSR signed with ecdsa-with-SHA256 (what `openssl
/// req` makes by default) would be written into the certificate as a P-256 key, and the SVID
/// would be unusable.
#[derive(Debug)]
struct CsrKey {
    bits: Vec<u8>,
    alg: &'static SignatureAlgorithm,
}

impl PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.bits
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// Checks the size, structure, signature and key type of a CSR.
pub(crate) fn parse_csr(der: &[u8]) -> Result<ParsedCsr, SignError> {
    if der.len() > MAX_CSR_LEN {
        return Err(SignError::CsrTooLarge(der.len()));
    }
    if der.is_empty() {
        return Err(SignError::MalformedCsr("the csr is empty".into()));
    }
    let (rest, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der)
            .map_err(|e| SignError::MalformedCsr(format!("not a der pkcs#10 request ({e})")))?;
    if !rest.is_empty() {
        return Err(SignError::MalformedCsr(format!(
            "{} trailing bytes after the request",
            rest.len()
        )));
    }
    let spki = &csr.certification_request_info.subject_pki;
    let key = CsrKey {
        alg: check_key_type(spki)?,
        bits: spki.subject_public_key.data.to_vec(),
    };
    // The certificate's key is written as the CSR holds it: checked before it is signed for.
    if key.subject_public_key_info() != spki.raw {
        return Err(SignError::UnsupportedKey(
            "the csr's key cannot be written back as it was sent".into(),
        ));
    }
    let request =
        CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(der))
            .map_err(|e| match e {
                rcgen::Error::InvalidCertificationRequestSignature => SignError::BadCsrSignature,
                other => SignError::MalformedCsr(other.to_string()),
            })?;
    Ok(ParsedCsr { request, key })
}

/// The key's algorithm, if it is one an SVID may have (as rcgen names it when it writes the
/// certificate's key: the hash of the name does not matter there).
fn check_key_type(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> Result<&'static SignatureAlgorithm, SignError> {
    let alg = &spki.algorithm.algorithm;
    if *alg == x509_parser::oid_registry::OID_SIG_ED25519 {
        return Ok(&rcgen::PKCS_ED25519);
    }
    match spki.parsed() {
        Ok(PublicKey::EC(point)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            let p256 = x509_parser::oid_registry::OID_EC_P256;
            let p384 = x509_parser::oid_registry::OID_NIST_EC_P384;
            match curve {
                Some(c) if c == p256 => Ok(&rcgen::PKCS_ECDSA_P256_SHA256),
                Some(c) if c == p384 => Ok(&rcgen::PKCS_ECDSA_P384_SHA384),
                Some(c) => Err(SignError::UnsupportedKey(format!("ec curve {c}"))),
                None => Err(SignError::UnsupportedKey(format!(
                    "ec key of {} bits without a named curve",
                    point.key_size()
                ))),
            }
        }
        Ok(PublicKey::RSA(rsa)) if rsa.key_size() >= 2048 => Ok(&rcgen::PKCS_RSA_SHA256),
        Ok(PublicKey::RSA(rsa)) => Err(SignError::UnsupportedKey(format!(
            "rsa {} bits",
            rsa.key_size()
        ))),
        Ok(_) => Err(SignError::UnsupportedKey(format!("algorithm {alg}"))),
        Err(_) => Err(SignError::MalformedCsr(
            "the public key does not parse".into(),
        )),
    }
}

/// The SPIFFE ID check: at most one URI SAN, equal to `id`.
fn check_csr_id(csr: &ParsedCsr, id: &SpiffeId) -> Result<(), SignError> {
    let uris: Vec<&str> = csr
        .request
        .params
        .subject_alt_names
        .iter()
        .filter_map(|san| match san {
            SanType::URI(u) => Some(u.as_str()),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Ok(()),
        [one] if *one == id.as_str() => Ok(()),
        [one] => Err(SignError::CsrIdMismatch {
            requested: (*one).to_owned(),
            expected: id.to_string(),
        }),
        many => Err(SignError::CsrManyUris(many.len())),
    }
}

// === impl Authority ===

impl Authority {
    /// Issues an X.509-SVID for `id` to the key in `csr_der`, with `dns_names` as DNS SANs
    /// and lifetime `ttl` (0 = the default), signed by the active intermediate.
    pub fn sign_x509_svid(
        &self,
        csr_der: &[u8],
        id: &SpiffeId,
        dns_names: &[String],
        ttl: Duration,
    ) -> Result<SignedSvid, SignError> {
        let csr = parse_csr(csr_der)?;
        self.sign_parsed(&csr, id, dns_names, ttl)
    }

    /// Like [`sign_x509_svid`](Self::sign_x509_svid) for an already parsed CSR.
    pub(crate) fn sign_parsed(
        &self,
        csr: &ParsedCsr,
        id: &SpiffeId,
        dns_names: &[String],
        ttl: Duration,
    ) -> Result<SignedSvid, SignError> {
        if !id.is_member_of(&self.td) {
            return Err(SignError::ForeignTrustDomain {
                id: id.to_string(),
                trust_domain: self.td.to_string(),
            });
        }
        check_csr_id(csr, id)?;
        let ttl = if ttl.is_zero() {
            self.ttls.x509_svid
        } else {
            ttl
        };
        let intermediate = {
            let p = self.read();
            p.x509
                .iter()
                .find(|(i, ph)| *ph == Phase::Active && i.issuer.is_some())
                .map(|(i, _)| std::sync::Arc::clone(i))
        }
        .ok_or(SignError::NoActiveKey("x509"))?;
        let issuer = intermediate
            .issuer
            .as_ref()
            .ok_or(SignError::NoActiveKey("x509"))?;
        let now = self.clock.now();
        let not_after = (now + ttl).min(intermediate.not_after);

        let mut params = CertificateParams::default();
        let mut sans = Vec::with_capacity(1 + dns_names.len());
        let uri = id
            .to_string()
            .try_into()
            .map_err(|_| SignError::Signing(format!("id `{id}` is not an ia5 string")))?;
        sans.push(SanType::URI(uri));
        for name in dns_names {
            let dns = name
                .clone()
                .try_into()
                .map_err(|_| SignError::BadDnsName(name.clone()))?;
            sans.push(SanType::DnsName(dns));
        }
        params.subject_alt_names = sans;
        // The CSR's subject is ignored (as SPIRE does): a requester must not get a name such as
        // `CN=admin` that a relying party matching on subjects would trust. With an empty
        // subject rcgen marks the SAN extension critical.
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let (serial_number, serial) = keys::random_serial();
        params.serial_number = Some(serial_number);
        params.not_before = keys::to_offset(now - keys::BACKDATE);
        params.not_after = keys::to_offset(not_after);
        let cert = params
            .signed_by(&csr.key, issuer)
            .map_err(|e| SignError::Signing(e.to_string()))?;
        Ok(SignedSvid {
            spiffe_id: id.clone(),
            cert_chain: vec![cert.der().clone(), intermediate.cert.clone()],
            serial,
            issued_at: now,
            not_after,
        })
    }

    /// Issues a JWT-SVID for `id` with `audience` (non-empty) and lifetime `ttl` (0 = the
    /// default), signed by the active JWT key.
    pub fn sign_jwt_svid(
        &self,
        id: &SpiffeId,
        audience: &[String],
        ttl: Duration,
    ) -> Result<SignedJwtSvid, SignError> {
        if !id.is_member_of(&self.td) {
            return Err(SignError::ForeignTrustDomain {
                id: id.to_string(),
                trust_domain: self.td.to_string(),
            });
        }
        if audience.is_empty() || audience.iter().any(String::is_empty) {
            return Err(SignError::NoAudience);
        }
        warden_identity::check_audience(audience)
            .map_err(|e| SignError::BadAudience(e.to_string()))?;
        let ttl = if ttl.is_zero() {
            self.ttls.jwt_svid
        } else {
            ttl
        };
        let key = {
            let p = self.read();
            p.jwt
                .iter()
                .find(|(k, ph)| *ph == Phase::Active && k.signer.is_some())
                .map(|(k, _)| std::sync::Arc::clone(k))
        }
        .ok_or(SignError::NoActiveKey("jwt"))?;
        let signer = key.signer.as_ref().ok_or(SignError::NoActiveKey("jwt"))?;
        let now = self.clock.now();
        let expires_at = (now + ttl).min(key.not_after);
        let token = signer
            .sign(id, audience, expires_at, now)
            .map_err(|e| SignError::Signing(e.to_string()))?;
        Ok(SignedJwtSvid {
            spiffe_id: id.clone(),
            token,
            kid: signer.kid().to_owned(),
            expires_at,
        })
    }
}
