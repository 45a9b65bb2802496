//! One spelling of the request's host for the policy and the app, as [`super::path`] gives
//! one spelling of its path. Host names are case-insensitive and `admin.example.` names the same
//! host as `admin.example`, so a policy matching `{name: "host", value: "admin.example"}` would
//! otherwise be bypassed with `Host: ADMIN.example` or `Host: admin.example.`, which servers
//! route to the same virtual host. The `Host` header and the request target's authority (HTTP/2
//! `:authority`, or an HTTP/1.1 absolute-form target) are lower-cased and lose a trailing dot
//! on the name (Envoy's `strip_trailing_host_dot`). A port stays as the caller sent it.

use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Request, Uri};

/// Puts the host of `req` in its one spelling. `Err` names what is wrong with a host that
/// cannot be respelled (it does not happen with a host hyper or h2 accepted).
pub(super) fn normalize<B>(req: &mut Request<B>) -> Result<(), &'static str> {
    if let Some(value) = req.headers().get(header::HOST)
        && let Some(normal) = normal_host(value.as_bytes())
    {
        let normal = HeaderValue::from_bytes(&normal).map_err(|_| "the host is not valid")?;
        req.headers_mut().insert(header::HOST, normal);
    }
    if let Some(authority) = req.uri().authority()
        && let Some(normal) = normal_host(authority.as_str().as_bytes())
    {
        let normal = Authority::try_from(normal).map_err(|_| "the :authority is not valid")?;
        let mut parts = req.uri().clone().into_parts();
        parts.authority = Some(normal);
        *req.uri_mut() = Uri::from_parts(parts).map_err(|_| "the request target is not valid")?;
    }
    Ok(())
}

/// `host[:port]` lower-cased and without a trailing dot on the name, or `None` when it is
/// already so (the common case: no allocation).
fn normal_host(value: &[u8]) -> Option<Vec<u8>> {
    let (name, port) = split_port(value);
    let trailing_dot = name.len() > 1 && name.ends_with(b".");
    if !trailing_dot && !value.iter().any(u8::is_ascii_uppercase) {
        return None;
    }
    let name = match trailing_dot {
        true => name.split_last().map_or(name, |(_, rest)| rest),
        false => name,
    };
    let mut out = Vec::with_capacity(value.len());
    out.extend(name.iter().map(u8::to_ascii_lowercase));
    out.extend_from_slice(port);
    Some(out)
}

/// `(name, ":port")`, or `(value, "")` without a port. An IPv6 literal keeps its brackets.
fn split_port(value: &[u8]) -> (&[u8], &[u8]) {
    let Some(colon) = value.iter().rposition(|&b| b == b':') else {
        return (value, b"");
    };
    let (name, port) = value.split_at(colon);
    let bracketed = value.starts_with(b"[");
    if bracketed && !name.ends_with(b"]") {
        // `[::1]` itself: the colon is inside the literal.
        return (value, b"");
    }
    (name, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(value: &str) -> Option<String> {
        normal_host(value.as_bytes()).map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn a_host_is_lower_cased_and_loses_a_trailing_dot_keeping_its_port() {
        assert_eq!(normal("ADMIN.example").as_deref(), Some("admin.example"));
        assert_eq!(normal("admin.example.").as_deref(), Some("admin.example"));
        assert_eq!(
            normal("Admin.Example.:8443").as_deref(),
            Some("admin.example:8443")
        );
        assert_eq!(normal("[::1]:8080"), None);
        assert_eq!(normal("[::1]"), None);
        assert_eq!(normal("[FE80::1]:80").as_deref(), Some("[fe80::1]:80"));
        assert_eq!(normal("admin.example:443"), None);
        assert_eq!(normal("admin.example"), None);
        // A lone dot is not a name with a trailing dot.
        assert_eq!(normal("."), None);
    }

    #[test]
    fn the_host_header_and_the_authority_are_both_respelled() {
        let mut req = Request::get("https://API.Example.:8443/x?q=1")
            .header(header::HOST, "API.Example.:8443")
            .body(())
            .unwrap();
        normalize(&mut req).unwrap();
        assert_eq!(req.headers()[header::HOST], "api.example:8443");
        assert_eq!(req.uri().to_string(), "https://api.example:8443/x?q=1");
        let mut req = Request::get("/x")
            .header(header::HOST, "api")
            .body(())
            .unwrap();
        normalize(&mut req).unwrap();
        assert_eq!(req.headers()[header::HOST], "api");
        assert_eq!(req.uri().to_string(), "/x");
    }
}
