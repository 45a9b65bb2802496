//! The admin HTTP listener: `/healthz` (the process runs), `/readyz` (an unexpired SVID is held
//! and every listener is bound) and `/metrics` (Prometheus text format).
//!
//! It is bounded like the data listeners, so that nobody who can reach it can exhaust the
//! process or starve the probes: at most [`MAX_CONNECTIONS`] at once (the next ones wait in the
//! kernel's backlog until a slot frees), each request's head within [`HEADER_TIMEOUT`], and each
//! connection closed (gracefully, after the request in progress) once it is
//! [`CONNECTION_LIFETIME`] old.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::identity_source::Current;
use crate::metrics::Metrics;

/// Admin connections served at once.
const MAX_CONNECTIONS: usize = 32;
/// Deadline for each request's head, from the connection's start or its previous response.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Age at which a connection is closed after its request in progress (a scraper reconnects).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// How long a closing connection may take to finish its request in progress.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What the admin endpoints read.
#[derive(Debug)]
pub(crate) struct AdminState {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) identity: watch::Receiver<Option<Current>>,
    /// Set once every inbound and outbound listener is bound.
    pub(crate) listening: AtomicBool,
}

/// The bound admin listener.
#[derive(Debug)]
pub(crate) struct Admin {
    listener: TcpListener,
    state: Arc<AdminState>,
}

// === impl AdminState ===

impl AdminState {
    /// Whether the sidecar can serve: an SVID that has not expired, and listeners bound.
    pub(crate) fn ready(&self) -> Result<(), &'static str> {
        let expired = match &*self.identity.borrow() {
            None => return Err("no svid yet"),
            Some(c) => c.not_after <= SystemTime::now(),
        };
        if expired {
            return Err("svid expired");
        }
        if !self.listening.load(Ordering::Acquire) {
            return Err("listeners not bound");
        }
        Ok(())
    }
}

// === impl Admin ===

impl Admin {
    pub(crate) async fn new(
        addr: SocketAddr,
        state: Arc<AdminState>,
    ) -> Result<Self, crate::Error> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| crate::Error::Bind {
                what: "admin",
                addr,
                source,
            })?;
        Ok(Self { listener, state })
    }

    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes; connections open then are dropped with the runtime.
    pub(crate) async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let app = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(self.state);
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut shutdown = pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => return,
                accepted = async {
                    // A slot first: past the limit, connections wait in the backlog.
                    let slot = Arc::clone(&slots).acquire_owned().await;
                    (slot, self.listener.accept().await)
                } => accepted,
            };
            let (stream, slot) = match accepted {
                (Ok(slot), Ok((stream, _))) => (stream, slot),
                (_, Err(e)) => {
                    // Out of file descriptors, say: pause rather than spin.
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                (Err(_), _) => return,
            };
            let service = TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let _slot = slot;
                serve_connection(TokioIo::new(stream), service).await;
            });
        }
    }
}

/// Serves one admin connection: HTTP/1.1, each request's head within [`HEADER_TIMEOUT`], closed
/// once [`CONNECTION_LIFETIME`] old.
async fn serve_connection<I, S>(io: I, service: S)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut conn = pin!(
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(io, service)
    );
    tokio::select! {
        _ = conn.as_mut() => {}
        () = tokio::time::sleep(CONNECTION_LIFETIME) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
        }
    }
}

async fn readyz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    match state.ready() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn state(not_after: Option<SystemTime>, listening: bool) -> AdminState {
        let current = not_after.map(|t| Current {
            spiffe_id: "spiffe://example.org/api".parse().unwrap(),
            not_after: t,
        });
        let (_tx, identity) = watch::channel(current);
        AdminState {
            metrics: Arc::new(Metrics::new()),
            identity,
            listening: AtomicBool::new(listening),
        }
    }

    #[test]
    fn ready_only_with_an_unexpired_svid_and_bound_listeners() {
        let later = SystemTime::now() + Duration::from_secs(60);
        let earlier = SystemTime::now() - Duration::from_secs(1);
        assert_eq!(state(None, false).ready(), Err("no svid yet"));
        assert_eq!(
            state(Some(later), false).ready(),
            Err("listeners not bound")
        );
        assert_eq!(state(Some(earlier), true).ready(), Err("svid expired"));
        assert_eq!(state(Some(later), true).ready(), Ok(()));
    }
}
