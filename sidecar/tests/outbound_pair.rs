//! The outbound route against this crate's own inbound listener: a local client -> outbound
//! (mTLS with the caller's SVID) -> a sidecar started in-process (Workload API, Cedar policies,
//! decision log) -> an app that reports the `x-forwarded-client-cert` it got. Checks that the
//! two halves interoperate over HTTP/1.1, h2c, gRPC and TCP, and that policy decisions and
//! identity checks hold across the pair.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    dead_code,
    reason = "test helpers outside #[test] functions; the shared sidecar fixtures have items \
              this binary does not use"
)]

#[path = "outbound/grpc_app.rs"]
mod grpc_app;
#[path = "sidecar/raw_http.rs"]
mod raw_http;
#[path = "sidecar/support.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use warden_api::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use warden_api::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use warden_api::workload::{JwtsvidRequest, X509svidRequest};
use warden_identity::BundleSource;
use warden_identity::test_util::TestCa;
use warden_identity::tls::SvidCertResolver;
use warden_sidecar::outbound::{Http1Upstream, NoHooks, Outbound, Protocol, Route};

use support::*;

/// An outbound route to the fixture's inbound listener, presenting an SVID for `caller`.
struct Pair {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Pair {
    async fn start(f: &Fixture, caller: &str, expected: &str, protocol: Protocol) -> Self {
        let bundles: Arc<dyn BundleSource> = Arc::new(Arc::new(TestCa::bundle_set(&[&f.ca])));
        Self::start_with(f, caller, expected, protocol, bundles, Http1Upstream::Http1).await
    }

    /// An HTTP route with `http1_upstream = "h2"`.
    async fn h1_over_h2(f: &Fixture, caller: &str) -> Self {
        let bundles: Arc<dyn BundleSource> = Arc::new(Arc::new(TestCa::bundle_set(&[&f.ca])));
        Self::start_with(
            f,
            caller,
            SIDECAR_ID,
            Protocol::Http,
            bundles,
            Http1Upstream::H2,
        )
        .await
    }

    /// [`Self::start`] trusting `bundles`.
    async fn start_with(
        f: &Fixture,
        caller: &str,
        expected: &str,
        protocol: Protocol,
        bundles: Arc<dyn BundleSource>,
        http1_upstream: Http1Upstream,
    ) -> Self {
        let svid = f.ca.issue_svid(&id(caller), Duration::from_secs(600));
        let resolver = Arc::new(SvidCertResolver::from_svid(&svid).unwrap());
        let route = Route {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstream: f.inbound.to_string(),
            expected_ids: vec![id(expected)],
            protocol,
            response_timeout: None,
            http1_upstream,
        };
        let outbound = Outbound::new(route, resolver, bundles, Arc::new(NoHooks)).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(outbound.serve(listener, async move {
            let _ = stopped.await;
        }));
        Self { addr, _stop: stop }
    }

    async fn http(f: &Fixture, caller: &str) -> Self {
        Self::start(f, caller, SIDECAR_ID, Protocol::Http).await
    }

