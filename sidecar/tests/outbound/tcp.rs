//! TCP routes: one mutual TLS connection upstream per local connection, bytes both ways.

use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use warden_sidecar::outbound::{OutboundLimits, Protocol};

use crate::support::*;

async fn tcp_proxy(pki: &Pki, upstream: &Upstream, expected: &'static [&'static str]) -> Proxy {
    Proxy::start(ProxyOptions {
        protocol: Protocol::Tcp,
        expected_ids: expected,
        ..ProxyOptions::http(pki, upstream)
    })
    .await
}

#[tokio::test]
async fn tcp_route_echoes_bytes_over_mtls_with_the_client_spiffe_id() {
    let pki = Pki::new();
    let upstream = Upstream::start(pki.resolver(SERVER_ID), pki.bundles(), &[], App::Echo).await;
    let proxy = tcp_proxy(&pki, &upstream, &[SERVER_ID]).await;

    for round in 0..2 {
        let local = TcpStream::connect(proxy.addr).await.unwrap();
        let mut local = BufReader::new(local);
        let mut line = String::new();
        tokio::time::timeout(WAIT, local.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(line, format!("peer={CLIENT_ID}\n"));
        let payload = format!("hello {round}, ").repeat(1000);
        local.get_mut().write_all(payload.as_bytes()).await.unwrap();
        let mut echoed = vec![0; payload.len()];
        tokio::time::timeout(WAIT, local.read_exact(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echoed, payload.as_bytes());
        // Closing our side ends the upstream's echo, which closes back.
        local.get_mut().shutdown().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(WAIT, local.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert!(rest.is_empty());
    }
    // One upstream connection per local connection.
    assert_eq!(upstream.connections(), 2);
    let tcp = wait_for(|| proxy.hooks.tcp.lock().unwrap().clone(), |v| v.len() == 2).await;
    let line_len = format!("peer={CLIENT_ID}\n").len() as u64;
    for (i, (sent, received)) in tcp.into_iter().enumerate() {
        let payload_len = format!("hello {i}, ").repeat(1000).len() as u64;
        assert_eq!(sent, payload_len);
        assert_eq!(received, payload_len + line_len);
    }
    proxy.stop().await;
}

#[tokio::test]
async fn tcp_route_to_an_unexpected_id_closes_the_local_connection_without_a_byte() {
    let pki = Pki::new();
    let upstream = Upstream::start(pki.resolver(SERVER_ID), pki.bundles(), &[], App::Echo).await;
    let proxy = tcp_proxy(&pki, &upstream, &["spiffe://example.org/ns/prod/sa/other"]).await;

    let mut local = TcpStream::connect(proxy.addr).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, local.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert!(got.is_empty());
    assert_eq!(upstream.connections(), 0);
    assert_eq!(proxy.hooks.handshake_failures(), ["unexpected_id"]);
    proxy.stop().await;
}

#[tokio::test]
async fn tcp_route_to_an_unreachable_upstream_closes_the_local_connection() {
    let pki = Pki::new();
    let upstream = Upstream::start(pki.resolver(SERVER_ID), pki.bundles(), &[], App::Echo).await;
    let port = closed_port().await;
    let proxy = Proxy::start(ProxyOptions {
        protocol: Protocol::Tcp,
        upstream: port.to_string(),
        ..ProxyOptions::http(&pki, &upstream)
    })
    .await;

    let mut local = TcpStream::connect(proxy.addr).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, local.read_to_end(&mut got))
        .await
        .unwrap();
    assert!(got.is_empty());
    let tcp = wait_for(
        || proxy.hooks.tcp.lock().unwrap().clone(),
        |v| !v.is_empty(),
    )
    .await;
    assert_eq!(tcp, [(0, 0)]);
    proxy.stop().await;
}

#[tokio::test]
async fn shutdown_closes_tcp_connections_still_open_after_the_drain_timeout() {
    let pki = Pki::new();
    let upstream = Upstream::start(pki.resolver(SERVER_ID), pki.bundles(), &[], App::Echo).await;
    let mut limits = OutboundLimits::default();
    limits.drain_timeout = Duration::from_millis(100);
    let mut proxy = Proxy::start(ProxyOptions {
        protocol: Protocol::Tcp,
        limits,
        ..ProxyOptions::http(&pki, &upstream)
    })
    .await;

    let mut local = BufReader::new(TcpStream::connect(proxy.addr).await.unwrap());
    let mut line = String::new();
    tokio::time::timeout(WAIT, local.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line, format!("peer={CLIENT_ID}\n"));

    proxy.signal_shutdown();
    // The connection stays open through the drain, then is closed: end of stream.
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, local.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());
    proxy.stop().await;
}

#[tokio::test]
async fn idle_tcp_connection_is_closed_after_the_idle_timeout() {
    let pki = Pki::new();
    let upstream = Upstream::start(pki.resolver(SERVER_ID), pki.bundles(), &[], App::Echo).await;
    let mut limits = OutboundLimits::default();
    limits.idle_timeout = Duration::from_millis(200);
    let proxy = Proxy::start(ProxyOptions {
        protocol: Protocol::Tcp,
        limits,
        ..ProxyOptions::http(&pki, &upstream)
    })
    .await;

    let mut local = BufReader::new(TcpStream::connect(proxy.addr).await.unwrap());
    let mut line = String::new();
    tokio::time::timeout(WAIT, local.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    // Silence from here on: the route closes the connection.
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, local.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());
    let tcp = wait_for(
        || proxy.hooks.tcp.lock().unwrap().clone(),
        |v| !v.is_empty(),
    )
    .await;
    assert_eq!(tcp, [(0, line.len() as u64)]);
    proxy.stop().await;
}

#[tokio::test]
async fn tcp_route_whose_upstream_refuses_our_svid_closes_and_counts_it() {
    let pki = Pki::new();
    let elsewhere = warden_identity::test_util::TestCa::new(TD);
    let upstream = Upstream::start(
        pki.resolver(SERVER_ID),
        std::sync::Arc::new(std::sync::Arc::new(
            warden_identity::test_util::TestCa::bundle_set(&[&elsewhere]),
        )),
        &[],
        App::Echo,
    )
    .await;
    let proxy = tcp_proxy(&pki, &upstream, &[SERVER_ID]).await;

    let mut local = TcpStream::connect(proxy.addr).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, local.read_to_end(&mut got))
        .await
        .unwrap();
    assert!(got.is_empty());
    assert_eq!(upstream.connections(), 0);
    let failures = wait_for(|| proxy.hooks.handshake_failures(), |v| !v.is_empty()).await;
    assert_eq!(failures, ["peer_rejected"]);
    proxy.stop().await;
}
