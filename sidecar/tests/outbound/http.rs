//! HTTP/1.1 and h2c through an outbound route: identity, pooling, multiplexing, headers,
//! streaming.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::Barrier;

use crate::client::*;
use crate::support::*;

#[tokio::test]
async fn http1_request_passes_and_upstream_sees_the_client_spiffe_id() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let proxy = Proxy::http(&pki, &upstream).await;

    let mut client = LocalClient::h1(proxy.addr).await;
    let reply = client.get(proxy.addr, "/hello?x=1").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "ok");
    assert_eq!(reply.header("x-peer-id"), CLIENT_ID);
    assert_eq!(reply.header("x-version"), "HTTP/1.1");
    assert_eq!(upstream.requests(), 1);
    assert_eq!(proxy.hooks.statuses(), [Some(200)]);
    proxy.stop().await;
}

/// A `GET` with a chunked body (as some search APIs take their query) reaches the upstream with
/// it: the caller's `Transfer-Encoding` goes with the connection-specific headers, and the
/// outbound asks for chunked coding again.
#[tokio::test]
async fn http1_get_with_a_chunked_body_reaches_the_upstream_whole() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let proxy = Proxy::http(&pki, &upstream).await;

    let mut client = LocalClient::h1(proxy.addr).await;
    let frames = ["a query", " in two parts"].map(|part| {
        Ok(hyper::body::Frame::data(Bytes::from_static(
            part.as_bytes(),
        )))
    });
    let body: BoxBody =
        http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed_unsync();
    let req = Request::get("/echo")
        .header("transfer-encoding", "chunked")
        .body(body)
        .unwrap();
    let reply = client.call(proxy.addr, req).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "a query in two parts");
    proxy.stop().await;
}

#[tokio::test]
async fn h2c_request_passes_and_upstream_sees_the_client_spiffe_id() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let proxy = Proxy::http(&pki, &upstream).await;

    let mut client = LocalClient::h2(proxy.addr).await;
    let reply = client
        .call(
            proxy.addr,
            Request::post("/echo").body(body_of("over h2c")).unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "over h2c");
    assert_eq!(reply.header("x-peer-id"), CLIENT_ID);
    assert_eq!(reply.header("x-version"), "HTTP/2.0");
    assert_eq!(reply.header("x-host"), proxy.addr.to_string());
    proxy.stop().await;
}

#[tokio::test]
async fn sequential_http1_requests_reuse_one_keep_alive_upstream_connection() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let proxy = Proxy::http(&pki, &upstream).await;

    // Several local connections, one after another.
    for _ in 0..3 {
        let mut client = LocalClient::h1(proxy.addr).await;
        for _ in 0..5 {
            let reply = client
                .call(
                    proxy.addr,
                    Request::post("/echo").body(body_of("ping")).unwrap(),
                )
                .await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.body, "ping");
            assert_eq!(reply.header("x-version"), "HTTP/1.1");
            assert_eq!(reply.header("x-conn"), "1");
        }
    }
    assert_eq!(upstream.requests(), 15);
    assert_eq!(upstream.connections(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn h2c_requests_from_several_local_connections_share_one_h2_upstream_connection() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let proxy = Proxy::http(&pki, &upstream).await;

    for _ in 0..3 {
        let mut client = LocalClient::h2(proxy.addr).await;
        for _ in 0..5 {
            let reply = client.get(proxy.addr, "/").await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.header("x-version"), "HTTP/2.0");
            assert_eq!(reply.header("x-conn"), "1");
        }
    }
    assert_eq!(upstream.requests(), 15);
    assert_eq!(upstream.connections(), 1);
    proxy.stop().await;
}

/// An upstream holding each `/wait` request until `n` have arrived.
async fn barrier_upstream(pki: &Pki, n: usize) -> Upstream {
    Upstream::start(
        pki.resolver(SERVER_ID),
        pki.bundles(),
        ALPN_BOTH,
        App::Http {
            barrier: Some(Arc::new(Barrier::new(n))),
        },
    )
    .await
}

