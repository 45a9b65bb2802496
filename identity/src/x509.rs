//! X.509-SVIDs: the [`X509Svid`] a workload holds (chain + PKCS#8 key) and verification of a
//! peer's chain against the bundles it trusts (rules X-1..X-12, in [`verify_x509_svid`]).

mod checks;
mod verify;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;

pub use verify::verify_x509_svid;

use crate::{SpiffeId, SpiffeIdError, TrustDomain};

/// Why an X.509-SVID (or its chain, or its key) was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
    /// No certificate was presented.
    #[error("certificate chain is empty")]
    EmptyChain,
    /// A certificate is not DER X.509.
    #[error("certificate {index} in the chain is not a valid x.509 certificate")]
    BadCertificate {
        /// Position in the chain, leaf = 0.
        index: usize,
    },
    /// The leaf has no URI SAN (rule X-1).
    #[error("leaf certificate has no uri san")]
    NoUriSan,
    /// The leaf has more than one URI SAN (rule X-1).
    #[error("leaf certificate has {0} uri sans; exactly one is allowed")]
    MultipleUriSans(usize),
    /// The URI SAN is not a valid SPIFFE ID (rule X-2).
    // Quoted and escaped (`{:?}`): the certificate is anyone's, and a line break or control
    // character in its URI must not reach a log line as such.
    #[error("uri san {uri:?} is not a spiffe id: {source}")]
    BadSpiffeId {
        /// The URI SAN.
        uri: String,
        /// Why it is not a SPIFFE ID.
        source: SpiffeIdError,
    },
    /// The leaf's SPIFFE ID has no path (rule X-2).
    #[error("leaf spiffe id `{0}` has no path")]
    LeafIdWithoutPath(String),
    /// The subject is empty and the SAN extension is not critical (rule X-3).
    #[error("certificate {index} has an empty subject and a non-critical san extension")]
    NonCriticalSanWithEmptySubject {
        /// Position in the chain.
        index: usize,
    },
    /// The leaf is a CA certificate (rules ).
    #[error("leaf certificate is a ca certificate; signing certificates must not authenticate")]
    LeafIsCa,
    /// A certificate has no key usage extension (rule X-5).
    #[error("certificate {index} has no key usage extension")]
    MissingKeyUsage {
        /// Position in the chain.
        index: usize,
    },
    /// A key usage extension is not critical (rule X-5).
    #[error("certificate {index} has a non-critical key usage extension")]
    KeyUsageNotCritical {
        /// Position in the chain.
        index: usize,
    },
    /// The leaf's key usage lacks `digitalSignature` (rule X-6).
    #[error("leaf key usage lacks `digitalSignature`")]
    LeafWithoutDigitalSignature,
    /// The leaf's key usage has `keyCertSign` (rule X-6).
    #[error("leaf key usage has `keyCertSign`")]
    LeafWithKeyCertSign,
    /// The leaf's key usage has `cRLSign` (rule X-6).
    #[error("leaf key usage has `cRLSign`")]
    LeafWithCrlSign,
    /// A signing certificate is not a CA (rule X-4).
    #[error("signing certificate {index} is not a ca certificate")]
    SigningCertNotCa {
        /// Position in the chain.
        index: usize,
    },
    /// A signing certificate's key usage lacks `keyCertSign` (rule X-7).
    #[error("signing certificate {index} key usage lacks `keyCertSign`")]
    SigningCertWithoutKeyCertSign {
        /// Position in the chain.
        index: usize,
    },
    /// The leaf's extended key usage lacks serverAuth or clientAuth (rule X-8).
    #[error("leaf extended key usage must contain both `serverAuth` and `clientAuth`")]
    EkuWithoutServerAndClientAuth,
    /// A signing certificate's SPIFFE ID has a path (rule X-9).
    #[error("signing certificate {index} has spiffe id `{id}` with a path")]
    SigningCertIdWithPath {
        /// Position in the chain.
        index: usize,
        /// The signing certificate's SPIFFE ID.
        id: String,
    },
    /// There is no bundle (or an empty one) for the leaf's trust domain (rule X-11).
    #[error("no x.509 bundle for trust domain `{0}`")]
    NoBundle(TrustDomain),
    /// The chain does not lead to an authority of the leaf's trust domain (rule X-11).
    #[error("certificate chain is not trusted by the bundle of `{trust_domain}`: {reason}")]
    Untrusted {
        /// The leaf's trust domain.
        trust_domain: TrustDomain,
        /// What path validation reported.
        reason: String,
    },
    /// A certificate in the chain has expired.
    #[error("certificate chain has expired")]
    Expired,
    /// A certificate in the chain is not yet valid.
    #[error("certificate chain is not yet valid")]
    NotYetValid,
    /// The private key is not usable PKCS#8.
    #[error("private key is not a supported unencrypted pkcs#8 key")]
    BadPrivateKey,
    /// The private key does not belong to the leaf certificate.
    #[error("private key does not match the leaf certificate")]
    KeyMismatch,
    /// PEM input was malformed or had the wrong block label.
    #[error("pem is malformed: {0}")]
    Pem(String),
}

/// An X.509-SVID: a certificate chain (leaf first, then any intermediates) and the leaf's
/// private key. `Debug` never shows the key.
///
/// INVARIANT: the leaf parses, has exactly one URI SAN holding `spiffe_id`, and the key
/// matches it; upheld by [`X509Svid::new`], the only constructor.
pub struct X509Svid {
    spiffe_id: SpiffeId,
    cert_chain: Vec<CertificateDer<'static>>,
    private_key: PrivatePkcs8KeyDer<'static>,
    not_after: SystemTime,
}

