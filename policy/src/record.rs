//! Owned, serializable requests: [`RequestSpec`] (what `warden policy eval` and policy tests
//! describe) and [`DecisionRecord`], the sidecar's decision-log line (JSON lines), which
//! `warden policy diff` replays.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::SystemTime;

use crate::decision::Outcome;
use crate::model::UNAUTHENTICATED_ID;
use crate::request::{Caller, Operation, Request, Rfc3339Millis, TlsFacts, parse_time};

/// The TLS version assumed for an authenticated caller when none is given.
pub const DEFAULT_TLS_VERSION: &str = "TLSv1.3";

/// A request with owned parts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// The caller's SPIFFE ID, or `anonymous` for a plaintext caller.
    pub principal: String,
    /// `GET`, `POST`, … , `grpc` or `connect`.
    pub action: String,
    /// The service name.
    pub resource: String,
    /// Request path.
    #[serde(default)]
    pub path: String,
    /// Query string without `?`.
    #[serde(default)]
    pub query: String,
    /// Headers, in order.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Caller address (default `127.0.0.1`).
    #[serde(default = "default_source")]
    pub source: IpAddr,
    /// TLS version; an authenticated caller defaults to `TLSv1.3`, `anonymous` has no TLS.
    #[serde(default)]
    pub tls_version: Option<String>,
    /// Request time, `YYYY-MM-DDThh:mm:ss[.sss]Z` (default: now).
    #[serde(default)]
    pub time: Option<String>,
}

/// One line of the sidecar's decision log (JSON lines). `warden policy diff` replays these.
///
/// The values of headers and query parameters named like credentials (`authorization`,
/// `cookie`, `access_token`, …; see [`is_secret_name`](crate::is_secret_name)) are logged as
/// [`REDACTED`], so a replayed request sees that value ([`DecisionRecord::has_redacted_values`]
/// says when; `warden policy diff` counts such records and marks their changes).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DecisionRecord {
    /// When the request arrived, `YYYY-MM-DDThh:mm:ss.sssZ` (UTC).
    pub time: String,
    /// Unique id of this decision.
    pub decision_id: String,
    /// The caller's SPIFFE ID; absent for a plaintext caller in permissive mode.
    #[serde(default)]
    pub peer_spiffe_id: Option<String>,
    /// The caller's address, `ip:port` or `ip`.
    pub source_addr: String,
    /// The service behind the sidecar.
    pub resource: String,
    /// HTTP method (`POST` for gRPC, empty for `connect`).
    #[serde(default)]
    pub method: String,
    /// Request path.
    #[serde(default)]
    pub path: String,
    /// Query string without `?`.
    #[serde(default)]
    pub query: String,
    /// Logged headers (name lowercase, value), in order.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The Cedar action id (`GET`, `grpc`, `connect`, …).
    pub action: String,
    /// Negotiated TLS version; absent for plaintext.
    #[serde(default)]
    pub tls_version: Option<String>,
    /// `allow` or `deny`.
    pub decision: Outcome,
    /// Ids of the determining policies.
    #[serde(default)]
    pub policy_ids: Vec<String>,
    /// Version (content digest) of the policy set that decided.
    pub policy_version: String,
    /// Decision time, microseconds.
    #[serde(default)]
    pub eval_time_us: u64,
    /// Status the upstream answered with; absent when denied or not HTTP.
    #[serde(default)]
    pub upstream_status: Option<u16>,
    /// Whole request latency through the sidecar, microseconds.
    #[serde(default)]
    pub latency_us: u64,
    /// Evaluation errors reported with the decision.
    #[serde(default)]
    pub errors: Vec<String>,
}

