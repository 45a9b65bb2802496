//! Trust bundles: the X.509 and JWT authorities of one trust domain, in the SPIFFE bundle
//! format (an RFC 7517 JWK Set, rules B-1..B-6) and in PEM; and [`BundleSet`], the bundles
//! of every trust domain a workload trusts, never merged across trust domains (rule B-8).

mod jwks;
mod map;

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;

use crate::TrustDomain;

/// Why a bundle document was rejected. Each variant names the part that was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The document is not JSON.
    #[error("bundle is not valid json: {0}")]
    Json(String),
    /// The document is JSON but not an object.
    #[error("bundle must be a json object")]
    NotAnObject,
    /// The `keys` member is absent (rule B-1).
    #[error("bundle has no `keys` member")]
    MissingKeys,
    /// The `keys` member is not an array (rule B-1).
    #[error("bundle `keys` must be an array")]
    KeysNotArray,
    /// `spiffe_sequence` is not a non-negative integer (rule B-2).
    #[error("bundle `spiffe_sequence` must be a non-negative integer")]
    BadSequence,
    /// `spiffe_refresh_hint` is not a non-negative integer (rule B-3).
    #[error("bundle `spiffe_refresh_hint` must be a non-negative integer number of seconds")]
    BadRefreshHint,
    /// An element of `keys` is not an object.
    #[error("bundle key {index} is not a json object")]
    KeyNotObject {
        /// Position in `keys`.
        index: usize,
    },
    /// A key with `use` = `x509-svid` carries a `kid` (rule B-5).
    #[error("bundle key {index} has `use` `x509-svid` and must not have a `kid`")]
    X509AuthorityWithKid {
        /// Position in `keys`.
        index: usize,
    },
    /// The first `x5c` value is not a base64 DER certificate (rule B-5).
    #[error("bundle key {index}: `x5c` {reason}")]
    BadX5c {
        /// Position in `keys`.
        index: usize,
        /// What was wrong.
        reason: String,
    },
    /// A key with `use` = `jwt-svid` has no `kid` (rule B-6).
    #[error("bundle key {index} has `use` `jwt-svid` but no `kid`")]
    JwtAuthorityWithoutKid {
        /// Position in `keys`.
        index: usize,
    },
    /// Two JWT authorities share a `kid` (kept to 64 characters, shown quoted and escaped: a
    /// federated bundle is another party's document).
    #[error("bundle has two jwt authorities with `kid` {0:?}")]
    DuplicateKid(String),
    /// A JWT authority's key parameters are malformed.
    #[error("bundle key {index}: {reason}")]
    BadJwk {
        /// Position in `keys`.
        index: usize,
        /// What was wrong.
        reason: String,
    },
    /// The PEM text could not be parsed.
    #[error("bundle pem is malformed: {0}")]
    Pem(String),
    /// A PEM block is not a `CERTIFICATE`.
    #[error("bundle pem block {index} is `{label}`, expected `CERTIFICATE`")]
    PemLabel {
        /// Position of the block.
        index: usize,
        /// The block's label.
        label: String,
    },
    /// A certificate does not parse as X.509.
    #[error("bundle certificate {index} is not a valid x.509 certificate")]
    BadCertificate {
        /// Position of the certificate.
        index: usize,
    },
    /// A certificate is not a certificate authority (rule B-5): a leaf in a bundle would be a
    /// trust anchor, and its key could sign any SVID of the trust domain.
    #[error(
        "bundle certificate {index} is not a certificate authority ({reason}); a bundle holds \
         only ca certificates"
    )]
    NotCa {
        /// Position of the certificate.
        index: usize,
        /// What it lacks.
        reason: &'static str,
    },
    /// The `keys` member holds more keys than a bundle may.
    #[error("bundle has {count} keys or certificates; at most {max} are accepted", max = jwks::MAX_KEYS)]
    TooManyKeys {
        /// How many it has.
        count: usize,
    },
    /// The PEM text holds no certificate.
    #[error("bundle pem holds no certificate")]
    NoCertificates,
    /// A bundle map has no `trust_domains` member (rule B-7).
    #[error("bundle map has no `trust_domains` member")]
    MissingTrustDomains,
    /// A bundle map names a trust domain twice (rule B-7).
    #[error("bundle map has trust domain `{0}` twice")]
    DuplicateTrustDomain(String),
    /// A bundle map key is not a trust domain.
    #[error("bundle map key `{name}` is not a trust domain: {reason}")]
    BadTrustDomain {
        /// The key.
        name: String,
        /// Why it is not a trust domain.
        reason: String,
    },
    /// A member bundle of a bundle map is malformed.
    #[error("bundle map member `{trust_domain}`: {reason}")]
    MemberBundle {
        /// The member's trust domain.
        trust_domain: String,
        /// What was wrong with it.
        reason: String,
    },
}

