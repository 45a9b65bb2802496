//! Long-lived connections decided again when the policy set changes: an opaque TCP connection
//! (action `connect`) and an upgraded HTTP connection (its upgrade request, as it was made).
//! Each re-decision is logged; in enforce mode a connection no longer allowed is closed.

use std::time::{Duration, SystemTime};

use http::Request;
use warden_policy::Operation;

use super::record::{self, RequestParts, XFCC};
use super::{ConnInfo, Shared};
use crate::config::Mode;

/// How often an open connection looks for a new policy version.
const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// What a long-lived connection was decided on.
pub(super) trait Decided {
    /// Calls `f` with the request to decide again (its time: now).
    fn with_parts<R>(&self, f: impl FnOnce(&RequestParts<'_>) -> R) -> R;
}

/// An opaque TCP connection: action `connect`, nothing else.
pub(super) struct Connect;

/// An upgrade request's own parts, kept while its tunnel is open.
pub(super) struct Upgrade {
    method: String,
    grpc: bool,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
}

/// Completes when a new policy set no longer allows the connection (enforce mode): the
/// connection is decided again with each new policy version after `version`, and each new
/// decision is logged.
pub(super) async fn revoked(
    shared: &Shared,
    conn: &ConnInfo,
    mut version: String,
    decided: &impl Decided,
) {
    let mut tick = tokio::time::interval(RECHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let set = shared.engine.current();
        if set.version() == version {
            continue;
        }
        version = set.version().to_owned();
        let allowed = decided.with_parts(|parts| {
            let decision = set.decide(&record::policy_request(conn, &shared.config.service, parts));
            shared.log.push(&record::whole_line(
                &shared.ids.next(),
                conn,
                &shared.config.service,
                parts,
                &decision,
                None,
                Duration::ZERO,
            ));
            decision.is_allowed()
        });
        if !allowed && shared.mode == Mode::Enforce {
            tracing::info!(src.addr = %conn.source, policy.version = %version, "connection closed: no longer allowed");
            return;
        }
    }
}

// === impl Connect ===

impl Connect {
    pub(super) fn parts() -> RequestParts<'static> {
        RequestParts {
            operation: Operation::Connect,
            method: "",
            path: "",
            query: "",
            headers: &[],
            time: SystemTime::now(),
        }
    }
}

impl Decided for Connect {
    fn with_parts<R>(&self, f: impl FnOnce(&RequestParts<'_>) -> R) -> R {
        f(&Self::parts())
    }
}

// === impl Upgrade ===

impl Upgrade {
    /// The parts of `req` its decision reads (the caller's XFCC left out, as
    /// [`super::http::handle`] removes it before deciding).
    pub(super) fn of<B>(req: &Request<B>) -> Self {
        Self {
            method: req.method().as_str().to_owned(),
            grpc: super::http::grpc_call(req).unwrap_or(false),
            path: req.uri().path().to_owned(),
            query: req.uri().query().unwrap_or("").to_owned(),
            headers: record::header_pairs(req)
                .into_iter()
                .filter(|(name, _)| *name != XFCC)
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
        }
    }
}

impl Decided for Upgrade {
    fn with_parts<R>(&self, f: impl FnOnce(&RequestParts<'_>) -> R) -> R {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        f(&RequestParts::http(
            &self.method,
            self.grpc,
            &self.path,
            &self.query,
            &headers,
            SystemTime::now(),
        ))
    }
}
