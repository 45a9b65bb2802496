//! The inbound TCP proxy (`protocol = "tcp"`): one decision per connection with action
//! `connect`; an allowed connection is joined to a new connection to the app and bytes are
//! copied both ways until either side closes or the connection idles out. A denied one is
//! closed before any byte reaches the app. When the policy set changes, each open connection is
//! decided again and closed if it is no longer allowed.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use warden_policy::Operation;

use super::record::{self, RequestParts};
use super::{ConnInfo, Shared};
use crate::config::Mode;
use crate::metrics::{DecisionLabel, Direction};

/// How often an open connection looks for a new policy version.
const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

pub(super) async fn serve<I>(
    shared: &Arc<Shared>,
    mut io: I,
    conn: ConnInfo,
    idle: impl Future<Output = ()>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let start = Instant::now();
    let parts = connect_parts();
    let decision = shared.engine.decide(&record::policy_request(
        &conn,
        &shared.config.service,
        &parts,
    ));
    shared.metrics.authorization(decision.eval_time());
    let allowed = decision.is_allowed() || shared.mode == Mode::DryRun;
    let id = shared.ids.next();
    super::trace_decision(shared, &conn, &id, &decision, "connect");
    let label = DecisionLabel::of(&decision);
    let app = if allowed {
        match TcpStream::connect(shared.config.app).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                Some(s)
            }
            Err(e) => {
                tracing::warn!(error = %e, app = %shared.config.app, "cannot connect to the app");
                None
            }
        }
    } else {
        None
    };
    let latency = start.elapsed();
    shared.log.push(&record::whole_line(
        &id,
        &conn,
        &shared.config.service,
        &parts,
        &decision,
        None,
        latency,
    ));
    shared
        .metrics
        .request(Direction::Inbound, label, None, latency);
    let Some(mut app) = app else {
        return;
    };
    let version = decision.version().to_owned();
    let mut stop = shared.stop.subscribe();
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut io, &mut app) => {
            if let Err(e) = result {
                tracing::debug!(src.addr = %conn.source, error = %e, "tcp proxy ended with an error");
            }
        }
        () = idle => tracing::debug!(src.addr = %conn.source, "idle timeout"),
        () = revoked(shared, &conn, version) => {}
        _ = stop.wait_for(|stop| *stop) => tracing::debug!(src.addr = %conn.source, "sidecar stopping"),
    }
}

/// Completes when a new policy set no longer allows the connection (enforce mode): the
/// connection is decided again with each new policy version, and the new decision is logged.
async fn revoked(shared: &Shared, conn: &ConnInfo, mut version: String) {
    let mut tick = tokio::time::interval(RECHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let set = shared.engine.current();
        if set.version() == version {
            continue;
        }
        version = set.version().to_owned();
        let parts = connect_parts();
        let decision = set.decide(&record::policy_request(
            conn,
            &shared.config.service,
            &parts,
        ));
        shared.log.push(&record::whole_line(
            &shared.ids.next(),
            conn,
            &shared.config.service,
            &parts,
            &decision,
            None,
            std::time::Duration::ZERO,
        ));
        if !decision.is_allowed() && shared.mode == Mode::Enforce {
            tracing::info!(src.addr = %conn.source, policy.version = %version, "connection closed: no longer allowed");
            return;
        }
    }
}

fn connect_parts() -> RequestParts<'static> {
    RequestParts {
        operation: Operation::Connect,
        method: "",
        path: "",
        query: "",
        headers: &[],
        time: SystemTime::now(),
    }
}
