//! HTTP/1.1 upgrades (WebSocket and any other `Upgrade` protocol) through either listener.
//!
//! An upgrade request is decided and forwarded like any other request, except that `Upgrade`
//! and `Connection: upgrade` are passed on (every other connection-specific header is still
//! removed) and it goes over a connection of its own. When the other side answers
//! `101 Switching Protocols`, the 101 goes back with its `Upgrade` header, and the two
//! connections become one tunnel ([`tunnel`]): bytes copied both ways until either side
//! closes, nothing moves for the idle timeout, or the sidecar stops. Any other answer is an
//! ordinary response, and the caller's connection stays HTTP.
//!
//! The tunnel runs in the task of the caller's connection, after hyper has handed the
//! connection over ([`Tunnel`] carries it from the request's handler to that task), so that it
//! still counts against the connection limit and is closed on stop like the connection was.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::hop_by_hop;
use crate::idle::IdleIo;

/// A tunnel to run: both sides of an upgraded connection, joined.
pub(crate) type TunnelFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where a request's handler leaves the tunnel its upgrade opened, for the connection's task.
#[derive(Clone, Default)]
pub(crate) struct Tunnel(Arc<Mutex<Option<TunnelFuture>>>);

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tunnel")
    }
}

impl Tunnel {
    /// Leaves the tunnel joining `caller` (the caller's side, once hyper hands it over) and
    /// `upstream` (the app's or the upstream's side of the 101); it is closed early when
    /// `revoked` completes.
    pub(crate) fn open(
        &self,
        caller: OnUpgrade,
        upstream: OnUpgrade,
        idle_timeout: Duration,
        revoked: impl Future<Output = ()> + Send + 'static,
    ) {
        let tunnel = Box::pin(async move {
            tokio::select! {
                () = tunnel(caller, upstream, idle_timeout) => {}
                () = revoked => {}
            }
        });
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(tunnel);
    }

