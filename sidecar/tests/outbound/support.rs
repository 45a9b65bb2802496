//! Test fixtures: a PKI, an upstream mutual TLS server with an app that reports what it saw,
//! and an outbound route under test with recording hooks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{Barrier, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use warden_api::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use warden_identity::test_util::TestCa;
use warden_identity::tls::{Authorize, SharedBundles, SvidCertResolver};
use warden_identity::{BundleSource, SpiffeId};
use warden_sidecar::outbound::{
    Http1Upstream, Outbound, OutboundHooks, OutboundLimits, Protocol, Route,
};

use crate::grpc_app::{GrpcApp, PeerId};

pub(crate) const TD: &str = "example.org";
pub(crate) const CLIENT_ID: &str = "spiffe://example.org/ns/prod/sa/client";
pub(crate) const SERVER_ID: &str = "spiffe://example.org/ns/prod/sa/api";
/// What a Warden inbound offers.
pub(crate) const ALPN_BOTH: &[&[u8]] = &[b"h2", b"http/1.1"];
/// How long the app takes to answer `/slow`.
pub(crate) const SLOW: Duration = Duration::from_millis(300);
/// Bound on every wait in these tests.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

pub(crate) type BoxBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A trust domain's CA and the bundles both ends verify with.
pub(crate) struct Pki {
    pub(crate) ca: TestCa,
    pub(crate) bundles: Arc<SharedBundles>,
}

impl Pki {
    pub(crate) fn new() -> Self {
        let ca = TestCa::new(TD);
        let bundles = Arc::new(SharedBundles::new(TestCa::bundle_set(&[&ca])));
        Self { ca, bundles }
    }

    /// A resolver presenting a fresh SVID for `id` from this CA.
    pub(crate) fn resolver(&self, id: &str) -> Arc<SvidCertResolver> {
        resolver_from(&self.ca, id)
    }

    pub(crate) fn bundles(&self) -> Arc<dyn BundleSource> {
        self.bundles.clone()
    }
}

pub(crate) fn resolver_from(ca: &TestCa, id: &str) -> Arc<SvidCertResolver> {
    let svid = ca.issue_svid(&spiffe_id(id), Duration::from_secs(3600));
    Arc::new(SvidCertResolver::from_svid(&svid).unwrap())
}

pub(crate) fn spiffe_id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

// === upstream ===

/// What the upstream's app does.
#[derive(Clone)]
pub(crate) enum App {
    /// The HTTP app (see [`http_app`]), plus the gRPC Workload API service for
    /// `application/grpc` requests.
    Http { barrier: Option<Arc<Barrier>> },
    /// TCP: writes `peer=<spiffe id>\n`, then echoes.
    Echo,
    /// Accepts TCP and never answers (for handshake timeouts).
    Silent,
    /// Completes the TLS handshake, then reads everything and never answers (a hung upstream).
    Mute,
    /// HTTP/2 only: refuses the first request it gets (`REFUSED_STREAM`), on any connection,
    /// and answers every later one with 200 `ok`.
    RefusesFirst,
}

/// Counters the upstream keeps.
#[derive(Default, Debug)]
pub(crate) struct Stats {
    /// TLS handshakes that completed.
    pub(crate) connections: AtomicUsize,
    /// TLS handshakes that failed.
    pub(crate) failed_handshakes: AtomicUsize,
    /// HTTP requests (gRPC included) that reached the app.
    pub(crate) requests: AtomicUsize,
    /// HTTP connections that have ended.
    pub(crate) closed: AtomicUsize,
}

