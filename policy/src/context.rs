//! The Cedar context of a request, built as Cedar *values* rather than expressions.
//!
//! `cedar_policy::Context::from_pairs` takes restricted expressions and evaluates them: every
//! string is wrapped and unwrapped, and `ip("…")` and `datetime("…")` are extension calls that
//! parse their argument each time (`datetime` with four regular expressions). That cost more
//! than the policy evaluation itself. Here the context is assembled from `Value`s directly, and
//! the two extension values are memoised per thread: the caller's address (a connection's
//! requests all share it) and the request time at millisecond resolution (what the decision
//! log records); and the set of header records is memoised for the last header list a thread
//! saw (compared byte for byte). The memoised values are the ones Cedar's own `ip`/`datetime` functions return
//! for the same argument; `tests::context_equals_the_one_cedar_builds_from_expressions` checks
//! the whole context against `Context::from_pairs`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

use cedar_policy as cedar;
use cedar_policy_core::ast::{self, Name, PartialValue, Value};
use cedar_policy_core::extensions::Extensions;

use crate::request::{Operation, Request, RequestError, grpc_parts, rfc3339_millis};

/// Most caller addresses memoised per thread; past it the memo starts over.
const MAX_CACHED_ADDRESSES: usize = 256;

static IP: LazyLock<Option<Name>> = LazyLock::new(|| Name::parse_unqualified_name("ip").ok());
static DATETIME: LazyLock<Option<Name>> =
    LazyLock::new(|| Name::parse_unqualified_name("datetime").ok());

/// Largest encoded header list kept as the per-thread memo (bigger lists are built every time).
const MAX_MEMO_HEADER_BYTES: usize = 16 * 1024;

thread_local! {
    static ADDRESSES: RefCell<Vec<(IpAddr, Value)>> = const { RefCell::new(Vec::new()) };
    static LAST_TIME: RefCell<Option<(u128, Value)>> = const { RefCell::new(None) };
    static LAST_HEADERS: RefCell<HeaderMemo> = const { RefCell::new(HeaderMemo::new()) };
}

/// The last header list this thread turned into a Cedar set, and that set. Callers of one
/// service tend to send the same headers request after request; an exact byte comparison of the
/// list is much cheaper than building a set of records.
struct HeaderMemo {
    /// The list as `(len, lowercase name, len, value)*`, lengths as 4 little-endian bytes: an
    /// encoding with no ambiguity whatever bytes names and values hold.
    key: Vec<u8>,
    value: Option<Value>,
    /// Scratch buffer for the current list's encoding.
    scratch: Vec<u8>,
}

/// Which attributes of the context a set of policies reads: the context of a request is built
/// with those alone (see [`crate::eval`]; an attribute no candidate reads cannot change the
/// decision).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Needs(u8);

impl Needs {
    pub(crate) const NONE: Self = Self(0);
    pub(crate) const ALL: Self = Self(u8::MAX);
    const SOURCE_ADDRESS: Self = Self(1);
    const TIME: Self = Self(1 << 1);
    const TLS: Self = Self(1 << 2);
    const METHOD: Self = Self(1 << 3);
    const PATH: Self = Self(1 << 4);
    const QUERY: Self = Self(1 << 5);
    const HEADERS: Self = Self(1 << 6);
    const GRPC: Self = Self(1 << 7);

    /// The context attribute `name`; every attribute for a name the context does not have (so
    /// that reading it fails as it would on the whole context).
    pub(crate) fn attribute(name: &str) -> Self {
        match name {
            "source_address" => Self::SOURCE_ADDRESS,
            "time" => Self::TIME,
            "tls" => Self::TLS,
            "method" => Self::METHOD,
            "path" => Self::PATH,
            "query" => Self::QUERY,
            "headers" => Self::HEADERS,
            "grpc" => Self::GRPC,
            _ => Self::ALL,
        }
    }

    pub(crate) fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    fn has(self, attribute: Self) -> bool {
        self.0 & attribute.0 != 0
    }
}

