//! A route's `response_timeout`: an upstream that has not begun its response in time gets the
//! local client a 504 (gRPC: `DEADLINE_EXCEEDED`) naming it; one that answers in time passes,
//! whatever its body then takes.

use http::StatusCode;

use crate::client::*;
use crate::support::*;

/// A proxy to `upstream` whose route has `response_timeout = limit`.
async fn timed_proxy(pki: &Pki, upstream: &Upstream, limit: &'static str) -> Proxy {
    Proxy::start(ProxyOptions {
        response_timeout: Some(limit),
        ..ProxyOptions::http(pki, upstream)
    })
    .await
}

#[tokio::test]
async fn an_upstream_that_does_not_begin_its_response_in_time_gets_504_naming_it() {
    let pki = Pki::new();
    let upstream =
        Upstream::start(pki.resolver(SERVER_ID), pki.bundles(), ALPN_BOTH, App::Mute).await;
    let proxy = timed_proxy(&pki, &upstream, "200ms").await;
    let expected = format!(
        "upstream `{}` did not begin its response within 200ms (the route's response_timeout)\n",
        upstream.addr
    );
    for mut client in [
        LocalClient::h1(proxy.addr).await,
        LocalClient::h2(proxy.addr).await,
    ] {
        let reply = client.get(proxy.addr, "/").await;
        assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(reply.body, expected);
    }
    // The local HTTP/1.1 connection stays usable after a 504.
    let mut h1 = LocalClient::h1(proxy.addr).await;
    for _ in 0..2 {
        assert_eq!(
            h1.get(proxy.addr, "/").await.status,
            StatusCode::GATEWAY_TIMEOUT
        );
    }
    // gRPC: trailers-only DEADLINE_EXCEEDED, the message in grpc-message.
    let req = http::Request::post("/pkg.Svc/Call")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(empty())
        .unwrap();
    let reply = LocalClient::h2(proxy.addr)
        .await
        .call(proxy.addr, req)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("grpc-status"), "4");
    assert!(
        reply.header("grpc-message").contains("response_timeout"),
        "{}",
        reply.header("grpc-message")
    );
    assert_eq!(proxy.hooks.statuses(), [Some(504); 5]);
    proxy.stop().await;
}

#[tokio::test]
async fn a_response_begun_within_the_response_timeout_passes() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let proxy = timed_proxy(&pki, &upstream, "5s").await;
    for mut client in [
        LocalClient::h1(proxy.addr).await,
        LocalClient::h2(proxy.addr).await,
    ] {
        let reply = client.get(proxy.addr, "/slow").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "slow");
    }
    assert_eq!(proxy.hooks.statuses(), [Some(200), Some(200)]);
    proxy.stop().await;
}

/// The limit is on the response's start: a body the upstream streams after it may take longer.
#[tokio::test]
async fn a_response_body_may_stream_past_the_response_timeout() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let proxy = timed_proxy(&pki, &upstream, "200ms").await;
    for mut client in [
        LocalClient::h1(proxy.addr).await,
        LocalClient::h2(proxy.addr).await,
    ] {
        // `/echo` answers at once and echoes the request body as it comes.
        let (tx, body) = channel_body();
        let req = http::Request::post("/echo").body(body).unwrap();
        let response = client.send(proxy.addr, req).await;
        assert_eq!(response.status(), StatusCode::OK);
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        tx.send(bytes::Bytes::from_static(b"late")).await.unwrap();
        drop(tx);
        assert_eq!(read(response).await.body, "late");
    }
    proxy.stop().await;
}
