//! The CA's HTTP listener (axum): `/healthz`, `/readyz`, `/metrics` (Prometheus text) and the
//! SPIFFE bundle endpoint `/bundle` (the own bundle as a SPIFFE JWKS document,
//! `application/json`, rule B-9).
//!
//! Served as plain HTTP: meant for loopback (health checks, Prometheus). Federating peers use
//! the SPIFFE bundle endpoint over HTTPS ([`crate::bundle_endpoint`], `https_spiffe`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::authority::Authority;

type Labels = Vec<(String, String)>;

/// The CA's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    attestations: Family<Labels, Counter>,
    svids_signed: Counter,
    signing_seconds: Histogram,
    ca_expiry_seconds: Gauge,
    federation_refreshes: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics in their own registry.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("warden_ca");
        let attestations = Family::<Labels, Counter>::default();
        registry.register(
            "attestations",
            "Node attestations by attestor and result",
            attestations.clone(),
        );
        let svids_signed = Counter::default();
        registry.register(
            "svids_signed",
            "X.509-SVIDs signed for workloads",
            svids_signed.clone(),
        );
        let signing_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "svid_signing_seconds",
            "Time to sign one X.509-SVID",
            signing_seconds.clone(),
        );
        let ca_expiry_seconds = Gauge::default();
        registry.register(
            "ca_expiry_seconds",
            "Seconds until the active intermediate CA expires",
            ca_expiry_seconds.clone(),
        );
        let federation_refreshes = Family::<Labels, Counter>::default();
        registry.register(
            "federation_refreshes",
            "Fetches of federated bundles from their bundle endpoints, by trust domain and result (`stored`, `unchanged`, `error`)",
            federation_refreshes.clone(),
        );
        Self {
            registry,
            attestations,
            svids_signed,
            signing_seconds,
            ca_expiry_seconds,
            federation_refreshes,
        }
    }

    /// Counts an attestation.
    pub fn attestation(&self, attestor: &str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.attestations
            .get_or_create(&vec![
                ("attestor".to_owned(), attestor.to_owned()),
                ("result".to_owned(), result.to_owned()),
            ])
            .inc();
    }

    /// Counts a fetch of `trust_domain`'s bundle from its endpoint.
    pub fn federation_refresh(&self, trust_domain: &str, result: &str) {
        self.federation_refreshes
            .get_or_create(&vec![
                ("trust_domain".to_owned(), trust_domain.to_owned()),
                ("result".to_owned(), result.to_owned()),
            ])
            .inc();
    }

    /// Counts a signed SVID and its signing time.
    pub fn svid_signed(&self, took: Duration) {
        self.svids_signed.inc();
        self.signing_seconds.observe(took.as_secs_f64());
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self, ca_not_after: Option<SystemTime>, now: SystemTime) -> String {
        let secs = ca_not_after
            .and_then(|na| na.duration_since(now).ok())
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.ca_expiry_seconds.set(secs);
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            tracing::warn!("metrics encoding failed");
        }
        out
    }
}

#[derive(Debug, Clone)]
struct AppState {
    authority: Arc<Authority>,
    metrics: Arc<Metrics>,
}

/// The HTTP routes.
pub fn router(authority: Arc<Authority>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/bundle", get(bundle))
        .with_state(AppState { authority, metrics })
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AppState>) -> Response {
    let now = s.authority.clock().now();
    match s.authority.active_ca_not_after() {
        Some(na) if na > now => (StatusCode::OK, "ready\n").into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no active signing ca\n",
        )
            .into_response(),
    }
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    let body = s
        .metrics
        .render(s.authority.active_ca_not_after(), s.authority.clock().now());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn bundle(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        s.authority.bundle().to_jwks(),
    )
        .into_response()
}
