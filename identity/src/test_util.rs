//! Test certificate authorities (feature `test-util`): [`TestCa`] makes ECDSA P-256 roots,
//! intermediates, valid X.509-SVIDs, and leaves that break one SPIFFE rule each, for this
//! crate's tests and for every other Warden crate's. Not for production use.
#![expect(
    clippy::expect_used,
    reason = "test-only helper: failing to build a test certificate means the test is broken"
)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, TrustAnchor, UnixTime};

use crate::{Bundle, BundleSet, SpiffeId, TrustDomain, X509Svid};

mod ports;
pub use ports::free_port;

/// How long test CAs are valid (from one hour ago).
const CA_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// How far leaves are backdated, as SPIRE does.
const BACKDATE: Duration = Duration::from_secs(10);
const OID_KEY_USAGE: &[u64] = &[2, 5, 29, 15];
const OID_SUBJECT_ALT_NAME: &[u64] = &[2, 5, 29, 17];

/// One way a leaf certificate breaks the X.509-SVID profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BadLeaf {
    /// Two URI SANs.
    TwoUriSans,
    /// A DNS SAN but no URI SAN.
    NoUriSan,
    /// A SPIFFE ID without a path.
    IdWithoutPath,
    /// A URI SAN that is not a SPIFFE ID (`https://`).
    NonSpiffeUri,
    /// A URI SAN holding a line break and a made-up log line (X-2; errors must not carry it
    /// into logs as such).
    UriWithLineBreak,
    /// Empty subject and a non-critical SAN extension.
    NonCriticalSanWithEmptySubject,
    /// BasicConstraints `cA=true`.
    CaLeaf,
    /// No key usage extension.
    MissingKeyUsage,
    /// A key usage extension that is not critical.
    NonCriticalKeyUsage,
    /// Key usage without `digitalSignature`.
    NoDigitalSignature,
    /// Key usage with `keyCertSign`.
    KeyCertSign,
    /// Key usage with `cRLSign`.
    CrlSign,
    /// Extended key usage with serverAuth only.
    ServerAuthOnlyEku,
    /// Valid until an hour ago.
    Expired,
    /// Valid from an hour from now.
    NotYetValid,
}

/// One way a signing certificate breaks the profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BadCa {
    /// A SPIFFE ID with a path.
    IdWithPath,
    /// Key usage without `keyCertSign`.
    NoKeyCertSign,
    /// BasicConstraints `cA=false`.
    NotCa,
    /// No key usage extension.
    MissingKeyUsage,
}

/// A certificate authority for tests: a root, or an intermediate under another `TestCa`.
#[derive(Debug)]
pub struct TestCa {
    trust_domain: TrustDomain,
    /// Its name, key identifier, key usages and private key: what signing a certificate needs.
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    /// The certificates a leaf sends after itself: this CA if it is an intermediate, then
    /// its parents' intermediates. Empty for a root.
    chain: Vec<CertificateDer<'static>>,
    root: CertificateDer<'static>,
    /// Its certificate's parameters (unknown for a root read from PEM) and its key again, to
    /// certify the same name and key anew.
    params: Option<CertificateParams>,
    key_der: Vec<u8>,
}

// === impl TestCa ===

impl TestCa {
    /// A self-signed root for `trust_domain` (SPIFFE ID `spiffe://<td>`, no path length limit).
    pub fn new(trust_domain: &str) -> Self {
        Self::root(trust_domain, BasicConstraints::Unconstrained)
    }

    /// A root whose path length constraint is `path_len` (rule X-10).
    pub fn with_path_len(trust_domain: &str, path_len: u8) -> Self {
        Self::root(trust_domain, BasicConstraints::Constrained(path_len))
    }

    fn root(trust_domain: &str, constraints: BasicConstraints) -> Self {
        let trust_domain = TrustDomain::new(trust_domain).expect("valid test trust domain");
        let key = KeyPair::generate().expect("generate p-256 key");
        let params = ca_params(&trust_domain, "root", IsCa::Ca(constraints), None);
        let cert = params
            .self_signed(&key)
            .expect("self-sign test root")
            .der()
            .clone();
        Self {
            trust_domain,
            key_der: key.serialize_der(),
            issuer: Issuer::new(params.clone(), key),
            params: Some(params),
            root: cert.clone(),
            cert,
            chain: Vec::new(),
        }
    }

