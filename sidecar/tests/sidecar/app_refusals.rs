//! An app that refuses streams (`REFUSED_STREAM`): the inbound sends a refused bodiless request
//! to it once more, and a refused request with a body not at all (RFC 9113 section 8.7: a refused
//! stream was not processed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio::net::TcpListener;

use crate::support::*;

/// An h2c-only app that refuses the first request for each path and answers the next ones;
/// it counts the requests it got for each path.
struct RefusingApp {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<HashMap<String, usize>>>,
}

impl RefusingApp {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let counts = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((io, _)) = listener.accept().await {
                let counts = Arc::clone(&counts);
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(io).await else {
                        return;
                    };
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        let path = req.uri().path().to_owned();
                        let n = {
                            let mut counts = counts.lock().unwrap();
                            let n = counts.entry(path).or_insert(0);
                            *n += 1;
                            *n
                        };
                        if n == 1 {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            continue;
                        }
                        if let Ok(mut tx) = respond.send_response(Response::new(()), false) {
                            let _ = tx.send_data(Bytes::from_static(b"ok"), true);
                        }
                    }
                });
            }
        });
        Self { addr, seen }
    }

    fn seen(&self, path: &str) -> usize {
        self.seen.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

#[tokio::test]
async fn a_bodiless_request_the_app_refused_is_sent_once_more_and_answered() {
    let app = RefusingApp::start().await;
    let f = Fixture::start(Options {
        app_addr: Some(app.addr),
        ..Options::default()
    })
    .await;
    let (status, _, body) = f
        .client(WEB_ID)
        .request(f.inbound, get_h2("/refused-once"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "ok");
    assert_eq!(app.seen("/refused-once"), 2);
    let metrics = f.metrics().await;
    assert!(
        metrics.contains(r#"warden_sidecar_requests_resent_total{direction="inbound"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_request_with_a_body_the_app_refused_is_not_sent_again() {
    let app = RefusingApp::start().await;
    let f = Fixture::start(Options {
        app_addr: Some(app.addr),
        ..Options::default()
    })
    .await;
    // A GET (which the test policies allow) with a body: what counts is the body.
    let req = Request::get("https://api.local/upload")
        .version(http::Version::HTTP_2)
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let (status, _, body) = f.client(WEB_ID).request(f.inbound, req).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(app.seen("/upload"), 1);
    let metrics = f.metrics().await;
    assert!(
        metrics.contains(r#"warden_sidecar_requests_resent_total{direction="inbound"} 0"#),
        "{metrics}"
    );
}
