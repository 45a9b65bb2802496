//! HTTP/2 through the inbound listener's own HTTP/2 server (ALPN `h2`): what it must do beyond
//! passing requests (those tests are in `http.rs` and `grpc.rs`): local replies framed like
//! hyper's, a caller's reset reaching the app, and a graceful stop.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::support::*;

/// An HTTP/2 connection from `who` to the inbound listener, and its driver.
async fn h2_connection(
    f: &Fixture,
    who: &str,
) -> (
    SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let tls = f.client(who).connect(f.inbound).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    (sender, tokio::spawn(conn))
}

#[tokio::test]
async fn http2_denial_carries_date_and_content_length() {
    let f = Fixture::start(Options::default()).await;
    let (mut sender, _conn) = h2_connection(&f, OTHER_ID).await;
    let resp = sender.send_request(get_h2("/a")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let date = resp.headers()["date"].to_str().unwrap().to_owned();
    assert!(httpdate::parse_http_date(&date).is_ok(), "{date}");
    let length: usize = resp.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body.len(), length);
    assert!(body.starts_with(b"denied by policy (decision "), "{body:?}");
    assert_eq!(f.app.seen(), 0);
}

#[tokio::test]
async fn http2_caller_resetting_its_stream_cancels_the_apps_request() {
    let f = Fixture::start(Options::default()).await;
    let (mut sender, _conn) = h2_connection(&f, WEB_ID).await;
    let pending = sender.send_request(get_h2("/slow"));
    // Gone before the app answers: hyper resets the stream when the response future is dropped.
    let gave_up = tokio::time::timeout(Duration::from_millis(150), pending).await;
    assert!(gave_up.is_err(), "/slow answered within 150 ms");
    let deadline = tokio::time::Instant::now() + WAIT;
    while f.app.cancelled() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(f.app.seen(), 1);
    assert_eq!(f.app.cancelled(), 1, "the app's request was not reset");
    // The abandoned request was decided and reached the app: the decision log has its line,
    // with no upstream status (no response was given), and it is counted.
    let records = f.decisions_exactly(1).await;
    assert_eq!(records[0].path, "/slow");
    assert_eq!(records[0].decision, warden_policy::Outcome::Allow);
    assert_eq!(records[0].upstream_status, None);
    // The connection itself stays usable.
    let resp = sender.send_request(get_h2("/after")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let records = f.decisions_exactly(2).await;
    assert_eq!(records[1].upstream_status, Some(200));
}

#[tokio::test]
async fn http2_shutdown_finishes_the_stream_in_flight_then_closes() {
    let mut f = Fixture::start(Options::default()).await;
    let (mut sender, conn) = h2_connection(&f, WEB_ID).await;
    let in_flight = tokio::spawn(sender.send_request(get_h2("/slow")));
    while f.app.seen() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::timeout(WAIT, f.shutdown()).await.unwrap();
    let resp = tokio::time::timeout(WAIT, in_flight)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(f.app.cancelled(), 0);
    let ended = tokio::time::timeout(WAIT, conn).await;
    assert!(ended.is_ok(), "connection still open after shutdown");
}

#[tokio::test]
async fn http2_caller_sending_a_malformed_frame_is_disconnected_and_nothing_reaches_the_app() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = Fixture::start(Options::default()).await;
    let mut tls = f.client(WEB_ID).connect(f.inbound).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    // A HEADERS frame on stream 0: a connection error (RFC 9113 §6.2).
    tls.write_all(b"\x00\x00\x01\x01\x05\x00\x00\x00\x00\x82")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(WAIT, tls.read_to_end(&mut sink)).await;
    assert!(
        closed.is_ok(),
        "the connection stayed open after a protocol error"
    );
    assert_eq!(f.app.seen(), 0);
    // The sidecar still serves the next caller.
    let (mut sender, _conn) = h2_connection(&f, WEB_ID).await;
    let resp = sender.send_request(get_h2("/after")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn http2_over_tls_without_alpn_h2_is_refused_and_nothing_reaches_the_app() {
    let f = Fixture::start(Options::default()).await;
    let tls = f.client(WEB_ID).http1().connect(f.inbound).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    // HTTP/2 over TLS is chosen by ALPN (RFC 9113 §3.2); this caller chose HTTP/1.1 and then
    // opens with the HTTP/2 preface anyway.
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    let _conn = tokio::spawn(conn);
    let mut sender: SendRequest<Full<Bytes>> = sender;
    let answered = tokio::time::timeout(WAIT, sender.send_request(get_h2("/sneaked")))
        .await
        .expect("the sidecar neither answered nor closed");
    assert!(answered.is_err(), "{answered:?}");
    assert_eq!(f.app.seen(), 0);
}

/// A caller that resets most of its streams as soon as it opens them (the rapid-reset pattern)
/// has its connection closed once 100 have ended; every stream it sent was decided and had
/// reached the app, which is the work it costs. A caller whose streams complete keeps its
/// connection.
#[tokio::test]
async fn http2_caller_resetting_most_streams_at_once_is_disconnected() {
    let f = Fixture::start(Options::default()).await;
    let (mut steady, _steady_conn) = h2_connection(&f, WEB_ID).await;
    let (mut sender, conn) = h2_connection(&f, WEB_ID).await;
    let mut sent = 0;
    for _ in 0..2 {
        let batch: Vec<_> = (0..50)
            .map(|_| tokio::spawn(sender.send_request(get_h2("/slow"))))
            .collect();
        sent += batch.len();
        let deadline = tokio::time::Instant::now() + WAIT;
        while f.app.seen() < sent {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {sent} reached the app",
                f.app.seen()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for request in batch {
            request.abort();
        }
    }
    let ended = tokio::time::timeout(WAIT, conn).await;
    assert!(
        ended.is_ok(),
        "the resetting caller's connection is still open"
    );
    assert!(sender.send_request(get_h2("/a")).await.is_err());
    // The other caller's connection, with more streams than are judged, all answered, is
    // untouched.
    for _ in 0..120 {
        let resp = steady.send_request(get_h2("/a")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
}
