//! `inbound.app_protocol`: an app that speaks only HTTP/1.1 behind an inbound whose callers
//! speak HTTP/2. With `auto` (the default) such an app cannot answer them (the inbound speaks
//! h2c to it); with `http1` every stream reaches it as HTTP/1.1, and its connections are reused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::support::*;

/// An HTTP/1.1-only app (hyper's HTTP/1 server, no h2c): answers "<version> host=<host>
/// xfcc=<set?> body=<bytes>" (`/hold…` never) and counts the connections it accepted, the most open at once and
/// the requests it served.
struct H1OnlyApp {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl H1OnlyApp {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (c, p, r) = (
            Arc::clone(&connections),
            Arc::clone(&peak),
            Arc::clone(&requests),
        );
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                p.fetch_max(open.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                let r = Arc::clone(&r);
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    r.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let version = format!("{:?}", req.version());
                        let host = req
                            .headers()
                            .get("host")
                            .map(|h| h.to_str().unwrap_or("?").to_owned())
                            .unwrap_or_default();
                        let xfcc = req.headers().contains_key("x-forwarded-client-cert");
                        if req.uri().path().starts_with("/hold") {
                            std::future::pending::<()>().await;
                        }
                        let slow = req.uri().path().starts_with("/slow-body");
                        let body = req.into_body().collect().await?.to_bytes();
                        let text = format!("{version} host={host} xfcc={xfcc} body={}", body.len());
                        // `/slow-body…`: the head at once, the body 20 ms later, so the
                        // exchange is still going on when the head reaches the sidecar.
                        let frame = async move {
                            if slow {
                                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                            }
                            Ok::<_, hyper::Error>(Frame::data(Bytes::from(text)))
                        };
                        let body = StreamBody::new(futures::stream::once(frame));
                        Ok::<_, hyper::Error>(Response::new(body))
                    }
                });
                let open = Arc::clone(&open);
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            connections,
            peak,
            requests,
        }
    }
}

/// A GET with a body (the test policies let `web` GET only): the body streams through too.
fn get_h2_with_body(path: &str, body: &'static [u8]) -> Request<Full<Bytes>> {
    Request::get(format!("https://api.local{path}"))
        .version(http::Version::HTTP_2)
        .body(Full::new(Bytes::from_static(body)))
        .unwrap()
}

/// An [`H1OnlyApp`] behind an inbound with `app_protocol = "http1"` and these `[limits]`.
async fn h1_app_behind_an_http1_inbound(limits: &'static str) -> (H1OnlyApp, Fixture) {
    let app = H1OnlyApp::start().await;
    let f = Fixture::start(Options {
        inbound_extra: r#"app_protocol = "http1""#,
        limits,
        app_addr: Some(app.addr),
        ..Options::default()
    })
    .await;
    (app, f)
}

/// Sends `requests` at once as streams of one HTTP/2 connection to the inbound (as `web`):
/// each one's status and body.
async fn at_once(
    f: &Fixture,
    requests: impl Iterator<Item = Request<Full<Bytes>>>,
) -> Vec<(StatusCode, String)> {
    let tls = f.client(WEB_ID).connect(f.inbound).await.unwrap();
    let sender = crate::raw_http::h2_sender(tls).await;
    let calls = requests.map(|req| {
        let mut sender = sender.clone();
        async move {
            let resp = sender.send_request(req).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    });
    futures::future::join_all(calls).await
}

#[tokio::test]
async fn http1_app_protocol_carries_http2_callers_to_an_http1_only_app_and_reuses_its_connections()
{
    let (app, f) = h1_app_behind_an_http1_inbound("").await;
    let web = f.client(WEB_ID);
    // One at a time: each exchange hands its app connection back for the next, once the
    // response body (which comes after the head) has been passed on.
    for i in 0..10 {
        let (status, _, body) = web
            .request(f.inbound, get_h2(&format!("/slow-body/{i}")))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, "HTTP/1.1 host=api.local xfcc=true body=0");
    }
    assert_eq!(app.requests.load(Ordering::SeqCst), 10);
    let sequential = app.connections.load(Ordering::SeqCst);
    assert!(
        sequential <= 3,
        "10 sequential HTTP/2 requests took {sequential} HTTP/1.1 app connections"
    );
    // Many streams at once on one HTTP/2 connection: each gets an app connection of its own.
    let calls = (0..20).map(|_| get_h2_with_body("/orders", b"twelve bytes"));
    for (status, body) in at_once(&f, calls).await {
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, "HTTP/1.1 host=api.local xfcc=true body=12");
    }
    assert_eq!(app.requests.load(Ordering::SeqCst), 30);
    // A body of unknown length (no `content-length`) reaches the app too, chunked, also on a
    // `GET` (for which hyper would otherwise send no body).
    let frames = ["twelve", " bytes"].map(|part| {
        Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(part.as_bytes())))
    });
    let req = Request::get("https://api.local/orders")
        .version(http::Version::HTTP_2)
        .body(StreamBody::new(futures::stream::iter(frames)))
        .unwrap();
    let tls = f.client(WEB_ID).connect(f.inbound).await.unwrap();
    let mut streaming = crate::raw_http::h2_sender(tls).await;
    let resp = streaming.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "HTTP/1.1 host=api.local xfcc=true body=12");
    // The decisions are logged as for any HTTP/2 request.
    let records = f.decisions_exactly(31).await;
    assert!(
        records.iter().all(|r| r.upstream_status == Some(200)),
        "{records:?}"
    );
}

