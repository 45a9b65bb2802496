//! Real mutual TLS handshakes over loopback TCP between the SPIFFE verifiers.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use warden_identity::test_util::TestCa;
use warden_identity::tls::{client_config, server_config};
use warden_identity::{
    Authorize, BundleSet, BundleSource, SharedBundles, SpiffeId, SvidCertResolver, TlsVerifyError,
    TrustDomain, X509Svid, peer_spiffe_id,
};

use crate::support::id;

const HOUR: Duration = Duration::from_secs(3600);
const SERVER: &str = "spiffe://a.org/server";
const CLIENT: &str = "spiffe://a.org/client";
/// Bound on any single handshake in these tests.
const TIMEOUT: Duration = Duration::from_secs(10);

struct Outcome {
    /// The client's SPIFFE ID as the server saw it, or the server's error.
    server: Result<SpiffeId, String>,
    /// The server's SPIFFE ID as the client saw it, or the client's error.
    client: Result<SpiffeId, String>,
    /// The cipher suite the server negotiated, when its handshake completed.
    suite: Option<rustls::CipherSuite>,
}

/// The message of a failed handshake: the verifier's own error when there is one.
fn describe(err: std::io::Error) -> String {
    let verify_error = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .and_then(|e| match e {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
                other.0.downcast_ref::<TlsVerifyError>().cloned()
            }
            _ => None,
        });
    match verify_error {
        Some(verify_error) => verify_error.to_string(),
        None => err.to_string(),
    }
}

fn source(bundles: BundleSet) -> Arc<dyn BundleSource> {
    Arc::new(SharedBundles::new(bundles))
}

/// Runs one handshake (plus a one-byte echo, so TLS 1.3 client-auth failures surface on the
/// client too) between a server and a client config.
async fn handshake(server: rustls::ServerConfig, client: rustls::ClientConfig) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(describe)?;
        let suite = tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite());
        let peer = peer_spiffe_id(tls.get_ref().1.peer_certificates().unwrap_or_default())
            .ok_or_else(|| "no peer spiffe id".to_owned())?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        tls.write_all(&byte).await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((peer, suite))
    });
    let connector = TlsConnector::from(Arc::new(client));
    let client = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        // Any name: the server is identified by its SPIFFE ID, not DNS.
        let name = ServerName::try_from("not-the-server.invalid").unwrap();
        let mut tls = connector.connect(name, tcp).await.map_err(describe)?;
        let peer = peer_spiffe_id(tls.get_ref().1.peer_certificates().unwrap_or_default())
            .ok_or_else(|| "no peer spiffe id".to_owned())?;
        tls.write_all(b"x").await.map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(describe)?;
        Ok::<_, String>(peer)
    };
    let client = tokio::time::timeout(TIMEOUT, client)
        .await
        .expect("client finished in time");
    let server = tokio::time::timeout(TIMEOUT, server_task)
        .await
        .expect("server finished in time")
        .unwrap();
    let suite = server.as_ref().ok().and_then(|(_, suite)| *suite);
    Outcome {
        server: server.map(|(peer, _)| peer),
        client,
        suite,
    }
}

fn resolver(svid: &X509Svid) -> Arc<SvidCertResolver> {
    Arc::new(SvidCertResolver::from_svid(svid).unwrap())
}

fn configs(
    server_svid: &X509Svid,
    client_svid: Option<&X509Svid>,
    bundles: BundleSet,
    server_allows: Authorize,
    client_allows: Authorize,
) -> (rustls::ServerConfig, rustls::ClientConfig) {
    let server = server_config(
        resolver(server_svid),
        source(bundles.clone()),
        server_allows,
    )
    .unwrap();
    let client_resolver = match client_svid {
        Some(svid) => resolver(svid),
        None => Arc::new(SvidCertResolver::new()),
    };
    let client = client_config(client_resolver, source(bundles), client_allows).unwrap();
    (server, client)
}

/// A server and a client SVID of one CA (trust domain `a.org`), and its bundle.
fn one_ca() -> (X509Svid, X509Svid, BundleSet) {
    let ca = TestCa::new("a.org");
    let server_svid = ca.issue_svid(&id(SERVER), HOUR);
    let client_svid = ca.issue_svid(&id(CLIENT), HOUR);
    (server_svid, client_svid, TestCa::bundle_set(&[&ca]))
}

