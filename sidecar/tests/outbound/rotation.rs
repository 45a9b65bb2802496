//! SVID and bundle rotation: new connections use what is in force at their handshake;
//! established connections are not dropped while the upstream still verifies (pooled ones take
//! no new request once it does not; TCP ones close).

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpStream;
use warden_identity::test_util::TestCa;
use warden_sidecar::outbound::Protocol;

use crate::client::*;
use crate::support::*;

const ROTATED_ID: &str = "spiffe://example.org/ns/prod/sa/client-v2";

#[tokio::test]
async fn rotated_svid_is_presented_on_new_connections_and_old_ones_stay_up() {
    let pki = Pki::new();
    let upstream = Upstream::start(
        pki.resolver(SERVER_ID),
        pki.bundles(),
        &[b"http/1.1"],
        App::Http { barrier: None },
    )
    .await;
    let resolver = pki.resolver(CLIENT_ID);
    let proxy = Proxy::start(ProxyOptions {
        resolver: resolver.clone(),
        ..ProxyOptions::http(&pki, &upstream)
    })
    .await;
    let mut client = LocalClient::h1(proxy.addr).await;

    let reply = client.get(proxy.addr, "/").await;
    assert_eq!(
        (reply.header("x-peer-id"), reply.header("x-conn")),
        (CLIENT_ID, "1")
    );

    let rotated = pki
        .ca
        .issue_svid(&spiffe_id(ROTATED_ID), Duration::from_secs(3600));
    resolver.set(&rotated).unwrap();

    // The pooled connection made before the rotation keeps working.
    let reply = client.get(proxy.addr, "/").await;
    assert_eq!(
        (reply.header("x-peer-id"), reply.header("x-conn")),
        (CLIENT_ID, "1")
    );
    // The upstream closes it ...
    let reply = client.get(proxy.addr, "/close").await;
    assert_eq!(reply.status, StatusCode::OK);
    // ... and the next connection presents the rotated SVID.
    let reply = client.get(proxy.addr, "/").await;
    assert_eq!(
        (reply.header("x-peer-id"), reply.header("x-conn")),
        (ROTATED_ID, "2")
    );
    assert_eq!(upstream.connections(), 2);
    proxy.stop().await;
}

