//! A route's `response_timeout`: an upstream that has not begun its response in time gets the
//! local client a 504 (gRPC: `DEADLINE_EXCEEDED`) naming it; one that answers in time passes,
//! whatever its body then takes.

use http::StatusCode;

use crate::client::*;
use crate::support::*;

#[tokio::test]
async fn an_upstream_that_does_not_begin_its_response_in_time_gets_504_naming_it() {
    let pki = Pki::new();
    let upstream =
        Upstream::start(pki.resolver(SERVER_ID), pki.bundles(), ALPN_BOTH, App::Mute).await;
    let proxy = Proxy::start(ProxyOptions {
        response_timeout: Some("200ms"),
        ..ProxyOptions::http(&pki, &upstream)
    })
    .await;
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
    assert_eq!(proxy.hooks.statuses(), [Some(504), Some(504), Some(504)]);
    proxy.stop().await;
}

#[tokio::test]
async fn a_response_begun_within_the_response_timeout_passes() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let proxy = Proxy::start(ProxyOptions {
        response_timeout: Some("5s"),
        ..ProxyOptions::http(&pki, &upstream)
    })
    .await;
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
