//! The local app, over loopback: two pooled hyper clients (HTTP/1.1 keep-alive, and h2c with
//! prior knowledge for HTTP/2 and gRPC requests, multiplexed), connected to the configured app
//! address whatever the request's authority. Bodies and trailers stream through.

use std::net::SocketAddr;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Request, Response, Uri, Version, header};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// How long connecting to the app may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the app did not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppError {
    /// Nothing listens at the app address (502).
    Refused,
    /// Connecting failed otherwise, or the app reset the request (503).
    Unavailable,
}

/// The app and its connection pools.
#[derive(Debug)]
pub(crate) struct App {
    authority: Authority,
    h1: Client<HttpConnector, Incoming>,
    h2: Client<HttpConnector, Incoming>,
}

// === impl App ===

impl App {
    pub(crate) fn new(addr: SocketAddr, idle_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(idle_timeout)
            .pool_max_idle_per_host(usize::MAX)
            .set_host(false);
        let h1 = builder.build(connector.clone());
        builder.http2_only(true);
        let h2 = builder.build(connector);
        let authority = Authority::try_from(addr.to_string())
            .unwrap_or_else(|_| Authority::from_static("127.0.0.1"));
        Self { authority, h1, h2 }
    }

    /// Sends `req` to the app: over h2c when the caller spoke HTTP/2, else HTTP/1.1.
    pub(crate) async fn send(
        &self,
        mut req: Request<Incoming>,
    ) -> Result<Response<Incoming>, AppError> {
        let h2 = req.version() == Version::HTTP_2;
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path);
        *req.uri_mut() = Uri::from_parts(parts).map_err(|_| AppError::Unavailable)?;
        strip_hop_by_hop(req.headers_mut());
        let result = if h2 {
            *req.version_mut() = Version::HTTP_2;
            self.h2.request(req).await
        } else {
            *req.version_mut() = Version::HTTP_11;
            self.h1.request(req).await
        };
        match result {
            Ok(mut resp) => {
                strip_hop_by_hop(resp.headers_mut());
                Ok(resp)
            }
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "app request failed");
                Err(if is_refused(&e) {
                    AppError::Refused
                } else {
                    AppError::Unavailable
                })
            }
        }
    }
}

/// Removes connection-specific headers (RFC 9110 §7.6.1), keeping `te: trailers`, which gRPC
/// needs end to end.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(conn) = headers.get(header::CONNECTION).cloned()
        && let Ok(list) = conn.to_str()
    {
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !name.eq_ignore_ascii_case("te") {
                headers.remove(name);
            }
        }
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if headers
        .get(header::TE)
        .is_some_and(|te| !te.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(header::TE);
    }
}

fn is_refused(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = e.source();
    }
    false
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_but_te_trailers_is_kept() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["te", "x-kept"]);
        let mut h = HeaderMap::new();
        h.insert(header::TE, "gzip".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }
}
