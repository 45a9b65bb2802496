//! Prometheus metrics of the sidecar: requests by direction, decision and status class;
//! request latency and authorization time; TLS handshake failures by reason; connections
//! refused over the limit; dropped decision-log lines; seconds until the SVID expires.
//!
//! Counters used on every request are resolved once at start, so the request path does atomic
//! adds only (no label hashing, no locks).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::outbound::OutboundHooks;

/// Traffic direction, a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Inbound = 0,
    Outbound = 1,
}

/// The decision label of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecisionLabel {
    Allow = 0,
    Deny = 1,
    /// Not decided: outbound requests, and inbound requests the sidecar answers (400, 431)
    /// before any decision.
    None = 2,
}

impl DecisionLabel {
    /// The label of a policy decision (dry-run records what policy said, not what was done).
    pub(crate) fn of(decision: &warden_policy::Decision) -> Self {
        if decision.is_allowed() {
            Self::Allow
        } else {
            Self::Deny
        }
    }
}

/// Why a TLS handshake (or the connection's first bytes) failed, a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandshakeFailure {
    /// The client sent no certificate.
    NoCert,
    /// The chain does not lead to a trusted authority of the peer's trust domain.
    Untrusted,
    /// The certificate has expired (or is not yet valid).
    Expired,
    /// The certificate is not an X.509-SVID.
    NotSvid,
    /// The handshake did not finish in time.
    Timeout,
    /// The client offered nothing the server accepts: no common TLS version (a TLS 1.2 client
    /// while `tls12` is off), cipher suite, key exchange group or signature scheme.
    Incompatible,
    /// Anything else (protocol errors, plaintext on a strict port, resets).
    Other,
}

type Labels3 = [(&'static str, &'static str); 3];
type Labels2 = [(&'static str, &'static str); 2];
type Labels1 = [(&'static str, &'static str); 1];

const DIRECTIONS: [&str; 2] = ["inbound", "outbound"];
const DECISIONS: [&str; 3] = ["allow", "deny", "none"];
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// The sidecar's metrics.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// `[direction][decision][class]`.
    requests: Vec<Counter>,
    latency: [Histogram; 2],
    authz: Histogram,
    handshake_failures: Family<Labels2, Counter>,
    /// Inbound handshakes completed: full and resumed.
    handshakes_full: Counter,
    handshakes_resumed: Counter,
    policy_reloads: Family<Labels1, Counter>,
    refused: Counter,
    /// Requests sent once more because the upstream did not process them, by direction.
    resent: [Counter; 2],
    log_dropped: Counter,
    svid_expiry: Gauge<f64, AtomicU64>,
    svid_not_after: RwLock<Option<SystemTime>>,
}

// === impl Direction ===

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

// === impl HandshakeFailure ===

impl HandshakeFailure {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::NoCert => "no_cert",
            Self::Untrusted => "untrusted",
            Self::Expired => "expired",
            Self::NotSvid => "not_svid",
            Self::Timeout => "timeout",
            Self::Incompatible => "incompatible",
            Self::Other => "other",
        }
    }
}

