//! The parts of a request the sidecar sees (their Cedar context is built in `context.rs`).

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::model::{CONNECT_ACTION, GRPC_ACTION};

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller<'a> {
    /// A peer authenticated by mutual TLS, by its SPIFFE ID (parsed by the engine; an ID that does
    /// not parse denies the request).
    Spiffe(&'a str),
    /// A plaintext caller in permissive mode (`Mesh::Unauthenticated::"anonymous"`).
    Unauthenticated,
}

/// What the caller does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation<'a> {
    /// An HTTP request with this method (`GET`, `POST`, …); the action is named after the method.
    Http(&'a str),
    /// A gRPC call; service and method come from the path `/package.Service/Method`.
    Grpc,
    /// An opaque TCP connection.
    Connect,
}

/// Facts about the mutual-TLS session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsFacts<'a> {
    /// Negotiated protocol version, e.g. `TLSv1.3`.
    pub version: &'a str,
    /// The trust domain of the peer's SPIFFE ID.
    pub peer_trust_domain: &'a str,
}

/// One request, as the sidecar sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The caller.
    pub caller: Caller<'a>,
    /// The operation.
    pub operation: Operation<'a>,
    /// The service behind the sidecar (`Mesh::Service::"<resource>"`).
    pub resource: &'a str,
    /// Request path (HTTP and gRPC).
    pub path: &'a str,
    /// Query string without `?` (HTTP).
    pub query: &'a str,
    /// Header names and values; names are matched lowercase.
    pub headers: &'a [(&'a str, &'a str)],
    /// The caller's address.
    pub source: IpAddr,
    /// TLS facts; `None` for plaintext.
    pub tls: Option<TlsFacts<'a>>,
    /// When the request arrived.
    pub time: SystemTime,
}

/// Why a request could not be turned into a Cedar request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The caller's SPIFFE ID does not parse.
    #[error("caller `{id}` is not a spiffe id: {reason}")]
    BadSpiffeId {
        /// The ID as given.
        id: String,
        /// Why it does not parse.
        reason: String,
    },
    /// No action in the schema for this method.
    #[error("method `{0}` has no action in the schema")]
    UnknownAction(String),
    /// An HTTP request whose method is the name of another kind of request's action (`grpc`,
    /// `connect`): deciding it as that action would let it pass as a gRPC call or a connection.
    #[error("method `{0}` is not an HTTP method: `{0}` is the action of another kind of request")]
    NotHttpMethod(String),
    /// A gRPC path that is not `/package.Service/Method`.
    #[error("grpc path `{0}` is not `/package.Service/Method`")]
    BadGrpcPath(String),
    /// The resource name is empty.
    #[error("resource name is empty")]
    EmptyResource,
    /// Cedar or the schema rejected the request.
    #[error("request rejected: {0}")]
    Rejected(String),
}

// === impl Operation ===

impl<'a> Operation<'a> {
    /// Parses an action name as written on the command line or in a test: `grpc`, `connect`, or
    /// an HTTP method.
    pub fn from_name(name: &'a str) -> Self {
        match name {
            GRPC_ACTION => Self::Grpc,
            CONNECT_ACTION => Self::Connect,
            method => Self::Http(method),
        }
    }

    /// The Cedar action id.
    pub fn action_name(&self) -> &'a str {
        match self {
            Self::Http(method) => method,
            Self::Grpc => GRPC_ACTION,
            Self::Connect => CONNECT_ACTION,
        }
    }
}

/// `/package.Service/Method` → (`package.Service`, `Method`).
pub(crate) fn grpc_parts(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

/// Formats a time as `YYYY-MM-DDThh:mm:ss.sssZ`, the form Cedar's `datetime` accepts.
pub(crate) fn rfc3339_millis(time: SystemTime) -> String {
    Rfc3339Millis(time).to_string()
}

/// Displays a time as `YYYY-MM-DDThh:mm:ss.sssZ` (UTC); times before 1970 show as 1970.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rfc3339Millis(pub(crate) SystemTime);

impl std::fmt::Display for Rfc3339Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let (year, month, day) =
            warden_identity::civil_from_days(i64::try_from(secs / 86_400).unwrap_or(0));
        let rem = secs % 86_400;
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            (rem % 3600) / 60,
            rem % 60,
            since.subsec_millis()
        )
    }
}