/// An upstream sidecar stand-in: a rustls mutual TLS server (`server_config` from the identity
/// crate, any trusted client) in front of an [`App`].
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    pub(crate) stats: Arc<Stats>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Starts an upstream presenting `resolver`'s SVID, trusting `bundles`, offering `alpn`.
    pub(crate) async fn start(
        resolver: Arc<SvidCertResolver>,
        bundles: Arc<dyn BundleSource>,
        alpn: &[&[u8]],
        app: App,
    ) -> Self {
        let mut config =
            warden_identity::tls::server_config(resolver, bundles, Authorize::AnyTrusted).unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn(accept_loop(listener, acceptor, app, stats.clone()));
        Self { addr, stats, task }
    }

    /// The common case: the PKI's server SVID, ALPN h2 + http/1.1, the HTTP app.
    pub(crate) async fn http(pki: &Pki) -> Self {
        Self::start(
            pki.resolver(SERVER_ID),
            pki.bundles(),
            ALPN_BOTH,
            App::Http { barrier: None },
        )
        .await
    }

    pub(crate) fn connections(&self) -> usize {
        self.stats.connections.load(Ordering::SeqCst)
    }

    pub(crate) fn requests(&self) -> usize {
        self.stats.requests.load(Ordering::SeqCst)
    }

    pub(crate) fn closed(&self) -> usize {
        self.stats.closed.load(Ordering::SeqCst)
    }

    pub(crate) fn failed_handshakes(&self) -> usize {
        self.stats.failed_handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, app: App, stats: Arc<Stats>) {
    let mut index = 0usize;
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        index += 1;
        let (acceptor, app, stats) = (acceptor.clone(), app.clone(), stats.clone());
        tokio::spawn(async move {
            if let App::Silent = app {
                tokio::time::sleep(WAIT).await;
                drop(tcp);
                return;
            }
            let mut tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(_) => {
                    stats.failed_handshakes.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            };
            stats.connections.fetch_add(1, Ordering::SeqCst);
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(warden_identity::peer_spiffe_id)
                .map(|id| id.to_string())
                .unwrap_or_default();
            match app {
                App::Echo => {
                    let _ = tls.write_all(format!("peer={peer}\n").as_bytes()).await;
                    let (mut r, mut w) = tokio::io::split(tls);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                }
                App::Http { barrier } => {
                    let grpc = SpiffeWorkloadApiServer::new(GrpcApp);
                    let conn = ConnInfo {
                        peer,
                        index,
                        barrier,
                    };
                    let counts = stats.clone();
                    let service = service_fn(move |req| {
                        counts.requests.fetch_add(1, Ordering::SeqCst);
                        http_app(conn.clone(), grpc.clone(), req)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                    stats.closed.fetch_add(1, Ordering::SeqCst);
                }
                App::RefusesFirst => {
                    let Ok(mut conn) = h2::server::handshake(tls).await else {
                        return;
                    };
                    while let Some(Ok((_, mut respond))) = conn.accept().await {
                        if stats.requests.fetch_add(1, Ordering::SeqCst) == 0 {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                        } else if let Ok(mut body) = respond.send_response(Response::new(()), false)
                        {
                            let _ = body.send_data(Bytes::from_static(b"ok"), true);
                        }
                    }
                }
                App::Mute => {
                    let mut sink = tokio::io::sink();
                    let _ = tokio::io::copy(&mut tls, &mut sink).await;
                }
                App::Silent => {}
            }
        });
    }
}

#[derive(Clone)]
struct ConnInfo {
    peer: String,
    index: usize,
    barrier: Option<Arc<Barrier>>,
}

/// The HTTP app. Every response carries `x-peer-id` (the client's SPIFFE ID from the TLS
/// handshake), `x-conn` (which upstream connection), `x-version`, `x-seen-headers` (the request
/// header names), `x-host` (`Host`, or the `:authority`) and `x-orig-proto` (the
/// `warden-orig-proto` mark). Paths: `/echo` streams the request
/// body back; `/wait` answers once the test's barrier is full; `/slow` answers after [`SLOW`]; `/close` answers with
/// `connection: close`; anything else answers `ok`.
async fn http_app(
    conn: ConnInfo,
    grpc: SpiffeWorkloadApiServer<GrpcApp>,
    mut req: Request<Incoming>,
) -> Result<Response<BoxBody>, std::convert::Infallible> {
    if req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
    {
        req.extensions_mut().insert(PeerId(conn.peer.clone()));
        let response = tower::ServiceExt::oneshot(grpc, req).await?;
        return Ok(response.map(|b| b.map_err(Into::into).boxed_unsync()));
    }
    let seen: Vec<String> = req.headers().keys().map(|k| k.to_string()).collect();
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let mut builder = Response::builder()
        .header("x-peer-id", conn.peer.as_str())
        .header("x-conn", conn.index)
        .header("x-version", format!("{:?}", req.version()))
        .header("x-seen-headers", seen.join(","))
        .header("x-host", host)
        .header(
            "x-orig-proto",
            req.headers()
                .get("warden-orig-proto")
                .cloned()
                .unwrap_or_else(|| http::HeaderValue::from_static("")),
        );
    let body: BoxBody = match req.uri().path() {
        "/echo" => req.into_body().map_err(Into::into).boxed_unsync(),
        "/wait" => {
            let barrier = conn.barrier.clone().unwrap();
            if tokio::time::timeout(WAIT, barrier.wait()).await.is_err() {
                builder = builder.status(StatusCode::INTERNAL_SERVER_ERROR);
            }
            full("waited")
        }
        "/slow" => {
            tokio::time::sleep(SLOW).await;
            full("slow")
        }
        "/close" => {
            builder = builder.header(http::header::CONNECTION, "close");
            full("closing")
        }
        // Switches protocols although the request asked for no upgrade (a broken upstream).
        "/switch" => {
            builder = builder
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(http::header::UPGRADE, "echo")
                .header(http::header::CONNECTION, "upgrade");
            full("")
        }
        _ => full("ok"),
    };
    Ok(builder.body(body).unwrap())
}

fn full(s: &'static str) -> BoxBody {
    Full::new(Bytes::from_static(s.as_bytes()))
        .map_err(Into::into)
        .boxed_unsync()
}

// === outbound under test ===

/// What the route reported through its hooks.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    pub(crate) statuses: Mutex<Vec<Option<u16>>>,
    pub(crate) handshake_failures: Mutex<Vec<String>>,
    pub(crate) tcp: Mutex<Vec<(u64, u64)>>,
    pub(crate) resent: AtomicUsize,
}

