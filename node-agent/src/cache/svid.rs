//! An X.509-SVID held by the agent: DER chain (leaf first), PKCS#8 key (redacted in `Debug`)
//! and the facts the rotation and the Workload API need (ID, validity).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use warden_identity::SpiffeId;
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

/// Why a certificate chain and key do not form a usable SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
    /// The chain is empty.
    #[error("the certificate chain is empty")]
    EmptyChain,
    /// The leaf does not parse as X.509.
    #[error("the leaf certificate cannot be parsed: {0}")]
    BadCertificate(String),
    /// The leaf has no (or more than one) SPIFFE URI SAN.
    #[error("the leaf certificate must have exactly one spiffe:// uri san")]
    BadUriSan,
    /// The leaf's ID differs from the one requested.
    #[error("the certificate is for `{got}`, expected `{expected}`")]
    WrongId {
        /// The ID in the certificate.
        got: String,
        /// The ID the agent asked for.
        expected: String,
    },
    /// The leaf certifies another key than ours.
    #[error("the leaf certificate does not match the private key")]
    KeyMismatch,
}

/// An X.509-SVID with its private key.
pub struct Svid {
    spiffe_id: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    not_before: SystemTime,
    not_after: SystemTime,
}

// === impl Svid ===

impl Svid {
    /// Builds an SVID from a DER chain and the PKCS#8 key whose public half is `public_key_der`
    /// (DER SubjectPublicKeyInfo). Checks that the leaf parses, has exactly one SPIFFE URI SAN
    /// and certifies that public key.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivatePkcs8KeyDer<'static>,
        public_key_der: &[u8],
    ) -> Result<Self, SvidError> {
        let leaf = chain.first().ok_or(SvidError::EmptyChain)?;
        let (_, cert) = X509Certificate::from_der(leaf.as_ref())
            .map_err(|e| SvidError::BadCertificate(e.to_string()))?;
        if cert.public_key().raw != public_key_der {
            return Err(SvidError::KeyMismatch);
        }
        let spiffe_id = single_spiffe_id(&cert)?;
        let not_before = to_system_time(cert.validity().not_before.timestamp());
        let not_after = to_system_time(cert.validity().not_after.timestamp());
        Ok(Self {
            spiffe_id,
            chain,
            key,
            not_before,
            not_after,
        })
    }

    /// The SVID's SPIFFE ID.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// The chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The private key (PKCS#8 DER).
    pub fn key(&self) -> &PrivatePkcs8KeyDer<'static> {
        &self.key
    }

    /// Start of validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The chain as concatenated DER (the Workload API's `x509_svid`).
    pub fn chain_der(&self) -> Vec<u8> {
        self.chain
            .iter()
            .flat_map(|c| c.as_ref().iter().copied())
            .collect()
    }

    /// The chain as PEM.
    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec())))
            .collect()
    }

    /// The key as PEM (`PRIVATE KEY`).
    pub fn key_pem(&self) -> String {
        pem::encode(&pem::Pem::new(
            "PRIVATE KEY",
            self.key.secret_pkcs8_der().to_vec(),
        ))
    }

    /// Whether the SVID should be replaced at `now`: past `refresh_at` (half of its lifetime,
    /// shifted by `jitter` in `[-0.1, 0.1]` of the lifetime).
    pub fn needs_rotation(&self, now: SystemTime, jitter: f64) -> bool {
        now >= refresh_at(self.not_before, self.not_after, jitter)
    }
}

impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// Half-life plus `jitter` (clamped to `[-0.1, 0.1]`) of the lifetime; always strictly inside
/// the validity period when it is longer than zero.
pub fn refresh_at(not_before: SystemTime, not_after: SystemTime, jitter: f64) -> SystemTime {
    let life = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let fraction = 0.5 + jitter.clamp(-0.1, 0.1);
    not_before + life.mul_f64(fraction)
}

/// The single SPIFFE ID of a DER certificate.
pub fn spiffe_id_of(der: &[u8]) -> Result<SpiffeId, SvidError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| SvidError::BadCertificate(e.to_string()))?;
    single_spiffe_id(&cert)
}

fn single_spiffe_id(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let mut uris = cert
        .extensions()
        .iter()
        .filter_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => Some(san),
            _ => None,
        });
    let san = uris.next().ok_or(SvidError::BadUriSan)?;
    let mut ids = san.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let (Some(uri), None) = (ids.next(), ids.next()) else {
        return Err(SvidError::BadUriSan);
    };
    uri.parse().map_err(|_| SvidError::BadUriSan)
}

fn to_system_time(unix: i64) -> SystemTime {
    match u64::try_from(unix) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_at_is_half_life_with_bounded_jitter() {
        let nb = UNIX_EPOCH + Duration::from_secs(1000);
        let na = nb + Duration::from_secs(100);
        assert_eq!(refresh_at(nb, na, 0.0), nb + Duration::from_secs(50));
        assert_eq!(refresh_at(nb, na, 0.1), nb + Duration::from_secs(60));
        assert_eq!(
            refresh_at(nb, na, 5.0),
            nb + Duration::from_secs(60),
            "jitter is clamped"
        );
        assert_eq!(refresh_at(nb, na, -0.1), nb + Duration::from_secs(40));
    }

    proptest::proptest! {
        #[test]
        fn refresh_at_stays_inside_the_validity(life in 1u64..10_000_000, jitter in -1.0f64..1.0) {
            let nb = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
            let na = nb + Duration::from_secs(life);
            let at = refresh_at(nb, na, jitter);
            proptest::prop_assert!(at > nb && at < na);
        }
    }
}