    /// This root certified again: the same name and key, valid from `not_before` until
    /// `not_after` (a renewed root, or an expired copy of it). Panics for an intermediate or a
    /// root read from PEM.
    pub fn root_valid(
        &self,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> CertificateDer<'static> {
        assert!(self.chain.is_empty(), "root_valid is for roots");
        let mut params = self
            .params
            .clone()
            .expect("root_valid needs a root made by TestCa");
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params
            .self_signed(&self.key())
            .expect("self-sign test root")
            .der()
            .clone()
    }

    /// A bundle for the trust domain holding `roots` instead of this CA's root.
    pub fn bundle_of(&self, roots: &[CertificateDer<'static>]) -> Bundle {
        let mut bundle = Bundle::new(self.trust_domain.clone());
        for root in roots {
            bundle.add_x509_authority(root.clone());
        }
        bundle
    }

    fn key(&self) -> KeyPair {
        let der = PrivatePkcs8KeyDer::from(self.key_der.clone());
        KeyPair::try_from(&der).expect("test ca key")
    }

    /// An existing root from its PEM certificate and PKCS#8 key (a real CA's `root.crt.pem` and
    /// `root.key.pem`), so that tests can sign leaves, good or bad, that chain to it.
    pub fn from_root_pem(trust_domain: &str, cert_pem: &str, key_pem: &str) -> Self {
        let trust_domain = TrustDomain::new(trust_domain).expect("valid test trust domain");
        let key = KeyPair::from_pem(key_pem).expect("root key PEM");
        let key_der = key.serialize_der();
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).expect("root certificate PEM");
        let cert = CertificateDer::from(
            pem::parse(cert_pem)
                .expect("root certificate PEM")
                .into_contents(),
        );
        Self {
            trust_domain,
            issuer,
            params: None,
            key_der,
            root: cert.clone(),
            cert,
            chain: Vec::new(),
        }
    }

    /// An intermediate CA signed by this one (SPIFFE ID `spiffe://<td>`).
    pub fn intermediate(&self) -> Self {
        self.make_intermediate(None, BasicConstraints::Unconstrained, None)
    }

    /// An intermediate CA signed by this one that is valid until `not_after` (and from an hour
    /// ago): leaves it signs may outlive it.
    pub fn intermediate_until(&self, not_after: SystemTime) -> Self {
        self.make_intermediate(None, BasicConstraints::Unconstrained, Some(not_after))
    }

    /// An intermediate CA whose path length constraint is `path_len` (rule X-10).
    pub fn intermediate_with_path_len(&self, path_len: u8) -> Self {
        self.make_intermediate(None, BasicConstraints::Constrained(path_len), None)
    }

    /// An intermediate CA signed by this one that breaks the profile in one way.
    pub fn bad_intermediate(&self, bad: BadCa) -> Self {
        self.make_intermediate(Some(bad), BasicConstraints::Unconstrained, None)
    }

    fn make_intermediate(
        &self,
        bad: Option<BadCa>,
        constraints: BasicConstraints,
        not_after: Option<SystemTime>,
    ) -> Self {
        let key = KeyPair::generate().expect("generate p-256 key");
        let is_ca = match bad {
            Some(BadCa::NotCa) => IsCa::ExplicitNoCa,
            _ => IsCa::Ca(constraints),
        };
        let mut params = ca_params(&self.trust_domain, "intermediate", is_ca, bad);
        if let Some(not_after) = not_after {
            params.not_after = not_after.into();
        }
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign intermediate")
            .der()
            .clone();
        self.child(params, key, cert)
    }

    /// A CA under this one from its parameters, key and certificate.
    fn child(
        &self,
        params: CertificateParams,
        key: KeyPair,
        cert: CertificateDer<'static>,
    ) -> Self {
        let mut chain = vec![cert.clone()];
        chain.extend(self.chain.iter().cloned());
        Self {
            trust_domain: self.trust_domain.clone(),
            key_der: key.serialize_der(),
            issuer: Issuer::new(params.clone(), key),
            params: Some(params),
            cert,
            chain,
            root: self.root.clone(),
        }
    }