impl OutboundHooks for Recorder {
    fn request_done(&self, status: Option<u16>, _latency: Duration) {
        self.statuses.lock().unwrap().push(status);
    }

    fn handshake_failed(&self, reason: &str) {
        self.handshake_failures
            .lock()
            .unwrap()
            .push(reason.to_owned());
    }

    fn tcp_connection_done(&self, sent: u64, received: u64, _duration: Duration) {
        self.tcp.lock().unwrap().push((sent, received));
    }

    fn request_resent(&self) {
        self.resent.fetch_add(1, Ordering::SeqCst);
    }
}

impl Recorder {
    pub(crate) fn statuses(&self) -> Vec<Option<u16>> {
        self.statuses.lock().unwrap().clone()
    }

    pub(crate) fn handshake_failures(&self) -> Vec<String> {
        self.handshake_failures.lock().unwrap().clone()
    }
}

/// A running outbound route on `127.0.0.1:<ephemeral>`.
pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    pub(crate) hooks: Arc<Recorder>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), warden_sidecar::outbound::OutboundError>>>,
}

/// Options of [`Proxy::start`].
pub(crate) struct ProxyOptions<'a> {
    pub(crate) protocol: Protocol,
    pub(crate) upstream: String,
    pub(crate) expected_ids: &'a [&'a str],
    pub(crate) resolver: Arc<SvidCertResolver>,
    pub(crate) bundles: Arc<dyn BundleSource>,
    pub(crate) limits: OutboundLimits,
    /// The route's `response_timeout`.
    pub(crate) response_timeout: Option<&'static str>,
    /// The route's `http1_upstream`.
    pub(crate) http1_upstream: Http1Upstream,
}

impl<'a> ProxyOptions<'a> {
    /// HTTP to `upstream`, expecting [`SERVER_ID`], presenting [`CLIENT_ID`].
    pub(crate) fn http(pki: &Pki, upstream: &Upstream) -> Self {
        Self {
            protocol: Protocol::Http,
            upstream: upstream.addr.to_string(),
            expected_ids: &[SERVER_ID],
            resolver: pki.resolver(CLIENT_ID),
            bundles: pki.bundles(),
            limits: OutboundLimits::default(),
            response_timeout: None,
            http1_upstream: Http1Upstream::Http1,
        }
    }
}

impl Proxy {
    pub(crate) async fn start(options: ProxyOptions<'_>) -> Self {
        let route = Route {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstream: options.upstream,
            expected_ids: options.expected_ids.iter().map(|s| spiffe_id(s)).collect(),
            protocol: options.protocol,
            response_timeout: options.response_timeout.map(str::to_owned),
            http1_upstream: options.http1_upstream,
        };
        let hooks = Arc::new(Recorder::default());
        let outbound = Outbound::new(route, options.resolver, options.bundles, hooks.clone())
            .unwrap()
            .with_limits(options.limits);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(outbound.serve(listener, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            hooks,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub(crate) async fn http(pki: &Pki, upstream: &Upstream) -> Self {
        Self::start(ProxyOptions::http(pki, upstream)).await
    }

    /// Signals shutdown without waiting.
    pub(crate) fn signal_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Signals shutdown and waits (bounded) for `serve` to return.
    pub(crate) async fn stop(mut self) {
        self.signal_shutdown();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A port with nothing listening (bound, then released).
pub(crate) async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// Polls `get` until `done` holds (bounded by [`WAIT`]).
pub(crate) async fn wait_for<T>(mut get: impl FnMut() -> T, done: impl Fn(&T) -> bool) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let value = get();
        if done(&value) || tokio::time::Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