/// A decision-log line written from borrowed parts, without building a [`DecisionRecord`]: the
/// sidecar writes everything known at decision time with [`Self::write_start`], and completes the
/// line with [`finish_line`] once the upstream answered. The result reads back as the
/// [`DecisionRecord`] with the same values (the field order differs: `errors` comes before
/// `upstream_status` and `latency_us`; JSON readers do not care).
#[derive(Debug, serde::Serialize)]
pub struct DecisionLine<'a> {
    /// When the request arrived; written as `YYYY-MM-DDThh:mm:ss.sssZ` (UTC).
    #[serde(serialize_with = "rfc3339_millis")]
    pub time: SystemTime,
    /// See [`DecisionRecord`].
    pub decision_id: &'a str,
    /// See [`DecisionRecord`].
    pub peer_spiffe_id: Option<&'a str>,
    /// See [`DecisionRecord`].
    pub source_addr: &'a str,
    /// See [`DecisionRecord`].
    pub resource: &'a str,
    /// See [`DecisionRecord`].
    pub method: &'a str,
    /// See [`DecisionRecord`].
    pub path: &'a str,
    /// See [`DecisionRecord`]; secret parameters' values are written as [`REDACTED`].
    #[serde(serialize_with = "redacted_query")]
    pub query: &'a str,
    /// The headers, in order; secret values become [`REDACTED`].
    pub headers: LoggedHeaders<'a>,
    /// See [`DecisionRecord`].
    pub action: &'a str,
    /// See [`DecisionRecord`].
    pub tls_version: Option<&'a str>,
    /// See [`DecisionRecord`].
    pub decision: Outcome,
    /// See [`DecisionRecord`].
    pub policy_ids: &'a [String],
    /// See [`DecisionRecord`].
    pub policy_version: &'a str,
    /// See [`DecisionRecord`].
    pub eval_time_us: u64,
    /// See [`DecisionRecord`].
    pub errors: &'a [String],
}

/// Request headers as logged: each `[name, value]`, with the value of every header whose name
/// is secret ([`is_secret_name`](crate::is_secret_name)) or in `redacted` (lowercase names)
/// replaced by [`REDACTED`].
#[derive(Debug)]
pub struct LoggedHeaders<'a> {
    /// The request's headers, names lowercase.
    pub headers: &'a [(&'a str, &'a str)],
    /// More names whose values are never logged.
    pub redacted: &'a [&'a str],
}

impl LoggedHeaders<'_> {
    /// Whether the value of the header `name` is written as [`REDACTED`].
    pub fn is_redacted(&self, name: &str) -> bool {
        self.redacted.contains(&name) || crate::redact::is_secret_name(name)
    }
}

fn redacted_query<S: serde::Serializer>(query: &&str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&crate::redact::redact_query(query))
}

/// What a redacted header value becomes in the decision log.
pub const REDACTED: &str = "<redacted>";

fn rfc3339_millis<S: serde::Serializer>(
    time: &SystemTime,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    rfc3339_millis_text(time, |text| serializer.serialize_str(text))
}

/// Calls `f` with `time` as `YYYY-MM-DDThh:mm:ss.sssZ`.
pub(crate) fn rfc3339_millis_text<R>(time: &SystemTime, f: impl FnOnce(&str) -> R) -> R {
    // Lines of the same millisecond share the text (formatting the date was a fifth of the
    // cost of writing a line).
    thread_local! {
        static LAST: std::cell::RefCell<(u128, String)> =
            const { std::cell::RefCell::new((u128::MAX, String::new())) };
    }
    let millis = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != millis {
            use std::fmt::Write as _;
            last.1.clear();
            let _ = write!(last.1, "{}", Rfc3339Millis(*time));
            last.0 = millis;
        }
        f(&last.1)
    })
}

impl serde::Serialize for LoggedHeaders<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.headers.iter().map(|(name, value)| {
            let value = if self.is_redacted(name) {
                REDACTED
            } else {
                value
            };
            (name, value)
        }))
    }
}

impl DecisionLine<'_> {
    /// Appends the line without its closing `}` and newline; [`finish_line`] adds the rest.
    /// The bytes are those `serde_json` writes for this line (see `json_line.rs`); writing into
    /// a `Vec` cannot fail.
    pub fn write_start(&self, out: &mut Vec<u8>) {
        crate::json_line::write_start(self, out);
    }
}

/// Completes a line started by [`DecisionLine::write_start`] with the upstream status (`null` when
/// none) and the whole latency, and ends it with a newline.
pub fn finish_line(out: &mut Vec<u8>, upstream_status: Option<u16>, latency_us: u64) {
    use std::io::Write as _;
    // Writing into a `Vec` cannot fail.
    let _ = match upstream_status {
        Some(status) => writeln!(
            out,
            ",\"upstream_status\":{status},\"latency_us\":{latency_us}}}"
        ),
        None => writeln!(
            out,
            ",\"upstream_status\":null,\"latency_us\":{latency_us}}}"
        ),
    };
}

fn default_source() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

// === impl RequestSpec ===

impl RequestSpec {
    /// The request time, or an error naming the bad value.
    pub fn parsed_time(&self) -> Result<SystemTime, String> {
        match &self.time {
            None => Ok(SystemTime::now()),
            Some(t) => parse_time(t)
                .ok_or_else(|| format!("time `{t}` is not `YYYY-MM-DDThh:mm:ss[.sss]Z`")),
        }
    }

