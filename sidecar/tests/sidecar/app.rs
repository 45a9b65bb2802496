//! The app behind the inbound sidecar in these tests: a real HTTP/1.1 + h2c server on loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// An HTTP/1.1 + h2c app that counts requests and connections and answers with what it saw:
/// `version xfcc=<x-forwarded-client-cert>` (and echoes a request body), the request target in
/// `x-seen-uri`; a path under `/close` is answered with `connection: close` (HTTP/1.1), or
/// followed by a graceful shutdown of the connection (HTTP/2: GOAWAY), so the app closes that
/// connection after the response; a path under `/slow` is answered after [`SLOW`], and counted
/// in `cancelled` if the request is dropped before that; a path `/barrier/<n>` is answered once
/// `n` such requests are at the app at once (or after [`BARRIER_WAIT`]), the most at once kept
/// in `barrier_most`. A request with `upgrade: echo` switches to the echo protocol
/// ([`upgrade_to_echo`]).
pub(crate) struct App {
    pub(crate) addr: SocketAddr,
    pub(crate) count: Arc<AtomicUsize>,
    pub(crate) connections: Arc<AtomicUsize>,
    pub(crate) cancelled: Arc<AtomicUsize>,
    /// The URI of the last request the app got (as it got it: with the authority over h2c).
    pub(crate) last_uri: Arc<std::sync::Mutex<String>>,
    #[allow(
        dead_code,
        reason = "read by the outbound_pair test binary, not by this one"
    )]
    barrier: Arc<Barrier>,
}

/// The `/barrier/<n>` requests at the app now, and the most there were at once.
#[derive(Default)]
struct Barrier {
    now: AtomicUsize,
    most: AtomicUsize,
    reached: tokio::sync::Notify,
}

/// The longest a `/barrier/<n>` request waits for the others.
pub(crate) const BARRIER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Barrier {
    /// Waits until `n` are here at once (or [`BARRIER_WAIT`]).
    async fn wait_for(&self, n: usize) {
        let reached = self.reached.notified();
        tokio::pin!(reached);
        reached.as_mut().enable();
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        if now >= n {
            self.reached.notify_waiters();
        } else {
            let _ = tokio::time::timeout(BARRIER_WAIT, reached).await;
        }
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How long `/slow` takes.
pub(crate) const SLOW: std::time::Duration = std::time::Duration::from_millis(500);

/// Counts a `/slow` request as cancelled unless disarmed.
struct CancelGuard(Option<Arc<AtomicUsize>>);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some(cancelled) = self.0.take() {
            cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Answers `101` with `upgrade: echo`; on the upgraded connection, writes
/// `xfcc=<x-forwarded-client-cert>\n` and then echoes every byte until the other side closes.
fn upgrade_to_echo(mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let xfcc = req
        .headers()
        .get("x-forwarded-client-cert")
        .map(|v| v.to_str().unwrap_or("?").to_owned())
        .unwrap_or_default();
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let mut io = TokioIo::new(upgraded);
        if io
            .write_all(format!("xfcc={xfcc}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
        let (mut r, mut w) = tokio::io::split(io);
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut()
        .insert("upgrade", http::HeaderValue::from_static("echo"));
    resp.headers_mut()
        .insert("connection", http::HeaderValue::from_static("upgrade"));
    resp
}

impl App {
    pub(crate) async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let cancelled = Arc::new(AtomicUsize::new(0));
        let last_uri = Arc::new(std::sync::Mutex::new(String::new()));
        let barrier = Arc::new(Barrier::default());
        let barriers = Arc::clone(&barrier);
        let (c, conns, cancels, last) = (
            Arc::clone(&count),
            Arc::clone(&connections),
            Arc::clone(&cancelled),
            Arc::clone(&last_uri),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let c = Arc::clone(&c);
                let cancels = Arc::clone(&cancels);
                let last = Arc::clone(&last);
                let barriers = Arc::clone(&barriers);
                let close_h2 = Arc::new(tokio::sync::Notify::new());
                let closing = Arc::clone(&close_h2);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        *last.lock().unwrap() = req.uri().to_string();
                        c.fetch_add(1, Ordering::SeqCst);
                        if req.uri().path().starts_with("/close")
                            && req.version() == http::Version::HTTP_2
                        {
                            closing.notify_one();
                        }
                        let cancels = Arc::clone(&cancels);
                        let barriers = Arc::clone(&barriers);
                        async move {
                            if let Some(n) = req.uri().path().strip_prefix("/barrier/") {
                                barriers.wait_for(n.parse().unwrap_or(1)).await;
                            }
                            if req.headers().get("upgrade").is_some_and(|v| v == "echo") {
                                return Ok(upgrade_to_echo(req));
                            }
                            if req.uri().path().starts_with("/slow") {
                                let mut guard = CancelGuard(Some(cancels));
                                tokio::time::sleep(SLOW).await;
                                guard.0 = None;
                            }
                            let xfcc = req
                                .headers()
                                .get("x-forwarded-client-cert")
                                .map(|v| v.to_str().unwrap_or("?").to_owned())
                                .unwrap_or_default();
                            let version = format!("{:?}", req.version());
                            let uri = req.uri().to_string();
                            let names: Vec<&str> =
                                req.headers().keys().map(|k| k.as_str()).collect();
                            let seen_headers = names.join(",");
                            let close = req.uri().path().starts_with("/close")
                                && req.version() == http::Version::HTTP_11;
                            let collected = req.into_body().collect().await?;
                            let seen_trailers = collected.trailers().map_or(String::new(), |t| {
                                t.keys().map(|k| k.as_str()).collect::<Vec<_>>().join(",")
                            });
                            let body = collected.to_bytes();
                            let text = format!(
                                "{version} xfcc={xfcc} body={}",
                                String::from_utf8_lossy(&body)
                            );
                            let mut resp = Response::new(Full::new(Bytes::from(text)));
                            resp.headers_mut()
                                .insert("x-seen-uri", uri.parse().unwrap());
                            resp.headers_mut()
                                .insert("x-seen-headers", seen_headers.parse().unwrap());
                            resp.headers_mut()
                                .insert("x-seen-trailers", seen_trailers.parse().unwrap());
                            if close {
                                resp.headers_mut()
                                    .insert("connection", "close".parse().unwrap());
                            }
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = &mut conn => {}
                        () = close_h2.notified() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            count,
            connections,
            cancelled,
            last_uri,
            barrier,
        }
    }

    pub(crate) fn seen(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// `/slow` requests dropped before their answer.
    pub(crate) fn cancelled(&self) -> usize {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// The URI of the last request the app got.
    pub(crate) fn last_uri(&self) -> String {
        self.last_uri.lock().unwrap().clone()
    }

    /// The most `/barrier/<n>` requests that were at the app at once.
    #[allow(
        dead_code,
        reason = "used by the outbound_pair test binary, not by this one"
    )]
    pub(crate) fn barrier_most(&self) -> usize {
        self.barrier.most.load(Ordering::SeqCst)
    }

    /// Connections the app has accepted.
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}
