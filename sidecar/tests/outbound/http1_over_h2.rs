//! `http1_upstream = "h2"`: local HTTP/1.x requests carried over the route's one shared HTTP/2
//! connection, marked `warden-orig-proto: HTTP/1.1` (what a Warden inbound reads, see the
//! sidecar tests' `app_protocol.rs` and `outbound_pair.rs`).

use std::sync::Arc;

use http::{Request, StatusCode};
use warden_sidecar::outbound::Http1Upstream;

use crate::client::*;
use crate::support::*;

async fn h2_route(pki: &Pki, upstream: &Upstream) -> Proxy {
    Proxy::start(ProxyOptions {
        http1_upstream: Http1Upstream::H2,
        ..ProxyOptions::http(pki, upstream)
    })
    .await
}

#[tokio::test]
async fn local_http1_requests_go_marked_over_one_h2_connection_without_host_or_local_marks() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let proxy = h2_route(&pki, &upstream).await;

    // Several local HTTP/1.1 connections, each with a few requests: one upstream connection,
    // HTTP/2, every request marked by the outbound (a local mark is not passed on).
    for _ in 0..3 {
        let mut client = LocalClient::h1(proxy.addr).await;
        for _ in 0..3 {
            let req = Request::post("/echo?x=1")
                .header("host", "api.internal:9000")
                .header("warden-orig-proto", "HTTP/2")
                .header("x-forwarded-client-cert", "URI=spiffe://example.org/admin")
                .header("connection", "keep-alive, x-hop")
                .header("x-hop", "1")
                .header("x-app", "kept")
                .body(body_of("ping"))
                .unwrap();
            let reply = client.call(proxy.addr, req).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            assert_eq!(reply.body, "ping");
            assert_eq!(reply.header("x-version"), "HTTP/2.0");
            assert_eq!(reply.header("x-orig-proto"), "HTTP/1.1");
            assert_eq!(reply.header("x-host"), "api.internal:9000");
            assert_eq!(reply.header("x-peer-id"), CLIENT_ID);
            assert_eq!(reply.header("x-conn"), "1");
            let seen: Vec<&str> = reply.header("x-seen-headers").split(',').collect();
            assert!(seen.contains(&"x-app"), "{seen:?}");
            for gone in ["host", "connection", "x-hop", "x-forwarded-client-cert"] {
                assert!(
                    !seen.contains(&gone),
                    "{gone} reached the upstream: {seen:?}"
                );
            }
            assert_eq!(
                seen.iter().filter(|n| **n == "warden-orig-proto").count(),
                1,
                "{seen:?}"
            );
        }
    }
    assert_eq!(upstream.requests(), 9);
    assert_eq!(upstream.connections(), 1);
    assert_eq!(proxy.hooks.statuses().len(), 9);
    proxy.stop().await;
}

#[tokio::test]
async fn concurrent_local_http1_connections_multiplex_over_one_h2_connection() {
    const N: usize = 8;
    let pki = Pki::new();
    let upstream = Upstream::start(
        pki.resolver(SERVER_ID),
        pki.bundles(),
        ALPN_BOTH,
        App::Http {
            barrier: Some(Arc::new(tokio::sync::Barrier::new(N))),
        },
    )
    .await;
    let proxy = h2_route(&pki, &upstream).await;
    // Each `/wait` is held until all N have arrived: they all succeed only if they are in
    // flight at once, on the one connection.
    let addr = proxy.addr;
    let calls = (0..N).map(|_| async move {
        let mut client = LocalClient::h1(addr).await;
        client.get(addr, "/wait").await
    });
    for reply in futures::future::join_all(calls).await {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(reply.header("x-version"), "HTTP/2.0");
        assert_eq!(reply.header("x-conn"), "1");
    }
    assert_eq!(upstream.connections(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn local_h2c_requests_lose_a_local_mark_on_either_setting() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    for http1_upstream in [Http1Upstream::Http1, Http1Upstream::H2] {
        let proxy = Proxy::start(ProxyOptions {
            http1_upstream,
            ..ProxyOptions::http(&pki, &upstream)
        })
        .await;
        let mut client = LocalClient::h2(proxy.addr).await;
        let req = Request::get("/")
            .header("warden-orig-proto", "HTTP/1.1")
            .body(empty())
            .unwrap();
        let reply = client.call(proxy.addr, req).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("x-version"), "HTTP/2.0");
        assert_eq!(reply.header("x-orig-proto"), "", "{http1_upstream:?}");
        proxy.stop().await;
    }
}

#[tokio::test]
async fn the_default_keeps_local_http1_on_http1_connections() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let proxy = Proxy::http(&pki, &upstream).await;
    let mut client = LocalClient::h1(proxy.addr).await;
    let req = Request::get("/")
        .header("warden-orig-proto", "HTTP/1.1")
        .body(empty())
        .unwrap();
    let reply = client.call(proxy.addr, req).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-version"), "HTTP/1.1");
    assert_eq!(reply.header("x-orig-proto"), "");
    proxy.stop().await;
}
