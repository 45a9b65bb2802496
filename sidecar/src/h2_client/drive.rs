//! Driving a shared connection: the `h2` connection future, with keep-alive pings while
//! exchanges are in flight ([`KeepAlive`]), until it ends; then it is marked closed.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use h2::client::Connection;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::MissedTickBehavior;

use super::{ConnState, KeepAlive};

/// Runs the connection until it ends (the peer closed it, it failed, or every handle and stream
/// is gone), pinging per `keep_alive`; then marks it closed. (A connection whose upstream
/// lapsed is ended from outside: [`crate::lapse::end_when_lapsed`].)
pub(super) async fn drive<I>(
    connection: Connection<I, Bytes>,
    state: Arc<ConnState>,
    keep_alive: Option<KeepAlive>,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let result = match keep_alive {
        Some(keep_alive) => drive_with_pings(connection, &state, keep_alive).await,
        None => connection.await,
    };
    state.closed.store(true, Ordering::Relaxed);
    if let Err(e) = result {
        tracing::debug!(error = %e, "h2 client connection ended with an error");
    }
}

async fn drive_with_pings<I>(
    mut connection: Connection<I, Bytes>,
    state: &ConnState,
    keep_alive: KeepAlive,
) -> Result<(), h2::Error>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let Some(mut pings) = connection.ping_pong() else {
        return connection.await;
    };
    let start = tokio::time::Instant::now() + keep_alive.interval;
    let mut ticks = tokio::time::interval_at(start, keep_alive.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            result = &mut connection => return result,
            _ = ticks.tick() => {}
        }
        // No pings on an idle connection: they would keep it (and the peer's side) open.
        if state.in_flight.load(Ordering::Relaxed) == 0 {
            continue;
        }
        let pong = tokio::time::timeout(keep_alive.timeout, pings.ping(h2::Ping::opaque()));
        tokio::pin!(pong);
        tokio::select! {
            result = &mut connection => return result,
            answered = &mut pong => match answered {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    tracing::warn!(
                        timeout = ?keep_alive.timeout,
                        "h2 peer did not answer a keep-alive ping in time; closing the connection"
                    );
                    return Ok(());
                }
            }
        }
    }
}