// === impl X509Svid ===

impl X509Svid {
    /// Builds an SVID from its chain and PKCS#8 key, checking that the leaf parses, has
    /// exactly one URI SAN that is a SPIFFE ID, and matches the key. It does not check trust:
    /// use [`verify_x509_svid`] for that.
    pub fn new(
        cert_chain: Vec<CertificateDer<'static>>,
        private_key: PrivatePkcs8KeyDer<'static>,
    ) -> Result<Self, SvidError> {
        let leaf = cert_chain.first().ok_or(SvidError::EmptyChain)?;
        let spiffe_id = spiffe_id_from_cert(leaf.as_ref())?;
        let (_, parsed) = X509Certificate::from_der(leaf.as_ref())
            .map_err(|_| SvidError::BadCertificate { index: 0 })?;
        let not_after = to_system_time(parsed.validity().not_after.timestamp());
        let signing_key = crate::tls::crypto_provider()
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(private_key.clone_key()))
            .map_err(|_| SvidError::BadPrivateKey)?;
        let certified = rustls::sign::CertifiedKey::new(vec![leaf.clone()], signing_key);
        certified.keys_match().map_err(|_| SvidError::KeyMismatch)?;
        Ok(Self {
            spiffe_id,
            cert_chain,
            private_key,
            not_after,
        })
    }

    /// Parses a PEM certificate chain (leaf first) and a PEM `PRIVATE KEY` (PKCS#8).
    pub fn from_pem(
        cert_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> Result<Self, SvidError> {
        let blocks =
            pem::parse_many(cert_pem.as_ref()).map_err(|e| SvidError::Pem(e.to_string()))?;
        let mut chain = Vec::with_capacity(blocks.len());
        for block in blocks {
            if block.tag() != "CERTIFICATE" {
                return Err(SvidError::Pem(format!(
                    "certificate pem has a `{}` block; expected `CERTIFICATE`",
                    block.tag()
                )));
            }
            chain.push(CertificateDer::from(block.into_contents()));
        }
        let key = pem::parse(key_pem.as_ref()).map_err(|e| SvidError::Pem(e.to_string()))?;
        if key.tag() != "PRIVATE KEY" {
            return Err(SvidError::Pem(format!(
                "key pem is a `{}` block; expected an unencrypted pkcs#8 `PRIVATE KEY`",
                key.tag()
            )));
        }
        Self::new(chain, PrivatePkcs8KeyDer::from(key.into_contents()))
    }

    /// The SPIFFE ID in the leaf's URI SAN.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// The chain, leaf first.
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.cert_chain
    }

    /// The leaf certificate.
    #[expect(
        clippy::indexing_slicing,
        reason = "INVARIANT upheld by `new`: the chain is not empty"
    )]
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.cert_chain[0]
    }

    /// The private key, PKCS#8 DER.
    pub fn private_key(&self) -> &PrivatePkcs8KeyDer<'static> {
        &self.private_key
    }

    /// The chain as concatenated DER, as the Workload API carries it.
    pub fn cert_chain_der(&self) -> Vec<u8> {
        self.cert_chain
            .iter()
            .flat_map(|c| c.as_ref().iter().copied())
            .collect()
    }

    /// The chain as PEM `CERTIFICATE` blocks, leaf first.
    pub fn cert_chain_pem(&self) -> String {
        let blocks: Vec<pem::Pem> = self
            .cert_chain
            .iter()
            .map(|c| pem::Pem::new("CERTIFICATE", c.as_ref().to_vec()))
            .collect();
        pem::encode_many(&blocks)
    }

    /// The private key as a PEM `PRIVATE KEY` block. Write it to a file with mode 0600.
    pub fn private_key_pem(&self) -> String {
        pem::encode(&pem::Pem::new(
            "PRIVATE KEY",
            self.private_key.secret_pkcs8_der().to_vec(),
        ))
    }

    /// When the leaf expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// A rustls `CertifiedKey` for this SVID (ring provider).
    pub fn certified_key(&self) -> Result<Arc<rustls::sign::CertifiedKey>, SvidError> {
        let key = crate::tls::crypto_provider()
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(self.private_key.clone_key()))
            .map_err(|_| SvidError::BadPrivateKey)?;
        Ok(Arc::new(rustls::sign::CertifiedKey::new(
            self.cert_chain.clone(),
            key,
        )))
    }
}

impl Clone for X509Svid {
    fn clone(&self) -> Self {
        Self {
            spiffe_id: self.spiffe_id.clone(),
            cert_chain: self.cert_chain.clone(),
            private_key: self.private_key.clone_key(),
            not_after: self.not_after,
        }
    }
}

impl fmt::Debug for X509Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("cert_chain_len", &self.cert_chain.len())
            .field("not_after", &self.not_after)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

/// The SPIFFE ID in a certificate's single URI SAN (rule X-1). Does not check anything else.
pub fn spiffe_id_from_cert(der: &[u8]) -> Result<SpiffeId, SvidError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|_| SvidError::BadCertificate { index: 0 })?;
    checks::single_uri_san(&cert, 0)?.ok_or(SvidError::NoUriSan)
}

pub(crate) fn to_system_time(unix_secs: i64) -> SystemTime {
    match u64::try_from(unix_secs) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH - Duration::from_secs(unix_secs.unsigned_abs()),
    }
}