#[tokio::test]
async fn concurrent_h2c_requests_multiplex_over_one_upstream_connection() {
    const N: usize = 8;
    let pki = Pki::new();
    let upstream = barrier_upstream(&pki, N).await;
    let proxy = Proxy::http(&pki, &upstream).await;

    // N local h2c connections, each with a request the upstream holds until all N have
    // arrived: they can only all succeed if they are in flight at once. Nothing was pooled
    // before: the burst itself dials a single connection.
    let addr = proxy.addr;
    let calls = (0..N).map(|_| async move {
        let mut client = LocalClient::h2(addr).await;
        client.get(addr, "/wait").await
    });
    for reply in futures::future::join_all(calls).await {
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "waited");
        assert_eq!(reply.header("x-conn"), "1");
    }
    assert_eq!(upstream.connections(), 1);
    assert_eq!(upstream.failed_handshakes(), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn concurrent_http1_requests_each_take_a_pooled_connection_and_leave_it_for_reuse() {
    const N: usize = 4;
    let pki = Pki::new();
    let upstream = barrier_upstream(&pki, N).await;
    let proxy = Proxy::http(&pki, &upstream).await;

    let addr = proxy.addr;
    let mut clients = Vec::new();
    for _ in 0..N {
        clients.push(LocalClient::h1(addr).await);
    }
    for round in 0..3 {
        let calls = clients
            .iter_mut()
            .map(|client| async move { client.get(addr, "/wait").await });
        for reply in futures::future::join_all(calls).await {
            assert_eq!(reply.status, StatusCode::OK, "round {round}");
            assert_eq!(reply.header("x-version"), "HTTP/1.1");
        }
        // HTTP/1.1 carries one request at a time: N in flight need N connections, and
        // later rounds reuse them.
        assert_eq!(upstream.connections(), N, "round {round}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn local_client_cert_header_and_hop_by_hop_headers_are_not_forwarded() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let proxy = Proxy::http(&pki, &upstream).await;

    for mut client in [
        LocalClient::h1(proxy.addr).await,
        LocalClient::h2(proxy.addr).await,
    ] {
        let mut req = Request::get("/headers")
            .header(
                "x-forwarded-client-cert",
                "By=spiffe://evil/x;URI=spiffe://evil/y",
            )
            .header("x_forwarded_client_cert", "URI=spiffe://evil/y")
            .header("authorization", "Bearer end-to-end")
            .header("x-custom", "kept")
            .body(empty())
            .unwrap();
        if let LocalClient::H1(_) = client {
            let headers = req.headers_mut();
            headers.insert("host", "api.internal:8080".parse().unwrap());
            headers.insert("connection", "keep-alive, x-conn-only".parse().unwrap());
            headers.insert("x-conn-only", "1".parse().unwrap());
            headers.insert("keep-alive", "timeout=5".parse().unwrap());
            headers.insert("proxy-connection", "keep-alive".parse().unwrap());
        }
        let h1 = matches!(client, LocalClient::H1(_));
        let reply = client.call(proxy.addr, req).await;
        assert_eq!(reply.status, StatusCode::OK);
        let seen: Vec<&str> = reply.header("x-seen-headers").split(',').collect();
        for absent in [
            "x-forwarded-client-cert",
            "x_forwarded_client_cert",
            "connection",
            "x-conn-only",
            "keep-alive",
            "proxy-connection",
        ] {
            assert!(!seen.contains(&absent), "{absent} forwarded: {seen:?}");
        }
        for present in ["authorization", "x-custom"] {
            assert!(seen.contains(&present), "{present} missing: {seen:?}");
        }
        if h1 {
            assert_eq!(reply.header("x-host"), "api.internal:8080");
        }
    }
    assert_eq!(upstream.requests(), 2);
    proxy.stop().await;
}

#[tokio::test]
async fn bodies_stream_both_ways_without_buffering() {
    let pki = Pki::new();
    {
        let upstream = Upstream::http(&pki).await;
        let proxy = Proxy::http(&pki, &upstream).await;
        for mut client in [
            LocalClient::h1(proxy.addr).await,
            LocalClient::h2(proxy.addr).await,
        ] {
            let (tx, body) = channel_body();
            let response = client
                .send(proxy.addr, Request::post("/echo").body(body).unwrap())
                .await;
            assert_eq!(response.status(), StatusCode::OK);
            let mut body = response.into_body();
            // Each chunk comes back before the next one is sent: nothing waits for the
            // whole body in either direction.
            for i in 0..5 {
                let chunk = Bytes::from(format!("chunk {i};"));
                tx.send(chunk.clone()).await.unwrap();
                let mut got = Vec::new();
                while got.len() < chunk.len() {
                    let frame = tokio::time::timeout(WAIT, body.frame())
                        .await
                        .unwrap()
                        .unwrap()
                        .unwrap();
                    got.extend_from_slice(frame.data_ref().unwrap());
                }
                assert_eq!(got, chunk);
            }
            drop(tx);
            let rest = tokio::time::timeout(WAIT, body.collect())
                .await
                .unwrap()
                .unwrap()
                .to_bytes();
            assert!(rest.is_empty());
        }
        proxy.stop().await;
    }
}

#[tokio::test]
async fn large_bodies_pass_intact() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let proxy = Proxy::http(&pki, &upstream).await;
    let payload: String = (0..200_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    for mut client in [
        LocalClient::h1(proxy.addr).await,
        LocalClient::h2(proxy.addr).await,
    ] {
        let reply = client
            .call(
                proxy.addr,
                Request::post("/echo")
                    .body(body_of(payload.clone()))
                    .unwrap(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body.len(), payload.len());
        assert!(reply.body == payload);
    }
    proxy.stop().await;
}

#[tokio::test]
async fn invalid_host_header_gets_400_naming_it() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let proxy = Proxy::http(&pki, &upstream).await;

    let mut client = LocalClient::h1(proxy.addr).await;
    let req = Request::get("/")
        .header("host", "bad host")
        .body(empty())
        .unwrap();
    let reply = client.call(proxy.addr, req).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.body,
        "host header `bad host` is not a valid authority\n"
    );
    assert_eq!(upstream.requests(), 0);
    assert_eq!(proxy.hooks.statuses(), [Some(400)]);
    proxy.stop().await;
}

#[tokio::test]
async fn h2c_request_with_too_many_headers_gets_431_and_never_leaves() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let proxy = Proxy::http(&pki, &upstream).await;
    let mut client = LocalClient::h2(proxy.addr).await;
    // The default limit is 100 headers: exactly 100 pass, 101 do not.
    for (count, want) in [
        (100, StatusCode::OK),
        (101, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
    ] {
        let mut req = Request::get("/");
        for i in 0..count {
            req = req.header(format!("x-h-{i}"), "1");
        }
        let reply = client.call(proxy.addr, req.body(empty()).unwrap()).await;
        assert_eq!(reply.status, want, "{count} headers: {}", reply.body);
    }
    assert_eq!(
        upstream.requests(),
        1,
        "only the request within the limit left"
    );
    assert_eq!(proxy.hooks.statuses(), [Some(200), Some(431)]);
    // gRPC callers get RESOURCE_EXHAUSTED.
    let mut req = Request::post("/pkg.Svc/Call").header("content-type", "application/grpc");
    for i in 0..101 {
        req = req.header(format!("x-h-{i}"), "1");
    }
    let reply = client.call(proxy.addr, req.body(empty()).unwrap()).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("grpc-status"), "8");
    assert_eq!(upstream.requests(), 1);
    proxy.stop().await;
}

/// hyper's read buffer lets a header section that completes in one read pass its size limit
/// (here 60,000 bytes, then 10,000 more): the proxy's own count refuses it.
#[tokio::test]
async fn an_h1_header_section_over_the_limit_gets_431_even_when_it_arrives_in_pieces() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let proxy = Proxy::http(&pki, &upstream).await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let first = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nx-a: {}\r\n",
        "a".repeat(60_000)
    );
    tcp.write_all(first.as_bytes()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let rest = format!("x-b: {}\r\n\r\n", "b".repeat(10_000));
    tcp.write_all(rest.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 431");
    assert_eq!(upstream.requests(), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn serve_returns_after_shutdown_and_the_port_stops_accepting() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let proxy = Proxy::http(&pki, &upstream).await;
    let addr = proxy.addr;
    assert_eq!(
        LocalClient::h1(addr).await.get(addr, "/").await.status,
        StatusCode::OK
    );
    proxy.stop().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let mut proxy = Proxy::http(&pki, &upstream).await;
    let addr = proxy.addr;

    let mut h1 = LocalClient::h1(addr).await;
    let mut h2 = LocalClient::h2(addr).await;
    let h1_call = tokio::spawn(async move { h1.get(addr, "/slow").await });
    let h2_call = tokio::spawn(async move { h2.get(addr, "/slow").await });
    wait_for(|| upstream.requests(), |n| *n == 2).await;
    assert_eq!(upstream.requests(), 2);

    proxy.signal_shutdown();
    for call in [h1_call, h2_call] {
        let reply = call.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "slow");
    }
    proxy.stop().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn idle_local_http1_connection_is_closed_after_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let mut limits = warden_sidecar::outbound::OutboundLimits::default();
    limits.idle_timeout = std::time::Duration::from_millis(200);
    let proxy = Proxy::start(ProxyOptions {
        limits,
        ..ProxyOptions::http(&pki, &upstream)
    })
    .await;

    // One request, then silence on the kept-alive connection.
    let mut local = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    local
        .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let read = tokio::time::timeout(WAIT, local.read_to_end(&mut seen)).await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nok"), "{text}");
    // read_to_end returned: the route closed the connection.
    read.unwrap().unwrap();
    proxy.stop().await;
}

#[tokio::test]
async fn http10_requests_without_host_go_upstream_as_http11_on_a_reused_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let proxy = Proxy::http(&pki, &upstream).await;

    for _ in 0..3 {
        let mut local = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        local.write_all(b"GET /old HTTP/1.0\r\n\r\n").await.unwrap();
        let mut seen = Vec::new();
        tokio::time::timeout(WAIT, local.read_to_end(&mut seen))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&seen).to_lowercase();
        assert!(text.starts_with("http/1.0 200 ok\r\n"), "{text}");
        assert!(text.contains("\r\nx-version: http/1.1\r\n"), "{text}");
        // No Host: the upstream's address names the authority.
        let host = format!("\r\nx-host: {}\r\n", upstream.addr);
        assert!(text.contains(&host), "{text}");
        assert!(text.ends_with("\r\n\r\nok"), "{text}");
    }
    assert_eq!(upstream.connections(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn local_connections_beyond_max_connections_wait_for_a_free_slot() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let mut limits = warden_sidecar::outbound::OutboundLimits::default();
    limits.max_connections = 1;
    let proxy = Proxy::start(ProxyOptions {
        limits,
        ..ProxyOptions::http(&pki, &upstream)
    })
    .await;
    let addr = proxy.addr;

    let mut first = LocalClient::h1(addr).await;
    assert_eq!(first.get(addr, "/").await.status, StatusCode::OK);
    // The second connection sits in the backlog while the first one is open ...
    let second = tokio::spawn(async move { LocalClient::h1(addr).await.get(addr, "/").await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!second.is_finished());
    assert_eq!(upstream.requests(), 1);
    // ... and is served once it closes.
    drop(first);
    let reply = tokio::time::timeout(WAIT, second).await.unwrap().unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(upstream.requests(), 2);
    proxy.stop().await;
}

#[tokio::test]
async fn request_abandoned_by_the_local_client_is_reported_without_a_status() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let proxy = Proxy::http(&pki, &upstream).await;
    let addr = proxy.addr;

    let mut client = LocalClient::h2(addr).await;
    let call = tokio::spawn(async move { client.get(addr, "/slow").await });
    wait_for(|| upstream.requests(), |n| *n == 1).await;
    // Dropping the h2 request resets its stream.
    call.abort();
    let statuses = wait_for(|| proxy.hooks.statuses(), |s| !s.is_empty()).await;
    assert_eq!(statuses, [None]);
    proxy.stop().await;
}

#[tokio::test]
async fn pooled_upstream_connection_is_closed_after_half_the_idle_timeout() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let mut limits = warden_sidecar::outbound::OutboundLimits::default();
    limits.idle_timeout = std::time::Duration::from_millis(400);
    let proxy = Proxy::start(ProxyOptions {
        limits,
        ..ProxyOptions::http(&pki, &upstream)
    })
    .await;

    let reply = LocalClient::h1(proxy.addr).await.get(proxy.addr, "/").await;
    assert_eq!(reply.header("x-conn"), "1");
    // The pool lets the idle connection go; the upstream sees it close.
    let closed = wait_for(|| upstream.closed(), |n| *n == 1).await;
    assert_eq!(closed, 1);
    let reply = LocalClient::h1(proxy.addr).await.get(proxy.addr, "/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-conn"), "2");
    proxy.stop().await;
}
