//! From a request to the policy engine and the decision log: decision ids, the
//! [`warden_policy::Request`] of an HTTP request or a TCP connection, the decision-log
//! [`DecisionRecord`], and the `x-forwarded-client-cert` value.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, header};
use warden_policy::{
    Caller, Decision, DecisionLine, LoggedHeaders, Operation, Request, TlsFacts, finish_line,
};

use super::ConnInfo;

/// Room for a typical line, so that writing one rarely grows the buffer.
const LINE_CAPACITY: usize = 768;
/// The header carrying the caller's identity to the app (Envoy's format).
pub(crate) const XFCC: &str = "x-forwarded-client-cert";

/// Unique decision ids: a random per-process prefix and a counter.
#[derive(Debug)]
pub(crate) struct DecisionIds {
    prefix: u64,
    next: AtomicU64,
}

/// The parts of one request the decision needs, borrowed from the request.
#[derive(Debug)]
pub(crate) struct RequestParts<'a> {
    pub(crate) operation: Operation<'a>,
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) query: &'a str,
    pub(crate) headers: &'a [(&'a str, &'a str)],
    pub(crate) time: SystemTime,
}

// === impl DecisionIds ===

impl DecisionIds {
    pub(crate) fn new() -> Self {
        // Not a secret, only unique: the std hasher's per-process random keys and the clock.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        h.write_u32(std::process::id());
        Self {
            prefix: h.finish(),
            next: AtomicU64::new(1),
        }
    }

    /// `<prefix as 16 hex digits>-<counter in hex>`.
    pub(crate) fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut id = String::with_capacity(16 + 1 + 16);
        push_hex(&mut id, self.prefix, 16);
        id.push('-');
        push_hex(&mut id, n, 1);
        id
    }
}

/// Appends `n` in lowercase hex, zero-padded to at least `width` digits (a hand-written
/// `format!("{n:0width$x}")`, which costs a formatter per request).
fn push_hex(out: &mut String, n: u64, width: usize) {
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
    for shift in (0..digits.max(width)).rev() {
        let nibble = if shift < 16 {
            (n >> (shift * 4)) & 0xf
        } else {
            0
        };
        // A nibble is always a hex digit.
        out.push(char::from_digit(nibble as u32, 16).unwrap_or('0'));
    }
}

/// The policy request of `parts` on the connection `conn`, for the service `resource`.
pub(crate) fn policy_request<'a>(
    conn: &'a ConnInfo,
    resource: &'a str,
    parts: &RequestParts<'a>,
) -> Request<'a> {
    let (caller, tls) = match &conn.peer {
        Some(peer) => (
            Caller::Spiffe(peer.id.as_str()),
            conn.tls_version.map(|version| TlsFacts {
                version,
                peer_trust_domain: peer.id.trust_domain_name(),
            }),
        ),
        None => (Caller::Unauthenticated, None),
    };
    Request {
        caller,
        operation: parts.operation,
        resource,
        path: parts.path,
        query: parts.query,
        headers: parts.headers,
        source: conn.source.ip(),
        tls,
        time: parts.time,
    }
}

/// The first header whose value the app could read otherwise than the policy does, and how:
/// not UTF-8 text (bytes 0x80–0xFF that do not decode), or starting or ending with a space or
/// tab. HTTP/2 carries such a value though RFC 9113 §8.2.1 forbids it, and an HTTP/1.1 app's
/// parser trims it (` 1` is `1` to the app, ` 1` to a policy that looks for `1`). Such a
/// request gets 400, so that the policy sees every header as the app gets it.
pub(crate) fn unreadable_header<B>(
    req: &http::Request<B>,
) -> Option<(&http::HeaderName, &'static str)> {
    let blank = |b: &u8| matches!(b, b' ' | b'\t');
    req.headers().iter().find_map(|(name, value)| {
        let bytes = value.as_bytes();
        if std::str::from_utf8(bytes).is_err() {
            Some((name, "is not UTF-8 text"))
        } else if bytes.first().is_some_and(blank) || bytes.last().is_some_and(blank) {
            Some((name, "starts or ends with a space or tab"))
        } else {
            None
        }
    })
}

/// The headers a policy sees: every header (values UTF-8 text, which [`unreadable_header`] has
/// checked), and for HTTP/2 the `:authority` as `host` (as over HTTP/1.1) when there is no
/// `host` header.
pub(crate) fn header_pairs<B>(req: &http::Request<B>) -> Vec<(&str, &str)> {
    let mut headers: Vec<(&str, &str)> = req
        .headers()
        .iter()
        .filter_map(|(n, v)| {
            std::str::from_utf8(v.as_bytes())
                .ok()
                .map(|v| (n.as_str(), v))
        })
        .collect();
    if let Some(authority) = req.uri().authority()
        && !req.headers().contains_key(header::HOST)
    {
        headers.push(("host", authority.as_str()));
    }
    headers
}

impl<'a> RequestParts<'a> {
    /// The parts of an HTTP request: action its method, or `grpc` (method `POST`).
    pub(crate) fn http(
        method: &'a str,
        grpc: bool,
        path: &'a str,
        query: &'a str,
        headers: &'a [(&'a str, &'a str)],
        time: SystemTime,
    ) -> Self {
        Self {
            operation: if grpc {
                Operation::Grpc
            } else {
                Operation::Http(method)
            },
            method: if grpc { "POST" } else { method },
            path,
            query,
            headers,
            time,
        }
    }
}

