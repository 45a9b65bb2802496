//! The admin HTTP listener: `/healthz` (the process runs), `/readyz` (an unexpired SVID is held
//! and every listener is bound) and `/metrics` (Prometheus text format).
//!
//! It is bounded like the data listeners, so that nobody who can reach it can exhaust the
//! process: at most [`MAX_CONNECTIONS`] at once, each request's head within [`HEADER_TIMEOUT`],
//! each connection closed (gracefully, after the request in progress) once it is
//! [`CONNECTION_LIFETIME`] old. Nor can they starve the probes by holding every slot: a new
//! connection past the limit closes the oldest one that is not answering a request (a
//! connection that never sends one is always such), and is refused only while every open
//! connection is answering one.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

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

/// The open admin connections, oldest first.
#[derive(Debug, Default)]
struct Open {
    next_id: u64,
    conns: VecDeque<Tracked>,
}

#[derive(Debug)]
struct Tracked {
    id: u64,
    /// Answering a request.
    busy: Arc<AtomicBool>,
    /// Tells the connection to close.
    close: Arc<Notify>,
}

/// What an admitted connection is given.
struct Admitted {
    id: u64,
    busy: Arc<AtomicBool>,
    close: Arc<Notify>,
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
        let open = Arc::new(Mutex::new(Open::default()));
        let mut shutdown = pin!(shutdown);
        loop {
            let stream = tokio::select! {
                () = &mut shutdown => return,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors, say: pause rather than spin.
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let admitted = open.lock().unwrap_or_else(PoisonError::into_inner).admit();
            let Some(Admitted { id, busy, close }) = admitted else {
                tracing::debug!("admin connection refused: every open one is answering a request");
                continue;
            };
            let service = TowerToHyperService::new(app.clone());
            let open = Arc::clone(&open);
            tokio::spawn(async move {
                serve_connection(TokioIo::new(stream), service, busy, &close).await;
                open.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(id);
            });
        }
    }
}

// === impl Open ===

impl Open {
    /// Registers a new connection. At [`MAX_CONNECTIONS`], the oldest connection not answering a
    /// request is told to close and leaves the list first; `None` (refused) when every open
    /// connection is answering one.
    fn admit(&mut self) -> Option<Admitted> {
        if self.conns.len() >= MAX_CONNECTIONS {
            let idle = self
                .conns
                .iter()
                .position(|c| !c.busy.load(Ordering::Acquire))?;
            if let Some(evicted) = self.conns.remove(idle) {
                evicted.close.notify_one();
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let busy = Arc::new(AtomicBool::new(false));
        let close = Arc::new(Notify::new());
        self.conns.push_back(Tracked {
            id,
            busy: Arc::clone(&busy),
            close: Arc::clone(&close),
        });
        Some(Admitted { id, busy, close })
    }

    fn remove(&mut self, id: u64) {
        if let Some(i) = self.conns.iter().position(|c| c.id == id) {
            self.conns.remove(i);
        }
    }
}

/// Serves one admin connection: HTTP/1.1, each request's head within [`HEADER_TIMEOUT`], `busy`
/// while a request is answered, closed at once when `close` is notified (it was idle) and
/// gracefully once [`CONNECTION_LIFETIME`] old.
async fn serve_connection<I>(
    io: I,
    service: TowerToHyperService<Router>,
    busy: Arc<AtomicBool>,
    close: &Notify,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        busy.store(true, Ordering::Release);
        let answer = hyper::service::Service::call(&service, req);
        let busy = Arc::clone(&busy);
        async move {
            let answer = answer.await;
            busy.store(false, Ordering::Release);
            answer
        }
    });
    let mut conn = pin!(
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(io, service)
    );
    tokio::select! {
        _ = conn.as_mut() => {}
        () = close.notified() => {
            tracing::debug!("admin connection closed for a newer one");
        }
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
    fn past_the_limit_the_oldest_idle_connection_makes_room_and_busy_ones_are_kept() {
        let mut open = Open::default();
        let admitted: Vec<Admitted> = (0..MAX_CONNECTIONS)
            .map(|_| open.admit().unwrap())
            .collect();
        // The two oldest are answering requests: the third oldest is closed for the newcomer.
        admitted[0].busy.store(true, Ordering::Release);
        admitted[1].busy.store(true, Ordering::Release);
        let newcomer = open.admit().unwrap();
        assert_eq!(open.conns.len(), MAX_CONNECTIONS);
        assert!(open.conns.iter().all(|c| c.id != admitted[2].id));
        assert_eq!(open.conns.back().map(|c| c.id), Some(newcomer.id));
        // Its close was signalled (a stored permit: `notified` completes at once).
        let closed = admitted[2].close.notified();
        let mut closed = std::pin::pin!(closed);
        assert!(
            closed
                .as_mut()
                .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
                .is_ready()
        );
        // Every one busy: refused.
        for c in &open.conns {
            c.busy.store(true, Ordering::Release);
        }
        assert!(open.admit().is_none());
        // A connection that ends leaves the list.
        open.remove(newcomer.id);
        assert_eq!(open.conns.len(), MAX_CONNECTIONS - 1);
        assert!(open.admit().is_some());
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
