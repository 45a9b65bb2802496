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

#[tokio::test]
async fn an_http10_client_keeps_its_connection_and_te_trailers_passes_in_any_case() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let proxy = h2_route(&pki, &upstream).await;
    // HTTP/1.0 with keep-alive: the answer keeps the connection, which the next request reuses.
    let mut local = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    for _ in 0..2 {
        let head = raw_exchange(
            &mut local,
            "GET / HTTP/1.0\r\nHost: api.internal\r\nConnection: keep-alive\r\n\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.0 200"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("connection: keep-alive"),
            "{head}"
        );
    }
    // `TE: Trailers` (gRPC-style, another letter case) goes as HTTP/2's `te: trailers`.
    let mut client = LocalClient::h1(proxy.addr).await;
    let req = Request::get("/")
        .header("te", "Trailers")
        .body(empty())
        .unwrap();
    let reply = client.call(proxy.addr, req).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(reply.header("x-seen-headers").split(',').any(|n| n == "te"));
    proxy.stop().await;
}

#[tokio::test]
async fn a_request_trailer_http2_cannot_carry_ends_the_request_instead_of_hanging() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let proxy = h2_route(&pki, &upstream).await;
    let mut local = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let head = tokio::time::timeout(
        WAIT,
        raw_exchange(
            &mut local,
            "POST /echo HTTP/1.1\r\nHost: api.internal\r\nTransfer-Encoding: chunked\r\n\
             Trailer: connection\r\n\r\n4\r\nping\r\n0\r\nconnection: close\r\n\r\n",
        ),
    )
    .await
    .expect("the request hung");
    // The upstream never got a whole request: the local client gets the outbound's 502.
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    proxy.stop().await;
}

/// Writes `request` on `local` and reads the response head (up to the blank line).
async fn raw_exchange(local: &mut tokio::net::TcpStream, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    local.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, local.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(n, 0, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    // Skip the body (content-length) so that the next exchange starts clean.
    if let Some(len) = text
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        let mut body = vec![0u8; len];
        local.read_exact(&mut body).await.unwrap();
    }
    text
}
