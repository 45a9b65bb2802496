//! Connection-specific headers (RFC 9110 §7.6.1), which a proxy never forwards: those the
//! `Connection` header names, and `Connection`, `Keep-Alive`, `Proxy-Connection`,
//! `Transfer-Encoding`, `Upgrade`, `Proxy-Authenticate`, `Proxy-Authorization`. `TE` stays on a
//! request when it is exactly `trailers`, which gRPC needs end to end; any other `TE`, and any
//! `TE` on a response, goes.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Fields a `Connection` option cannot remove: `TE` (handled below), and what identifies the
/// request and its caller to the app — `Host`, and the `x-forwarded-client-cert` the sidecar
/// sets (a caller's `Connection: x-forwarded-client-cert` would otherwise strip the identity it
/// was allowed under).
const PROTECTED: [HeaderName; 3] = [header::TE, header::HOST, XFCC];

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

/// Whether `name` is `x-forwarded-client-cert` in any spelling a server may take for it: any
/// letter case, and `_` for any `-`. Servers that turn header names into CGI-style variables
/// (`HTTP_X_FORWARDED_CLIENT_CERT`) merge `x_forwarded_client_cert` with the real one, so a
/// caller could otherwise add to the identity the sidecar vouches for (the bug class of Puma's
/// CVE-2024-45614; Envoy's `headers_with_underscores_action` exists for it).
pub(crate) fn is_xfcc_name(name: &[u8]) -> bool {
    const XFCC_BYTES: &[u8] = b"x-forwarded-client-cert";
    name.len() == XFCC_BYTES.len()
        && name
            .iter()
            .zip(XFCC_BYTES)
            .all(|(&got, &want)| got.eq_ignore_ascii_case(&want) || (want == b'-' && got == b'_'))
}

/// Removes every header [`is_xfcc_name`] matches.
pub(crate) fn remove_xfcc(headers: &mut HeaderMap) {
    headers.remove(XFCC);
    // Most requests have no header of that length: one pass over the names decides.
    if !headers
        .keys()
        .any(|name| is_xfcc_name(name.as_str().as_bytes()))
    {
        return;
    }
    let spelled: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_xfcc_name(name.as_str().as_bytes()))
        .cloned()
        .collect();
    for name in spelled {
        headers.remove(name);
    }
}

/// Takes `x-forwarded-client-cert` out of a request's `Trailer` list (RFC 9110 §6.6.2). hyper's
/// HTTP/1.1 client writes only the trailers `Trailer` announces, so an XFCC a caller sends as a
/// chunked-body trailer goes no further: only the sidecar speaks for a caller's certificate, and
/// only in the head (HTTP/2 trailers are filtered in `H2Body`).
pub(crate) fn unannounce_xfcc_trailer(headers: &mut HeaderMap) {
    let announces = |v: &HeaderValue| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|name| is_xfcc_name(name.trim_ascii()))
    };
    if !headers.get_all(header::TRAILER).iter().any(announces) {
        return;
    }
    let kept: Vec<&[u8]> = headers
        .get_all(header::TRAILER)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|name| !name.is_empty() && !is_xfcc_name(name))
        .collect();
    let kept = HeaderValue::from_bytes(&kept.join(&b", "[..]));
    headers.remove(header::TRAILER);
    if let Ok(kept) = kept
        && !kept.is_empty()
    {
        headers.insert(header::TRAILER, kept);
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

    #[test]
    fn the_client_certificate_header_is_taken_out_of_the_trailer_list() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::TRAILER,
            HeaderValue::from_static("x-a, X-Forwarded-Client-Cert ,x-b"),
        );
        headers.append(header::TRAILER, HeaderValue::from_static("x-c"));
        unannounce_xfcc_trailer(&mut headers);
        assert_eq!(headers[header::TRAILER], "x-a, x-b, x-c");
        assert_eq!(headers.get_all(header::TRAILER).iter().count(), 1);

        let mut headers = HeaderMap::new();
        headers.insert(
            header::TRAILER,
            HeaderValue::from_static("x-forwarded-client-cert"),
        );
        unannounce_xfcc_trailer(&mut headers);
        assert!(headers.is_empty());

        // Spelled with underscores, it goes too.
        let mut headers = HeaderMap::new();
        headers.insert(
            header::TRAILER,
            HeaderValue::from_static("X_Forwarded_Client_Cert, x-a"),
        );
        unannounce_xfcc_trailer(&mut headers);
        assert_eq!(headers[header::TRAILER], "x-a");

        // Without it, the list is left as it came.
        let mut headers = HeaderMap::new();
        headers.insert(header::TRAILER, HeaderValue::from_static("x-a,x-b"));
        unannounce_xfcc_trailer(&mut headers);
        assert_eq!(headers[header::TRAILER], "x-a,x-b");
    }

    #[test]
    fn every_spelling_of_the_client_certificate_header_is_removed() {
        for name in [
            "x-forwarded-client-cert",
            "X-Forwarded-Client-Cert",
            "x_forwarded_client_cert",
            "X_FORWARDED-CLIENT_CERT",
        ] {
            assert!(is_xfcc_name(name.as_bytes()), "{name}");
        }
        for name in [
            "x-forwarded-client-certs",
            "x-forwarded-client-cer",
            "x-forwarded.client-cert",
            "y-forwarded-client-cert",
            "x-forwarded-client-cert ",
        ] {
            assert!(!is_xfcc_name(name.as_bytes()), "{name}");
        }
        let mut headers = HeaderMap::new();
        for name in [
            "x-forwarded-client-cert",
            "x_forwarded_client_cert",
            "x_forwarded-client_cert",
            "x-kept",
        ] {
            headers.append(
                name,
                HeaderValue::from_static("URI=spiffe://example.org/admin"),
            );
        }
        remove_xfcc(&mut headers);
        assert_eq!(names(&headers), ["x-kept"]);
    }
}