/// Starts the decision-log line of one decision (everything but the upstream status and the
/// latency, which [`warden_policy::finish_line`] adds).
pub(crate) fn start_line(
    id: &str,
    conn: &ConnInfo,
    resource: &str,
    parts: &RequestParts<'_>,
    decision: &Decision,
) -> Vec<u8> {
    let mut line = Vec::with_capacity(LINE_CAPACITY);
    DecisionLine {
        time: parts.time,
        decision_id: id,
        peer_spiffe_id: conn.peer.as_ref().map(|p| p.id.as_str()),
        source_addr: &conn.source_text,
        resource,
        method: parts.method,
        path: parts.path,
        query: parts.query,
        headers: LoggedHeaders {
            headers: parts.headers,
            // Credentials are recognized by name (`warden_policy::is_secret_name`).
            redacted: &[],
        },
        action: parts.operation.action_name(),
        tls_version: conn.tls_version,
        decision: decision.outcome(),
        policy_ids: decision.policy_ids(),
        policy_version: decision.version(),
        eval_time_us: micros(decision.eval_time()),
        errors: decision.errors(),
    }
    .write_start(&mut line);
    line
}

/// The whole decision-log line of a decision whose outcome upstream is known now.
pub(crate) fn whole_line(
    id: &str,
    conn: &ConnInfo,
    resource: &str,
    parts: &RequestParts<'_>,
    decision: &Decision,
    upstream_status: Option<u16>,
    latency: Duration,
) -> Vec<u8> {
    let mut line = start_line(id, conn, resource, parts, decision);
    finish_line(&mut line, upstream_status, micros(latency));
    line
}

/// `By=<our id>;Hash=<sha-256 of the peer leaf>;URI=<peer id>`, Envoy's
/// `x-forwarded-client-cert` format; `None` for a plaintext caller.
pub(crate) fn xfcc(conn: &ConnInfo) -> Option<HeaderValue> {
    let peer = conn.peer.as_ref()?;
    let value = match &conn.own_id {
        Some(own) => format!("By={own};Hash={};URI={}", peer.leaf_hash, peer.id),
        None => format!("Hash={};URI={}", peer.leaf_hash, peer.id),
    };
    // SPIFFE IDs and hex digests are visible ASCII without `,;=` or quotes.
    HeaderValue::try_from(value).ok()
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::super::Peer;
    use super::*;

    fn conn() -> ConnInfo {
        ConnInfo {
            source: "10.0.0.7:4000".parse::<SocketAddr>().unwrap(),
            source_text: "10.0.0.7:4000".to_owned(),
            peer: Some(Peer {
                id: "spiffe://example.org/ns/prod/sa/web".parse().unwrap(),
                leaf_hash: "ab12".to_owned(),
            }),
            tls_version: Some("TLSv1.3"),
            own_id: Some("spiffe://example.org/ns/prod/sa/api".parse().unwrap()),
        }
    }

    #[test]
    fn xfcc_has_envoy_by_hash_uri_format() {
        let v = xfcc(&conn()).unwrap();
        assert_eq!(
            v.to_str().unwrap(),
            "By=spiffe://example.org/ns/prod/sa/api;Hash=ab12;URI=spiffe://example.org/ns/prod/sa/web"
        );
        let plain = ConnInfo {
            peer: None,
            tls_version: None,
            ..conn()
        };
        assert!(xfcc(&plain).is_none());
    }

    #[test]
    fn policy_request_carries_peer_tls_and_source() {
        let c = conn();
        let headers = [("accept", "*/*")];
        let parts = RequestParts {
            operation: Operation::Http("GET"),
            method: "GET",
            path: "/x",
            query: "a=1",
            headers: &headers,
            time: SystemTime::now(),
        };
        let r = policy_request(&c, "api", &parts);
        assert_eq!(
            r.caller,
            Caller::Spiffe("spiffe://example.org/ns/prod/sa/web")
        );
        assert_eq!(
            r.tls,
            Some(TlsFacts {
                version: "TLSv1.3",
                peer_trust_domain: "example.org"
            })
        );
        assert_eq!(r.source.to_string(), "10.0.0.7");
        assert_eq!(r.resource, "api");
    }

    /// An IPv4 caller of a dual-stack listener is its IPv4 address to the policy (Cedar's
    /// `ip()` refuses the IPv4-mapped IPv6 form).
    #[test]
    fn an_ipv4_caller_of_a_dual_stack_listener_is_its_ipv4_address() {
        let mapped: SocketAddr = "[::ffff:10.0.0.7]:4000".parse().unwrap();
        let source = super::super::caller_address(mapped);
        assert_eq!(source.to_string(), "10.0.0.7:4000");
        let v6: SocketAddr = "[2001:db8::7]:4000".parse().unwrap();
        assert_eq!(super::super::caller_address(v6), v6);
        let c = ConnInfo { source, ..conn() };
        let parts = RequestParts {
            operation: Operation::Http("GET"),
            method: "GET",
            path: "/x",
            query: "",
            headers: &[],
            time: SystemTime::now(),
        };
        assert_eq!(
            policy_request(&c, "api", &parts).source.to_string(),
            "10.0.0.7"
        );
    }

    #[test]
    fn hex_matches_the_formatter() {
        for n in [0, 1, 0xf, 0x10, 0xabc, u64::from(u32::MAX), u64::MAX] {
            for width in [1, 16] {
                let mut s = String::new();
                push_hex(&mut s, n, width);
                assert_eq!(s, format!("{n:0width$x}"));
            }
        }
    }

    #[test]
    fn decision_ids_are_unique() {
        let ids = DecisionIds::new();
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert_eq!(a.len(), 18);
    }
}