/// Parses `YYYY-MM-DDThh:mm:ss[.sss]Z` (what [`rfc3339_millis`] writes and decision logs hold):
/// every field its fixed number of digits, a real date from 1970 to 9999, `ss` up to 60 (a leap
/// second). Anything else is `None`.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let (fields, millis) = match b.len() {
        20 => (b, 0),
        24 if b.get(19) == Some(&b'.') => (b, digits(b.get(20..23)?)?),
        _ => return None,
    };
    let shape_ok = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')]
        .iter()
        .all(|&(i, c)| fields.get(i) == Some(&c))
        && b.last() == Some(&b'Z');
    if !shape_ok {
        return None;
    }
    let year = digits(fields.get(0..4)?)?;
    let month = digits(fields.get(5..7)?)?;
    let day = digits(fields.get(8..10)?)?;
    let (h, mi, sec) = (
        digits(fields.get(11..13)?)?,
        digits(fields.get(14..16)?)?,
        digits(fields.get(17..19)?)?,
    );
    if year < 1970
        || !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || h > 23
        || mi > 59
        || sec > 60
    {
        return None;
    }
    // days_from_civil (years 1970..=9999: nothing here can overflow).
    let y = if month <= 2 { year - 1 } else { year };
    let (era, yoe) = (y / 400, y % 400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec;
    Some(
        UNIX_EPOCH
            + std::time::Duration::from_secs(secs)
            + std::time::Duration::from_millis(millis),
    )
}

/// The value of a run of ASCII digits (no sign, no space); `None` for anything else.
fn digits(b: &[u8]) -> Option<u64> {
    b.iter().try_fold(0u64, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + u64::from(c - b'0'))
    })
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_formats_and_parses_round_trip() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_764_100_000_123);
        let s = rfc3339_millis(t);
        assert_eq!(s, "2025-11-25T19:46:40.123Z");
        assert_eq!(parse_time(&s), Some(t));
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn parse_time_rejects_malformed_times() {
        for bad in [
            "",
            "2025-11-25",
            "2025-13-01T00:00:00Z",
            "2025-11-25T25:00:00Z",
            "2025-11-25T00:00:00.1Z",
            "x-y-zT1:2:3Z",
            // Years too large for any arithmetic, and before the epoch.
            "300000000000-01-01T00:00:00Z",
            "99999-01-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            // Signs, spaces and short fields.
            "2025-11-25T-1:-1:-1Z",
            "+025-11-25T00:00:00Z",
            "2025-11-25T 0:00:00Z",
            "2025-1-25T00:00:00Z",
            "2025-11-25T00:00:00.+12Z",
            // Days the month does not have.
            "2025-02-29T00:00:00Z",
            "2025-04-31T00:00:00Z",
            "2025-11-00T00:00:00Z",
            // Not the format.
            "2025-11-25 00:00:00Z",
            "2025-11-25T00:00:00",
            "2025-11-25T00:00:00.123",
            "2025-11-25T00:00:00.123+00:00",
            "2025-11-25T00:00:00Z\n",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn parse_time_accepts_leap_days_and_the_ends_of_its_range() {
        let at = |s| parse_time(s).map(rfc3339_millis);
        assert_eq!(
            at("2024-02-29T12:00:00Z").as_deref(),
            Some("2024-02-29T12:00:00.000Z")
        );
        assert_eq!(
            at("2000-02-29T00:00:00Z").as_deref(),
            Some("2000-02-29T00:00:00.000Z")
        );
        assert_eq!(parse_time("1900-02-29T00:00:00Z"), None);
        assert_eq!(parse_time("2100-02-29T00:00:00Z"), None);
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
        assert_eq!(
            at("9999-12-31T23:59:59.999Z").as_deref(),
            Some("9999-12-31T23:59:59.999Z")
        );
        // A leap second is the next second.
        assert_eq!(
            at("2016-12-31T23:59:60Z").as_deref(),
            Some("2017-01-01T00:00:00.000Z")
        );
    }

    #[test]
    fn grpc_path_splits_into_service_and_method() {
        assert_eq!(grpc_parts("/shop.Orders/Get"), Some(("shop.Orders", "Get")));
        assert_eq!(grpc_parts("/shop.Orders"), None);
        assert_eq!(grpc_parts("/shop.Orders/Get/x"), None);
        assert_eq!(grpc_parts("//Get"), None);
    }
}