impl Request<'_> {
    /// The Cedar context of this request: `source_address` (ipaddr), `time` (datetime, ms),
    /// `tls` when the caller used TLS, `method`/`path`/`query`/`headers` for HTTP and gRPC, and
    /// `grpc` (service, method) for gRPC.
    pub fn context(&self) -> Result<cedar::Context, RequestError> {
        self.context_for(Needs::ALL)
    }

    /// The context with the attributes in `needs` only. What can fail is checked whatever
    /// `needs` holds, so a request fails the same way with any of them.
    pub(crate) fn context_for(&self, needs: Needs) -> Result<cedar::Context, RequestError> {
        let source_address = address_value(self.source)?;
        let time = time_value(self.time)?;
        let grpc = match self.operation {
            Operation::Grpc => Some(
                grpc_parts(self.path)
                    .ok_or_else(|| RequestError::BadGrpcPath(self.path.to_owned()))?,
            ),
            _ => None,
        };
        let mut map: BTreeMap<_, Value> = BTreeMap::new();
        if needs.has(Needs::SOURCE_ADDRESS) {
            map.insert("source_address".into(), source_address);
        }
        if needs.has(Needs::TIME) {
            map.insert("time".into(), time);
        }
        if let Some(tls) = self.tls
            && needs.has(Needs::TLS)
        {
            let record = Value::record(
                [
                    ("version", Value::from(tls.version)),
                    ("peer_trust_domain", Value::from(tls.peer_trust_domain)),
                ],
                None,
            );
            map.insert("tls".into(), record);
        }
        let method = match self.operation {
            Operation::Connect => None,
            Operation::Http(method) => Some(method),
            Operation::Grpc => Some("POST"),
        };
        if let Some(method) = method {
            if needs.has(Needs::METHOD) {
                map.insert("method".into(), Value::from(method));
            }
            if needs.has(Needs::PATH) {
                map.insert("path".into(), Value::from(self.path));
            }
            if needs.has(Needs::QUERY) {
                map.insert("query".into(), Value::from(self.query));
            }
            if needs.has(Needs::HEADERS) {
                map.insert("headers".into(), headers_value(self.headers));
            }
        }
        if let Some((service, method)) = grpc
            && needs.has(Needs::GRPC)
        {
            let record = Value::record(
                [
                    ("service", Value::from(service)),
                    ("method", Value::from(method)),
                ],
                None,
            );
            map.insert("grpc".into(), record);
        }
        Ok(cedar::Context::from(ast::Context::Value(Arc::new(map))))
    }
}

/// The set of `{name, value}` records of `headers` (names lowercased), memoised per thread for
/// the last list seen.
fn headers_value(headers: &[(&str, &str)]) -> Value {
    LAST_HEADERS.with_borrow_mut(|memo| {
        let HeaderMemo {
            key,
            value,
            scratch,
        } = memo;
        scratch.clear();
        for (name, val) in headers {
            for part in [name, val] {
                let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
                scratch.extend_from_slice(&len.to_le_bytes());
                scratch.extend_from_slice(part.as_bytes());
            }
            // Names compare lowercase (the value was just written after the name).
            let name_start = scratch.len() - val.len() - 4 - name.len();
            if let Some(bytes) = scratch.get_mut(name_start..name_start + name.len()) {
                bytes.make_ascii_lowercase();
            }
        }
        if let Some(v) = value.as_ref()
            && key == scratch
        {
            return v.clone();
        }
        let built = Value::set(
            headers.iter().map(|(name, val)| {
                let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
                    Value::from(name.to_ascii_lowercase())
                } else {
                    Value::from(*name)
                };
                Value::record([("name", name), ("value", Value::from(*val))], None)
            }),
            None,
        );
        if scratch.len() <= MAX_MEMO_HEADER_BYTES {
            std::mem::swap(key, scratch);
            *value = Some(built.clone());
        }
        built
    })
}

// === impl HeaderMemo ===

impl HeaderMemo {
    const fn new() -> Self {
        Self {
            key: Vec::new(),
            value: None,
            scratch: Vec::new(),
        }
    }
}

/// `ip("<address>")`, memoised per thread.
fn address_value(address: IpAddr) -> Result<Value, RequestError> {
    let cached = ADDRESSES.with_borrow(|memo| {
        memo.iter()
            .find(|(a, _)| *a == address)
            .map(|(_, v)| v.clone())
    });
    if let Some(value) = cached {
        return Ok(value);
    }
    let value = call_extension(&IP, "ip", address.to_string())?;
    ADDRESSES.with_borrow_mut(|memo| {
        if memo.len() >= MAX_CACHED_ADDRESSES {
            memo.clear();
        }
        memo.push((address, value.clone()));
    });
    Ok(value)
}