// === impl Metrics ===

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("warden_sidecar");
        let requests_family = Family::<Labels3, Counter>::default();
        let mut requests = Vec::with_capacity(DIRECTIONS.len() * DECISIONS.len() * CLASSES.len());
        for direction in DIRECTIONS {
            for decision in DECISIONS {
                for class in CLASSES {
                    let labels = [
                        ("direction", direction),
                        ("decision", decision),
                        ("status_class", class),
                    ];
                    requests.push(requests_family.get_or_create_owned(&labels));
                }
            }
        }
        // Pre-created series that can never happen would only clutter the output.
        requests_family.remove(&[
            ("direction", "outbound"),
            ("decision", "allow"),
            ("status_class", "none"),
        ]);
        registry.register(
            "requests",
            "Requests (HTTP) and connections (tcp) by direction, decision and status class",
            requests_family,
        );
        let latency_family =
            Family::<Labels1, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_1, 2.0, 17))
            });
        let latency = DIRECTIONS.map(|d| latency_family.get_or_create_owned(&[("direction", d)]));
        registry.register(
            "request_duration_seconds",
            "Time from a request's head to its response's head",
            latency_family,
        );
        let authz = Histogram::new(exponential_buckets(0.000_002, 2.0, 16));
        registry.register(
            "authorization_duration_seconds",
            "Time to decide a request with the policy engine",
            authz.clone(),
        );
        let handshake_failures = Family::<Labels2, Counter>::default();
        registry.register(
            "handshake_failures",
            "Failed TLS handshakes by direction and reason",
            handshake_failures.clone(),
        );
        let handshakes_family = Family::<Labels2, Counter>::default();
        let handshake_kind = |kind| {
            handshakes_family.get_or_create_owned(&[("direction", "inbound"), ("kind", kind)])
        };
        let handshakes_full = handshake_kind("full");
        let handshakes_resumed = handshake_kind("resumed");
        registry.register(
            "tls_handshakes",
            "Completed inbound TLS handshakes: `full` (certificates exchanged and verified) or \
             `resumed` (a session ticket of a full one)",
            handshakes_family,
        );
        let policy_reloads = Family::<Labels1, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy directory reloads after a change: `replaced` (a new set in force) or \
             `rejected` (invalid; the old set stays)",
            policy_reloads.clone(),
        );
        for result in ["replaced", "rejected"] {
            let _ = policy_reloads.get_or_create(&[("result", result)]);
        }
        let refused = Counter::default();
        registry.register(
            "connections_refused",
            "Inbound connections closed because max_connections were open",
            refused.clone(),
        );
        let resent_family = Family::<Labels1, Counter>::default();
        let resent = DIRECTIONS.map(|d| resent_family.get_or_create_owned(&[("direction", d)]));
        registry.register(
            "requests_resent",
            "Bodiless requests sent once more because their HTTP/2 upstream (the app inbound, \
             the upstream outbound) did not process them: it refused the stream or went away \
             below it",
            resent_family,
        );
        let log_dropped = Counter::default();
        registry.register(
            "decision_log_dropped",
            "Decision-log lines lost: dropped because the writer fell behind, or not written because a write failed",
            log_dropped.clone(),
        );
        let svid_expiry = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "svid_expiry_seconds",
            "Seconds until the presented SVID expires (negative once expired)",
            svid_expiry.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            authz,
            handshake_failures,
            handshakes_full,
            handshakes_resumed,
            policy_reloads,
            refused,
            resent,
            log_dropped,
            svid_expiry,
            svid_not_after: RwLock::new(None),
        }
    }

    /// Counts one request and its latency.
    pub(crate) fn request(
        &self,
        direction: Direction,
        decision: DecisionLabel,
        status: Option<u16>,
        latency: Duration,
    ) {
        self.count(direction, decision, status);
        if let Some(h) = self.latency.get(direction as usize) {
            h.observe(latency.as_secs_f64());
        }
    }

    /// Counts one request (or connection) in `requests_total` only.
    fn count(&self, direction: Direction, decision: DecisionLabel, status: Option<u16>) {
        let class = match status {
            Some(s @ 100..=599) => usize::from(s / 100) - 1,
            _ => CLASSES.len() - 1,
        };
        let index =
            (direction as usize * DECISIONS.len() + decision as usize) * CLASSES.len() + class;
        if let Some(c) = self.requests.get(index) {
            c.inc();
        }
    }

    pub(crate) fn authorization(&self, took: Duration) {
        self.authz.observe(took.as_secs_f64());
    }

    pub(crate) fn handshake_failed(&self, direction: Direction, reason: &'static str) {
        let labels = [("direction", direction.as_str()), ("reason", reason)];
        self.handshake_failures.get_or_create(&labels).inc();
    }

    /// Counts a completed inbound handshake, `resumed` from a ticket or not.
    pub(crate) fn handshake_done(&self, resumed: bool) {
        if resumed {
            self.handshakes_resumed.inc();
        } else {
            self.handshakes_full.inc();
        }
    }

    pub(crate) fn connection_refused(&self) {
        self.refused.inc();
    }

    /// Counts a request sent once more to the upstream of `direction`.
    pub(crate) fn request_resent(&self, direction: Direction) {
        if let Some(c) = self.resent.get(direction as usize) {
            c.inc();
        }
    }

    pub(crate) fn decision_log_dropped(&self) {
        self.log_dropped.inc();
    }

    /// `lines` lines that a failed write lost.
    pub(crate) fn decision_log_lost(&self, lines: u64) {
        self.log_dropped.inc_by(lines);
    }

    pub(crate) fn set_svid_not_after(&self, not_after: SystemTime) {
        *self
            .svid_not_after
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(not_after);
    }

    /// Counts a reload of the policy directory: `replaced` or not (rejected as invalid).
    pub(crate) fn policy_reload(&self, replaced: bool) {
        let result = if replaced { "replaced" } else { "rejected" };
        self.policy_reloads
            .get_or_create(&[("result", result)])
            .inc();
    }

    /// The Prometheus text exposition, with the SVID expiry computed now.
    pub(crate) fn encode(&self) -> String {
        let not_after = *self
            .svid_not_after
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = not_after {
            let now = SystemTime::now();
            let secs = match t.duration_since(now) {
                Ok(d) => d.as_secs_f64(),
                Err(e) => -e.duration().as_secs_f64(),
            };
            self.svid_expiry.set(secs);
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            tracing::error!("cannot encode metrics");
        }
        out
    }
}