/// A key that signs JWT-SVIDs for a trust domain.
#[derive(Clone, PartialEq, Eq)]
pub struct JwtAuthority {
    kid: String,
    public_key: Vec<u8>,
    expires_at: Option<SystemTime>,
}

/// The trust bundle of one trust domain.
#[derive(Clone, PartialEq, Eq)]
pub struct Bundle {
    trust_domain: TrustDomain,
    x509_authorities: Vec<CertificateDer<'static>>,
    jwt_authorities: Vec<JwtAuthority>,
    sequence: u64,
    refresh_hint: Option<Duration>,
}

/// Bundles keyed by trust domain: one bundle per trust domain, never merged (rule B-8).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct BundleSet {
    bundles: BTreeMap<TrustDomain, Bundle>,
}

// === impl JwtAuthority ===

impl JwtAuthority {
    /// A JWT authority: key id, DER SubjectPublicKeyInfo and optional expiry.
    pub fn new(kid: impl Into<String>, spki_der: Vec<u8>, expires_at: Option<SystemTime>) -> Self {
        Self {
            kid: kid.into(),
            public_key: spki_der,
            expires_at,
        }
    }

    /// The key id (`kid`).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a DER SubjectPublicKeyInfo.
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    /// When the key stops being valid, if known.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }
}

impl fmt::Debug for JwtAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthority")
            .field("kid", &self.kid)
            .field("public_key_len", &self.public_key.len())
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

// === impl Bundle ===