/// `datetime("<time, ms>")`, memoised per thread for the current millisecond.
fn time_value(time: SystemTime) -> Result<Value, RequestError> {
    let millis = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let cached = LAST_TIME.with_borrow(|last| {
        last.as_ref()
            .filter(|(m, _)| *m == millis)
            .map(|(_, v)| v.clone())
    });
    if let Some(value) = cached {
        return Ok(value);
    }
    let value = call_extension(&DATETIME, "datetime", rfc3339_millis(time))?;
    LAST_TIME.set(Some((millis, value.clone())));
    Ok(value)
}

/// Calls one of Cedar's extension constructors, exactly as the evaluator would.
fn call_extension(
    name: &LazyLock<Option<Name>>,
    shown: &str,
    arg: String,
) -> Result<Value, RequestError> {
    let rejected = |why: String| RequestError::Rejected(format!("{shown}(\"{arg}\"): {why}"));
    let name = name
        .as_ref()
        .ok_or_else(|| rejected("no such extension function".to_owned()))?;
    let func = Extensions::all_available()
        .func(name)
        .map_err(|e| rejected(e.to_string()))?;
    match func.call(&[Value::from(arg.as_str())]) {
        Ok(PartialValue::Value(value)) => Ok(value),
        Ok(PartialValue::Residual(_)) => Err(rejected("not a concrete value".to_owned())),
        Err(e) => Err(rejected(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    use cedar_policy::RestrictedExpression as Expr;

    use super::*;
    use crate::request::{Caller, TlsFacts};

    /// The context as `Context::from_pairs` builds it from Cedar's own expression constructors:
    /// the reference the value-built context must equal.
    fn reference(r: &Request<'_>) -> cedar::Context {
        let s = |v: &str| Expr::new_string(v.to_owned());
        let mut pairs = vec![
            (
                "source_address".to_owned(),
                Expr::new_ip(r.source.to_string()),
            ),
            (
                "time".to_owned(),
                Expr::new_datetime(rfc3339_millis(r.time)),
            ),
        ];
        if let Some(tls) = r.tls {
            let record = Expr::new_record([
                ("version".to_owned(), s(tls.version)),
                ("peer_trust_domain".to_owned(), s(tls.peer_trust_domain)),
            ]);
            pairs.push(("tls".to_owned(), record.unwrap()));
        }
        let method = match r.operation {
            Operation::Connect => None,
            Operation::Http(m) => Some(m),
            Operation::Grpc => Some("POST"),
        };
        if let Some(method) = method {
            pairs.push(("method".to_owned(), s(method)));
            pairs.push(("path".to_owned(), s(r.path)));
            pairs.push(("query".to_owned(), s(r.query)));
            let headers = r.headers.iter().map(|(n, v)| {
                Expr::new_record([
                    ("name".to_owned(), s(&n.to_ascii_lowercase())),
                    ("value".to_owned(), s(v)),
                ])
                .unwrap()
            });
            pairs.push(("headers".to_owned(), Expr::new_set(headers)));
        }
        if r.operation == Operation::Grpc {
            let (service, method) = grpc_parts(r.path).unwrap();
            let record = Expr::new_record([
                ("service".to_owned(), s(service)),
                ("method".to_owned(), s(method)),
            ]);
            pairs.push(("grpc".to_owned(), record.unwrap()));
        }
        cedar::Context::from_pairs(pairs).unwrap()
    }

    fn request<'a>(
        operation: Operation<'a>,
        path: &'a str,
        headers: &'a [(&'a str, &'a str)],
        source: IpAddr,
        tls: bool,
        time: SystemTime,
    ) -> Request<'a> {
        Request {
            caller: Caller::Spiffe("spiffe://example.org/ns/prod/sa/web"),
            operation,
            resource: "api",
            path,
            query: "a=1&b=%20",
            headers,
            source,
            tls: tls.then_some(TlsFacts {
                version: "TLSv1.3",
                peer_trust_domain: "example.org",
            }),
            time,
        }
    }

    #[test]
    fn context_equals_the_one_cedar_builds_from_expressions() {
        let headers = [
            ("Content-Type", "application/json"),
            ("accept", "*/*"),
            ("X-Dup", "1"),
            ("x-dup", "1"),
            ("empty", ""),
        ];
        let v4 = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
        let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 7));
        let t0 = UNIX_EPOCH + Duration::from_millis(1_764_100_000_123);
        let times = [
            t0,
            t0 + Duration::from_micros(400),
            t0 + Duration::from_millis(1),
            UNIX_EPOCH,
        ];
        for time in times {
            for source in [v4, v6, v4] {
                for tls in [true, false] {
                    for (op, path) in [
                        (Operation::Http("GET"), "/v1/orders/7"),
                        (Operation::Http("PATCH"), "/"),
                        (Operation::Grpc, "/shop.Orders/Get"),
                        (Operation::Connect, ""),
                    ] {
                        let r = request(op, path, &headers, source, tls, time);
                        assert_eq!(r.context().unwrap(), reference(&r), "{r:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn memoised_values_follow_the_address_and_the_millisecond() {
        let t0 = UNIX_EPOCH + Duration::from_millis(1_764_100_000_123);
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        assert_ne!(address_value(a).unwrap(), address_value(b).unwrap());
        assert_eq!(address_value(a).unwrap(), address_value(a).unwrap());
        let later = t0 + Duration::from_millis(1);
        assert_ne!(time_value(t0).unwrap(), time_value(later).unwrap());
        assert_eq!(
            time_value(t0).unwrap(),
            time_value(t0 + Duration::from_micros(999)).unwrap()
        );
        // More addresses than the memo holds still give the right values.
        for i in 0..=u32::try_from(MAX_CACHED_ADDRESSES).unwrap() {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            let expected = reference(&request(Operation::Connect, "", &[], ip, false, t0));
            let built = request(Operation::Connect, "", &[], ip, false, t0)
                .context()
                .unwrap();
            assert_eq!(built, expected);
        }
    }

    #[test]
    fn header_memo_never_serves_another_list() {
        let t = UNIX_EPOCH + Duration::from_millis(1_764_100_000_123);
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        // Lists that differ in one byte, in case only, in order, in how bytes split between
        // name and value, or by one header; each repeated so the memo is hit.
        let lists: [&[(&str, &str)]; 8] = [
            &[("a", "bc")],
            &[("ab", "c")],
            &[("A", "bc")],
            &[("a", "bC")],
            &[("a", "bc"), ("x", "1")],
            &[("x", "1"), ("a", "bc")],
            &[],
            &[("a", "b\0c"), ("", "")],
        ];
        for _ in 0..2 {
            for list in lists {
                for _ in 0..2 {
                    let r = request(Operation::Http("GET"), "/", list, ip, true, t);
                    assert_eq!(r.context().unwrap(), reference(&r), "{list:?}");
                }
            }
        }
    }

    #[test]
    fn a_bad_grpc_path_is_rejected() {
        let r = request(
            Operation::Grpc,
            "/no-method",
            &[],
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            true,
            SystemTime::now(),
        );
        assert_eq!(
            r.context(),
            Err(RequestError::BadGrpcPath("/no-method".to_owned()))
        );
        // Whatever the policies read, the request fails the same way.
        assert_eq!(
            r.context_for(Needs::NONE),
            Err(RequestError::BadGrpcPath("/no-method".to_owned()))
        );
    }

    #[test]
    fn a_partial_context_has_exactly_the_needed_attributes_of_the_whole() {
        let r = request(
            Operation::Grpc,
            "/shop.Orders/Get",
            &[("x-a", "1")],
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            true,
            SystemTime::now(),
        );
        let names = |needs| -> Vec<String> {
            let context = r.context_for(needs).unwrap();
            let ast::Context::Value(map) = AsRef::<ast::Context>::as_ref(&context) else {
                panic!("not a value context")
            };
            map.keys().map(ToString::to_string).collect()
        };
        assert!(names(Needs::NONE).is_empty());
        assert_eq!(names(Needs::attribute("headers")), ["headers"]);
        assert_eq!(
            names(Needs::attribute("grpc").union(Needs::attribute("tls"))),
            ["grpc", "tls"]
        );
        assert_eq!(
            names(Needs::ALL),
            [
                "grpc",
                "headers",
                "method",
                "path",
                "query",
                "source_address",
                "time",
                "tls"
            ]
        );
        assert_eq!(r.context_for(Needs::ALL).unwrap(), reference(&r));
    }
}