#[tokio::test]
async fn rotated_svid_is_presented_on_the_next_tcp_connection() {
    let pki = Pki::new();
    let upstream = Upstream::start(pki.resolver(SERVER_ID), pki.bundles(), &[], App::Echo).await;
    let resolver = pki.resolver(CLIENT_ID);
    let proxy = Proxy::start(ProxyOptions {
        protocol: Protocol::Tcp,
        resolver: resolver.clone(),
        ..ProxyOptions::http(&pki, &upstream)
    })
    .await;

    let first_line = |addr| async move {
        let mut local = tokio::io::BufReader::new(TcpStream::connect(addr).await.unwrap());
        let mut line = String::new();
        tokio::time::timeout(WAIT, local.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        (local, line)
    };
    let (open, line) = first_line(proxy.addr).await;
    assert_eq!(line, format!("peer={CLIENT_ID}\n"));
    resolver
        .set(
            &pki.ca
                .issue_svid(&spiffe_id(ROTATED_ID), Duration::from_secs(3600)),
        )
        .unwrap();
    let (_, line) = first_line(proxy.addr).await;
    assert_eq!(line, format!("peer={ROTATED_ID}\n"));

    // The connection opened before the rotation still carries bytes.
    let mut open = open;
    tokio::io::AsyncWriteExt::write_all(open.get_mut(), b"still here\n")
        .await
        .unwrap();
    let mut echoed = String::new();
    tokio::time::timeout(WAIT, open.read_line(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed, "still here\n");
    drop(open);
    proxy.stop().await;
}

#[tokio::test]
async fn bundle_update_applies_to_the_next_handshake() {
    let pki = Pki::new();
    let new_ca = TestCa::new(TD);
    // The upstream moved to a new CA; it still trusts our (old) one for client SVIDs.
    let upstream = Upstream::start(
        resolver_from(&new_ca, SERVER_ID),
        Arc::new(Arc::new(TestCa::bundle_set(&[&pki.ca]))),
        ALPN_BOTH,
        App::Http { barrier: None },
    )
    .await;
    let proxy = Proxy::http(&pki, &upstream).await;

    let mut client = LocalClient::h1(proxy.addr).await;
    assert_eq!(
        client.get(proxy.addr, "/").await.status,
        StatusCode::BAD_GATEWAY
    );
    pki.bundles.set(TestCa::bundle_set(&[&pki.ca, &new_ca]));
    let reply = client.get(proxy.addr, "/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-peer-id"), CLIENT_ID);
    proxy.stop().await;
}

/// An HTTP upstream that verifies clients with a bundle of its own, so that only the proxy's
/// view changes when the test changes `pki.bundles`.
async fn upstream_with_its_own_bundle(pki: &Pki) -> Upstream {
    Upstream::start(
        pki.resolver(SERVER_ID),
        Arc::new(Arc::new(TestCa::bundle_set(&[&pki.ca]))),
        ALPN_BOTH,
        App::Http { barrier: None },
    )
    .await
}

/// A pooled upstream connection takes no new request once its upstream's CA has left the
/// bundle: the next request opens a new connection, which the upstream's SVID no longer passes.
async fn pooled_connection_after_its_upstream_ca_leaves_the_bundle(h2: bool) {
    let pki = Pki::new();
    let upstream = upstream_with_its_own_bundle(&pki).await;
    let proxy = Proxy::http(&pki, &upstream).await;
    let mut client = match h2 {
        true => LocalClient::h2(proxy.addr).await,
        false => LocalClient::h1(proxy.addr).await,
    };
    assert_eq!(client.get(proxy.addr, "/").await.status, StatusCode::OK);
    assert_eq!(upstream.requests(), 1);
    pki.bundles.set(TestCa::bundle_set(&[&TestCa::new(TD)]));
    // Checked at most every 100 ms.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let reply = client.get(proxy.addr, "/").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.body);
    assert_eq!(upstream.requests(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn pooled_http1_connection_takes_no_request_after_its_upstream_ca_leaves_the_bundle() {
    pooled_connection_after_its_upstream_ca_leaves_the_bundle(false).await;
}

#[tokio::test]
async fn shared_h2_connection_takes_no_request_after_its_upstream_ca_leaves_the_bundle() {
    pooled_connection_after_its_upstream_ca_leaves_the_bundle(true).await;
}

/// The upstream's SVID (2 s) expires while the shared h2 connection is kept busy: a request
/// after that opens a new connection, refused for the expired SVID.
#[tokio::test]
async fn shared_h2_connection_takes_no_request_after_the_upstream_svid_expires() {
    let pki = Pki::new();
    let svid = pki
        .ca
        .issue_svid(&spiffe_id(SERVER_ID), Duration::from_secs(2));
    let resolver = Arc::new(warden_identity::tls::SvidCertResolver::from_svid(&svid).unwrap());
    let upstream = Upstream::start(
        resolver,
        pki.bundles(),
        ALPN_BOTH,
        App::Http { barrier: None },
    )
    .await;
    let proxy = Proxy::http(&pki, &upstream).await;
    let mut client = LocalClient::h2(proxy.addr).await;
    let started = tokio::time::Instant::now();
    let mut served = 0;
    loop {
        let reply = client.get(proxy.addr, "/").await;
        if reply.status != StatusCode::OK {
            assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.body);
            break;
        }
        served += 1;
        assert!(started.elapsed() < WAIT, "still served after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One connection served everything until the expiry.
    assert!(served > 2, "{served}");
    assert_eq!(upstream.connections(), 1);
    proxy.stop().await;
}

/// An outbound TCP connection is closed once its upstream's CA leaves the bundle.
#[tokio::test]
async fn tcp_connection_is_closed_when_its_upstream_ca_leaves_the_bundle() {
    let pki = Pki::new();
    let upstream = Upstream::start(
        pki.resolver(SERVER_ID),
        Arc::new(Arc::new(TestCa::bundle_set(&[&pki.ca]))),
        &[],
        App::Echo,
    )
    .await;
    let proxy = Proxy::start(ProxyOptions {
        protocol: Protocol::Tcp,
        ..ProxyOptions::http(&pki, &upstream)
    })
    .await;
    let mut local = tokio::io::BufReader::new(TcpStream::connect(proxy.addr).await.unwrap());
    let mut line = String::new();
    tokio::time::timeout(WAIT, local.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line, format!("peer={CLIENT_ID}\n"));
    pki.bundles.set(TestCa::bundle_set(&[&TestCa::new(TD)]));
    // Closed within a few of the 100 ms checks: the read ends.
    let mut rest = String::new();
    let read = tokio::time::timeout(WAIT, local.read_line(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?} {rest:?}");
    proxy.stop().await;
}

/// A request still in flight on a pooled connection when its upstream's CA leaves the bundle
/// has one idle timeout to finish: a stream that keeps going (bytes every 100 ms, so the idle
/// timeout itself never fires) is cut then, over HTTP/1.1 and HTTP/2.
#[tokio::test]
async fn a_request_in_flight_when_the_upstream_lapses_has_one_idle_timeout_to_finish() {
    use http_body_util::BodyExt;
    let pki = Pki::new();
    let upstream = upstream_with_its_own_bundle(&pki).await;
    let mut limits = warden_sidecar::outbound::OutboundLimits::default();
    limits.idle_timeout = Duration::from_secs(1);
    let proxy = Proxy::start(ProxyOptions {
        limits,
        ..ProxyOptions::http(&pki, &upstream)
    })
    .await;
    for h2 in [false, true] {
        pki.bundles.set(TestCa::bundle_set(&[&pki.ca]));
        let mut client = match h2 {
            true => LocalClient::h2(proxy.addr).await,
            false => LocalClient::h1(proxy.addr).await,
        };
        let (tx, body) = channel_body();
        let response = client
            .send(proxy.addr, http::Request::post("/echo").body(body).unwrap())
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let mut echoed = response.into_body();
        pki.bundles.set(TestCa::bundle_set(&[&TestCa::new(TD)]));
        let lapsed = tokio::time::Instant::now();
        // Echoed while the grace lasts, then cut: the body ends in an error, or early.
        let ended = loop {
            if tx.send(bytes::Bytes::from_static(b"x")).await.is_err() {
                break None;
            }
            match tokio::time::timeout(WAIT, echoed.frame()).await {
                Ok(Some(Ok(_))) => {}
                Ok(other) => break Some(other.map(|r| r.map(|_| ()))),
                Err(_) => panic!("no echo within {WAIT:?}"),
            }
            assert!(
                lapsed.elapsed() < WAIT,
                "h2={h2}: still served after {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // The 1 s grace, after noticing within the 1 s check.
        assert!(
            lapsed.elapsed() >= Duration::from_secs(1),
            "h2={h2}: cut after {:?} ({ended:?})",
            lapsed.elapsed()
        );
    }
    proxy.stop().await;
}
