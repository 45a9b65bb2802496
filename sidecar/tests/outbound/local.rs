//! Local clients of an outbound listener that misbehave at the connection level.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_sidecar::outbound::OutboundLimits;

use crate::support::*;

/// The HTTP/2 connection preface and an empty SETTINGS frame: an h2c client's opening.
const H2C_OPENING: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test]
async fn h2c_client_that_never_answers_pings_is_disconnected() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let mut limits = OutboundLimits::default();
    // Pings every 200 ms, each to be answered within 300 ms.
    limits.idle_timeout = Duration::from_millis(400);
    limits.handshake_timeout = Duration::from_millis(300);
    let proxy = Proxy::start(ProxyOptions {
        limits,
        ..ProxyOptions::http(&pki, &upstream)
    })
    .await;

    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client.write_all(H2C_OPENING).await.unwrap();
    // Read (and ignore) whatever the sidecar sends, answering nothing, until it closes.
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(WAIT, client.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "the silent h2c client kept its connection");
    // The sidecar spoke HTTP/2 to it: its SETTINGS frame (type 4) came first.
    assert!(sink.len() >= 9 && sink[3] == 4, "{sink:?}");
    assert_eq!(upstream.requests(), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn h2c_client_sending_a_malformed_frame_is_disconnected_and_nothing_leaves() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let proxy = Proxy::http(&pki, &upstream).await;

    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client.write_all(H2C_OPENING).await.unwrap();
    // A HEADERS frame on stream 0, which RFC 9113 §6.2 makes a connection error.
    client
        .write_all(b"\x00\x00\x01\x01\x05\x00\x00\x00\x00\x82")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(WAIT, client.read_to_end(&mut sink)).await;
    assert!(
        closed.is_ok(),
        "the connection stayed open after a protocol error"
    );
    // The sidecar answered with GOAWAY (frame type 7) before closing.
    let mut frames = sink.as_slice();
    let mut goaway = false;
    while frames.len() >= 9 {
        let len =
            usize::from(frames[0]) << 16 | usize::from(frames[1]) << 8 | usize::from(frames[2]);
        goaway |= frames[3] == 7;
        frames = &frames[(9 + len).min(frames.len())..];
    }
    assert!(goaway, "no GOAWAY in {sink:?}");
    assert_eq!(upstream.requests(), 0);
    // The listener still serves the next client.
    let reply = crate::client::LocalClient::h2(proxy.addr)
        .await
        .get(proxy.addr, "/")
        .await;
    assert_eq!(reply.status, http::StatusCode::OK);
    proxy.stop().await;
}

#[tokio::test]
async fn h2c_client_that_answers_pings_but_opens_no_stream_is_sent_away_after_the_idle_timeout() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let mut limits = OutboundLimits::default();
    // The sidecar pings every 300 ms; hyper's client answers each ping.
    limits.idle_timeout = Duration::from_millis(600);
    let proxy = Proxy::start(ProxyOptions {
        limits,
        ..ProxyOptions::http(&pki, &upstream)
    })
    .await;

    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake::<_, _, http_body_util::Empty<bytes::Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/", proxy.addr))
        .body(http_body_util::Empty::new())
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 200);
    // Then no stream: answered pings alone do not keep the connection.
    let closed = tokio::time::timeout(WAIT, conn).await;
    assert!(
        closed.is_ok(),
        "a connection without streams was kept by its pongs"
    );
    assert_eq!(upstream.requests(), 1);
    proxy.stop().await;
}
