//! Failed attestations: each is counted and logged as a warning (never with the join token);
//! a join token that is known but expired or already used is also audited as
//! `agent.attestation_failed`, since a replayed token points at a leaked one.
//!
//! Other failures (unknown token, bad CSR, failed x509pop proof) are not audited: anyone can
//! cause them without holding a credential, and the audit log is append-only.

use std::net::SocketAddr;

use serde_json::json;
use tonic::{Request, Status};
use warden_api::transport::TlsConnectInfo;
use warden_identity::SpiffeId;

use super::AgentService;
use crate::datastore::AuditEvent;

/// Audit actor of a failed attestation: the caller is not authenticated.
const ANONYMOUS: &str = "anonymous";

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
        let ev = AuditEvent {
            kind: "agent.attestation_failed".into(),
            actor: ANONYMOUS.into(),
            subject: agent.unwrap_or_default(),
            detail: json!({
                "attestor": attempt.attestor,
                "reason": status.message(),
                "src_addr": src,
            }),
        };
        if let Err(e) = self.inner.ds.append_audit(&ev).await {
            tracing::error!(error = %e, "cannot audit a failed attestation");
        }
    }
}