/// Our server and client configs, each accepting any SVID the bundles trust.
fn any_trusted(
    server_svid: &X509Svid,
    client_svid: &X509Svid,
    bundles: &BundleSet,
) -> (rustls::ServerConfig, rustls::ClientConfig) {
    configs(
        server_svid,
        Some(client_svid),
        bundles.clone(),
        Authorize::AnyTrusted,
        Authorize::AnyTrusted,
    )
}

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

#[tokio::test]
async fn mutual_tls_accepts_valid_svids_and_returns_both_peer_ids() {
    let ca = TestCa::new("a.org");
    let server_svid = ca.issue_svid(&id(SERVER), HOUR);
    let client_svid = ca.intermediate().issue_svid(&id(CLIENT), HOUR);
    let (s, c) = configs(
        &server_svid,
        Some(&client_svid),
        TestCa::bundle_set(&[&ca]),
        Authorize::AnyInTrustDomain(td("a.org")),
        Authorize::Exactly(id(SERVER)),
    );
    let outcome = handshake(s, c).await;
    assert_eq!(outcome.server, Ok(id(CLIENT)));
    assert_eq!(outcome.client, Ok(id(SERVER)));
}

#[tokio::test]
async fn tls12_handshake_also_verifies_svids() {
    let (server_svid, client_svid, bundles) = one_ca();
    let (s, _) = any_trusted(&server_svid, &client_svid, &bundles);
    let c = client_with(
        warden_identity::crypto_provider(),
        &rustls::version::TLS12,
        &client_svid,
        bundles,
    );
    let outcome = handshake(s, c).await;
    assert_eq!(outcome.server, Ok(id(CLIENT)));
    assert_eq!(outcome.client, Ok(id(SERVER)));
}

/// A client config of `provider` for one protocol version, presenting `client_svid` and
/// accepting any server SVID the bundles trust.
fn client_with(
    provider: Arc<rustls::crypto::CryptoProvider>,
    version: &'static rustls::SupportedProtocolVersion,
    client_svid: &X509Svid,
    bundles: BundleSet,
) -> rustls::ClientConfig {
    let verifier = Arc::new(warden_identity::SpiffeServerCertVerifier::new(
        source(bundles),
        Authorize::AnyTrusted,
    ));
    rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(resolver(client_svid))
}

/// A client config with rustls's own ring provider, whose suite order puts AES-256-GCM first.
fn client_preferring_aes256(
    client_svid: &X509Svid,
    bundles: BundleSet,
    version: &'static rustls::SupportedProtocolVersion,
) -> rustls::ClientConfig {
    let provider = rustls::crypto::ring::default_provider();
    assert_eq!(
        provider.cipher_suites[0].suite(),
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
        "the client this test needs"
    );
    client_with(Arc::new(provider), version, client_svid, bundles)
}

