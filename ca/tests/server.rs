//! Integration tests of the CA server: a real CA (temp data dir, SQLite, ephemeral ports)
//! driven by the generated tonic client over real TLS 1.3.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers outside #[test] functions: a failure there is a test failure"
)]

#[path = "server/audit.rs"]
mod audit;
#[path = "server/bundle_endpoint.rs"]
mod bundle_endpoint;
#[path = "server/federation.rs"]
mod federation;
#[path = "server/federation_web.rs"]
mod federation_web;
#[path = "server/refusals.rs"]
mod refusals;
#[path = "server/rotation.rs"]
mod rotation;
#[path = "server/support.rs"]
mod support;
#[path = "server/x509pop.rs"]
mod x509pop;

use std::time::SystemTime;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warden_api::v1::{
    FetchBundlesRequest, ListEntriesRequest, RenewAgentRequest, SignJwtSvidRequest,
    SignX509SvidsRequest, SvidCsr,
};
use warden_ca::datastore::join_token_agent_id;
use x509_parser::prelude::*;

#[tokio::test]
async fn join_token_attest_renew_list_sign_jwt_and_bundles_end_to_end() {
    let ca = start_ca().await;
    let agent = ca.attest("tok-e2e").await;
    let expected = join_token_agent_id(&td(), "tok-e2e");
    assert_eq!(agent.spiffe_id(), &expected);
    let root = ca.running.authority.root_cert().clone();
    assert_eq!(
        verify_both(agent.cert_chain(), &ca.bundles(), &root),
        expected
    );
    let record = ca.ds().get_agent(&expected).await.unwrap().unwrap();
    assert_eq!(record.attestor, "join_token");

    // Renew over mutual TLS: same ID, new serial.
    let mut client = ca.as_agent(&agent).await;
    let (key, csr) = key_and_csr(None);
    let renewed = client
        .renew_agent(RenewAgentRequest { csr })
        .await
        .unwrap()
        .into_inner();
    let renewed = svid_of(renewed.svid.as_ref().unwrap(), &key);
    assert_eq!(renewed.spiffe_id(), &expected);
    assert_eq!(
        verify_both(renewed.cert_chain(), &ca.bundles(), &root),
        expected
    );
    assert_ne!(renewed.leaf(), agent.leaf());
    let after = ca.ds().get_agent(&expected).await.unwrap().unwrap();
    assert_ne!(after.serial, record.serial);

    // Entries.
    let web = ca
        .entry("spiffe://example.org/web", &expected, &["web.example.org"])
        .await;
    let db = ca.entry("spiffe://example.org/db", &expected, &[]).await;
    let listed = client
        .list_entries(ListEntriesRequest {})
        .await
        .unwrap()
        .into_inner()
        .entries;
    let ids: Vec<&str> = listed.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(listed.len(), 2);
    assert!(ids.contains(&web.as_str()) && ids.contains(&db.as_str()));

    // Batch signing, in request order.
    let mut keys = Vec::new();
    let mut csrs = Vec::new();
    for (entry, uri) in [
        (&web, Some("spiffe://example.org/web")),
        (&db, None),
        (&web, None),
    ] {
        let (k, csr) = key_and_csr(uri);
        keys.push(k);
        csrs.push(SvidCsr {
            entry_id: entry.clone(),
            csr,
        });
    }
    let svids = client
        .sign_x509_svids(SignX509SvidsRequest { csrs })
        .await
        .unwrap()
        .into_inner()
        .svids;
    assert_eq!(svids.len(), 3);
    let want = [
        "spiffe://example.org/web",
        "spiffe://example.org/db",
        "spiffe://example.org/web",
    ];
    for ((s, k), want) in svids.iter().zip(&keys).zip(want) {
        let svid = svid_of(s, k);
        assert_eq!(svid.spiffe_id().as_str(), want);
        assert_eq!(
            verify_both(svid.cert_chain(), &ca.bundles(), &root).as_str(),
            want
        );
    }
    // The web SVID carries the entry's DNS SAN.
    let (_, leaf) = X509Certificate::from_der(&svids[0].cert_chain[0]).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert!(
        san.value
            .general_names
            .iter()
            .any(|g| matches!(g, GeneralName::DNSName("web.example.org")))
    );

    // JWT-SVID, validated with the JWT authorities from FetchBundles.
    let jwt = client
        .sign_jwt_svid(SignJwtSvidRequest {
            entry_id: web.clone(),
            audience: vec!["billing".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(jwt.spiffe_id, "spiffe://example.org/web");
    let bundles = client
        .fetch_bundles(FetchBundlesRequest {})
        .await
        .unwrap()
        .into_inner();
    let own = bundles.own.unwrap();
    assert_eq!(own.trust_domain, TD);
    assert!(own.x509_authorities.iter().any(|c| c == root.as_ref()));
    assert!(!own.jwt_authorities.is_empty());
    let claims =
        warden_identity::validate_jwt_svid(&jwt.token, "billing", &ca.bundles(), SystemTime::now())
            .unwrap();
    assert_eq!(claims.spiffe_id().as_str(), "spiffe://example.org/web");
    assert!(
        warden_identity::validate_jwt_svid(&jwt.token, "other", &ca.bundles(), SystemTime::now())
            .is_err()
    );
    ca.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn svid_and_intermediate_follow_the_spiffe_profile_x1_x3_x5_x6_x9() {
    let ca = start_ca().await;
    let (_, csr) = key_and_csr(Some("spiffe://example.org/svc"));
    let id = "spiffe://example.org/svc".parse().unwrap();
    let s = ca
        .running
        .authority
        .sign_x509_svid(&csr, &id, &[], std::time::Duration::ZERO)
        .unwrap();
    let (_, leaf) = X509Certificate::from_der(&s.cert_chain[0]).unwrap();
    // exactly one URI SAN; X-3: empty subject => SAN critical.
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    let uris: Vec<_> = san
        .value
        .general_names
        .iter()
        .filter(|g| matches!(g, GeneralName::URI(_)))
        .collect();
    assert_eq!(uris.len(), 1);
    assert_eq!(leaf.subject().as_raw(), [0x30, 0x00], "empty subject");
    assert!(san.critical);
    // not a CA; X-6: KU digitalSignature, critical, no keyCertSign.
    let bc = leaf.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca);
    let ku = leaf.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.digital_signature() && !ku.value.key_cert_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth && eku.value.client_auth);
    // SKI and AKI (PITFALLS 6), 128-bit serial.
    assert!(
        leaf.extensions()
            .iter()
            .any(|e| e.oid == x509_parser::oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER)
    );
    assert!(
        leaf.extensions()
            .iter()
            .any(|e| e.oid == x509_parser::oid_registry::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER)
    );
    assert_eq!(leaf.raw_serial().len(), 16);
    // Default TTL 1h, backdated 10 s.
    let life = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert_eq!(life, 3600 + 10);
    // intermediate is a CA with URI spiffe://example.org, keyCertSign, pathlen 0.
    let (_, int) = X509Certificate::from_der(&s.cert_chain[1]).unwrap();
    let bc = int.basic_constraints().unwrap().unwrap();
    assert!(bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    assert!(int.key_usage().unwrap().unwrap().value.key_cert_sign());
    let san = int.subject_alternative_name().unwrap().unwrap();
    assert!(
        san.value
            .general_names
            .iter()
            .any(|g| matches!(g, GeneralName::URI("spiffe://example.org")))
    );
    ca.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn csr_subject_is_not_copied_into_issued_svids() {
    let ca = start_ca().await;
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "admin");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "ops");
    let csr = params.serialize_request(&key).unwrap().der().to_vec();
    // A workload SVID signed directly, and an agent SVID issued over the agent API.
    let workload = sign_direct(&ca.running.authority, &csr, "spiffe://example.org/svc")
        .unwrap()
        .cert_chain;
    ca.token("tok-cn").await;
    let agent = ca.attest_csr("tok-cn", &key, csr).await.unwrap();
    for leaf in [&workload[0], &agent.cert_chain()[0]] {
        let (_, leaf) = X509Certificate::from_der(leaf).unwrap();
        assert_eq!(
            leaf.subject().iter_common_name().count(),
            0,
            "{}",
            leaf.subject()
        );
        assert_eq!(leaf.subject().as_raw(), [0x30, 0x00], "{}", leaf.subject());
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert!(san.critical, "X-3: an empty subject makes the SAN critical");
    }
    ca.running.shutdown().await.unwrap();
}

pub(crate) async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: ca\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn http_serves_health_metrics_and_the_spiffe_bundle_b9() {
    let ca = start_ca().await;
    let _agent = ca.attest("tok-http").await;
    let addr = ca.running.http_addr;
    assert!(http_get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(http_get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
    let metrics = http_get(addr, "/metrics").await;
    assert!(
        metrics.contains("warden_ca_attestations_total{attestor=\"join_token\",result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("warden_ca_ca_expiry_seconds"), "{metrics}");
    assert!(
        metrics.contains("warden_ca_svid_signing_seconds"),
        "{metrics}"
    );
    let bundle = http_get(addr, "/bundle").await;
    assert!(
        bundle
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{bundle}"
    );
    let body = bundle.split("\r\n\r\n").nth(1).unwrap();
    let parsed = warden_identity::Bundle::from_jwks(td(), body).unwrap();
    assert_eq!(
        &parsed.x509_authorities(),
        &ca.running.authority.bundle().x509_authorities()
    );
    assert!(!parsed.jwt_authorities().is_empty());
    assert!(http_get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
    ca.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn init_writes_private_files_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ca");
    init(&data).await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("root.key.pem")), 0o600);
    assert_eq!(mode(&data.join("keys")), 0o700);
    let again = warden_ca::authority::init_ca(&warden_ca::authority::InitOptions {
        trust_domain: td(),
        data_dir: data.clone(),
        datastore: None,
        upstream: None,
        key_type: warden_ca::authority::KeyType::EcP384,
        root_ttl: std::time::Duration::from_secs(86_400),
        force: false,
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(
        again.contains("already exists") && again.contains("--force"),
        "{again}"
    );
    // Intermediate keys written by serve are 0600 too.
    let running = warden_ca::server::start(&config(&data, default_ttls(), vec![]))
        .await
        .unwrap();
    for f in std::fs::read_dir(data.join("keys")).unwrap() {
        assert_eq!(mode(&f.unwrap().path()), 0o600);
    }
    running.shutdown().await.unwrap();
}

/// A second CA on the data directory of a running one stops at once, naming the admin socket
/// in use, before it opens the datastore; the first goes on serving. Before, the second ran
/// without an admin API, answered `/readyz` and published bundles of its own, and said so
/// only when stopped.
#[tokio::test]
async fn a_second_ca_on_a_served_data_dir_stops_at_start() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path()).await;
    let cfg = config(dir.path(), default_ttls(), vec![]);
    let first = warden_ca::server::start(&cfg).await.unwrap();
    let err = warden_ca::server::start(&cfg).await.unwrap_err();
    assert!(
        matches!(err, warden_ca::server::ServerError::Admin(_))
            && err.to_string().contains("admin.sock")
            && err.to_string().contains("in use"),
        "{err}"
    );
    // The first CA's admin socket is still there, and still answers.
    tokio::net::UnixStream::connect(dir.path().join("admin.sock"))
        .await
        .unwrap();
    first.shutdown().await.unwrap();
}

/// A node CA file whose certificate is no usable trust anchor is refused when the CA starts
/// (and by `--check-config`), naming the file; before, it was skipped at attestation and
/// matched nothing.
#[tokio::test]
async fn a_node_ca_that_is_no_trust_anchor_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path()).await;
    let garbled = dir.path().join("node-ca.pem");
    std::fs::write(
        &garbled,
        ::pem::encode(&::pem::Pem::new(
            "CERTIFICATE",
            b"not a certificate".to_vec(),
        )),
    )
    .unwrap();
    let cfg = config(dir.path(), default_ttls(), vec![garbled]);
    let err = warden_ca::server::check(&cfg).unwrap_err().to_string();
    assert!(
        err.contains("node-ca.pem") && err.contains("not usable as a trust anchor"),
        "{err}"
    );
    let err = warden_ca::server::start(&cfg)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not usable as a trust anchor"), "{err}");
}

#[tokio::test]
async fn upstream_ca_becomes_the_trust_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let up_key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "corp root");
    let up_cert = p.self_signed(&up_key).unwrap();
    std::fs::write(dir.path().join("up.crt"), up_cert.pem()).unwrap();
    std::fs::write(dir.path().join("up.key"), up_key.serialize_pem()).unwrap();
    let data = dir.path().join("ca");
    let mut opts = warden_ca::authority::InitOptions {
        trust_domain: td(),
        data_dir: data.clone(),
        datastore: None,
        upstream: Some((dir.path().join("up.crt"), dir.path().join("up.key"))),
        key_type: warden_ca::authority::KeyType::EcP256,
        root_ttl: std::time::Duration::from_secs(86_400),
        force: false,
    };
    // A key that does not match the certificate is refused.
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(dir.path().join("other.key"), other.serialize_pem()).unwrap();
    opts.upstream = Some((dir.path().join("up.crt"), dir.path().join("other.key")));
    let err = warden_ca::authority::init_ca(&opts)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not belong"), "{err}");
    opts.upstream = Some((dir.path().join("up.crt"), dir.path().join("up.key")));
    warden_ca::authority::init_ca(&opts).await.unwrap();
    let running = warden_ca::server::start(&config(&data, default_ttls(), vec![]))
        .await
        .unwrap();
    assert_eq!(
        running.authority.root_cert().as_ref(),
        up_cert.der().as_ref()
    );
    let (_, csr) = key_and_csr(None);
    let s = sign_direct(&running.authority, &csr, "spiffe://example.org/x").unwrap();
    let mut set = warden_identity::BundleSet::new();
    set.insert((*running.authority.bundle()).clone());
    verify_both(&s.cert_chain, &set, &up_cert.der().clone());
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn admin_socket_issues_a_join_token_that_attests_and_reports_the_own_bundle() {
    use warden_api::v1::admin_api_client::AdminApiClient;
    use warden_api::v1::{CreateJoinTokenRequest, TrustDomainName};
    let ca = start_ca().await;
    let socket = ca.running.authority.data_dir().join("admin.sock");
    // The admin listener is spawned by start(); poll (bounded) until the socket answers.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let channel = loop {
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("unix://{}", socket.display()))
                .unwrap();
        match endpoint.connect().await {
            Ok(ch) => break ch,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "admin socket: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    let mut admin = AdminApiClient::new(channel);
    let token = admin
        .create_join_token(CreateJoinTokenRequest { ttl: 60 })
        .await
        .unwrap()
        .into_inner();
    let (key, csr) = key_and_csr(None);
    let svid = ca.attest_csr(&token.token, &key, csr).await.unwrap();
    assert_eq!(svid.spiffe_id().as_str(), token.agent_id);
    let own = admin
        .get_bundle(TrustDomainName {
            trust_domain: TD.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        own.x509_authorities.len(),
        ca.running.authority.bundle().x509_authorities().len()
    );
    ca.running.shutdown().await.unwrap();
    assert!(!socket.exists(), "admin socket removed at shutdown");
}

#[tokio::test]
async fn init_force_replaces_the_root_and_drops_old_intermediates_from_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path()).await;
    let running = warden_ca::server::start(&config(dir.path(), default_ttls(), vec![]))
        .await
        .unwrap();
    let old_root = running.authority.root_cert().clone();
    let old_int = running.authority.intermediates()[0].0.clone();
    running.shutdown().await.unwrap();
    let report = warden_ca::authority::init_ca(&warden_ca::authority::InitOptions {
        trust_domain: td(),
        data_dir: dir.path().to_path_buf(),
        datastore: None,
        upstream: None,
        key_type: warden_ca::authority::KeyType::EcP384,
        root_ttl: std::time::Duration::from_secs(86_400),
        force: true,
    })
    .await
    .unwrap();
    let running = warden_ca::server::start(&config(dir.path(), default_ttls(), vec![]))
        .await
        .unwrap();
    assert_ne!(running.authority.root_cert(), &old_root);
    let ints = running.authority.intermediates();
    assert!(!ints.iter().any(|(s, _)| *s == old_int), "{ints:?}");
    assert_eq!(
        running.authority.bundle().x509_authorities().len(),
        2,
        "new root + new intermediate"
    );
    let recs = running
        .authority
        .datastore()
        .list_ca_records()
        .await
        .unwrap();
    let old = recs.iter().find(|r| r.id == old_int).unwrap();
    assert_eq!(old.state, warden_ca::datastore::CaRecordState::Retired);
    let (_, csr) = key_and_csr(None);
    let s = sign_direct(&running.authority, &csr, "spiffe://example.org/x").unwrap();
    let mut set = warden_identity::BundleSet::new();
    set.insert((*running.authority.bundle()).clone());
    verify_both(&s.cert_chain, &set, &running.authority.root_cert().clone());
    let (_, parsed) = X509Certificate::from_der(running.authority.root_cert()).unwrap();
    assert_eq!(hex::encode(parsed.raw_serial()), report.root_serial);
    running.shutdown().await.unwrap();
}
