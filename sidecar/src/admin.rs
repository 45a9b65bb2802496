//! The admin HTTP listener: `/healthz` (the process runs), `/readyz` (an unexpired SVID is held
//! and every listener is bound) and `/metrics` (Prometheus text format).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::identity_source::Current;
use crate::metrics::Metrics;

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

    pub(crate) async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let app = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(self.state);
        if let Err(e) = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "admin listener failed");
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