impl Bundle {
    /// An empty bundle for `trust_domain`.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            x509_authorities: Vec::new(),
            jwt_authorities: Vec::new(),
            sequence: 0,
            refresh_hint: None,
        }
    }

    /// The trust domain this bundle is for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The X.509 authorities (CA certificates, DER).
    pub fn x509_authorities(&self) -> &[CertificateDer<'static>] {
        &self.x509_authorities
    }

    /// The JWT authorities.
    pub fn jwt_authorities(&self) -> &[JwtAuthority] {
        &self.jwt_authorities
    }

    /// The JWT authority with key id `kid`.
    pub fn jwt_authority(&self, kid: &str) -> Option<&JwtAuthority> {
        self.jwt_authorities.iter().find(|a| a.kid == kid)
    }

    /// `spiffe_sequence` (rule B-2).
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// `spiffe_refresh_hint` (rule B-3).
    pub fn refresh_hint(&self) -> Option<Duration> {
        self.refresh_hint
    }

    /// Whether the bundle holds no authority at all (then every SVID of the trust domain is
    /// invalid, rule B-1).
    pub fn is_empty(&self) -> bool {
        self.x509_authorities.is_empty() && self.jwt_authorities.is_empty()
    }

    /// Adds an X.509 authority received from elsewhere (the Workload API, the CA) after checking
    /// that it is a certificate authority's certificate (rule B-5); unless an identical one is
    /// already present. `index` names it in the error.
    pub fn add_checked_x509_authority(
        &mut self,
        cert: CertificateDer<'static>,
        index: usize,
    ) -> Result<(), BundleError> {
        ca_certificate(&cert).map_err(|reason| BundleError::NotCa { index, reason })?;
        self.add_x509_authority(cert);
        Ok(())
    }

    /// Adds an X.509 authority unless an identical certificate is already present. Unchecked:
    /// for certificates this process made or has checked ([`Self::add_checked_x509_authority`]);
    /// verification ignores one that is not a CA certificate.
    pub fn add_x509_authority(&mut self, cert: CertificateDer<'static>) {
        if !self.x509_authorities.contains(&cert) {
            self.x509_authorities.push(cert);
        }
    }

    /// Adds a JWT authority, replacing any with the same `kid`.
    pub fn add_jwt_authority(&mut self, authority: JwtAuthority) {
        self.jwt_authorities.retain(|a| a.kid != authority.kid);
        self.jwt_authorities.push(authority);
    }

    /// Removes the JWT authority with key id `kid`; whether one was removed.
    pub fn remove_jwt_authority(&mut self, kid: &str) -> bool {
        let before = self.jwt_authorities.len();
        self.jwt_authorities.retain(|a| a.kid != kid);
        before != self.jwt_authorities.len()
    }

    /// Removes an X.509 authority; whether it was present.
    pub fn remove_x509_authority(&mut self, cert: &CertificateDer<'_>) -> bool {
        let before = self.x509_authorities.len();
        self.x509_authorities
            .retain(|c| c.as_ref() != cert.as_ref());
        before != self.x509_authorities.len()
    }

    /// Sets `spiffe_sequence`.
    pub fn set_sequence(&mut self, sequence: u64) {
        self.sequence = sequence;
    }

    /// Sets `spiffe_refresh_hint` (whole seconds are kept).
    pub fn set_refresh_hint(&mut self, hint: Duration) {
        self.refresh_hint = Some(Duration::from_secs(hint.as_secs()));
    }

    /// The bundle in the SPIFFE bundle format (rules B-1..B-6).
    pub fn to_jwks(&self) -> String {
        jwks::encode(self, true, true, true)
    }

    /// Parses a SPIFFE bundle document for `trust_domain`. JWKs with an unknown or missing
    /// `use` or an unknown `kty` are ignored (rule B-4), as are `x509-svid` keys without
    /// `x5c` (rule B-5); anything else malformed rejects the whole document.
    pub fn from_jwks(
        trust_domain: TrustDomain,
        json: impl AsRef<[u8]>,
    ) -> Result<Self, BundleError> {
        jwks::decode(trust_domain, json.as_ref())
    }

    /// A JWKS holding only the `jwt-svid` keys, for `FetchJWTBundles` (rule W-10).
    pub fn jwt_jwks(&self) -> String {
        jwks::encode(self, false, false, false)
    }

    /// The X.509 authorities as concatenated PEM `CERTIFICATE` blocks.
    pub fn to_pem(&self) -> String {
        let blocks: Vec<pem::Pem> = self
            .x509_authorities
            .iter()
            .map(|c| pem::Pem::new("CERTIFICATE", c.as_ref().to_vec()))
            .collect();
        pem::encode_many(&blocks)
    }

    /// Parses PEM `CERTIFICATE` blocks into a bundle of X.509 authorities.
    pub fn from_pem(
        trust_domain: TrustDomain,
        pem_text: impl AsRef<[u8]>,
    ) -> Result<Self, BundleError> {
        let blocks =
            pem::parse_many(pem_text.as_ref()).map_err(|e| BundleError::Pem(e.to_string()))?;
        if blocks.is_empty() {
            return Err(BundleError::NoCertificates);
        }
        if blocks.len() > jwks::MAX_KEYS {
            return Err(BundleError::TooManyKeys {
                count: blocks.len(),
            });
        }
        let mut bundle = Self::new(trust_domain);
        for (index, block) in blocks.into_iter().enumerate() {
            if block.tag() != "CERTIFICATE" {
                return Err(BundleError::PemLabel {
                    index,
                    label: block.tag().to_owned(),
                });
            }
            let der = block.into_contents();
            if !is_certificate(&der) {
                return Err(BundleError::BadCertificate { index });
            }
            if let Err(reason) = ca_certificate(&der) {
                return Err(BundleError::NotCa { index, reason });
            }
            bundle.add_x509_authority(CertificateDer::from(der));
        }
        Ok(bundle)
    }

    /// The X.509 authorities as concatenated DER, as the Workload API carries them.
    pub fn x509_authorities_der(&self) -> Vec<u8> {
        self.x509_authorities
            .iter()
            .flat_map(|c| c.as_ref().iter().copied())
            .collect()
    }
}

impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle")
            .field("trust_domain", &self.trust_domain)
            .field("x509_authorities", &self.x509_authorities.len())
            .field("jwt_authorities", &self.jwt_authorities)
            .field("sequence", &self.sequence)
            .field("refresh_hint", &self.refresh_hint)
            .finish()
    }
}

/// Whether `der` is a certificate authority's certificate, as a bundle's X.509 authorities must
/// be (rule B-5): `basicConstraints` with `cA` true and, when it has a key usage, `keyCertSign`
/// in it. The reason when not. webpki makes a trust anchor of any certificate, so this is what
/// keeps a leaf pasted into a bundle from signing SVIDs.
pub(crate) fn ca_certificate(der: &[u8]) -> Result<(), &'static str> {
    use x509_parser::prelude::FromDer as _;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|_| "not a valid x.509 certificate")?;
    let basic = cert
        .basic_constraints()
        .map_err(|_| "its basic constraints do not parse")?;
    if !basic.is_some_and(|b| b.value.ca) {
        return Err("no basicConstraints with cA true");
    }
    match cert.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => Err("its key usage lacks keyCertSign"),
        Ok(_) => Ok(()),
        Err(_) => Err("its key usage does not parse"),
    }
}

/// Whether `der` is exactly one X.509 certificate.
pub(crate) fn is_certificate(der: &[u8]) -> bool {
    use x509_parser::prelude::FromDer as _;
    matches!(
        x509_parser::certificate::X509Certificate::from_der(der),
        Ok((rest, _)) if rest.is_empty()
    )
}

// === impl BundleSet ===

impl BundleSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts (or replaces) the bundle of its trust domain; returns the one it replaced.
    pub fn insert(&mut self, bundle: Bundle) -> Option<Bundle> {
        self.bundles.insert(bundle.trust_domain.clone(), bundle)
    }

    /// The bundle for `trust_domain`.
    pub fn get(&self, trust_domain: &TrustDomain) -> Option<&Bundle> {
        self.bundles.get(trust_domain)
    }

    /// Removes and returns the bundle for `trust_domain`.
    pub fn remove(&mut self, trust_domain: &TrustDomain) -> Option<Bundle> {
        self.bundles.remove(trust_domain)
    }

    /// The bundles, ordered by trust domain.
    pub fn iter(&self) -> impl Iterator<Item = &Bundle> {
        self.bundles.values()
    }

    /// How many trust domains have a bundle.
    pub fn len(&self) -> usize {
        self.bundles.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.bundles.is_empty()
    }

    /// The set as a SPIFFE bundle map, `{"trust_domains": {"<td>": <bundle>}}`; member
    /// bundles leave out the refresh hint (rule B-7).
    pub fn to_bundle_map(&self) -> String {
        map::encode(self)
    }

    /// Parses a SPIFFE bundle map. `trust_domains` must be present and must not name a trust
    /// domain twice (rule B-7); keys may be bare names or `spiffe://` IDs.
    pub fn from_bundle_map(json: impl AsRef<[u8]>) -> Result<Self, BundleError> {
        map::decode(json.as_ref())
    }
}

impl FromIterator<Bundle> for BundleSet {
    fn from_iter<I: IntoIterator<Item = Bundle>>(iter: I) -> Self {
        let mut set = Self::new();
        for b in iter {
            set.insert(b);
        }
        set
    }
}

impl fmt::Debug for BundleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.bundles.values()).finish()
    }
}
