//! The inbound TCP proxy (`protocol = "tcp"`): one decision per connection with action
//! `connect`; an allowed connection is joined to a new connection to the app and bytes are
//! copied both ways until either side closes or the connection idles out. A denied one is
//! closed before any byte reaches the app. When the policy set changes, each open connection is
//! decided again and closed if it is no longer allowed.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::record;
use super::revoke;
use super::{ConnInfo, Shared};
use crate::config::Mode;
use crate::metrics::{DecisionLabel, Direction};

pub(super) async fn serve<I>(
    shared: &Arc<Shared>,
    mut io: I,
    conn: ConnInfo,
    idle: impl Future<Output = ()>,
    lapsed: impl Future<Output = ()>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let start = Instant::now();
    let parts = revoke::Connect::parts();
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
        let connect = TcpStream::connect(shared.config.app);
        match tokio::time::timeout(super::forward::CONNECT_TIMEOUT, connect).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Some(s)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, app = %shared.config.app, "cannot connect to the app");
                None
            }
            Err(_) => {
                tracing::warn!(app = %shared.config.app, "connecting to the app timed out");
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
        () = revoke::revoked(shared, &conn, version, &revoke::Connect) => {}
        () = lapsed => tracing::debug!(src.addr = %conn.source, "caller's credentials lapsed"),
        _ = stop.wait_for(|stop| *stop) => tracing::debug!(src.addr = %conn.source, "sidecar stopping"),
    }
}
