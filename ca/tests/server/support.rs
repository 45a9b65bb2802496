//! Test support: a real CA (temp data dir, SQLite, ephemeral ports) and real TLS clients.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tonic::transport::Channel;
use warden_api::transport::connect_tls;
use warden_api::v1::agent_api_client::AgentApiClient;
use warden_api::v1::{AttestJoinTokenRequest, ListEntriesRequest, RenewAgentRequest};
use warden_ca::authority::{Authority, InitOptions, KeyType, SignError, SignedSvid, Ttls, init_ca};
use warden_ca::config::Config;
use warden_ca::datastore::{Datastore, NewEntry, ca_spiffe_id, join_token_hash};
use warden_ca::server::{Running, start};
use warden_identity::{
    Authorize, BundleSet, SharedBundles, SpiffeId, SpiffeServerCertVerifier, TrustDomain, X509Svid,
    crypto_provider,
};

pub(crate) const TD: &str = "example.org";

pub(crate) fn td() -> TrustDomain {
    TD.parse().unwrap()
}

pub(crate) struct TestCa {
    _dir: tempfile::TempDir,
    pub(crate) running: Running,
}

pub(crate) async fn init(dir: &std::path::Path) {
    init_for(dir, td()).await;
}

pub(crate) async fn init_for(dir: &std::path::Path, trust_domain: TrustDomain) {
    init_ca(&InitOptions {
        trust_domain,
        data_dir: dir.to_path_buf(),
        datastore: None,
        upstream: None,
        key_type: KeyType::EcP256,
        root_ttl: Duration::from_secs(86_400 * 30),
        force: false,
    })
    .await
    .unwrap();
}

pub(crate) fn config(
    dir: &std::path::Path,
    ttls: Ttls,
    node_cas: Vec<std::path::PathBuf>,
) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        bundle_endpoint_listen: None,
        bundle_endpoint_web: None,
        admin_socket: dir.join("admin.sock"),
        datastore: dir.join("datastore.sqlite3").display().to_string(),
        ttls,
        agent_ttl: Duration::from_secs(3600),
        node_cas,
        federation: Vec::new(),
    }
}

pub(crate) fn default_ttls() -> Ttls {
    Ttls {
        ca: Duration::from_secs(86_400),
        x509_svid: Duration::from_secs(3600),
        jwt_svid: Duration::from_secs(300),
    }
}

pub(crate) async fn start_ca() -> TestCa {
    start_ca_with(default_ttls(), Vec::new()).await
}

pub(crate) async fn start_ca_with(ttls: Ttls, node_cas: Vec<std::path::PathBuf>) -> TestCa {
    start_ca_configured(|c| {
        c.ttls = ttls;
        c.node_cas = node_cas;
    })
    .await
}

/// A CA on a fresh data dir, started with the default config changed by `change`.
pub(crate) async fn start_ca_configured(change: impl FnOnce(&mut Config)) -> TestCa {
    start_ca_for(td(), change).await
}

/// [`start_ca_configured`] for another trust domain.
pub(crate) async fn start_ca_for(
    trust_domain: TrustDomain,
    change: impl FnOnce(&mut Config),
) -> TestCa {
    let dir = tempfile::tempdir().unwrap();
    init_for(dir.path(), trust_domain).await;
    let mut cfg = config(dir.path(), default_ttls(), Vec::new());
    change(&mut cfg);
    let running = start(&cfg).await.unwrap();
    TestCa { _dir: dir, running }
}

impl TestCa {
    pub(crate) fn ds(&self) -> Datastore {
        self.running.authority.datastore().clone()
    }

    pub(crate) fn bundles(&self) -> BundleSet {
        let mut set = BundleSet::new();
        set.insert((*self.running.authority.bundle()).clone());
        set
    }

    pub(crate) async fn token(&self, token: &str) {
        let exp = warden_ca_now() + 600;
        self.ds()
            .create_join_token(&join_token_hash(token), exp, "test")
            .await
            .unwrap();
    }

