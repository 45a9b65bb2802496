//! Test support: a test CA made with rcgen (root + leaves with SPIFFE URI SANs, and a JWT
//! signing key), a local ES256 JWT minter, and an agent Workload API served on a temp socket
//! from a cache filled with that CA's SVIDs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType,
};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tokio::sync::oneshot;
use warden_identity::TrustDomain;
use warden_node_agent::cache::{Cache, Entry, Svid};
use warden_node_agent::metrics::Metrics;
use warden_node_agent::trust::{Bundle, BundleSet, JwtAuthority};
use warden_node_agent::workload_api::{JwtMinter, MintFuture, MintedJwt, WorkloadApi};

pub(crate) const TD: &str = "example.org";

/// A root CA for one trust domain, plus a JWT signing key.
pub(crate) struct TestCa {
    pub(crate) td: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
    jwt_key: Arc<EcdsaKeyPair>,
    jwt_spki: Vec<u8>,
    pub(crate) kid: String,
}

impl TestCa {
    pub(crate) fn new(td: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.subject_alt_names = vec![SanType::URI(format!("spiffe://{td}").try_into().unwrap())];
        let root = params.self_signed(&key).unwrap().der().clone();
        let issuer = Issuer::new(params, key);
        let jwt = KeyPair::generate().unwrap();
        let rng = ring::rand::SystemRandom::new();
        let jwt_key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &jwt.serialize_der(), &rng)
                .unwrap();
        Self {
            td: TrustDomain::new(td).unwrap(),
            issuer,
            root,
            jwt_key: Arc::new(jwt_key),
            jwt_spki: jwt.subject_public_key_info(),
            kid: format!("kid-{td}"),
        }
    }

    pub(crate) fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// An X.509-SVID for `id` valid from 10 s ago for `ttl`.
    pub(crate) fn svid(&self, id: &str, ttl: Duration) -> Svid {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::seconds(10);
        params.not_after = now + time::Duration::try_from(ttl).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let chain = vec![cert.der().clone()];
        let pkcs8 = PrivatePkcs8KeyDer::from(key.serialize_der());
        Svid::new(chain, pkcs8, &key.subject_public_key_info()).unwrap()
    }

    /// Leaf parameters for `id`, valid from 10 s ago for `ttl`.
    fn leaf_params(id: &str, ttl: Duration) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::seconds(10);
        params.not_after = now + time::Duration::try_from(ttl).unwrap();
        params
    }

    /// Signs the public key of a DER CSR as `id` (the CSR's own extensions are ignored).
    pub(crate) fn sign_csr(&self, csr: &[u8], id: &str, ttl: Duration) -> Result<Vec<u8>, String> {
        let der = rustls_pki_types::CertificateSigningRequestDer::from(csr.to_vec());
        let req = rcgen::CertificateSigningRequestParams::from_der(&der)
            .map_err(|e| format!("malformed csr: {e}"))?;
        let cert = Self::leaf_params(id, ttl)
            .signed_by(&req.public_key, &self.issuer)
            .map_err(|e| e.to_string())?;
        Ok(cert.der().to_vec())
    }

    /// A server certificate and key for `id`.
    pub(crate) fn server_cert(
        &self,
        id: &str,
        ttl: Duration,
    ) -> (CertificateDer<'static>, PrivatePkcs8KeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let cert = Self::leaf_params(id, ttl)
            .signed_by(&key, &self.issuer)
            .unwrap();
        (
            cert.der().clone(),
            PrivatePkcs8KeyDer::from(key.serialize_der()),
        )
    }

    /// A node certificate (no SPIFFE ID, CN `cn`) and its PKCS#8 key, both PEM, for x509pop.
    pub(crate) fn node_cert_pem(&self, cn: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    pub(crate) fn jwt_signer(&self) -> Arc<EcdsaKeyPair> {
        Arc::clone(&self.jwt_key)
    }

    pub(crate) fn root_pem(&self) -> String {
        pem::encode(&pem::Pem::new("CERTIFICATE", self.root.to_vec()))
    }

    pub(crate) fn bundle(&self) -> Bundle {
        let mut b = Bundle::new(self.td.clone());
        b.add_x509_authority(self.root.clone());
        b.add_jwt_authority(JwtAuthority::new(
            self.kid.clone(),
            self.jwt_spki.clone(),
            None,
        ));
        b
    }

    pub(crate) fn minter(&self) -> Arc<LocalMinter> {
        Arc::new(LocalMinter {
            key: Arc::clone(&self.jwt_key),
            kid: self.kid.clone(),
            minted: Default::default(),
        })
    }
}