    /// One request on a new local HTTP/1.1 (or h2c) connection.
    async fn call(&self, h2: bool, req: Request<Full<Bytes>>) -> (StatusCode, String) {
        let io = TokioIo::new(TcpStream::connect(self.addr).await.unwrap());
        let (mut parts, body) = req.into_parts();
        let response = if h2 {
            let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            parts.uri = format!("http://{}{}", self.addr, parts.uri)
                .parse()
                .unwrap();
            send.send_request(Request::from_parts(parts, body)).await
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            parts
                .headers
                .insert("host", "api.internal".parse().unwrap());
            send.send_request(Request::from_parts(parts, body)).await
        };
        let response = response.unwrap();
        let status = response.status();
        let body = tokio::time::timeout(WAIT, response.into_body().collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

fn request(method: &str, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn pair_carries_http1_and_h2c_and_the_app_sees_the_callers_id_only() {
    let f = Fixture::start(Options::default()).await;
    let pair = Pair::http(&f, WEB_ID).await;

    for (h2, version) in [(false, "HTTP/1.1"), (true, "HTTP/2.0")] {
        let mut req = request("GET", "/hello");
        // A local app cannot forge the header the inbound sets.
        req.headers_mut().insert(
            "x-forwarded-client-cert",
            "URI=spiffe://example.org/admin".parse().unwrap(),
        );
        let (status, body) = pair.call(h2, req).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.starts_with(version), "{body}");
        assert!(body.contains(&format!("URI={WEB_ID}")), "{body}");
        assert!(!body.contains("admin"), "{body}");
    }
    assert_eq!(f.app.seen(), 2);
}

/// `http1_upstream = "h2"` between the two halves: the local HTTP/1.1 requests travel over
/// HTTP/2 and reach the app as HTTP/1.1 (the inbound's `app_protocol` is `auto`, which would
/// send an HTTP/2 caller's stream as h2c), with the caller's identity and nothing of the mark.
#[tokio::test]
async fn pair_carries_http1_over_h2_and_the_app_gets_http1_from_the_inbound() {
    let f = Fixture::start(Options::default()).await;
    let web = Pair::h1_over_h2(&f, WEB_ID).await;
    for _ in 0..3 {
        let mut req = request("GET", "/hello");
        req.headers_mut().insert(
            "x-forwarded-client-cert",
            "URI=spiffe://example.org/admin".parse().unwrap(),
        );
        let (status, body) = web.call(false, req).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.starts_with("HTTP/1.1 "), "{body}");
        assert!(body.contains(&format!("URI={WEB_ID}")), "{body}");
        assert!(!body.contains("admin"), "{body}");
    }
    // Four at once, each on a local connection of its own and held by the app for a while:
    // still the one connection between the sidecars (HTTP/1.1 would have needed four).
    let slow = (0..4).map(|_| web.call(false, request("GET", "/slow")));
    for (status, body) in futures::future::join_all(slow).await {
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.starts_with("HTTP/1.1 "), "{body}");
    }
    let full = full_handshakes(&f).await;
    assert!(full.ends_with(" 1"), "{full}");
    // The app saw the caller's `Host` and no mark.
    assert_eq!(*f.app.last_uri.lock().unwrap(), "/slow");
    let records = f.decisions(7).await;
    for r in &records {
        assert!(
            r.headers
                .iter()
                .any(|(name, value)| name == "host" && value == "api.internal"),
            "{r:?}"
        );
        assert!(
            r.headers
                .iter()
                .all(|(name, _)| name != "warden-orig-proto"),
            "{r:?}"
        );
    }
    // Denied: 403 through the outbound, nothing reaches the app.
    let (status, _) = web.call(false, request("POST", "/hello")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let other = Pair::h1_over_h2(&f, OTHER_ID).await;
    let (status, _) = other.call(false, request("GET", "/hello")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(f.app.seen(), 7);
}

/// The inbound's full TLS handshakes so far (its metrics).
async fn full_handshakes(f: &Fixture) -> String {
    let metrics = f.metrics().await;
    metrics
        .lines()
        .find(|l| l.starts_with("warden_sidecar_tls_handshakes_total{") && l.contains("full"))
        .unwrap_or_else(|| panic!("no handshake count in {metrics}"))
        .to_owned()
}

/// More exchanges at once than the inbound lets one connection carry (256 streams) and than the
/// app's HTTP/2 server takes on one (hyper's 200): the outbound opens a second connection to the
/// inbound, and the inbound a second h2c connection to the app, instead of queueing the rest.
#[tokio::test]
async fn pair_past_the_peers_stream_limits_opens_second_connections_on_both_hops() {
    /// Two local h2c connections carry this many streams each.
    const PER_CONNECTION: usize = 130;
    const AT_ONCE: usize = 2 * PER_CONNECTION;
    let f = Fixture::start(Options::default()).await;
    let web = Pair::http(&f, WEB_ID).await;
    // The first connection on each hop, and the peers' SETTINGS on them.
    let (status, body) = web.call(true, request("GET", "/hello")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(full_handshakes(&f).await.ends_with(" 1"));
    assert_eq!(f.app.connections(), 1);
    // Each held at the app until all are there at once.
    let uri = format!("http://{}/barrier/{AT_ONCE}", web.addr);
    let mut held = Vec::new();
    for _ in 0..2 {
        let io = TokioIo::new(TcpStream::connect(web.addr).await.unwrap());
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        for _ in 0..PER_CONNECTION {
            let (mut send, uri) = (send.clone(), uri.clone());
            held.push(tokio::spawn(async move {
                let req = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
                send.send_request(req).await.map(|r| r.status())
            }));
        }
    }
    for answer in held {
        let status = tokio::time::timeout(WAIT, answer).await.unwrap().unwrap();
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        f.app.barrier_most(),
        AT_ONCE,
        "some waited behind the others"
    );
    let full = full_handshakes(&f).await;
    assert!(full.ends_with(" 2"), "{full}");
    assert_eq!(f.app.connections(), 2);
    assert_eq!(f.app.seen(), AT_ONCE + 1);
}

#[tokio::test]
async fn pair_request_denied_by_policy_gets_403_and_never_reaches_the_app() {
    let f = Fixture::start(Options::default()).await;
    // `web` may GET but not POST; `other` may do nothing.
    let web = Pair::http(&f, WEB_ID).await;
    let other = Pair::http(&f, OTHER_ID).await;
    for h2 in [false, true] {
        let (status, _) = web.call(h2, request("POST", "/hello")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = other.call(h2, request("GET", "/hello")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    assert_eq!(f.app.seen(), 0);
}

#[tokio::test]
async fn pair_carries_an_http_upgrade_and_then_the_upgraded_bytes_both_ways() {
    let f = Fixture::start(Options::default()).await;
    let pair = Pair::http(&f, WEB_ID).await;
    let mut local = TcpStream::connect(pair.addr).await.unwrap();
    let head = raw_http::upgrade(&mut local, "GET", "echo").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo\r\n"), "{head}");
    // The app sees the caller's SVID through the inbound, not the local client's forgery.
    let xfcc = raw_http::read_line(&mut local).await;
    assert!(xfcc.contains(&format!("URI={WEB_ID}")), "{xfcc}");
    assert!(!xfcc.contains("admin"), "{xfcc}");
    raw_http::echo(&mut local, "ping\n").await;
    raw_http::echo(&mut local, &"y".repeat(200_000)).await;
    local.shutdown().await.unwrap();
    raw_http::closed(&mut local, WAIT).await;
    assert_eq!(f.app.seen(), 1);
    let records = f.decisions(1).await;
    assert_eq!(records[0].upstream_status, Some(101));

    // Denied by the inbound's policy: the 403 comes back through the outbound, nothing
    // reaches the app.
    let other = Pair::http(&f, OTHER_ID).await;
    let mut local = TcpStream::connect(other.addr).await.unwrap();
    let head = raw_http::upgrade(&mut local, "GET", "echo").await;
    assert!(head.starts_with("http/1.1 403"), "{head}");
    assert_eq!(f.app.seen(), 1);
}

/// An upgraded connection through the outbound is closed once the upstream's CA leaves the
/// outbound's bundles.
#[tokio::test]
async fn pair_upgraded_connection_is_closed_when_the_upstream_no_longer_verifies() {
    let f = Fixture::start(Options::default()).await;
    let bundles = Arc::new(warden_identity::tls::SharedBundles::new(
        TestCa::bundle_set(&[&f.ca]),
    ));
    let pair = Pair::start_with(
        &f,
        WEB_ID,
        SIDECAR_ID,
        Protocol::Http,
        bundles.clone(),
        Http1Upstream::Http1,
    )
    .await;
    let mut local = TcpStream::connect(pair.addr).await.unwrap();
    let head = raw_http::upgrade(&mut local, "GET", "echo").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    raw_http::read_line(&mut local).await;
    raw_http::echo(&mut local, "ping\n").await;
    bundles.set(TestCa::bundle_set(&[&TestCa::new(TD)]));
    // Bytes keep moving until the outbound closes the tunnel (within 1 s of the change).
    raw_http::echo_until_closed(&mut local, b"ping\n").await;
}

#[tokio::test]
async fn pair_outbound_refuses_an_inbound_with_another_id() {
    let f = Fixture::start(Options::default()).await;
    let pair = Pair::start(&f, WEB_ID, OTHER_ID, Protocol::Http).await;
    let (status, body) = pair.call(false, request("GET", "/hello")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        body.contains(&format!(
            "upstream spiffe id `{SIDECAR_ID}` is not one of the expected ids"
        )),
        "{body}"
    );
    assert_eq!(f.app.seen(), 0);
}

/// A plaintext gRPC app (the outbound tests' Workload API stand-in) on a loopback port.
async fn grpc_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let grpc = SpiffeWorkloadApiServer::new(grpc_app::GrpcApp);
            let service = hyper::service::service_fn(move |req| {
                tower::ServiceExt::oneshot(grpc.clone(), req)
            });
            tokio::spawn(
                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned(),
            );
        }
    });
    addr
}

#[tokio::test]
async fn pair_carries_grpc_unary_and_server_streaming_from_a_tonic_client() {
    let app = grpc_app().await;
    let f = Fixture::start(Options {
        app_addr: Some(app),
        ..Options::default()
    })
    .await;
    let pair = Pair::http(&f, WEB_ID).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", pair.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = SpiffeWorkloadApiClient::new(channel);

    let unary = client
        .fetch_jwtsvid(JwtsvidRequest {
            audience: vec!["a".to_owned()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    // The app answers with the x-forwarded-client-cert the inbound set.
    assert!(
        unary.svids[0].spiffe_id.contains(&format!("URI={WEB_ID}")),
        "{:?}",
        unary.svids[0].spiffe_id
    );

    let mut stream = client
        .fetch_x509svid(X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut hints = Vec::new();
    while let Some(message) = tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
    {
        hints.push(message.svids[0].hint.clone());
    }
    assert_eq!(hints, ["0", "1", "2"]);

    let denied = client
        .fetch_jwtsvid(JwtsvidRequest {
            audience: vec!["deny".to_owned()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert_eq!(denied.message(), "denied by the test app");
}

#[tokio::test]
async fn pair_carries_a_tcp_route_to_a_tcp_inbound() {
    let f = Fixture::start(Options {
        inbound_extra: "protocol = \"tcp\"",
        ..Options::default()
    })
    .await;
    let pair = Pair::start(&f, WEB_ID, SIDECAR_ID, Protocol::Tcp).await;

    // Raw bytes through both sidecars; the app happens to speak HTTP.
    let mut local = TcpStream::connect(pair.addr).await.unwrap();
    local
        .write_all(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, local.read_to_end(&mut seen))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert_eq!(f.app.seen(), 1);
}