    /// Two intermediates signed by this CA with the same name and key: a good one, and the
    /// certificate of one that breaks the profile in the way `bad` says. A leaf the good one
    /// signs chains through either, so a path builder may find the bad one first.
    pub fn intermediate_twins(&self, bad: BadCa) -> (Self, CertificateDer<'static>) {
        let key = KeyPair::generate().expect("generate p-256 key");
        let params = ca_params(
            &self.trust_domain,
            "intermediate",
            IsCa::Ca(BasicConstraints::Unconstrained),
            None,
        );
        let mut bad_params = params.clone();
        break_ca(&mut bad_params, &self.trust_domain, bad);
        let bad_cert = bad_params
            .signed_by(&key, &self.issuer)
            .expect("sign intermediate")
            .der()
            .clone();
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign intermediate")
            .der()
            .clone();
        (self.child(params, key, cert), bad_cert)
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// This CA's own certificate.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The root certificate this CA chains to.
    pub fn root_cert(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// A bundle for the trust domain holding the root.
    pub fn bundle(&self) -> Bundle {
        let mut bundle = Bundle::new(self.trust_domain.clone());
        bundle.add_x509_authority(self.root.clone());
        bundle
    }

    /// A bundle set holding the bundle of each CA.
    pub fn bundle_set(cas: &[&TestCa]) -> BundleSet {
        cas.iter().map(|ca| ca.bundle()).collect()
    }

    /// A valid X.509-SVID for `id`, valid from 10 s ago for `ttl`.
    pub fn issue_svid(&self, id: &SpiffeId, ttl: Duration) -> X509Svid {
        let now = SystemTime::now();
        self.issue_svid_valid(id, now - BACKDATE, now + ttl)
    }

    /// A valid X.509-SVID for `id` with the given validity.
    pub fn issue_svid_valid(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> X509Svid {
        let (chain, key) = self.leaf(id.as_str(), not_before, not_after, None, true);
        X509Svid::new(chain, key).expect("test svid is well formed")
    }

    /// A valid X.509-SVID for `id` without the (optional, rule X-8) extended key usage
    /// extension.
    pub fn issue_svid_without_eku(&self, id: &SpiffeId, ttl: Duration) -> X509Svid {
        let now = SystemTime::now();
        let (chain, key) = self.leaf(id.as_str(), now - BACKDATE, now + ttl, None, false);
        X509Svid::new(chain, key).expect("test svid is well formed")
    }

    /// A leaf for `id` that breaks the profile in one way, with the chain after it; plus its
    /// private key.
    pub fn issue_bad_leaf(
        &self,
        id: &SpiffeId,
        bad: BadLeaf,
    ) -> (Vec<CertificateDer<'static>>, PrivatePkcs8KeyDer<'static>) {
        let now = SystemTime::now();
        let (nb, na) = match bad {
            BadLeaf::Expired => (
                now - Duration::from_secs(7200),
                now - Duration::from_secs(3600),
            ),
            BadLeaf::NotYetValid => (
                now + Duration::from_secs(3600),
                now + Duration::from_secs(7200),
            ),
            _ => (now - BACKDATE, now + Duration::from_secs(3600)),
        };
        let uri = match bad {
            BadLeaf::IdWithoutPath => id.trust_domain().id_string(),
            BadLeaf::NonSpiffeUri => format!("https://{}{}", id.trust_domain_name(), id.path()),
            BadLeaf::UriWithLineBreak => format!("{id}\n2026-01-01T00:00:00Z  INFO decision allow"),
            _ => id.to_string(),
        };
        self.leaf(&uri, nb, na, Some(bad), true)
    }

    fn leaf(
        &self,
        uri: &str,
        not_before: SystemTime,
        not_after: SystemTime,
        bad: Option<BadLeaf>,
        with_eku: bool,
    ) -> (Vec<CertificateDer<'static>>, PrivatePkcs8KeyDer<'static>) {
        let key = KeyPair::generate().expect("generate p-256 key");
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.subject_alt_names = vec![uri_san(uri)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if with_eku {
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
        }
        match bad {
            None
            | Some(
                BadLeaf::Expired
                | BadLeaf::NotYetValid
                | BadLeaf::IdWithoutPath
                | BadLeaf::NonSpiffeUri
                | BadLeaf::UriWithLineBreak,
            ) => {}
            Some(BadLeaf::TwoUriSans) => {
                params
                    .subject_alt_names
                    .push(uri_san(&format!("{uri}/second")));
            }
            Some(BadLeaf::NoUriSan) => {
                params.subject_alt_names = vec![SanType::DnsName(
                    "svc.example".try_into().expect("dns name"),
                )];
            }
            Some(BadLeaf::NonCriticalSanWithEmptySubject) => {
                params.subject_alt_names = Vec::new();
                params
                    .custom_extensions
                    .push(CustomExtension::from_oid_content(
                        OID_SUBJECT_ALT_NAME,
                        san_der(uri),
                    ));
            }
            Some(BadLeaf::CaLeaf) => {
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            }
            Some(BadLeaf::MissingKeyUsage) => params.key_usages = Vec::new(),
            Some(BadLeaf::NonCriticalKeyUsage) => {
                params.key_usages = Vec::new();
                // BIT STRING, 7 unused bits, digitalSignature set.
                params
                    .custom_extensions
                    .push(CustomExtension::from_oid_content(
                        OID_KEY_USAGE,
                        vec![0x03, 0x02, 0x07, 0x80],
                    ));
            }
            Some(BadLeaf::NoDigitalSignature) => {
                params.key_usages = vec![KeyUsagePurpose::KeyAgreement];
            }
            Some(BadLeaf::KeyCertSign) => params.key_usages.push(KeyUsagePurpose::KeyCertSign),
            Some(BadLeaf::CrlSign) => params.key_usages.push(KeyUsagePurpose::CrlSign),
            Some(BadLeaf::ServerAuthOnlyEku) => {
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }
        }
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign test leaf")
            .der()
            .clone();
        let mut chain = vec![cert];
        chain.extend(self.chain.iter().cloned());
        (chain, PrivatePkcs8KeyDer::from(key.serialize_der()))
    }
}

fn ca_params(td: &TrustDomain, role: &str, is_ca: IsCa, bad: Option<BadCa>) -> CertificateParams {
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Warden test");
    dn.push(
        DnType::CommonName,
        format!("{td} test {role} {}", unique_suffix()),
    );
    params.distinguished_name = dn;
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + CA_LIFETIME).into();
    params.is_ca = is_ca;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = vec![uri_san(&td.id_string())];
    if let Some(bad) = bad {
        break_ca(&mut params, td, bad);
    }
    params
}

/// Makes `params` break the profile in the way `bad` says.
fn break_ca(params: &mut CertificateParams, td: &TrustDomain, bad: BadCa) {
    match bad {
        BadCa::IdWithPath => {
            params.subject_alt_names = vec![uri_san(&format!("{}/ca", td.id_string()))];
        }
        BadCa::NoKeyCertSign => params.key_usages = vec![KeyUsagePurpose::CrlSign],
        BadCa::MissingKeyUsage => params.key_usages = Vec::new(),
        BadCa::NotCa => params.is_ca = IsCa::ExplicitNoCa,
    }
}

/// Distinguishes CAs made in the same test, so path building never confuses two of them.
fn unique_suffix() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

fn uri_san(uri: &str) -> SanType {
    SanType::URI(uri.try_into().expect("uri san is ia5"))
}

/// The DER of a SubjectAltName extension value holding one URI.
fn san_der(uri: &str) -> Vec<u8> {
    let uri = uri.as_bytes();
    assert!(uri.len() < 120, "short uris only");
    let mut general_name = vec![0x86, uri.len() as u8];
    general_name.extend_from_slice(uri);
    let mut out = vec![0x30, general_name.len() as u8];
    out.extend_from_slice(&general_name);
    out
}

/// Verifies `chain` (leaf first) against the roots of `bundle` with rustls-webpki alone, for
/// client and server use: the independent check every valid test SVID gets.
pub fn webpki_verify(
    chain: &[CertificateDer<'_>],
    bundle: &Bundle,
    now: SystemTime,
) -> Result<(), webpki::Error> {
    let (leaf, intermediates) = chain.split_first().ok_or(webpki::Error::BadDer)?;
    let anchors: Vec<TrustAnchor<'_>> = bundle
        .x509_authorities()
        .iter()
        .map(webpki::anchor_from_trusted_cert)
        .collect::<Result<_, _>>()?;
    let ee = webpki::EndEntityCert::try_from(leaf)?;
    let time = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
    let algs = webpki::ALL_VERIFICATION_ALGS;
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        ee.verify_for_usage(algs, &anchors, intermediates, time, usage, None, None)?;
    }
    Ok(())
}