    fn tls(&self) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
        let verifier = SpiffeServerCertVerifier::new(
            Arc::new(SharedBundles::new(self.bundles())),
            Authorize::Exactly(ca_spiffe_id(&td())),
        );
        rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
    }

    /// A client without a client certificate.
    pub(crate) async fn anon(&self) -> AgentApiClient<Channel> {
        let cfg = self.tls().with_no_client_auth();
        let ch = connect_tls(&self.running.agent_addr.to_string(), Arc::new(cfg))
            .await
            .unwrap();
        AgentApiClient::new(ch)
    }

    /// A client authenticating with `svid`.
    pub(crate) async fn as_agent(&self, svid: &X509Svid) -> AgentApiClient<Channel> {
        let cfg = self
            .tls()
            .with_client_auth_cert(
                svid.cert_chain().to_vec(),
                svid.private_key().clone_key().into(),
            )
            .unwrap();
        let ch = connect_tls(&self.running.agent_addr.to_string(), Arc::new(cfg))
            .await
            .unwrap();
        AgentApiClient::new(ch)
    }

    /// Like [`as_agent`](Self::as_agent), returning connection errors instead of panicking.
    pub(crate) async fn as_agent_unchecked(
        &self,
        svid: &X509Svid,
    ) -> Result<AgentApiClient<Channel>, String> {
        let cfg = self
            .tls()
            .with_client_auth_cert(
                svid.cert_chain().to_vec(),
                svid.private_key().clone_key().into(),
            )
            .map_err(|e| e.to_string())?;
        let ch = connect_tls(&self.running.agent_addr.to_string(), Arc::new(cfg))
            .await
            .map_err(|e| e.to_string())?;
        Ok(AgentApiClient::new(ch))
    }

    /// Attests with a fresh join token; returns the agent SVID.
    pub(crate) async fn attest(&self, token: &str) -> X509Svid {
        self.token(token).await;
        let (key, csr) = key_and_csr(None);
        self.attest_csr(token, &key, csr).await.unwrap()
    }

    /// Attests with an existing join token and `csr`, made with `key`; returns the agent SVID.
    pub(crate) async fn attest_csr(
        &self,
        token: &str,
        key: &KeyPair,
        csr: Vec<u8>,
    ) -> Result<X509Svid, tonic::Status> {
        let resp = self
            .anon()
            .await
            .attest_join_token(AttestJoinTokenRequest {
                token: token.into(),
                csr,
            })
            .await?
            .into_inner();
        Ok(svid_of(resp.svid.as_ref().unwrap(), key))
    }

    /// Renews the agent SVID `svid` over a new connection authenticated with it.
    pub(crate) async fn renew(&self, svid: &X509Svid) -> Result<X509Svid, tonic::Status> {
        let (key, csr) = key_and_csr(None);
        let resp = self
            .as_agent(svid)
            .await
            .renew_agent(RenewAgentRequest { csr })
            .await?
            .into_inner();
        Ok(svid_of(resp.svid.as_ref().unwrap(), &key))
    }

    /// Makes one authenticated call (`ListEntries`) over a new connection with `svid`.
    pub(crate) async fn call_as(&self, svid: &X509Svid) -> Result<(), tonic::Status> {
        self.as_agent(svid)
            .await
            .list_entries(ListEntriesRequest {})
            .await
            .map(|_| ())
    }

    pub(crate) async fn entry(&self, id: &str, parent: &SpiffeId, dns: &[&str]) -> String {
        self.ds()
            .create_entry(
                &NewEntry {
                    spiffe_id: id.parse().unwrap(),
                    parent_id: parent.clone(),
                    selectors: vec!["unix:uid:1000".parse().unwrap()],
                    x509_svid_ttl: 0,
                    jwt_svid_ttl: 0,
                    dns_names: dns.iter().map(|s| s.to_string()).collect(),
                    federates_with: vec![],
                    hint: String::new(),
                },
                "test",
            )
            .await
            .unwrap()
            .id
    }
}

pub(crate) fn warden_ca_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Signs `csr` for `id` with the default TTL straight from `authority` (no agent API).
pub(crate) fn sign_direct(
    authority: &Authority,
    csr: &[u8],
    id: &str,
) -> Result<SignedSvid, SignError> {
    authority.sign_x509_svid(csr, &id.parse().unwrap(), &[], Duration::ZERO)
}

/// A P-256 key and a CSR, with `uri` as URI SAN when given.
pub(crate) fn key_and_csr(uri: Option<&str>) -> (KeyPair, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(uri) = uri {
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    }
    let csr = params.serialize_request(&key).unwrap();
    (key, csr.der().to_vec())
}

pub(crate) fn svid_of(svid: &warden_api::v1::X509Svid, key: &KeyPair) -> X509Svid {
    X509Svid::new(
        svid.cert_chain
            .iter()
            .map(|c| CertificateDer::from(c.clone()))
            .collect(),
        PrivatePkcs8KeyDer::from(key.serialize_der()),
    )
    .unwrap()
}

/// Verifies `chain` with identity's verifier AND directly with rustls-webpki (client and
/// server auth) against the root alone; returns the SPIFFE ID.
pub(crate) fn verify_both(
    chain: &[CertificateDer<'static>],
    bundles: &BundleSet,
    root: &CertificateDer<'static>,
) -> SpiffeId {
    let id = warden_identity::verify_x509_svid(chain, bundles, SystemTime::now()).unwrap();
    // webpki with the root alone as anchor: the intermediate must come from the chain.
    let anchors = vec![webpki::anchor_from_trusted_cert(root).unwrap().to_owned()];
    let ee = webpki::EndEntityCert::try_from(&chain[0]).unwrap();
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        ee.verify_for_usage(
            crypto_provider().signature_verification_algorithms.all,
            &anchors,
            &chain[1..],
            rustls_pki_types::UnixTime::now(),
            usage,
            None,
            None,
        )
        .unwrap();
    }
    id
}