/// HTTP/2 streams each need an HTTP/1.1 app connection of their own: at most
/// `limits.max_connections` are busy at once, and the streams past that wait for one to be
/// free instead of opening more (an HTTP/2 caller may have hundreds of streams open).
#[tokio::test]
async fn http2_streams_to_an_http1_app_hold_at_most_max_connections_app_connections() {
    let (app, f) = h1_app_behind_an_http1_inbound("max_connections = 2").await;
    let calls = (0..16).map(|i| get_h2(&format!("/slow-body/{i}")));
    for (status, body) in at_once(&f, calls).await {
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, "HTTP/1.1 host=api.local xfcc=true body=0");
    }
    assert_eq!(app.requests.load(Ordering::SeqCst), 16);
    // The cap counts busy connections: one that could not go back to the idle list is closed
    // as its slot is freed, and its socket may end just after the next one is opened.
    let peak = app.peak.load(Ordering::SeqCst);
    assert!(peak <= 3, "{peak} app connections open at once");
}

/// A stream that finds every such app connection busy for as long as connecting may take gets
/// 503, and nothing of it reaches the app.
#[tokio::test]
async fn a_stream_that_waits_too_long_for_an_http1_app_connection_gets_503() {
    let (app, f) = h1_app_behind_an_http1_inbound("max_connections = 1").await;
    let tls = f.client(WEB_ID).connect(f.inbound).await.unwrap();
    let sender = crate::raw_http::h2_sender(tls).await;
    let mut held = sender.clone();
    let _held = tokio::spawn(async move { held.send_request(get_h2("/hold")).await });
    let requests = || app.requests.load(Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while requests() < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "/hold never reached the app"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let mut waiting = sender.clone();
    let resp = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        waiting.send_request(get_h2("/orders")),
    )
    .await
    .expect("an answer within 20 s")
    .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(requests(), 1);
    assert_eq!(app.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn auto_app_protocol_cannot_reach_an_http1_only_app_from_http2_callers() {
    let app = H1OnlyApp::start().await;
    let f = Fixture::start(Options {
        app_addr: Some(app.addr),
        ..Options::default()
    })
    .await;
    let web = f.client(WEB_ID);
    // HTTP/1.1 callers are fine; HTTP/2 ones get 503 (the app does not speak h2c).
    let (status, _, body) = web
        .http1()
        .request(f.inbound, get("/orders"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = web.request(f.inbound, get_h2("/orders")).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}

/// An HTTP/2 request marked as HTTP/1.1 carried over HTTP/2 (what an outbound route with
/// `http1_upstream = "h2"` sends).
fn marked_h2(path: &str, mark: &str) -> Request<Full<Bytes>> {
    Request::get(format!("https://api.local{path}"))
        .version(http::Version::HTTP_2)
        .header("warden-orig-proto", mark)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn http2_streams_marked_http1_reach_an_auto_app_as_http1_without_the_mark() {
    let app = H1OnlyApp::start().await;
    let f = Fixture::start(Options {
        app_addr: Some(app.addr),
        ..Options::default()
    })
    .await;
    let web = f.client(WEB_ID);
    // Unmarked, an HTTP/2 caller cannot reach this app with `auto` (see the test above);
    // marked, every stream reaches it as HTTP/1.1, whatever the letter case of the mark.
    for mark in ["HTTP/1.1", "http/1.1"] {
        let (status, _, body) = web
            .request(f.inbound, marked_h2("/orders", mark))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, "HTTP/1.1 host=api.local xfcc=true body=0");
    }
    // Denied streams never reach the app, marked or not.
    let other = f.client(OTHER_ID);
    let (status, _, _) = other
        .request(f.inbound, marked_h2("/orders", "HTTP/1.1"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(app.requests.load(Ordering::SeqCst), 2);
    // The policy does not see the mark (it is gone before the decision), and the decision is
    // logged as for any request.
    let records = f.decisions_exactly(3).await;
    assert_eq!(
        records
            .iter()
            .filter(|r| r.upstream_status == Some(200))
            .count(),
        2,
        "{records:?}"
    );
    assert!(
        records.iter().all(|r| r
            .headers
            .iter()
            .all(|(name, _)| name != "warden-orig-proto")),
        "{records:?}"
    );
}

#[tokio::test]
async fn a_bad_http1_over_h2_mark_gets_400_naming_it_and_never_reaches_the_app() {
    let f = Fixture::start(Options::default()).await;
    let web = f.client(WEB_ID);
    for mark in ["HTTP/2", "h2c", ""] {
        let (status, _, body) = web
            .request(f.inbound, marked_h2("/hello", mark))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{mark}: {body}");
        assert!(body.contains("warden-orig-proto"), "{body}");
    }
    assert_eq!(f.app.seen(), 0);
}