/// Signs ES256 JWT-SVIDs with the test CA's key (in the running agent, the CA does this).
#[derive(Debug)]
pub(crate) struct LocalMinter {
    key: Arc<EcdsaKeyPair>,
    kid: String,
    pub(crate) minted: std::sync::atomic::AtomicUsize,
}

impl JwtMinter for LocalMinter {
    fn mint<'a>(&'a self, entry: &'a Entry, audience: &'a [String]) -> MintFuture<'a> {
        Box::pin(async move {
            self.minted
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let now = SystemTime::now();
            let exp = now + Duration::from_secs(300);
            let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
            let header = serde_json::json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"});
            let claims = serde_json::json!({
                "sub": entry.spiffe_id.to_string(), "aud": audience, "exp": secs(exp), "iat": secs(now),
            });
            Ok(MintedJwt {
                token: sign_jwt(&self.key, &header, &claims),
                issued_at: now,
                expires_at: exp,
            })
        })
    }
}

pub(crate) fn sign_jwt(
    key: &EcdsaKeyPair,
    header: &serde_json::Value,
    claims: &serde_json::Value,
) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let rng = ring::rand::SystemRandom::new();
    let sig = key.sign(&rng, signing_input.as_bytes()).unwrap();
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

pub(crate) fn my_uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// An entry matching this test process (by uid) unless `selector` says otherwise.
pub(crate) fn entry(
    id: &str,
    spiffe_id: &str,
    selector: &str,
    created_at: i64,
    hint: &str,
) -> Entry {
    Entry::try_from(&warden_api::v1::Entry {
        id: id.into(),
        spiffe_id: spiffe_id.into(),
        parent_id: format!("spiffe://{TD}/agent/test"),
        selectors: vec![selector.into()],
        hint: hint.into(),
        created_at,
        revision: 1,
        ..Default::default()
    })
    .unwrap()
}

pub(crate) fn uid_selector() -> String {
    format!("unix:uid:{}", my_uid())
}

/// The agents' stream bounds in these tests: in all, and per uid (every test's streams are of
/// this process's uid, so the second is the one met).
pub(crate) const STREAM_LIMITS: (usize, usize) = (512, 6);

/// A Workload API served from a cache the test controls.
pub(crate) struct TestAgent {
    _dir: tempfile::TempDir,
    pub(crate) socket: PathBuf,
    pub(crate) cache: Cache,
    pub(crate) metrics: Arc<Metrics>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestAgent {
    /// Serves `entries` (each with a fresh SVID of `ttl`) and the CA's bundle plus `extra`.
    pub(crate) async fn start(
        ca: &TestCa,
        entries: Vec<Entry>,
        ttl: Duration,
        extra: Vec<Bundle>,
    ) -> Self {
        Self::start_with(ca, entries, ttl, extra, ca.minter(), true).await
    }

    pub(crate) async fn start_with(
        ca: &TestCa,
        entries: Vec<Entry>,
        ttl: Duration,
        extra: Vec<Bundle>,
        minter: Arc<dyn JwtMinter>,
        ready: bool,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let (mut cache, state) = Cache::new(ca.td.clone());
        let ids: Vec<(String, String)> = entries
            .iter()
            .map(|e| (e.id.clone(), e.spiffe_id.to_string()))
            .collect();
        cache.set_entries(entries);
        for (id, spiffe_id) in ids {
            assert!(cache.set_svid(&id, ca.svid(&spiffe_id, ttl)));
        }
        let mut bundles = BundleSet::new();
        bundles.insert(ca.bundle());
        for b in extra {
            bundles.insert(b);
        }
        cache.set_bundles(bundles);
        if ready {
            cache.set_ready();
        }
        cache.publish();
        let metrics = Arc::new(Metrics::new());
        let api = WorkloadApi::new(&socket, state.clone(), minter, Arc::clone(&metrics))
            .unwrap()
            .with_stream_limits(STREAM_LIMITS.0, STREAM_LIMITS.1);
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            api.run(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self {
            _dir: dir,
            socket,
            cache,
            metrics,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub(crate) async fn client(&self) -> spiffe::WorkloadApiClient {
        spiffe::WorkloadApiClient::connect_to(self.endpoint())
            .await
            .unwrap()
    }

    /// Our own generated client, for requests the spiffe crate would never send.
    pub(crate) async fn raw_channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.endpoint())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub(crate) async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .unwrap()
                .unwrap();
        }
    }
}
