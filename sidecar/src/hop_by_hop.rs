//! Connection-specific headers (RFC 9110 §7.6.1), which a proxy never forwards: those the
//! `Connection` header names, and `Connection`, `Keep-Alive`, `Proxy-Connection`,
//! `Transfer-Encoding`, `Upgrade`, `Proxy-Authenticate`, `Proxy-Authorization`. `TE` stays on a
//! request when it is exactly `trailers`, which gRPC needs end to end; any other `TE`, and any
//! `TE` on a response, goes.

use http::header::{self, HeaderMap, HeaderName};

/// Fields a `Connection` option cannot remove: `TE` (handled below), and what identifies the
/// request and its caller to the app — `Host`, and the `x-forwarded-client-cert` the sidecar
/// sets (a caller's `Connection: x-forwarded-client-cert` would otherwise strip the identity it
/// was allowed under).
const PROTECTED: [HeaderName; 3] = [
    header::TE,
    header::HOST,
    HeaderName::from_static("x-forwarded-client-cert"),
];

/// Removes the connection-specific headers of a request (`request`) or a response.
pub(crate) fn strip(headers: &mut HeaderMap, request: bool) {
    // Most messages carry none of them: one pass over the names decides.
    if !headers.keys().any(is_connection_specific) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !PROTECTED.contains(name))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    let keep_te = request
        && headers
            .get(header::TE)
            .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !keep_te {
        headers.remove(header::TE);
    }
}

fn is_connection_specific(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
        || name == "keep-alive"
        || name == "proxy-connection"
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn names(headers: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-session"),
            ("connection", "x-other, te"),
            ("keep-alive", "timeout=5"),
            ("x-session", "abc"),
            ("x-other", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "basic x"),
            ("te", "trailers"),
            ("x-kept", "1"),
            ("authorization", "bearer kept"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        let mut request = headers.clone();
        strip(&mut request, true);
        assert_eq!(names(&request), ["authorization", "te", "x-kept"]);

        strip(&mut headers, false);
        assert_eq!(names(&headers), ["authorization", "x-kept"]);
    }

    #[test]
    fn connection_cannot_name_host_or_the_client_certificate_header_away() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            (
                "connection",
                "host, x-forwarded-client-cert, X-Forwarded-Client-Cert, x-gone",
            ),
            ("host", "api"),
            ("x-forwarded-client-cert", "By=spiffe://example.org/api"),
            ("x-gone", "1"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        strip(&mut headers, true);
        assert_eq!(names(&headers), ["host", "x-forwarded-client-cert"]);
    }

    #[test]
    fn te_other_than_trailers_is_removed_from_requests() {
        let mut headers = HeaderMap::new();
        headers.insert(header::TE, HeaderValue::from_static("gzip"));
        strip(&mut headers, true);
        assert!(headers.is_empty());
    }

    #[test]
    fn messages_without_connection_specific_headers_are_left_alone() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("1"));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let before = headers.clone();
        strip(&mut headers, true);
        assert_eq!(headers, before);
    }
}
