//! Health and metrics over HTTP: `/healthz` (the process serves), `/readyz` (attested and the
//! cache filled once), `/metrics` (Prometheus text).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cache::CacheState;
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
struct Shared {
    state: watch::Receiver<Arc<CacheState>>,
    metrics: Arc<Metrics>,
}

/// The bound health/metrics listener.
#[derive(Debug)]
pub struct HttpServer {
    listener: TcpListener,
    router: Router,
}

// === impl HttpServer ===

impl HttpServer {
    /// Binds `addr`.
    pub async fn new(
        addr: SocketAddr,
        state: watch::Receiver<Arc<CacheState>>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let router = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_text))
            .with_state(Shared { state, metrics });
        Ok(Self { listener, router })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

async fn readyz(State(s): State<Shared>) -> (StatusCode, &'static str) {
    if s.state.borrow().ready {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: not attested or cache not filled\n",
        )
    }
}

async fn metrics_text(State(s): State<Shared>) -> ([(&'static str, &'static str); 1], String) {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(SystemTime::now()),
    )
}
