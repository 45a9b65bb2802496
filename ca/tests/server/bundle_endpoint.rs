//! The SPIFFE bundle endpoint, `https_spiffe` profile (rule B-9): the CA's own bundle for
//! `GET /` over HTTPS with the CA's SVID, no client certificate; and `fetch`, which accepts only
//! the endpoint SPIFFE ID it was given, verified against the bundle it was given.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warden_ca::bundle_endpoint::{FetchError, fetch};
use warden_ca::datastore::ca_spiffe_id;
use warden_identity::Bundle;

use crate::support::*;

async fn serving() -> (TestCa, SocketAddr) {
    let ca = start_ca_configured(|c| {
        c.bundle_endpoint_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let addr = ca.running.bundle_endpoint_addr.unwrap();
    (ca, addr)
}

fn own_bundle(ca: &TestCa) -> Bundle {
    (*ca.running.authority.bundle()).clone()
}

#[tokio::test]
async fn the_bundle_is_served_over_https_with_the_cas_svid_and_no_client_certificate_b9() {
    let (ca, addr) = serving().await;
    let url = format!("https://{addr}/");
    let (bundle, document) = fetch(&url, &ca_spiffe_id(&td()), own_bundle(&ca), &td())
        .await
        .unwrap();
    assert_eq!(
        bundle.x509_authorities(),
        ca.running.authority.bundle().x509_authorities()
    );
    assert!(!bundle.jwt_authorities().is_empty());
    assert_eq!(document, ca.running.authority.bundle().to_jwks().as_bytes());
    // The endpoint is off unless configured.
    assert!(start_ca().await.running.bundle_endpoint_addr.is_none());
}

#[tokio::test]
async fn an_endpoint_with_another_id_or_another_ca_is_refused() {
    let (ca, addr) = serving().await;
    let url = format!("https://{addr}/");
    let other_id = "spiffe://example.org/someone-else".parse().unwrap();
    let err = fetch(&url, &other_id, own_bundle(&ca), &td())
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Exchange { .. }), "{err}");
    assert!(err.to_string().contains("tls handshake failed"), "{err}");
    // Another CA of the same trust domain: its bundle does not verify this one's SVID.
    let stranger = start_ca().await;
    let err = fetch(&url, &ca_spiffe_id(&td()), own_bundle(&stranger), &td())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("tls handshake failed"), "{err}");
    // A bundle of another trust domain cannot authenticate an endpoint of this one.
    let partner = Bundle::new("partner.org".parse().unwrap());
    let err = fetch(&url, &ca_spiffe_id(&td()), partner, &td())
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::WrongTrustBundle { .. }), "{err}");
}

#[tokio::test]
async fn bad_urls_other_paths_and_other_documents_are_errors_naming_the_problem() {
    let (ca, addr) = serving().await;
    let id = ca_spiffe_id(&td());
    for (url, says) in [
        (format!("http://{addr}/"), "https://"),
        (format!("https://user@{addr}/"), "user information"),
    ] {
        let err = fetch(&url, &id, own_bundle(&ca), &td()).await.unwrap_err();
        assert!(matches!(err, FetchError::Url { .. }), "{url}: {err}");
        assert!(err.to_string().contains(says), "{url}: {err}");
    }
    let err = fetch(
        &format!("https://{addr}/other"),
        &id,
        own_bundle(&ca),
        &td(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, FetchError::Status { status, .. } if status == 404),
        "{err}"
    );
    // A peer that does not speak TLS.
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_addr = plain.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = plain.accept().await {
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                .await;
        }
    });
    let err = fetch(
        &format!("https://{plain_addr}/"),
        &id,
        own_bundle(&ca),
        &td(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("tls handshake failed"), "{err}");
}

/// An endpoint SPIFFE ID without a path names no SVID: refused before connecting.
#[tokio::test]
async fn an_endpoint_id_without_a_path_is_refused_naming_why() {
    let (ca, addr) = serving().await;
    let err = fetch(
        &format!("https://{addr}/"),
        &"spiffe://example.org".parse().unwrap(),
        own_bundle(&ca),
        &td(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, FetchError::EndpointId(_)), "{err}");
    assert!(err.to_string().contains("no path"), "{err}");
}

/// One source cannot take every place: past 8 connections from it, more are closed at accept,
/// and once they end it is served again.
#[tokio::test]
async fn connections_from_one_source_are_bounded() {
    let (ca, addr) = serving().await;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // The accept loop has taken them (each waits in its handshake).
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut ninth = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), ninth.read(&mut byte))
        .await
        .expect("the ninth connection was not closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    drop(held);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    fetch(
        &format!("https://{addr}/"),
        &ca_spiffe_id(&td()),
        own_bundle(&ca),
        &td(),
    )
    .await
    .unwrap();
}

/// Only `GET` (and `HEAD`) of `/`: a raw TLS client sending `POST /` gets 405 naming `GET`.
#[tokio::test]
async fn other_methods_get_405() {
    let (ca, addr) = serving().await;
    let mut bundles = warden_identity::BundleSet::new();
    bundles.insert(own_bundle(&ca));
    let verifier = warden_identity::SpiffeServerCertVerifier::new(
        std::sync::Arc::new(warden_identity::SharedBundles::new(bundles)),
        warden_identity::Authorize::Exactly(ca_spiffe_id(&td())),
    );
    let config = rustls::ClientConfig::builder_with_provider(warden_identity::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(verifier))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"POST / HTTP/1.1\r\nhost: ca\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 405"), "{answer}");
    assert!(answer.contains("allow: get, head"), "{answer}");
}