    /// Borrows this spec as a [`Request`]; `headers` must come from [`Self::header_refs`].
    pub fn request<'a>(
        &'a self,
        headers: &'a [(&'a str, &'a str)],
        time: SystemTime,
    ) -> Request<'a> {
        let caller = if self.principal == UNAUTHENTICATED_ID {
            Caller::Unauthenticated
        } else {
            Caller::Spiffe(&self.principal)
        };
        let tls = match (caller, &self.tls_version) {
            (Caller::Unauthenticated, _) => None,
            (Caller::Spiffe(id), version) => Some(TlsFacts {
                version: version.as_deref().unwrap_or(DEFAULT_TLS_VERSION),
                peer_trust_domain: trust_domain_of(id),
            }),
        };
        Request {
            caller,
            operation: Operation::from_name(&self.action),
            resource: &self.resource,
            path: &self.path,
            query: &self.query,
            headers,
            source: self.source,
            tls,
            time,
        }
    }

    /// Writes the principal as the sidecar sees it: a SPIFFE ID with its scheme and trust
    /// domain in lowercase (`spiffe://Example.ORG/x` is `spiffe://example.org/x`), so that the
    /// TLS facts' peer trust domain is the one the sidecar would give policies. A principal
    /// that is not a SPIFFE ID is left as written, to be denied as a request error.
    pub fn canonicalize(&mut self) {
        if self.principal != UNAUTHENTICATED_ID
            && let Ok(id) = self.principal.parse::<warden_identity::SpiffeId>()
        {
            self.principal = id.as_str().to_owned();
        }
    }

    /// The headers as borrowed pairs.
    pub fn header_refs(&self) -> Vec<(&str, &str)> {
        self.headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
}

/// The trust domain part of a `spiffe://` string (empty if it has none), as written: see
/// [`RequestSpec::canonicalize`].
fn trust_domain_of(id: &str) -> &str {
    let rest = id.strip_prefix("spiffe://").unwrap_or_default();
    rest.split('/').next().unwrap_or_default()
}

// === impl DecisionRecord ===

impl DecisionRecord {
    /// Whether a header or query value of this record was logged as [`REDACTED`]: the replay
    /// then sees `<redacted>` where the caller sent a credential, and a policy that reads it
    /// may decide otherwise than it did.
    pub fn has_redacted_values(&self) -> bool {
        self.headers.iter().any(|(_, value)| value == REDACTED)
            || self
                .query
                .split(['&', ';'])
                .any(|pair| pair.split_once('=').is_some_and(|(_, v)| v == REDACTED))
    }

