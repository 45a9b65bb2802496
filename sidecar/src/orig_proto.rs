//! HTTP/1.1 carried over HTTP/2 between two sidecars, as Linkerd's proxies do it (its
//! `l5d-orig-proto`): an outbound route with `http1_upstream = "h2"` sends its local HTTP/1.x
//! requests over the route's one shared HTTP/2 connection, marked `warden-orig-proto:
//! HTTP/1.1`; the inbound sidecar takes the mark off before anything decides on the request and
//! hands such a request to its app as HTTP/1.1, as it would have come. Many requests then share
//! each TLS record and system call between the two sidecars, where HTTP/1.1 needs a connection
//! per request in flight.
//!
//! The mark only chooses how the inbound reaches its app: a caller that sets it gets nothing it
//! could not get by speaking HTTP/1.1. The outbound removes any local one, so only it marks.

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Version};

/// The header that marks an HTTP/1.x request carried over HTTP/2.
pub(crate) const NAME: HeaderName = HeaderName::from_static("warden-orig-proto");
/// Its one value.
const HTTP1: &str = "HTTP/1.1";

/// Tells the inbound's HTTP/2 path that a request came as HTTP/1.x (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OrigHttp1;

/// Outbound: turns a local HTTP/1.x request, whose target is already absolute (`https://` and
/// the authority from its target or `Host`), into the marked HTTP/2 request. `Host` goes: its
/// value is the target's authority, which HTTP/2 carries as `:authority`.
pub(crate) fn mark<B>(req: &mut Request<B>) {
    req.headers_mut().remove(header::HOST);
    // The only `TE` HTTP/2 carries is `trailers`, in lowercase: the connection-specific header
    // pass kept a `TE` only when it is that word in some letter case.
    if req.headers().contains_key(header::TE) {
        req.headers_mut()
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    req.headers_mut()
        .insert(NAME, HeaderValue::from_static(HTTP1));
    *req.version_mut() = Version::HTTP_2;
}

/// Inbound: takes the mark off `req`. An HTTP/2 request marked `HTTP/1.1` gets the
/// [`OrigHttp1`] extension; an HTTP/1.x request's mark is dropped (it already comes as what it
/// is). `Err` names what is wrong: a mark other than `HTTP/1.1` (any letter case), or more
/// than one.
pub(crate) fn take<B>(req: &mut Request<B>) -> Result<(), String> {
    // Most requests carry no mark: one lookup decides.
    if !req.headers().contains_key(NAME) {
        return Ok(());
    }
    let mut values = req.headers().get_all(NAME).iter();
    let first = values.next().map(|v| v.as_bytes().to_vec());
    let more = values.next().is_some();
    req.headers_mut().remove(NAME);
    if more {
        return Err(format!("more than one `{NAME}` header"));
    }
    let value = first.unwrap_or_default();
    if !value.eq_ignore_ascii_case(HTTP1.as_bytes()) {
        return Err(format!(
            "header `{NAME}` is {:?}, not `{HTTP1}`",
            String::from_utf8_lossy(&value)
        ));
    }
    if req.version() == Version::HTTP_2 {
        req.extensions_mut().insert(OrigHttp1);
    }
    Ok(())
}

/// Whether the inbound is to send `req` to its app as HTTP/1.1 because it came so.
pub(crate) fn is_http1<B>(req: &Request<B>) -> bool {
    req.extensions().get::<OrigHttp1>().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h2(marks: &[&str]) -> Request<()> {
        let mut b = Request::builder()
            .version(Version::HTTP_2)
            .uri("https://api.example:8443/x");
        for m in marks {
            b = b.header(NAME, *m);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn mark_sets_the_header_and_http2_and_drops_host() {
        let mut req = Request::builder()
            .version(Version::HTTP_11)
            .uri("https://api.example:8443/x?q=1")
            .header(header::HOST, "api.example:8443")
            .header(header::TE, "Trailers")
            .header("accept", "*/*")
            .body(())
            .unwrap();
        mark(&mut req);
        assert_eq!(req.version(), Version::HTTP_2);
        assert_eq!(req.headers()[NAME], "HTTP/1.1");
        assert!(!req.headers().contains_key(header::HOST));
        assert_eq!(req.uri().authority().unwrap(), "api.example:8443");
        assert_eq!(req.headers()["accept"], "*/*");
        assert_eq!(req.headers()[header::TE], "trailers");
    }

    #[test]
    fn a_marked_http2_request_is_sent_as_http1_and_loses_the_mark() {
        for value in ["HTTP/1.1", "http/1.1"] {
            let mut req = h2(&[value]);
            take(&mut req).unwrap();
            assert!(is_http1(&req), "{value}");
            assert!(!req.headers().contains_key(NAME));
        }
    }

    #[test]
    fn an_unmarked_request_is_left_alone() {
        let mut req = h2(&[]);
        take(&mut req).unwrap();
        assert!(!is_http1(&req));
    }

    #[test]
    fn an_http1_request_loses_a_mark_without_the_extension() {
        let mut req = Request::builder()
            .version(Version::HTTP_11)
            .uri("/x")
            .header(NAME, "HTTP/1.1")
            .body(())
            .unwrap();
        take(&mut req).unwrap();
        assert!(!is_http1(&req));
        assert!(!req.headers().contains_key(NAME));
    }

    #[test]
    fn a_bad_or_repeated_mark_is_named_and_removed() {
        let mut req = h2(&["HTTP/2"]);
        let err = take(&mut req).unwrap_err();
        assert!(
            err.contains("warden-orig-proto") && err.contains("HTTP/2"),
            "{err}"
        );
        assert!(!is_http1(&req));
        assert!(!req.headers().contains_key(NAME));

        let mut req = h2(&["HTTP/1.1", "HTTP/1.1"]);
        let err = take(&mut req).unwrap_err();
        assert!(err.contains("more than one"), "{err}");
        assert!(!is_http1(&req));
    }
}
