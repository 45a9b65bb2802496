//! Federation with an `https_web` bundle endpoint (SPIFFE Federation §5.2, rule B-9): the
//! endpoint presents a WebPKI certificate for the URL's host, verified against root
//! certificates, so the first bundle needs nothing out of band. A certificate from another
//! root, one for another host, or no roots at all are refused, naming the problem.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use warden_ca::bundle_endpoint::{WebRoots, fetch_web};
use warden_ca::federation::{Endpoint, Refreshed, Relationship, refresh};

use std::time::Duration;

use warden_ca::config::WebCertFiles;
use warden_ca::server::ServerError;

use crate::federation::{jwt_keys, partner, partner_td};
use crate::support::*;

/// A web PKI root of its own and a certificate for `localhost` from it, as PEM too.
struct WebPki {
    root: CertificateDer<'static>,
    leaf: CertificateDer<'static>,
    leaf_pem: String,
    key: KeyPair,
}

impl WebPki {
    fn new() -> Self {
        let root_key = KeyPair::generate().unwrap();
        let mut root_params = CertificateParams::new(Vec::new()).unwrap();
        // A name of its own: roots of the same name would be taken for one another.
        static ROOTS: AtomicUsize = AtomicUsize::new(0);
        let n = ROOTS.fetch_add(1, Ordering::Relaxed);
        root_params
            .distinguished_name
            .push(DnType::CommonName, format!("test web root {n}"));
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root = root_params.self_signed(&root_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let issuer = rcgen::Issuer::new(root_params, root_key);
        let leaf = leaf_params.signed_by(&key, &issuer).unwrap();
        Self {
            root: root.der().clone(),
            leaf: leaf.der().clone(),
            leaf_pem: leaf.pem(),
            key,
        }
    }

    fn roots(&self) -> WebRoots {
        WebRoots::from_der([self.root.clone()])
    }

    /// Writes the certificate and its key (0600) to `cert` and `key`.
    fn write(&self, cert: &Path, key: &Path) {
        std::fs::write(cert, &self.leaf_pem).unwrap();
        std::fs::write(key, self.key.serialize_pem()).unwrap();
        std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// An HTTPS server with a [`WebPki`] certificate, serving `document` for every request.
struct WebEndpoint {
    addr: SocketAddr,
    pki: WebPki,
}

impl WebEndpoint {
    async fn start(document: String) -> Self {
        let pki = WebPki::new();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![pki.leaf.clone()], key)
        .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let document = Bytes::from(document);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, document) = (acceptor.clone(), document.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |_req| {
                        let body = Full::new(document.clone());
                        async move { Ok::<_, Infallible>(hyper::Response::new(body)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self { addr, pki }
    }

    /// Its URL by the name its certificate carries.
    fn url(&self) -> String {
        format!("https://localhost:{}/", self.addr.port())
    }

    fn roots(&self) -> WebRoots {
        self.pki.roots()
    }
}

#[tokio::test]
async fn an_https_web_endpoint_is_trusted_by_its_webpki_certificate_with_nothing_held_b9() {
    let (partner, _) = partner().await;
    let served = partner.running.authority.bundle();
    let web = WebEndpoint::start(served.to_jwks()).await;
    let rel = Relationship {
        trust_domain: partner_td(),
        url: web.url(),
        endpoint: Endpoint::Web,
    };
    let ours = start_ca().await;
    let own = (*ours.running.authority.bundle()).clone();
    assert!(ours.ds().get_bundle(&partner_td()).await.unwrap().is_none());

    let (what, _) = refresh(&rel, &ours.ds(), &own, Some(&web.roots()))
        .await
        .unwrap();
    assert_eq!(what, Refreshed::Stored);
    let held = ours.ds().get_bundle(&partner_td()).await.unwrap().unwrap();
    assert_eq!(held.x509_authorities(), served.x509_authorities());
    assert_eq!(jwt_keys(&held), jwt_keys(&served));
    let (what, _) = refresh(&rel, &ours.ds(), &own, Some(&web.roots()))
        .await
        .unwrap();
    assert_eq!(what, Refreshed::Unchanged);

    // Without roots for it, it is not fetched.
    let err = refresh(&rel, &ours.ds(), &own, None).await.unwrap_err();
    assert!(err.contains("no root certificates"), "{err}");
}

#[tokio::test]
async fn an_https_web_endpoint_with_an_untrusted_or_misnamed_certificate_is_refused() {
    let (partner, _) = partner().await;
    let web = WebEndpoint::start(partner.running.authority.bundle().to_jwks()).await;
    let other = WebEndpoint::start(String::new()).await;
    let td = partner_td();

    // A certificate from a root not among those given.
    let err = fetch_web(&web.url(), &other.roots(), &td)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tls handshake failed") && err.contains("UnknownIssuer"),
        "{err}"
    );
    // The right root, but a URL host the certificate is not for.
    let by_address = format!("https://127.0.0.1:{}/", web.addr.port());
    let err = fetch_web(&by_address, &web.roots(), &td)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tls handshake failed") && err.contains("not valid for name"),
        "{err}"
    );
    // Trusted, but what it serves is no SPIFFE bundle.
    let err = fetch_web(&other.url(), &other.roots(), &td)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a valid spiffe bundle"), "{err}");
    // And the one that works.
    let (bundle, _) = fetch_web(&web.url(), &web.roots(), &td).await.unwrap();
    assert!(!bundle.is_empty());
}

/// A CA whose bundle endpoint serves `https_web` with the certificate in `dir`'s files (read
/// again every 50 ms when they change).
async fn web_serving_ca(dir: &Path) -> (TestCa, String) {
    let files = WebCertFiles {
        cert_file: dir.join("endpoint.crt"),
        key_file: dir.join("endpoint.key"),
        sync_interval: Duration::from_millis(50),
    };
    let ca = start_ca_for(partner_td(), |c| {
        c.bundle_endpoint_listen = Some("127.0.0.1:0".parse().unwrap());
        c.bundle_endpoint_web = Some(files);
    })
    .await;
    let url = format!(
        "https://localhost:{}/",
        ca.running.bundle_endpoint_addr.unwrap().port()
    );
    (ca, url)
}

/// Polls `fetch_web(url, roots)` until it succeeds (a reload is due), for at most 10 s.
async fn until_served(url: &str, roots: &WebRoots) -> warden_identity::Bundle {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match fetch_web(url, roots, &partner_td()).await {
            Ok((bundle, _)) => return bundle,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_bundle_endpoint_serves_https_web_with_certificate_files_read_again_on_change_b9() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (
        dir.path().join("endpoint.crt"),
        dir.path().join("endpoint.key"),
    );
    let first = WebPki::new();
    first.write(&cert, &key);
    let (ca, url) = web_serving_ca(dir.path()).await;
    let (served, _) = fetch_web(&url, &first.roots(), &partner_td())
        .await
        .unwrap();
    let own = ca.running.authority.bundle();
    assert_eq!(served.x509_authorities(), own.x509_authorities());
    assert_eq!(jwt_keys(&served), jwt_keys(&own));

    // Renewed (as by an ACME client): the new certificate is served once read again.
    let renewed = WebPki::new();
    renewed.write(&cert, &key);
    until_served(&url, &renewed.roots()).await;
    let err = fetch_web(&url, &first.roots(), &partner_td())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("tls handshake failed"), "{err}");

    // A pair that does not go together is not taken: the one in use stays…
    std::fs::write(&cert, &first.leaf_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    until_served(&url, &renewed.roots()).await;
    // …and so it does while the matching key, once written, is open to others…
    std::fs::write(&key, first.key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    until_served(&url, &renewed.roots()).await;
    // …until a chmod (nothing else changes) makes it private: then the new pair is served.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    until_served(&url, &first.roots()).await;
}

#[tokio::test]
async fn bundle_endpoint_certificate_files_that_do_not_load_stop_the_start_naming_why() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ca");
    std::fs::create_dir(&data).unwrap();
    init_for(&data, partner_td()).await;
    let (cert, key) = (
        dir.path().join("endpoint.crt"),
        dir.path().join("endpoint.key"),
    );
    let start = || {
        let mut cfg = config(&data, default_ttls(), Vec::new());
        cfg.bundle_endpoint_listen = Some("127.0.0.1:0".parse().unwrap());
        cfg.bundle_endpoint_web = Some(WebCertFiles {
            cert_file: cert.clone(),
            key_file: key.clone(),
            sync_interval: WebCertFiles::SYNC_INTERVAL,
        });
        async move {
            let err = warden_ca::server::start(&cfg).await.err().unwrap();
            assert!(matches!(err, ServerError::BundleEndpointCert(_)), "{err}");
            err.to_string()
        }
    };
    let err = start().await;
    assert!(
        err.contains("cannot read") && err.contains("endpoint.crt"),
        "{err}"
    );

    let pki = WebPki::new();
    pki.write(&cert, &key);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = start().await;
    assert!(
        err.contains("endpoint.key") && err.contains("0644"),
        "{err}"
    );
    assert!(!err.contains("PRIVATE KEY"), "the key is shown: {err}");

    let other = WebPki::new();
    std::fs::write(&key, other.key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = start().await;
    assert!(err.contains("does not go with the certificate"), "{err}");

    std::fs::write(&cert, "not pem").unwrap();
    let err = start().await;
    assert!(err.contains("holds no certificate"), "{err}");
}
