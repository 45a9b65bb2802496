//! The outbound path end to end, in-process, over real loopback sockets and real TLS: a local
//! plaintext client -> an outbound route (pooled mutual TLS origination) -> a rustls mutual TLS
//! server in front of a small hyper app. Everything runs on one tokio worker thread. Measures one
//! request on a kept-alive local HTTP/1.1 connection (pooled `http/1.1` upstream), one on a local
//! h2c connection (the shared `h2` upstream), and a round trip of 1 KiB through a TCP route.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    unreachable_pub,
    dead_code,
    reason = "benchmark setup, sharing the outbound integration tests' fixtures"
)]

#[path = "../tests/outbound/client.rs"]
mod client;
#[path = "../tests/outbound/grpc_app.rs"]
mod grpc_app;
#[path = "../tests/outbound/support.rs"]
mod support;

use client::*;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;
use warden_sidecar::outbound::Protocol;

fn outbound(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let pki = Pki::new();
    let (upstream, proxy) = rt.block_on(async {
        let upstream = Upstream::http(&pki).await;
        let proxy = Proxy::http(&pki, &upstream).await;
        (upstream, proxy)
    });
    let addr = proxy.addr;

    // Each iteration borrows the one local connection through an uncontended lock.
    let h1 = Arc::new(Mutex::new(rt.block_on(LocalClient::h1(addr))));
    c.bench_function("outbound/http1_keepalive_get", |b| {
        b.to_async(&rt).iter(|| {
            let h1 = h1.clone();
            async move {
                let reply = h1.lock().await.get(addr, "/").await;
                assert_eq!(reply.status, 200);
            }
        })
    });

    let h2 = Arc::new(Mutex::new(rt.block_on(LocalClient::h2(addr))));
    c.bench_function("outbound/h2c_get", |b| {
        b.to_async(&rt).iter(|| {
            let h2 = h2.clone();
            async move {
                let reply = h2.lock().await.get(addr, "/").await;
                assert_eq!(reply.status, 200);
            }
        })
    });
    assert_eq!(
        upstream.connections(),
        2,
        "one http/1.1 and one h2 connection"
    );

    let (echo, tcp_proxy, local) = rt.block_on(async {
        let echo = Upstream::start(pki.resolver(SERVER_ID), pki.bundles(), &[], App::Echo).await;
        let tcp_proxy = Proxy::start(ProxyOptions {
            protocol: Protocol::Tcp,
            ..ProxyOptions::http(&pki, &echo)
        })
        .await;
        let mut local = BufReader::new(
            tokio::net::TcpStream::connect(tcp_proxy.addr)
                .await
                .unwrap(),
        );
        let mut line = String::new();
        local.read_line(&mut line).await.unwrap();
        (echo, tcp_proxy, Arc::new(Mutex::new(local)))
    });
    c.bench_function("outbound/tcp_1k_round_trip", |b| {
        b.to_async(&rt).iter(|| {
            let local = local.clone();
            async move {
                let mut local = local.lock().await;
                local.get_mut().write_all(&[b'x'; 1024]).await.unwrap();
                let mut back = [0; 1024];
                local.read_exact(&mut back).await.unwrap();
            }
        })
    });
    drop((echo, tcp_proxy, proxy, upstream));
}

criterion_group!(benches, outbound);
criterion_main!(benches);
