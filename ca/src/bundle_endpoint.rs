//! The SPIFFE bundle endpoint, `https_spiffe` profile (SPIFFE Federation §5, rule B-9): the
//! trust domain's bundle (a SPIFFE JWK set, `application/json`) for `GET /` over HTTPS, the
//! server authenticated by the CA's own X.509-SVID (`spiffe://<td>/warden/ca`, the endpoint
//! SPIFFE ID a federating peer configures), no client authentication. [`fetch`] is the other
//! side: a federating peer's bundle, read from its endpoint and checked against the bundle
//! already held for the endpoint's trust domain.
//!
//! Anyone may connect: connections are bounded in number ([`MAX_CONNECTIONS`], and
//! [`MAX_PER_SOURCE`] from one source) and in time (handshake and request head within
//! [`REQUEST_TIMEOUT`] each), and each carries one request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use warden_api::transport::PerSource;
use warden_identity::{
    Authorize, Bundle, BundleSet, SharedBundles, SpiffeId, SpiffeServerCertVerifier,
    SvidCertResolver, TrustDomain, crypto_provider,
};

use crate::authority::Authority;

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
/// CA's own SVID from `resolver` (rotated by the server loop), no client certificate asked for.
pub(crate) fn server_config(
    resolver: Arc<SvidCertResolver>,
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

/// Why a bundle could not be fetched from an endpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The endpoint URL is not an `https://host[:port][/path]` URL.
    #[error("invalid bundle endpoint url `{url}`: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The endpoint SPIFFE ID has no path: no X.509-SVID can carry it.
    #[error(
        "the endpoint spiffe id `{0}` has no path: an endpoint presents an x.509-svid, whose id has one (e.g. `{0}/warden/ca`)"
    )]
    EndpointId(SpiffeId),
    /// The bundle that authenticates the endpoint is for another trust domain.
    #[error(
        "the bundle given to authenticate the endpoint is for `{bundle}`, but the endpoint's spiffe id `{endpoint_id}` is in `{expected}`"
    )]
    WrongTrustBundle {
        /// The bundle's trust domain.
        bundle: TrustDomain,
        /// The endpoint SPIFFE ID.
        endpoint_id: SpiffeId,
        /// Its trust domain.
        expected: TrustDomain,
    },
    /// Connecting, the TLS handshake (the endpoint's SVID did not verify, or is not the
    /// endpoint SPIFFE ID) or the HTTP exchange failed.
    #[error("cannot fetch the bundle from `{url}`: {reason}")]
    Exchange {
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The endpoint answered with another status than 200.
    #[error("the bundle endpoint `{url}` answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: StatusCode,
    },
    /// The document is not a valid SPIFFE bundle for the trust domain.
    #[error("the bundle from `{url}` is not a valid spiffe bundle for `{trust_domain}`: {reason}")]
    Bundle {
        /// The URL.
        url: String,
        /// The trust domain it was fetched for.
        trust_domain: TrustDomain,
        /// What is wrong.
        reason: String,
    },
}

