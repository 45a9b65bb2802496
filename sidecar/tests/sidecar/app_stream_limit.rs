//! An app whose HTTP/2 server allows few concurrent streams per connection: the inbound opens
//! more h2c connections to it rather than queueing callers' requests behind the held ones.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::support::*;

/// Requests sent at once.
const REQUESTS: usize = 6;
/// Streams the app lets each connection open at once.
const APP_STREAMS: u32 = 2;

/// An h2c-only app allowing [`APP_STREAMS`] streams per connection. Each request is held until
/// [`REQUESTS`] are in progress at once (or 10 s pass), then answered; it counts connections
/// and the most requests it held at once.
struct LimitedApp {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicUsize>,
    most_at_once: Arc<AtomicUsize>,
}

impl LimitedApp {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let most_at_once = Arc::new(AtomicUsize::new(0));
        let in_progress = Arc::new(AtomicUsize::new(0));
        let all_in = Arc::new(tokio::sync::Notify::new());
        let (conns, most) = (Arc::clone(&connections), Arc::clone(&most_at_once));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                let (most, in_progress, all_in) = (
                    Arc::clone(&most),
                    Arc::clone(&in_progress),
                    Arc::clone(&all_in),
                );
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let (most, in_progress, all_in) = (
                        Arc::clone(&most),
                        Arc::clone(&in_progress),
                        Arc::clone(&all_in),
                    );
                    async move {
                        let now = in_progress.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        if now >= REQUESTS {
                            all_in.notify_waiters();
                        } else {
                            let _ =
                                tokio::time::timeout(Duration::from_secs(10), all_in.notified())
                                    .await;
                        }
                        in_progress.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from("ok"))))
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .max_concurrent_streams(APP_STREAMS)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            connections,
            most_at_once,
        }
    }
}

#[tokio::test]
async fn callers_past_the_apps_stream_limit_get_more_app_connections_not_a_queue() {
    let app = LimitedApp::start().await;
    let f = Fixture::start(Options {
        app_addr: Some(app.addr),
        ..Options::default()
    })
    .await;
    // The first alone: the first app connection learns the app's limit from its SETTINGS
    // (sent before the app reads a request; until then it takes up to 100 streams, as hyper's
    // client does). Further connections start from the limit it learned.
    let config = f.client(WEB_ID).config;
    let send = |n: usize| {
        let (config, inbound) = (Arc::clone(&config), f.inbound);
        tokio::spawn(async move {
            Client { config }
                .request(inbound, get_h2(&format!("/held/{n}")))
                .await
        })
    };
    let mut answers = vec![send(0)];
    let arrived = async {
        while app.most_at_once.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(WAIT, arrived)
        .await
        .expect("the first request reaches the app");
    // Time for the inbound to read the app's SETTINGS (already on the wire).
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The rest at once.
    answers.extend((1..REQUESTS).map(send));
    for answer in answers {
        let (status, _, body) = tokio::time::timeout(WAIT, answer)
            .await
            .expect("every request is answered")
            .unwrap()
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // All were at the app at once: none waited behind another for a stream.
    assert_eq!(app.most_at_once.load(Ordering::SeqCst), REQUESTS);
    assert_eq!(
        app.connections.load(Ordering::SeqCst),
        REQUESTS.div_ceil(APP_STREAMS as usize)
    );
}
