//! Federation with an `https_web` bundle endpoint (SPIFFE Federation §5.2, rule B-9): the
//! endpoint presents a WebPKI certificate for the URL's host, verified against root
//! certificates, so the first bundle needs nothing out of band. A certificate from another
//! root, one for another host, or no roots at all are refused, naming the problem.

use std::convert::Infallible;
use std::net::SocketAddr;
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

use crate::federation::{jwt_keys, partner, partner_td};
use crate::support::*;

/// A web PKI root and an HTTPS server with a certificate for `localhost` from it, serving
/// `document` for every request.
struct WebEndpoint {
    addr: SocketAddr,
    root: CertificateDer<'static>,
}

impl WebEndpoint {
    async fn start(document: String) -> Self {
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
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let issuer = rcgen::Issuer::new(root_params, root_key);
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
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
        Self {
            addr,
            root: root.der().clone(),
        }
    }

    /// Its URL by the name its certificate carries.
    fn url(&self) -> String {
        format!("https://localhost:{}/", self.addr.port())
    }

    fn roots(&self) -> WebRoots {
        WebRoots::from_der([self.root.clone()])
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