#[tokio::test]
async fn server_picks_aes_128_gcm_over_a_client_preferring_aes_256() {
    let (server_svid, client_svid, bundles) = one_ca();
    for (version, want) in [
        (
            &rustls::version::TLS13,
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
        ),
        (
            &rustls::version::TLS12,
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
    ] {
        let (s, _) = any_trusted(&server_svid, &client_svid, &bundles);
        let c = client_preferring_aes256(&client_svid, bundles.clone(), version);
        let outcome = handshake(s, c).await;
        assert_eq!(outcome.server, Ok(id(CLIENT)));
        assert_eq!(outcome.suite, Some(want), "{version:?}");
    }
}

#[tokio::test]
async fn our_client_offers_aes_128_gcm_first() {
    let (server_svid, client_svid, bundles) = one_ca();
    let (mut s, c) = any_trusted(&server_svid, &client_svid, &bundles);
    // A server that follows the client's order.
    s.ignore_client_order = false;
    let outcome = handshake(s, c).await;
    assert_eq!(
        outcome.suite,
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );
}

#[tokio::test]
async fn server_rejects_client_from_foreign_trust_domain() {
    let a = TestCa::new("a.org");
    let b = TestCa::new("b.org");
    let server_svid = a.issue_svid(&id(SERVER), HOUR);
    let client_svid = b.issue_svid(&id("spiffe://b.org/client"), HOUR);
    // The client trusts both; the server trusts only a.org.
    let server = server_config(
        resolver(&server_svid),
        source(TestCa::bundle_set(&[&a])),
        Authorize::AnyTrusted,
    )
    .unwrap();
    let client = client_config(
        resolver(&client_svid),
        source(TestCa::bundle_set(&[&a, &b])),
        Authorize::AnyTrusted,
    )
    .unwrap();
    let outcome = handshake(server, client).await;
    let err = outcome.server.unwrap_err();
    assert!(
        err.contains("no x.509 bundle for trust domain `b.org`"),
        "{err}"
    );
    assert!(outcome.client.is_err());
}

#[tokio::test]
async fn server_rejects_client_of_trusted_domain_it_does_not_authorize() {
    let ca = TestCa::new("a.org");
    let server_svid = ca.issue_svid(&id(SERVER), HOUR);
    let client_svid = ca.issue_svid(&id("spiffe://a.org/intruder"), HOUR);
    let (s, c) = configs(
        &server_svid,
        Some(&client_svid),
        TestCa::bundle_set(&[&ca]),
        Authorize::AnyOf(vec![id(CLIENT)]),
        Authorize::AnyTrusted,
    );
    let err = handshake(s, c).await.server.unwrap_err();
    assert!(
        err.contains("`spiffe://a.org/intruder` is not authorized"),
        "{err}"
    );
}

#[tokio::test]
async fn server_rejects_expired_client_svid() {
    let ca = TestCa::new("a.org");
    let server_svid = ca.issue_svid(&id(SERVER), HOUR);
    let now = SystemTime::now();
    let expired = ca.issue_svid_valid(&id(CLIENT), now - 2 * HOUR, now - HOUR);
    let (s, c) = configs(
        &server_svid,
        Some(&expired),
        TestCa::bundle_set(&[&ca]),
        Authorize::AnyTrusted,
        Authorize::AnyTrusted,
    );
    let err = handshake(s, c).await.server.unwrap_err();
    assert!(err.to_lowercase().contains("expired"), "{err}");
}

#[tokio::test]
async fn server_rejects_client_without_certificate() {
    let ca = TestCa::new("a.org");
    let server_svid = ca.issue_svid(&id(SERVER), HOUR);
    let (s, c) = configs(
        &server_svid,
        None,
        TestCa::bundle_set(&[&ca]),
        Authorize::AnyTrusted,
        Authorize::AnyTrusted,
    );
    let err = handshake(s, c).await.server.unwrap_err();
    assert!(err.contains("peer sent no certificates"), "{err}");
}

#[tokio::test]
async fn client_rejects_server_with_unexpected_spiffe_id() {
    let ca = TestCa::new("a.org");
    let server_svid = ca.issue_svid(&id("spiffe://a.org/not-the-server"), HOUR);
    let client_svid = ca.issue_svid(&id(CLIENT), HOUR);
    let (s, c) = configs(
        &server_svid,
        Some(&client_svid),
        TestCa::bundle_set(&[&ca]),
        Authorize::AnyTrusted,
        Authorize::Exactly(id(SERVER)),
    );
    let outcome = handshake(s, c).await;
    let err = outcome.client.unwrap_err();
    assert!(
        err.contains("`spiffe://a.org/not-the-server` is not authorized"),
        "{err}"
    );
    assert!(outcome.server.is_err());
}

#[tokio::test]
async fn rotated_svid_and_bundles_apply_to_the_next_handshake() {
    let old_ca = TestCa::new("a.org");
    let new_ca = TestCa::new("a.org");
    let server_resolver = resolver(&old_ca.issue_svid(&id(SERVER), HOUR));
    let bundles = Arc::new(SharedBundles::new(TestCa::bundle_set(&[&old_ca])));
    let client_svid = old_ca.issue_svid(&id(CLIENT), HOUR);
    let make = |server_resolver: &Arc<SvidCertResolver>| {
        let s = server_config(
            server_resolver.clone(),
            bundles.clone(),
            Authorize::AnyTrusted,
        )
        .unwrap();
        let c = client_config(
            resolver(&client_svid),
            bundles.clone(),
            Authorize::AnyTrusted,
        )
        .unwrap();
        (s, c)
    };
    let (s, c) = make(&server_resolver);
    assert_eq!(handshake(s, c).await.client, Ok(id(SERVER)));

    // The server rotates to an SVID from a CA the bundle does not hold yet: refused.
    server_resolver
        .set(&new_ca.issue_svid(&id("spiffe://a.org/server-v2"), HOUR))
        .unwrap();
    let (s, c) = make(&server_resolver);
    assert!(handshake(s, c).await.client.is_err());

    // The bundle gains the new root (old one kept for the client): accepted, new ID seen.
    let mut both = old_ca.bundle();
    both.add_x509_authority(new_ca.root_cert().clone());
    bundles.set([both].into_iter().collect());
    let (s, c) = make(&server_resolver);
    assert_eq!(
        handshake(s, c).await.client,
        Ok(id("spiffe://a.org/server-v2"))
    );
}

#[tokio::test]
async fn reconnecting_client_is_accepted_again_until_its_ca_leaves_the_bundle_no_resumption() {
    let ca = TestCa::new("a.org");
    let other = TestCa::new("a.org");
    let server_bundles = Arc::new(SharedBundles::new(TestCa::bundle_set(&[&ca])));
    // One server config, so every handshake goes through the same verifier (and its cache of
    // accepted chains).
    let server = server_config(
        resolver(&ca.issue_svid(&id(SERVER), HOUR)),
        server_bundles.clone(),
        Authorize::AnyTrusted,
    )
    .unwrap();
    // The configs as built, resumption included: a resumed session would skip verification,
    // so `server_config`/`client_config` turn it off and this test sees full handshakes.
    let client = client_config(
        resolver(&ca.issue_svid(&id(CLIENT), HOUR)),
        source(TestCa::bundle_set(&[&ca])),
        Authorize::AnyTrusted,
    )
    .unwrap();
    for _ in 0..3 {
        let outcome = handshake(server.clone(), client.clone()).await;
        assert_eq!(outcome.server, Ok(id(CLIENT)));
    }
    // The server's bundle no longer holds the client's CA: the same chain is refused at once.
    server_bundles.set(TestCa::bundle_set(&[&other]));
    let outcome = handshake(server.clone(), client.clone()).await;
    let err = outcome.server.unwrap_err();
    assert!(err.contains("rejected"), "{err}");
    // And stays refused; back in the bundle, accepted again.
    assert!(
        handshake(server.clone(), client.clone())
            .await
            .server
            .is_err()
    );
    server_bundles.set(TestCa::bundle_set(&[&ca]));
    assert_eq!(
        handshake(server.clone(), client.clone()).await.server,
        Ok(id(CLIENT))
    );
}

#[test]
fn empty_resolver_fails_closed() {
    let resolver = SvidCertResolver::new();
    assert!(resolver.current().is_none());
    assert!(!rustls::client::ResolvesClientCert::has_certs(&resolver));
}

#[test]
fn bundle_sources_serve_the_latest_bundles() {
    let a = TestCa::new("a.org");
    let b = TestCa::new("b.org");
    let shared = SharedBundles::new(TestCa::bundle_set(&[&a]));
    assert!(shared.bundles().get(&td("a.org")).is_some());
    shared.set(TestCa::bundle_set(&[&b]));
    assert!(shared.bundles().get(&td("a.org")).is_none());
    assert!(shared.bundles().get(&td("b.org")).is_some());

    let (tx, rx) = tokio::sync::watch::channel(Arc::new(TestCa::bundle_set(&[&a])));
    assert_eq!(BundleSource::bundles(&rx).len(), 1);
    tx.send(Arc::new(TestCa::bundle_set(&[&a, &b]))).unwrap();
    assert_eq!(BundleSource::bundles(&rx).len(), 2);
}
