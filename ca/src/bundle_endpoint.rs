//! The SPIFFE bundle endpoint, `https_spiffe` profile (SPIFFE Federation §5, rule B-9): the
//! trust domain's bundle (a SPIFFE JWK set, `application/json`) for `GET /` over HTTPS, the
//! server authenticated by the CA's own X.509-SVID (`spiffe://<td>/warden/ca`, the endpoint
//! SPIFFE ID a federating peer configures), no client authentication. [`fetch`] and
//! [`fetch_web`] are the other side (`fetch.rs`): a federating peer's bundle, read from its
//! endpoint of either profile.
//!
//! Anyone may connect: connections are bounded in number ([`MAX_CONNECTIONS`], and
//! [`MAX_PER_SOURCE`] from one source) and in time (handshake and request head within
//! [`REQUEST_TIMEOUT`] each), and each carries one request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use warden_api::transport::PerSource;
use warden_identity::crypto_provider;

use crate::authority::Authority;

mod fetch;
mod web_cert;

pub use fetch::{FetchError, WebRoots, check_endpoint_id, check_url, fetch, fetch_web};
pub(crate) use web_cert::FileCert;

/// Most connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 256;
/// Most connections served at once from one source (an IPv4 address, an IPv6 /64), so that
/// one host cannot take every place from the peers that fetch.
pub const MAX_PER_SOURCE: usize = 8;
/// Time for the TLS handshake, and then for the request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest bundle document [`fetch`] reads.
pub const MAX_BUNDLE_BYTES: usize = 1024 * 1024;
/// Time [`fetch`] gives the whole exchange.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// The endpoint's TLS: TLS 1.2 or 1.3 (federating peers are other SPIFFE implementations), the
/// certificate from `resolver` (the CA's own SVID, rotated by the server loop, for
/// `https_spiffe`; a [`FileCert`] for `https_web`), no client certificate asked for.
pub(crate) fn server_config(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves the endpoint on `listener` until `stop` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    authority: Arc<Authority>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_source = Arc::new(PerSource::default());
    let stopped = async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    tokio::pin!(stopped);
    loop {
        let (tcp, remote) = tokio::select! {
            () = &mut stopped => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "bundle endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (Ok(slot), Some(from_source)) = (
            Arc::clone(&slots).try_acquire_owned(),
            per_source.enter(remote.ip(), MAX_PER_SOURCE),
        ) else {
            tracing::debug!(peer = %remote, "bundle endpoint: connection limit reached");
            continue;
        };
        let acceptor = acceptor.clone();
        let authority = Arc::clone(&authority);
        tokio::spawn(async move {
            let _slots = (slot, from_source);
            serve_connection(acceptor, tcp, remote, authority).await;
        });
    }
}

async fn serve_connection(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
    authority: Arc<Authority>,
) {
    let tls = match tokio::time::timeout(REQUEST_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(peer = %remote, error = %e, "bundle endpoint: tls handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %remote, "bundle endpoint: tls handshake timed out");
            return;
        }
    };
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let authority = Arc::clone(&authority);
        async move { Ok::<_, Infallible>(answer(&req, &authority)) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(tls), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(peer = %remote, error = %e, "bundle endpoint: connection failed");
    }
}

/// `GET /`: the bundle; anything else an error status with a one-line reason.
fn answer(req: &Request<Incoming>, authority: &Authority) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    };
    if req.uri().path() != "/" {
        return plain(StatusCode::NOT_FOUND, "not found: the bundle is at /\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        resp.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let mut resp = Response::new(Full::new(Bytes::from(authority.bundle().to_jwks())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}