/// Fetches `trust_domain`'s bundle from the endpoint at `url` (`https_spiffe` profile): the
/// server must present an X.509-SVID for exactly `endpoint_id` that verifies against `trust`,
/// the bundle already held for `endpoint_id`'s trust domain. Returns the bundle and the
/// document as received.
pub async fn fetch(
    url: &str,
    endpoint_id: &SpiffeId,
    trust: Bundle,
    trust_domain: &TrustDomain,
) -> Result<(Bundle, Bytes), FetchError> {
    check_endpoint_id(endpoint_id)?;
    let expected = endpoint_id.trust_domain();
    if *trust.trust_domain() != expected {
        return Err(FetchError::WrongTrustBundle {
            bundle: trust.trust_domain().clone(),
            endpoint_id: endpoint_id.clone(),
            expected,
        });
    }
    let target = Target::parse(url)?;
    let exchange = |reason: String| FetchError::Exchange {
        url: url.to_owned(),
        reason,
    };
    let mut bundles = BundleSet::new();
    bundles.insert(trust);
    let verifier = SpiffeServerCertVerifier::new(
        Arc::new(SharedBundles::new(bundles)),
        Authorize::Exactly(endpoint_id.clone()),
    );
    let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| exchange(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let body = tokio::time::timeout(FETCH_TIMEOUT, get(&target, Arc::new(config)))
        .await
        .map_err(|_| exchange(format!("no answer within {FETCH_TIMEOUT:?}")))?
        .map_err(|e| match e {
            Got::Status(status) => FetchError::Status {
                url: url.to_owned(),
                status,
            },
            Got::Failed(reason) => exchange(reason),
        })?;
    let bundle =
        Bundle::from_jwks(trust_domain.clone(), &body).map_err(|e| FetchError::Bundle {
            url: url.to_owned(),
            trust_domain: trust_domain.clone(),
            reason: e.to_string(),
        })?;
    Ok((bundle, body))
}

/// Checks that `id` can name a bundle endpoint: an X.509-SVID's ID, so one with a path.
pub fn check_endpoint_id(id: &SpiffeId) -> Result<(), FetchError> {
    if id.path().is_empty() {
        return Err(FetchError::EndpointId(id.clone()));
    }
    Ok(())
}

/// Checks that `url` is an endpoint URL [`fetch`] takes: `https://host[:port][/path]`.
pub fn check_url(url: &str) -> Result<(), FetchError> {
    Target::parse(url).map(drop)
}

/// Where an endpoint URL points.
struct Target {
    host: String,
    port: u16,
    path: String,
    authority: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, FetchError> {
        let bad = |reason| FetchError::Url {
            url: url.to_owned(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a url"))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("the https_spiffe profile needs an `https://` url"));
        }
        let authority = uri.authority().ok_or(bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user information is not allowed"));
        }
        let bracketed = authority.host();
        let host = bracketed.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        // `http` does not check the port: text after the host that is not a port number would
        // otherwise mean 443.
        let port = match authority.as_str().strip_prefix(bracketed) {
            Some("") => 443,
            Some(rest) => match rest.strip_prefix(':').map(str::parse::<u16>) {
                Some(Ok(port)) if port > 0 => port,
                _ => return Err(bad("the port is not a number from 1 to 65535")),
            },
            None => return Err(bad("no host")),
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            authority: authority.as_str().to_owned(),
        })
    }
}

/// How a GET went short of a body.
enum Got {
    Status(StatusCode),
    Failed(String),
}

/// GETs `target` over TLS with `config`; the body of a 200, at most [`MAX_BUNDLE_BYTES`].
async fn get(target: &Target, config: Arc<rustls::ClientConfig>) -> Result<Bytes, Got> {
    let failed = |what: &str, e: &dyn std::fmt::Display| Got::Failed(format!("{what}: {e}"));
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| failed("cannot connect", &e))?;
    let server_name = rustls::pki_types::ServerName::try_from(target.host.clone())
        .map_err(|e| failed("invalid host name", &e))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|e| failed("tls handshake failed", &e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| failed("http handshake failed", &e))?;
    let driver = tokio::spawn(conn);
    let req = Request::get(target.path.as_str())
        .header(header::HOST, target.authority.as_str())
        .header(header::ACCEPT, "application/json")
        .body(Full::new(Bytes::new()))
        .map_err(|e| failed("invalid request", &e))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| failed("request failed", &e))?;
    if resp.status() != StatusCode::OK {
        driver.abort();
        return Err(Got::Status(resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_BUNDLE_BYTES)
        .collect()
        .await
        .map_err(|e| failed("cannot read the bundle", &e))?
        .to_bytes();
    driver.abort();
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls_are_https_with_a_host() {
        let t = Target::parse("https://ca.partner.org:8443/bundle?x=1")
            .ok()
            .unwrap();
        assert_eq!((t.host.as_str(), t.port), ("ca.partner.org", 8443));
        assert_eq!(t.path, "/bundle?x=1");
        assert_eq!(t.authority, "ca.partner.org:8443");
        let t = Target::parse("https://[::1]").ok().unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 443, "/")
        );
        for (url, reason) in [
            ("http://ca.partner.org/", "https://"),
            ("ca.partner.org", "https://"),
            ("https://user@ca.partner.org/", "user information"),
            ("https://ca.partner.org:84430/", "port"),
            ("https://ca.partner.org:8443x/", "port"),
            ("https://ca.partner.org:0/", "port"),
            ("not a url", "not a url"),
        ] {
            let err = Target::parse(url).err().unwrap().to_string();
            assert!(err.contains(reason), "{url}: {err}");
        }
    }
}
