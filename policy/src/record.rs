//! Owned, serializable requests: [`RequestSpec`] (what `warden policy eval` and policy tests
//! describe) and [`DecisionRecord`], the sidecar's decision-log line (JSON lines), which
//! `warden policy diff` replays.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::SystemTime;

use crate::decision::Outcome;
use crate::model::UNAUTHENTICATED_ID;
use crate::request::{Caller, Operation, Request, TlsFacts, parse_time};

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
/// Headers are the ones the sidecar chose to log; it must redact credentials (`authorization`,
/// `cookie`), so a replayed request sees the redacted value.
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

    /// The headers as borrowed pairs.
    pub fn header_refs(&self) -> Vec<(&str, &str)> {
        self.headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
}

/// The trust domain part of a `spiffe://` string (empty if it has none).
fn trust_domain_of(id: &str) -> &str {
    let rest = id.strip_prefix("spiffe://").unwrap_or_default();
    rest.split('/').next().unwrap_or_default()
}

// === impl DecisionRecord ===

impl DecisionRecord {
    /// The request this record describes, for replay.
    pub fn to_spec(&self) -> Result<RequestSpec, String> {
        let source = self
            .source_addr
            .parse::<SocketAddr>()
            .map(|s| s.ip())
            .or_else(|_| self.source_addr.parse::<IpAddr>())
            .map_err(|_| format!("source_addr `{}` is not an address", self.source_addr))?;
        Ok(RequestSpec {
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
        })
    }
}
