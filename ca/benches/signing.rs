//! X.509-SVID signing throughput: the authority alone (CSR parse + verify + sign), and the
//! `SignX509Svids` RPC end to end (real TLS client, real in-process server, SQLite issuance
//! log) with batches of 500.
//!
//! Run: `cargo bench -p warden-ca --bench signing`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "benchmark setup: a failure aborts the run"
)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use warden_api::transport::connect_tls;
use warden_api::v1::agent_api_client::AgentApiClient;
use warden_api::v1::{AttestJoinTokenRequest, SignX509SvidsRequest, SvidCsr};
use warden_ca::authority::{Authority, InitOptions, KeyType, SystemClock, Ttls, init_ca};
use warden_ca::config::Config;
use warden_ca::datastore::{Datastore, NewEntry, ca_spiffe_id, join_token_hash};
use warden_identity::{
    Authorize, BundleSet, SharedBundles, SpiffeServerCertVerifier, TrustDomain, X509Svid,
    crypto_provider,
};

const BATCH: usize = 500;

fn ttls() -> Ttls {
    Ttls {
        ca: Duration::from_secs(86_400),
        x509_svid: Duration::from_secs(3600),
        jwt_svid: Duration::from_secs(300),
    }
}

fn csr() -> (KeyPair, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .unwrap();
    (key, csr.der().to_vec())
}

async fn init(dir: &std::path::Path, td: &TrustDomain) {
    init_ca(&InitOptions {
        trust_domain: td.clone(),
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

fn authority_signing(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let td: TrustDomain = "example.org".parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let authority = rt.block_on(async {
        init(dir.path(), &td).await;
        let ds = Datastore::open(&dir.path().join("datastore.sqlite3").display().to_string())
            .await
            .unwrap();
        Authority::load(dir.path(), td.clone(), ds, Arc::new(SystemClock), ttls())
            .await
            .unwrap()
    });
    let (_, csr) = csr();
    let id = td.id("/workload/web").unwrap();
    let mut g = c.benchmark_group("authority");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sign_x509_svid", |b| {
        b.iter(|| {
            authority
                .sign_x509_svid(&csr, &id, &[], Duration::ZERO)
                .unwrap()
        })
    });
    g.finish();
}

fn rpc_batch(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let td: TrustDomain = "example.org".parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (running, mut client, batch) = rt.block_on(async {
        init(dir.path(), &td).await;
        let config = Config {
            data_dir: dir.path().to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            bundle_endpoint_listen: None,
            bundle_endpoint_web: None,
            admin_socket: dir.path().join("admin.sock"),
            datastore: dir.path().join("datastore.sqlite3").display().to_string(),
            ttls: ttls(),
            agent_ttl: Duration::from_secs(3600),
            node_cas: vec![],
            federation: Vec::new(),
        };
        let running = warden_ca::server::start(&config).await.unwrap();
        let ds = running.authority.datastore().clone();
        ds.create_join_token(&join_token_hash("bench"), i64::MAX / 2, "bench")
            .await
            .unwrap();
        let mut set = BundleSet::new();
        set.insert((*running.authority.bundle()).clone());
        let builder = || {
            rustls::ClientConfig::builder_with_provider(crypto_provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(SpiffeServerCertVerifier::new(
                    Arc::new(SharedBundles::new(set.clone())),
                    Authorize::Exactly(ca_spiffe_id(&td)),
                )))
        };
        let addr = running.agent_addr.to_string();
        let anon = connect_tls(&addr, Arc::new(builder().with_no_client_auth()))
            .await
            .unwrap();
        let (key, csr_der) = csr();
        let resp = AgentApiClient::new(anon)
            .attest_join_token(AttestJoinTokenRequest {
                token: "bench".into(),
                csr: csr_der,
            })
            .await
            .unwrap()
            .into_inner();
        let agent = X509Svid::new(
            resp.svid
                .unwrap()
                .cert_chain
                .into_iter()
                .map(CertificateDer::from)
                .collect(),
            PrivatePkcs8KeyDer::from(key.serialize_der()),
        )
        .unwrap();
        let entry = ds
            .create_entry(
                &NewEntry {
                    spiffe_id: td.id("/workload/web").unwrap(),
                    parent_id: agent.spiffe_id().clone(),
                    selectors: vec!["unix:uid:1000".parse().unwrap()],
                    x509_svid_ttl: 0,
                    jwt_svid_ttl: 0,
                    dns_names: vec![],
                    federates_with: vec![],
                    hint: String::new(),
                },
                "bench",
            )
            .await
            .unwrap();
        let cfg = builder()
            .with_client_auth_cert(
                agent.cert_chain().to_vec(),
                agent.private_key().clone_key().into(),
            )
            .unwrap();
        let ch = connect_tls(&addr, Arc::new(cfg)).await.unwrap();
        let batch: Vec<SvidCsr> = (0..BATCH)
            .map(|_| SvidCsr {
                entry_id: entry.id.clone(),
                csr: csr().1,
            })
            .collect();
        (running, AgentApiClient::new(ch), batch)
    });
    let mut g = c.benchmark_group("rpc");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(15));
    g.bench_function("sign_x509_svids_batch_500_sqlite", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = client
                    .sign_x509_svids(SignX509SvidsRequest {
                        csrs: batch.clone(),
                    })
                    .await
                    .unwrap();
                assert_eq!(r.get_ref().svids.len(), BATCH);
            })
        })
    });
    g.finish();
    rt.block_on(running.shutdown()).unwrap();
}

criterion_group!(benches, authority_signing, rpc_batch);
criterion_main!(benches);
