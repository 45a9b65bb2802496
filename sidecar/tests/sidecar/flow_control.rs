//! HTTP/2 flow control on the inbound's one shared h2c connection to the app: a caller that
//! stops reading its responses holds back only its own streams, never the other callers'.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::support::*;

/// A GET whose body the app echoes back: a response of about `len` bytes.
fn big_echo(len: usize) -> Request<Full<Bytes>> {
    Request::get("https://api.local/echo")
        .version(http::Version::HTTP_2)
        .body(Full::new(Bytes::from(vec![b'x'; len])))
        .unwrap()
}

#[tokio::test]
async fn a_caller_that_stops_reading_big_responses_does_not_stall_other_callers() {
    let f = Fixture::start(Options::default()).await;
    // The stalled caller: the smallest windows HTTP/2 allows, and it never reads a body.
    let tls = f.client(WEB_ID).connect(f.inbound).await.unwrap();
    let (mut stalled, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut held = Vec::new();
    // More unread data in all than a few streams' windows: 24 responses of 1 MiB (each more
    // than the caller's window, the sidecar's send buffer and the app stream's window).
    for _ in 0..24 {
        stalled.ready().await.unwrap();
        let resp = tokio::time::timeout(WAIT, stalled.send_request(big_echo(1 << 20)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        // Kept, unread: its stream's data stays in the sidecar's buffers.
        held.push(resp);
    }
    // Another caller on a connection of its own still gets its answers, whole.
    let web = f.client(WEB_ID);
    for _ in 0..3 {
        let answer = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            web.request(f.inbound, get_h2("/hello")),
        )
        .await
        .expect("another caller's request stalled behind the unread responses")
        .unwrap();
        assert_eq!(answer.0, StatusCode::OK, "{}", answer.2);
    }
    // The stalled responses are still whole once read (all at once: this caller's own
    // connection window is shared by its streams).
    let bodies = held
        .into_iter()
        .map(|resp| async move { resp.into_body().collect().await.unwrap().to_bytes() });
    let bodies = tokio::time::timeout(WAIT, futures::future::join_all(bodies))
        .await
        .unwrap();
    for body in bodies {
        assert!(body.len() > 1 << 20, "{}", body.len());
    }
}
