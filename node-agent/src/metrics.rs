//! The agent's Prometheus metrics: workload attestations by result, SVIDs cached, rotations,
//! CA sync failures and the time since the last successful sync.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = [(&'static str, &'static str); 1];

/// Metric handles, shared by the sync loop, the Workload API and the HTTP endpoint.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    attestations: Family<Labels, Counter>,
    svids_cached: Gauge,
    entries: Gauge,
    rotations: Counter,
    sync_failures: Counter,
    seconds_since_sync: Gauge,
    last_sync_unix: AtomicI64,
}

/// Outcome label of one workload attestation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttestationResult {
    /// Matched at least one entry.
    Success,
    /// Attested, but matched no entry.
    NoIdentity,
    /// Could not be attested (process gone, pid reuse, no credentials).
    Error,
}

// === impl Metrics ===

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `warden_agent` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("warden_agent");
        let attestations = Family::<Labels, Counter>::default();
        registry.register(
            "workload_attestations",
            "Workload attestations by result",
            attestations.clone(),
        );
        let svids_cached = Gauge::default();
        registry.register(
            "svids_cached",
            "X.509-SVIDs held in the cache",
            svids_cached.clone(),
        );
        let entries = Gauge::default();
        registry.register(
            "entries",
            "Registration entries synced from the CA",
            entries.clone(),
        );
        let rotations = Counter::default();
        registry.register(
            "svid_rotations",
            "X.509-SVIDs replaced before expiry",
            rotations.clone(),
        );
        let sync_failures = Counter::default();
        registry.register(
            "ca_sync_failures",
            "Failed syncs with the CA",
            sync_failures.clone(),
        );
        let seconds_since_sync = Gauge::default();
        registry.register(
            "seconds_since_last_sync",
            "Seconds since the last successful sync with the CA (-1 before the first)",
            seconds_since_sync.clone(),
        );
        Self {
            registry,
            attestations,
            svids_cached,
            entries,
            rotations,
            sync_failures,
            seconds_since_sync,
            last_sync_unix: AtomicI64::new(-1),
        }
    }

    /// Counts one workload attestation.
    pub fn attestation(&self, result: AttestationResult) {
        let label = match result {
            AttestationResult::Success => "success",
            AttestationResult::NoIdentity => "no_identity",
            AttestationResult::Error => "error",
        };
        self.attestations.get_or_create(&[("result", label)]).inc();
    }

    /// Sets the cache sizes.
    pub fn set_cache_size(&self, entries: usize, svids: usize) {
        self.entries.set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.svids_cached
            .set(i64::try_from(svids).unwrap_or(i64::MAX));
    }

    /// Counts rotated SVIDs.
    pub fn rotated(&self, n: u64) {
        self.rotations.inc_by(n);
    }

    /// Counts a failed sync.
    pub fn sync_failed(&self) {
        self.sync_failures.inc();
    }

    /// Records a successful sync at `now`.
    pub fn synced(&self, now: SystemTime) {
        self.last_sync_unix.store(unix(now), Ordering::Relaxed);
    }

    /// Prometheus text exposition at `now`.
    pub fn encode(&self, now: SystemTime) -> String {
        let last = self.last_sync_unix.load(Ordering::Relaxed);
        self.seconds_since_sync.set(if last < 0 {
            -1
        } else {
            unix(now).saturating_sub(last)
        });
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn exposes_every_metric_in_prometheus_text() {
        let m = Metrics::new();
        m.attestation(AttestationResult::Success);
        m.attestation(AttestationResult::NoIdentity);
        m.attestation(AttestationResult::NoIdentity);
        m.set_cache_size(3, 2);
        m.rotated(2);
        m.sync_failed();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let before = m.encode(t0);
        assert!(
            before.contains("warden_agent_seconds_since_last_sync -1"),
            "{before}"
        );
        m.synced(t0);
        let text = m.encode(t0 + Duration::from_secs(7));
        assert!(
            text.contains("warden_agent_workload_attestations_total{result=\"success\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("warden_agent_workload_attestations_total{result=\"no_identity\"} 2")
        );
        assert!(text.contains("warden_agent_svids_cached 2"));
        assert!(text.contains("warden_agent_entries 3"));
        assert!(text.contains("warden_agent_svid_rotations_total 2"));
        assert!(text.contains("warden_agent_ca_sync_failures_total 1"));
        assert!(text.contains("warden_agent_seconds_since_last_sync 7"));
    }
}