    /// The request this record describes, for replay. The method must be the one the action
    /// implies (the action itself for HTTP, `POST` for `grpc`, none for `connect`), as the
    /// sidecar writes it: a record where they disagree describes no request it decided.
    pub fn to_spec(&self) -> Result<RequestSpec, String> {
        let implied = match Operation::from_name(&self.action) {
            Operation::Http(method) => method,
            Operation::Grpc => "POST",
            Operation::Connect => "",
        };
        if self.method != implied {
            return Err(format!(
                "method {:?} does not go with action {:?} (the sidecar logs {:?} with it)",
                self.method, self.action, implied
            ));
        }
        let source = self
            .source_addr
            .parse::<SocketAddr>()
            .map(|s| s.ip())
            .or_else(|_| self.source_addr.parse::<IpAddr>())
            .map_err(|_| format!("source_addr `{}` is not an address", self.source_addr))?;
        let mut spec = RequestSpec {
            principal: self
                .peer_spiffe_id
                .clone()
                .unwrap_or_else(|| UNAUTHENTICATED_ID.to_owned()),
            action: self.action.clone(),
            resource: self.resource.clone(),
            path: self.path.clone(),
            query: self.query.clone(),
            headers: self.headers.clone(),
            source,
            tls_version: self.tls_version.clone(),
            time: Some(self.time.clone()),
        };
        spec.canonicalize();
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn line_of(line: &DecisionLine<'_>, status: Option<u16>, latency_us: u64) -> String {
        let mut out = b"left over from the last line\n".to_vec();
        out.clear();
        line.write_start(&mut out);
        finish_line(&mut out, status, latency_us);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_written_line_reads_back_as_the_record_with_the_same_values() {
        let headers = [
            ("accept", "*/*"),
            ("authorization", "Bearer secret-token"),
            ("x-note", "quote \" backslash \\ newline \n tab \t é \u{1}"),
        ];
        let ids = vec!["p1".to_owned(), "p2".to_owned()];
        let errors = vec!["error while evaluating policy `p3`: overflow".to_owned()];
        let line = DecisionLine {
            time: UNIX_EPOCH + Duration::from_millis(1_764_100_000_123),
            decision_id: "abc-1",
            peer_spiffe_id: Some("spiffe://example.org/ns/prod/sa/web"),
            source_addr: "10.0.0.7:4000",
            resource: "api",
            method: "GET",
            path: "/v1/\"odd\"\npath",
            query: "a=1&b=%22",
            headers: LoggedHeaders {
                headers: &headers,
                redacted: &["authorization", "cookie"],
            },
            action: "GET",
            tls_version: Some("TLSv1.3"),
            decision: Outcome::Allow,
            policy_ids: &ids,
            policy_version: "sha256:00",
            eval_time_us: 4,
            errors: &errors,
        };
        let text = line_of(&line, Some(200), 321);
        assert!(
            text.ends_with("}\n") && text.matches('\n').count() == 1,
            "{text}"
        );
        assert!(!text.contains("secret-token"));
        let back: DecisionRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(
            back,
            DecisionRecord {
                time: "2025-11-25T19:46:40.123Z".to_owned(),
                decision_id: "abc-1".to_owned(),
                peer_spiffe_id: Some("spiffe://example.org/ns/prod/sa/web".to_owned()),
                source_addr: "10.0.0.7:4000".to_owned(),
                resource: "api".to_owned(),
                method: "GET".to_owned(),
                path: "/v1/\"odd\"\npath".to_owned(),
                query: "a=1&b=%22".to_owned(),
                headers: vec![
                    ("accept".to_owned(), "*/*".to_owned()),
                    ("authorization".to_owned(), REDACTED.to_owned()),
                    ("x-note".to_owned(), headers[2].1.to_owned()),
                ],
                action: "GET".to_owned(),
                tls_version: Some("TLSv1.3".to_owned()),
                decision: Outcome::Allow,
                policy_ids: ids.clone(),
                policy_version: "sha256:00".to_owned(),
                eval_time_us: 4,
                upstream_status: Some(200),
                latency_us: 321,
                errors: errors.clone(),
            }
        );
        assert_eq!(parse_time(&back.time), Some(line.time));
    }

    /// A denied `connect` from a plaintext caller at the epoch.
    fn plain_connect_denial() -> DecisionLine<'static> {
        DecisionLine {
            time: UNIX_EPOCH,
            decision_id: "d",
            peer_spiffe_id: None,
            source_addr: "127.0.0.1:1",
            resource: "api",
            method: "",
            path: "",
            query: "",
            headers: LoggedHeaders {
                headers: &[],
                redacted: &[],
            },
            action: "connect",
            tls_version: None,
            decision: Outcome::Deny,
            policy_ids: &[],
            policy_version: "v",
            eval_time_us: 0,
            errors: &[],
        }
    }

    #[test]
    fn each_line_carries_its_own_millisecond() {
        let base = UNIX_EPOCH + Duration::from_millis(1_764_100_000_123);
        let times = [
            (base, "2025-11-25T19:46:40.123Z"),
            (
                base + Duration::from_micros(500),
                "2025-11-25T19:46:40.123Z",
            ),
            (base + Duration::from_millis(1), "2025-11-25T19:46:40.124Z"),
            (base, "2025-11-25T19:46:40.123Z"),
            (UNIX_EPOCH, "1970-01-01T00:00:00.000Z"),
        ];
        for (time, want) in times {
            let line = DecisionLine {
                time,
                ..plain_connect_denial()
            };
            let back: DecisionRecord = serde_json::from_str(&line_of(&line, None, 1)).unwrap();
            assert_eq!(back.time, want);
        }
    }

    #[test]
    fn a_denied_line_has_a_null_upstream_status_and_no_peer_when_plaintext() {
        let line = plain_connect_denial();
        let text = line_of(&line, None, 7);
        assert!(
            text.contains("\"upstream_status\":null,\"latency_us\":7}"),
            "{text}"
        );
        let back: DecisionRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back.time, "1970-01-01T00:00:00.000Z");
        assert_eq!(back.peer_spiffe_id, None);
        assert_eq!(back.upstream_status, None);
        assert_eq!(back.decision, Outcome::Deny);
    }
}