    /// The tunnel a request opened on this connection, if any.
    pub(crate) fn take(&self) -> Option<TunnelFuture> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Whether `req` asks to switch protocols: HTTP/1.1 with an `Upgrade` header and `upgrade`
/// among its `Connection` options (RFC 9110 §7.8). HTTP/2 has no such mechanism.
///
/// Never to `h2c`: an HTTP/2 connection tunnelled after one decision would carry requests the
/// sidecar never decides. Such a request goes on as an ordinary one, its `Upgrade` removed (RFC
/// 9113 §3.1 deprecates the mechanism anyway).
pub(crate) fn is_upgrade<B>(req: &Request<B>) -> bool {
    let headers = req.headers();
    req.version() == Version::HTTP_11
        && req.method() != Method::CONNECT
        && headers.contains_key(header::UPGRADE)
        && !tokens(headers, header::UPGRADE).any(|p| {
            // `h2c`, with or without a version (`h2c/1`): compared by name.
            p.split('/')
                .next()
                .is_some_and(|name| name.trim().eq_ignore_ascii_case("h2c"))
        })
        && tokens(headers, header::CONNECTION).any(|option| option.eq_ignore_ascii_case("upgrade"))
}

/// The comma-separated elements of every `name` header, trimmed.
fn tokens(headers: &HeaderMap, name: header::HeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Removes the connection-specific headers of an upgrade request or of a 101 response, except
/// `Upgrade`, which is passed on with `Connection: upgrade`. A request's protocols are
/// lowercased: they are case-insensitive (RFC 9110 §7.8), and a policy forbidding
/// `{name: "upgrade", value: "websocket"}` must see `WebSocket` as that.
pub(crate) fn strip_keeping_upgrade(headers: &mut HeaderMap, request: bool) {
    let upgrade: Vec<HeaderValue> = headers
        .get_all(header::UPGRADE)
        .iter()
        .map(|v| match v.to_str() {
            Ok(text) if request && text.bytes().any(|b| b.is_ascii_uppercase()) => {
                HeaderValue::from_str(&text.to_ascii_lowercase()).unwrap_or_else(|_| v.clone())
            }
            _ => v.clone(),
        })
        .collect();
    hop_by_hop::strip(headers, request);
    if upgrade.is_empty() {
        return;
    }
    for value in upgrade {
        headers.append(header::UPGRADE, value);
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// Copies bytes both ways between the two upgraded connections until both directions have
/// ended (a side that closes gets the other side's write half shut down once its bytes are
/// written), or nothing has moved for `idle_timeout`.
async fn tunnel(caller: OnUpgrade, upstream: OnUpgrade, idle_timeout: Duration) {
    let (caller, upstream) = tokio::join!(caller, upstream);
    let (caller, upstream) = match (caller, upstream) {
        (Ok(caller), Ok(upstream)) => (caller, upstream),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let (mut caller, activity) = IdleIo::new(TokioIo::new(caller));
    let mut upstream = TokioIo::new(upstream);
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut caller, &mut upstream) => match copied {
            Ok((up, down)) => tracing::debug!(bytes.up = up, bytes.down = down, "upgraded connection closed"),
            Err(e) => tracing::debug!(error = %e, "upgraded connection ended with an error"),
        },
        () = activity.expired(idle_timeout) => tracing::debug!("upgraded connection idle; closing"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut req = Request::builder().version(version).uri("/chat");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(()).unwrap()
    }

    #[test]
    fn upgrade_needs_http11_the_header_and_the_connection_option() {
        let both = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ];
        assert!(is_upgrade(&request(Version::HTTP_11, &both)));
        assert!(!is_upgrade(&request(Version::HTTP_10, &both)));
        assert!(!is_upgrade(&request(Version::HTTP_2, &both)));
        assert!(!is_upgrade(&request(
            Version::HTTP_11,
            &[("upgrade", "websocket")]
        )));
        assert!(!is_upgrade(&request(
            Version::HTTP_11,
            &[("connection", "upgrade")]
        )));
    }

    #[test]
    fn h2c_is_never_an_upgrade_the_sidecar_tunnels() {
        for protocol in ["h2c", "H2C", "websocket, h2c", "h2c/1"] {
            let req = request(
                Version::HTTP_11,
                &[
                    ("connection", "upgrade, http2-settings"),
                    ("upgrade", protocol),
                ],
            );
            assert!(!is_upgrade(&req), "{protocol}");
            // Forwarded as an ordinary request: the upgrade offer is removed.
            let mut headers = req.headers().clone();
            hop_by_hop::strip(&mut headers, true);
            assert!(headers.is_empty(), "{headers:?}");
        }
        let websocket = request(
            Version::HTTP_11,
            &[("connection", "upgrade"), ("upgrade", "websocket")],
        );
        assert!(is_upgrade(&websocket));
    }

    #[test]
    fn only_upgrade_survives_among_connection_specific_headers() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "upgrade, x-private"),
            ("upgrade", "websocket"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        strip_keeping_upgrade(&mut headers, true);
        let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["connection", "sec-websocket-key", "upgrade"]);
        assert_eq!(headers[header::CONNECTION], "upgrade");
        assert_eq!(headers[header::UPGRADE], "websocket");

        let mut plain = HeaderMap::new();
        plain.insert("connection", HeaderValue::from_static("close"));
        strip_keeping_upgrade(&mut plain, false);
        assert!(plain.is_empty());
    }

    #[test]
    fn a_requests_upgrade_protocols_are_lowercased_and_a_responses_kept() {
        let headers = || {
            let mut h = HeaderMap::new();
            h.append("connection", HeaderValue::from_static("Upgrade"));
            h.append("upgrade", HeaderValue::from_static("WebSocket"));
            h.append("upgrade", HeaderValue::from_static("Echo/1"));
            h
        };
        let mut request = headers();
        strip_keeping_upgrade(&mut request, true);
        let protocols: Vec<_> = request.get_all(header::UPGRADE).iter().collect();
        assert_eq!(protocols, ["websocket", "echo/1"]);
        let mut response = headers();
        strip_keeping_upgrade(&mut response, false);
        let protocols: Vec<_> = response.get_all(header::UPGRADE).iter().collect();
        assert_eq!(protocols, ["WebSocket", "Echo/1"]);
    }
}
