//! `warden demo-app`: a tiny HTTP service built into the binary, so that `warden up` (and anyone
//! trying a sidecar by hand) has something to put behind a sidecar.
//!
//! Routes: `GET /v1/orders` (JSON list of orders), `POST /v1/orders` (JSON echo, 201),
//! `GET /internal/debug` (JSON counters — the kind of endpoint a policy keeps private),
//! `GET /healthz`; and over HTTP/2 (h2c) the gRPC health service `grpc.health.v1.Health`
//! (`health.rs`). Every request is counted and logged to stderr with the
//! `x-forwarded-client-cert` header it arrived with (what the sidecar said about the caller).

mod health;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::Exit;

/// `warden demo-app` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoAppArgs {
    /// Address to listen on (plaintext HTTP/1.1 and h2c; keep it on loopback behind a sidecar).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// The service's name, shown in answers and logs (e.g. `api`, `frontend`).
    #[arg(long, default_value = "demo")]
    name: String,
}

/// Per-process state: the service name and request counters.
#[derive(Debug)]
struct Demo {
    name: String,
    requests: AtomicU64,
    orders_placed: AtomicU64,
}

pub(crate) fn run(args: DemoAppArgs) -> anyhow::Result<Exit> {
    super::init_tracing();
    let addr: SocketAddr = match args.listen.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: invalid --listen `{}`: {e}", args.listen);
            return Ok(Exit::Invalid);
        }
    };
    if args.name.is_empty() || args.name.len() > 64 {
        eprintln!("error: --name must be 1 to 64 characters");
        return Ok(Exit::Invalid);
    }
    super::runtime()?.block_on(serve(addr, args.name))?;
    Ok(Exit::Ok)
}

async fn serve(addr: SocketAddr, name: String) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on `{addr}`"))?;
    let demo = Arc::new(Demo {
        name,
        requests: AtomicU64::new(0),
        orders_placed: AtomicU64::new(0),
    });
    tracing::info!(
        service = %demo.name,
        listen = %listener.local_addr().unwrap_or(addr),
        "demo app listening"
    );
    axum::serve(
        listener,
        router(demo).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown())
    .await
    .context("demo app server failed")
}

/// The routes (HTTP and the gRPC health service), with the counting and logging layer.
fn router(demo: Arc<Demo>) -> Router {
    let grpc =
        tonic::service::Routes::new(health::DemoHealth::server(&demo.name)).into_axum_router();
    Router::new()
        .route("/v1/orders", get(list_orders).post(place_order))
        .route("/internal/debug", get(debug))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(demo.clone())
        // tonic's router comes with a fallback of its own (gRPC UNIMPLEMENTED); two fallbacks
        // cannot merge, so the app's JSON 404 is set after.
        .merge(grpc)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(demo, log_request))
}

/// Counts the request and logs one line: method, path, source, answer and the caller as the
/// sidecar described it in `x-forwarded-client-cert` (`-` when absent).
async fn log_request(
    State(demo): State<Arc<Demo>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    demo.requests.fetch_add(1, Ordering::Relaxed);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let xfcc = req
        .headers()
        .get("x-forwarded-client-cert")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_else(|| "-".to_owned());
    let response = next.run(req).await;
    tracing::info!(
        target: "access",
        service = %demo.name,
        src.addr = %peer,
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        xfcc = %xfcc,
        "request"
    );
    response
}

async fn list_orders(State(demo): State<Arc<Demo>>) -> Json<serde_json::Value> {
    Json(json!({
        "service": demo.name,
        "orders": [
            { "id": "ord-1001", "item": "widget", "quantity": 2 },
            { "id": "ord-1002", "item": "gadget", "quantity": 1 },
        ],
    }))
}

async fn place_order(State(demo): State<Arc<Demo>>, body: axum::body::Bytes) -> Response {
    let order: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": format!("the body is not JSON: {e}") })),
            )
                .into_response();
        }
    };
    let n = demo.orders_placed.fetch_add(1, Ordering::Relaxed) + 1;
    (
        StatusCode::CREATED,
        Json(json!({ "service": demo.name, "placed": n, "order": order })),
    )
        .into_response()
}

async fn debug(State(demo): State<Arc<Demo>>) -> Json<serde_json::Value> {
    Json(json!({
        "service": demo.name,
        "requests": demo.requests.load(Ordering::Relaxed),
        "orders_placed": demo.orders_placed.load(Ordering::Relaxed),
        "pid": std::process::id(),
    }))
}

async fn not_found() -> (StatusCode, Json<serde_json::Value>) {
    (StatusCode::NOT_FOUND, Json(json!({ "error": "not found" })))
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
