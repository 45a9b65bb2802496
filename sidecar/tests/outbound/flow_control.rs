//! HTTP/2 flow control and stream refusals on a route's shared upstream connection.

use std::sync::atomic::Ordering;

use http::{Request, StatusCode};

use crate::client::*;
use crate::support::*;

/// A local h2c client that stops reading its responses holds back only its own streams on the
/// route's shared upstream connection, never the other local clients'.
#[tokio::test]
async fn a_local_client_that_stops_reading_does_not_stall_the_shared_upstream_connection() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let proxy = Proxy::http(&pki, &upstream).await;
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut stalled, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut held = Vec::new();
    for _ in 0..24 {
        stalled.ready().await.unwrap();
        let req = Request::post(format!("http://{}/echo", proxy.addr))
            .version(http::Version::HTTP_2)
            .body(body_of(vec![b'x'; 1 << 20]))
            .unwrap();
        let resp = tokio::time::timeout(WAIT, stalled.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        held.push(resp);
    }
    let mut other = LocalClient::h2(proxy.addr).await;
    let reply = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        other.get(proxy.addr, "/"),
    )
    .await
    .expect("another local client's request stalled behind the unread responses");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(upstream.connections(), 1);
    drop(held);
    proxy.stop().await;
}

/// A bodiless request the upstream refused (`REFUSED_STREAM`: it did not process it) is sent
/// to it once more and answered, and counted as resent; RFC 9113 section 8.7.
#[tokio::test]
async fn a_bodiless_request_the_upstream_refused_is_sent_once_more() {
    let pki = Pki::new();
    let upstream = Upstream::start(
        pki.resolver(SERVER_ID),
        pki.bundles(),
        &[b"h2"],
        App::RefusesFirst,
    )
    .await;
    let proxy = Proxy::http(&pki, &upstream).await;
    let mut client = LocalClient::h2(proxy.addr).await;
    let reply = client.get(proxy.addr, "/refused-once").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body, "ok");
    assert_eq!(upstream.requests(), 2);
    assert_eq!(proxy.hooks.resent.load(Ordering::SeqCst), 1);
    assert_eq!(proxy.hooks.statuses(), [Some(200)]);
    proxy.stop().await;
}
