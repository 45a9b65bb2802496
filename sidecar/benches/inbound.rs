//! The inbound path end to end, in-process, over real loopback sockets and real TLS: an mTLS
//! client -> the sidecar (handshake, Cedar decision, decision log, forwarding) -> a local app.
//! Measures one request on a kept-alive HTTP/1.1 connection, one on a shared HTTP/2
//! connection, and a new connection's full handshake plus one request.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    unreachable_pub,
    dead_code,
    reason = "benchmark setup, sharing the integration tests' fixtures"
)]

#[path = "../tests/sidecar/support.rs"]
mod support;

use criterion::{Criterion, criterion_group, criterion_main};
use support::*;

fn inbound(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let f = rt.block_on(Fixture::start(Options::default()));
    let web = f.client(WEB_ID);
    let h1 = web.http1();

    let mut sender1 = rt.block_on(h1.http1_sender(f.inbound));
    c.bench_function("inbound/http1_keepalive_get", |b| {
        b.to_async(&rt).iter(|| {
            let req = get("/bench");
            let fut = sender1.send_request(req);
            async move {
                let resp = fut.await.unwrap();
                assert_eq!(resp.status(), 200);
                http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .unwrap();
            }
        })
    });

    let sender2 = rt.block_on(async {
        let tls = web.connect(f.inbound).await.unwrap();
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        sender
    });
    c.bench_function("inbound/http2_get", |b| {
        b.to_async(&rt).iter(|| {
            let mut s = sender2.clone();
            async move {
                let resp = s.send_request(get_h2("/bench")).await.unwrap();
                assert_eq!(resp.status(), 200);
                http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .unwrap();
            }
        })
    });

    c.bench_function("inbound/new_connection_handshake_and_get", |b| {
        b.to_async(&rt).iter(|| async {
            let (status, _, _) = h1.request(f.inbound, get("/bench")).await.unwrap();
            assert_eq!(status, 200);
        })
    });
}

criterion_group!(benches, inbound);
criterion_main!(benches);
