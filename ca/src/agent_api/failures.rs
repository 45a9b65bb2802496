//! Failed attestations: each is counted and logged as a warning (never with the join token);
//! a join token that is known but expired or already used is also audited as
//! `agent.attestation_failed`, since a replayed token points at a leaked one.
//!
//! Other failures (unknown token, bad CSR, failed x509pop proof) are not audited: anyone can
//! cause them without holding a credential, and the audit log is append-only. For the same
//! reason a refused token is audited once a minute at most ([`FailureAudits`]), with how many
//! refusals the record stands for: whoever replays a leaked token could otherwise grow the log,
//! and hold its write lock, at their own pace.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::json;
use tonic::{Request, Status};
use warden_api::transport::TlsConnectInfo;
use warden_identity::SpiffeId;

use super::AgentService;
use crate::datastore::AuditEvent;

/// Audit actor of a failed attestation: the caller is not authenticated.
const ANONYMOUS: &str = "anonymous";
/// Least time between two audit records of refusals for one agent ID.
const AUDIT_INTERVAL: Duration = Duration::from_secs(60);
/// Agent IDs whose refusals are followed at once; past that, those not refused within the
/// interval are forgotten (and, if all were, every one).
const MAX_FOLLOWED: usize = 4096;

/// When refusals for each agent ID were last audited, and how many were refused since.
#[derive(Debug, Default)]
pub(super) struct FailureAudits(Mutex<HashMap<String, (Instant, u64)>>);

impl FailureAudits {
    /// Counts a refusal for `subject` at `now`; `Some(n)` when it is to be audited, `n` being
    /// the refusals since the last audited one that were not.
    pub(super) fn note(&self, subject: &str, now: Instant) -> Option<u64> {
        let mut followed = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, held)) = followed.get_mut(subject) {
            if now.duration_since(*at) < AUDIT_INTERVAL {
                *held += 1;
                return None;
            }
            *at = now;
            return Some(std::mem::take(held));
        }
        if followed.len() >= MAX_FOLLOWED {
            followed.retain(|_, (at, _)| now.duration_since(*at) < AUDIT_INTERVAL);
            if followed.len() >= MAX_FOLLOWED {
                followed.clear();
            }
        }
        followed.insert(subject.to_owned(), (now, 0));
        Some(0)
    }
}

/// How an attestation call ended, for [`AgentService::attestation_done`].
#[derive(Debug)]
pub(super) struct Attempt<'a> {
    /// `join_token` or `x509pop`.
    pub(super) attestor: &'static str,
    /// The agent ID it was for, when known before it failed.
    pub(super) agent: Option<&'a SpiffeId>,
    /// The caller's address.
    pub(super) src: Option<SocketAddr>,
    /// Whether a failure is worth an audit record (a known join token refused).
    pub(super) audit: bool,
}

/// The caller's TCP address.
pub(super) fn src_addr<T>(req: &Request<T>) -> Option<SocketAddr> {
    req.extensions()
        .get::<TlsConnectInfo>()
        .and_then(|i| i.remote_addr)
}

// === impl AgentService ===

impl AgentService {
    /// Counts the attestation; on failure, logs a warning and, if `attempt.audit`, appends an
    /// `agent.attestation_failed` audit record (a failure to append is logged, not returned).
    pub(super) async fn attestation_done<R>(
        &self,
        attempt: Attempt<'_>,
        result: &Result<R, Status>,
    ) {
        self.inner
            .metrics
            .attestation(attempt.attestor, result.is_ok());
        let Err(status) = result else {
            return;
        };
        let agent = attempt.agent.map(ToString::to_string);
        let src = attempt.src.map(|a| a.to_string());
        tracing::warn!(
            attestor = attempt.attestor,
            agent = agent.as_deref().unwrap_or("-"),
            src.addr = src.as_deref().unwrap_or("-"),
            error = %status.message(),
            "attestation failed"
        );
        if !attempt.audit {
            return;
        }
        let subject = agent.unwrap_or_default();
        let Some(unaudited) = self.inner.failure_audits.note(&subject, Instant::now()) else {
            return;
        };
        let ev = AuditEvent {
            kind: "agent.attestation_failed".into(),
            actor: ANONYMOUS.into(),
            subject,
            detail: json!({
                "attestor": attempt.attestor,
                "reason": status.message(),
                "src_addr": src,
                "refused_since_last_record": unaudited,
            }),
        };
        if let Err(e) = self.inner.ds.append_audit(&ev).await {
            tracing::error!(error = %e, "cannot audit a failed attestation");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_for_one_agent_are_audited_once_per_interval_with_a_count() {
        let audits = FailureAudits::default();
        let t0 = Instant::now();
        assert_eq!(audits.note("a", t0), Some(0), "the first");
        for s in 1..=3 {
            assert_eq!(audits.note("a", t0 + Duration::from_secs(s)), None);
        }
        // Another agent ID is its own.
        assert_eq!(audits.note("b", t0 + Duration::from_secs(2)), Some(0));
        assert_eq!(audits.note("a", t0 + AUDIT_INTERVAL), Some(3));
        assert_eq!(audits.note("a", t0 + AUDIT_INTERVAL), None);
    }

    #[test]
    fn the_followed_ids_are_bounded() {
        let audits = FailureAudits::default();
        let t0 = Instant::now();
        for n in 0..(MAX_FOLLOWED + 10) {
            assert_eq!(audits.note(&format!("id-{n}"), t0), Some(0));
        }
        let followed = audits.0.lock().unwrap().len();
        assert!(followed <= MAX_FOLLOWED, "{followed}");
    }
}