/// Outbound routes report into the same metrics.
#[derive(Debug)]
pub(crate) struct OutboundMetrics(pub(crate) Arc<Metrics>);

impl OutboundHooks for OutboundMetrics {
    fn request_done(&self, status: Option<u16>, latency: Duration) {
        self.0
            .request(Direction::Outbound, DecisionLabel::None, status, latency);
    }

    fn handshake_failed(&self, reason: &str) {
        // The outbound side's reasons (`outbound::HandshakeFailure::as_str`), as static labels.
        let reason = match reason {
            "unexpected_id" => "unexpected_id",
            "invalid_svid" => "invalid_svid",
            "expired" => "expired",
            "not_yet_valid" => "not_yet_valid",
            "peer_rejected" => "peer_rejected",
            "no_svid" => "no_svid",
            "timeout" => "timeout",
            "io" => "io",
            "protocol" => "protocol",
            _ => "other",
        };
        self.0.handshake_failed(Direction::Outbound, reason);
    }

    fn request_resent(&self) {
        self.0.request_resent(Direction::Outbound);
    }

    /// An outbound TCP connection is counted once it ends (its lifetime is no request latency).
    fn tcp_connection_done(&self, _sent: u64, _received: u64, _duration: Duration) {
        self.0.count(Direction::Outbound, DecisionLabel::None, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resent_requests_are_counted_by_direction() {
        let m = Arc::new(Metrics::new());
        let hooks = OutboundMetrics(Arc::clone(&m));
        hooks.request_resent();
        hooks.request_resent();
        m.request_resent(Direction::Inbound);
        let text = m.encode();
        for line in [
            r#"warden_sidecar_requests_resent_total{direction="outbound"} 2"#,
            r#"warden_sidecar_requests_resent_total{direction="inbound"} 1"#,
        ] {
            assert!(text.contains(line), "no {line} in {text}");
        }
    }

    #[test]
    fn outbound_tcp_connections_are_counted_without_a_latency() {
        let m = Arc::new(Metrics::new());
        let hooks = OutboundMetrics(Arc::clone(&m));
        hooks.tcp_connection_done(10, 20, Duration::from_secs(30));
        hooks.tcp_connection_done(0, 0, Duration::from_millis(1));
        let text = m.encode();
        assert!(
            text.contains(
                r#"warden_sidecar_requests_total{direction="outbound",decision="none",status_class="none"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"warden_sidecar_request_duration_seconds_count{direction="outbound"} 0"#
            ),
            "{text}"
        );
    }

    #[test]
    fn requests_are_counted_by_direction_decision_and_status_class() {
        let m = Metrics::new();
        m.request(
            Direction::Inbound,
            DecisionLabel::Allow,
            Some(204),
            Duration::from_millis(1),
        );
        m.request(
            Direction::Inbound,
            DecisionLabel::Deny,
            Some(403),
            Duration::from_millis(1),
        );
        m.handshake_failed(Direction::Inbound, HandshakeFailure::NoCert.as_str());
        m.set_svid_not_after(SystemTime::now() + Duration::from_secs(100));
        let text = m.encode();
        assert!(text.contains(
            r#"warden_sidecar_requests_total{direction="inbound",decision="allow",status_class="2xx"} 1"#
        ));
        assert!(text.contains(
            r#"warden_sidecar_requests_total{direction="inbound",decision="deny",status_class="4xx"} 1"#
        ));
        assert!(text.contains(
            r#"warden_sidecar_handshake_failures_total{direction="inbound",reason="no_cert"} 1"#
        ));
        assert!(text.contains("warden_sidecar_svid_expiry_seconds 99."));
        assert!(
            text.contains("warden_sidecar_request_duration_seconds_count{direction=\"inbound\"} 2")
        );
    }
}
