//! Upstreams that must be refused or cannot be reached: the local client gets a 502 (504 on a
//! timeout) naming the problem, nothing reaches the upstream app, and the hooks count it.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use warden_identity::X509Svid;
use warden_identity::test_util::{BadLeaf, TestCa};
use warden_identity::tls::SvidCertResolver;
use warden_sidecar::outbound::{Outbound, OutboundError, OutboundLimits, Protocol, Route};

use crate::client::*;
use crate::support::*;

const OTHER_ID: &str = "spiffe://example.org/ns/prod/sa/other";

async fn get_once(proxy: &Proxy) -> Reply {
    LocalClient::h1(proxy.addr).await.get(proxy.addr, "/").await
}

/// One request over h2c (the shared HTTP/2 upstream connection).
async fn get_once_h2(proxy: &Proxy) -> Reply {
    LocalClient::h2(proxy.addr).await.get(proxy.addr, "/").await
}

#[tokio::test]
async fn unexpected_upstream_id_gets_502_and_nothing_reaches_the_app() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let proxy = Proxy::start(ProxyOptions {
        expected_ids: &[OTHER_ID],
        ..ProxyOptions::http(&pki, &upstream)
    })
    .await;

    for h2 in [false, false, true, true] {
        let reply = match h2 {
            false => get_once(&proxy).await,
            true => get_once_h2(&proxy).await,
        };
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
        assert_eq!(
            reply.body,
            format!(
                "tls handshake with upstream `{}` failed: upstream spiffe id `{SERVER_ID}` is \
                 not one of the expected ids\n",
                upstream.addr
            )
        );
        assert_eq!(reply.header("x-warden-outbound-status"), "502");
    }
    assert_eq!(upstream.requests(), 0);
    assert_eq!(upstream.connections(), 0);
    assert_eq!(proxy.hooks.handshake_failures(), ["unexpected_id"; 4]);
    assert_eq!(proxy.hooks.statuses(), [Some(502); 4]);
    proxy.stop().await;
}

#[tokio::test]
async fn one_of_several_expected_ids_is_accepted() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let proxy = Proxy::start(ProxyOptions {
        expected_ids: &[OTHER_ID, SERVER_ID],
        ..ProxyOptions::http(&pki, &upstream)
    })
    .await;
    assert_eq!(get_once(&proxy).await.status, StatusCode::OK);
    proxy.stop().await;
}

#[tokio::test]
async fn upstream_from_another_ca_of_the_same_trust_domain_is_refused() {
    let pki = Pki::new();
    let rogue = TestCa::new(TD);
    let upstream = Upstream::start(
        resolver_from(&rogue, SERVER_ID),
        pki.bundles(),
        ALPN_BOTH,
        App::Http { barrier: None },
    )
    .await;
    let proxy = Proxy::http(&pki, &upstream).await;

    let reply = get_once(&proxy).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(
        reply.body.starts_with(&format!(
            "tls handshake with upstream `{}` failed: peer x509-svid rejected: ",
            upstream.addr
        )),
        "{}",
        reply.body
    );
    assert_eq!(upstream.requests(), 0);
    assert_eq!(proxy.hooks.handshake_failures(), ["invalid_svid"]);
    proxy.stop().await;
}

#[tokio::test]
async fn upstream_from_an_untrusted_trust_domain_is_refused_even_when_its_id_is_expected() {
    let pki = Pki::new();
    let foreign = TestCa::new("other.org");
    let foreign_id = "spiffe://other.org/api";
    let upstream = Upstream::start(
        resolver_from(&foreign, foreign_id),
        pki.bundles(),
        ALPN_BOTH,
        App::Http { barrier: None },
    )
    .await;
    let proxy = Proxy::start(ProxyOptions {
        expected_ids: &[foreign_id],
        ..ProxyOptions::http(&pki, &upstream)
    })
    .await;

    let reply = get_once(&proxy).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(
        reply.body.contains("peer x509-svid rejected"),
        "{}",
        reply.body
    );
    assert_eq!(upstream.requests(), 0);
    assert_eq!(proxy.hooks.handshake_failures(), ["invalid_svid"]);
    proxy.stop().await;
}

#[tokio::test]
async fn expired_upstream_svid_is_refused() {
    let pki = Pki::new();
    let (chain, key) = pki
        .ca
        .issue_bad_leaf(&spiffe_id(SERVER_ID), BadLeaf::Expired);
    let expired =
        Arc::new(SvidCertResolver::from_svid(&X509Svid::new(chain, key).unwrap()).unwrap());
    let upstream = Upstream::start(
        expired,
        pki.bundles(),
        ALPN_BOTH,
        App::Http { barrier: None },
    )
    .await;
    let proxy = Proxy::http(&pki, &upstream).await;

    let reply = get_once(&proxy).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        reply.body,
        format!(
            "tls handshake with upstream `{}` failed: invalid peer certificate: Expired\n",
            upstream.addr
        )
    );
    assert_eq!(upstream.requests(), 0);
    assert_eq!(proxy.hooks.handshake_failures(), ["expired"]);
    proxy.stop().await;
}

#[tokio::test]
async fn upstream_that_refuses_our_svid_gets_502_and_sees_no_request() {
    let pki = Pki::new();
    let elsewhere = TestCa::new(TD);
    // The upstream trusts another CA only, so it refuses our client SVID.
    let upstream = Upstream::start(
        pki.resolver(SERVER_ID),
        Arc::new(Arc::new(TestCa::bundle_set(&[&elsewhere]))),
        &[b"h2", b"http/1.1"],
        App::Http { barrier: None },
    )
    .await;
    let proxy = Proxy::http(&pki, &upstream).await;

    for h2 in [false, true] {
        let reply = match h2 {
            false => get_once(&proxy).await,
            true => get_once_h2(&proxy).await,
        };
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "h2: {h2}");
        assert_eq!(
            reply.body,
            format!(
                "tls handshake with upstream `{}` failed: the upstream refused this sidecar's \
                 svid (CertificateUnknown)\n",
                upstream.addr
            ),
            "h2: {h2}"
        );
    }
    assert_eq!(upstream.requests(), 0);
    assert_eq!(upstream.connections(), 0);
    assert_eq!(upstream.failed_handshakes(), 2);
    assert_eq!(
        proxy.hooks.handshake_failures(),
        ["peer_rejected", "peer_rejected"]
    );
    proxy.stop().await;
}

#[tokio::test]
async fn h2c_request_to_an_upstream_without_h2_gets_502() {
    let pki = Pki::new();
    let upstream = Upstream::start(
        pki.resolver(SERVER_ID),
        pki.bundles(),
        &[b"http/1.1"],
        App::Http { barrier: None },
    )
    .await;
    let proxy = Proxy::http(&pki, &upstream).await;

    let reply = LocalClient::h2(proxy.addr).await.get(proxy.addr, "/").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        reply.body,
        format!(
            "tls handshake with upstream `{}` failed: received fatal alert: \
             NoApplicationProtocol\n",
            upstream.addr
        )
    );
    assert_eq!(proxy.hooks.handshake_failures(), ["peer_rejected"]);
    // HTTP/1.1 still works.
    let reply = LocalClient::h1(proxy.addr).await.get(proxy.addr, "/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(upstream.requests(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn sidecar_without_an_svid_connects_nowhere_and_answers_502() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let resolver = Arc::new(SvidCertResolver::new());
    let proxy = Proxy::start(ProxyOptions {
        resolver,
        ..ProxyOptions::http(&pki, &upstream)
    })
    .await;

    let reply = get_once(&proxy).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        reply.body,
        format!(
            "tls handshake with upstream `{}` failed: this sidecar holds no svid yet\n",
            upstream.addr
        )
    );
    assert_eq!(upstream.failed_handshakes(), 0);
    assert_eq!(proxy.hooks.handshake_failures(), ["no_svid"]);
    proxy.stop().await;
}

#[tokio::test]
async fn unreachable_upstream_gets_502_naming_it() {
    let pki = Pki::new();
    let port = closed_port().await;
    let proxy = Proxy::start(ProxyOptions {
        upstream: port.to_string(),
        ..ProxyOptions::http(&pki, &Upstream::http(&pki).await)
    })
    .await;

    for mut client in [
        LocalClient::h1(proxy.addr).await,
        LocalClient::h2(proxy.addr).await,
    ] {
        let reply = client.get(proxy.addr, "/").await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
        assert!(
            reply
                .body
                .starts_with(&format!("upstream `{port}` is unreachable: ")),
            "{}",
            reply.body
        );
        assert_eq!(reply.headers["content-type"], "text/plain; charset=utf-8");
    }
    assert_eq!(proxy.hooks.statuses(), [Some(502), Some(502)]);
    assert!(proxy.hooks.handshake_failures().is_empty());
    proxy.stop().await;
}

#[tokio::test]
async fn upstream_switching_protocols_unasked_gets_502() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let proxy = Proxy::http(&pki, &upstream).await;
    let mut client = LocalClient::h1(proxy.addr).await;
    let reply = client.get(proxy.addr, "/switch").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(
        reply
            .body
            .contains("switched protocols for a request that asked for no upgrade"),
        "{}",
        reply.body
    );
    assert!(reply.headers.get("upgrade").is_none());
    // The local connection is still HTTP: the next request on it is served.
    let reply = client.get(proxy.addr, "/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(proxy.hooks.statuses(), [Some(502), Some(200)]);
    proxy.stop().await;
}

/// An upstream running `app` behind the PKI's server SVID, and a proxy to it whose handshake
/// timeout is 300 ms, with `adjust` applied to its other limits.
async fn with_short_timeouts(
    pki: &Pki,
    app: App,
    adjust: impl FnOnce(&mut OutboundLimits),
) -> (Upstream, Proxy) {
    let upstream = Upstream::start(pki.resolver(SERVER_ID), pki.bundles(), ALPN_BOTH, app).await;
    let mut limits = OutboundLimits::default();
    limits.handshake_timeout = Duration::from_millis(300);
    adjust(&mut limits);
    let proxy = Proxy::start(ProxyOptions {
        limits,
        ..ProxyOptions::http(pki, &upstream)
    })
    .await;
    (upstream, proxy)
}

#[tokio::test]
async fn silent_upstream_hits_the_handshake_timeout_and_gets_504() {
    let pki = Pki::new();
    let (upstream, proxy) = with_short_timeouts(&pki, App::Silent, |_| {}).await;

    let reply = get_once(&proxy).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        reply.body,
        format!(
            "tls handshake with upstream `{}` failed: no answer within 300ms\n",
            upstream.addr
        )
    );
    assert_eq!(proxy.hooks.handshake_failures(), ["timeout"]);
    assert_eq!(proxy.hooks.statuses(), [Some(504)]);
    proxy.stop().await;
}

#[tokio::test]
async fn h2_upstream_that_stops_answering_is_dropped_when_a_keep_alive_ping_goes_unanswered() {
    let pki = Pki::new();
    // Pings every 200 ms while the request waits; each to be answered within 300 ms.
    let (upstream, proxy) = with_short_timeouts(&pki, App::Mute, |limits| {
        limits.idle_timeout = Duration::from_millis(400);
    })
    .await;

    // Without the ping the request would wait for as long as the upstream keeps the
    // connection open (the client below gives up after 10 s).
    let reply = get_once_h2(&proxy).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.body);
    assert!(
        reply.body.starts_with(&format!(
            "upstream `{}` failed before responding",
            upstream.addr
        )),
        "{}",
        reply.body
    );
    assert_eq!(upstream.connections(), 1);
    assert_eq!(proxy.hooks.statuses(), [Some(502)]);
    proxy.stop().await;
}

#[tokio::test]
async fn upstream_named_by_dns_name_is_resolved() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let proxy = Proxy::start(ProxyOptions {
        upstream: format!("localhost:{}", upstream.addr.port()),
        ..ProxyOptions::http(&pki, &upstream)
    })
    .await;
    let reply = get_once(&proxy).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-peer-id"), CLIENT_ID);
    proxy.stop().await;
}

#[test]
fn outbound_new_refuses_invalid_routes() {
    let pki = Pki::new();
    let route = |listen: &str, ids: &[&str], upstream: &str| Route {
        listen: listen.parse().unwrap(),
        upstream: upstream.to_owned(),
        expected_ids: ids.iter().map(|s| spiffe_id(s)).collect(),
        protocol: Protocol::Http,
        response_timeout: None,
        http1_upstream: Default::default(),
    };
    let new = |route: Route| {
        Outbound::new(
            route,
            pki.resolver(CLIENT_ID),
            pki.bundles(),
            Arc::new(warden_sidecar::outbound::NoHooks),
        )
        .unwrap_err()
    };
    let err = new(route("0.0.0.0:15001", &[SERVER_ID], "127.0.0.1:15443"));
    assert!(matches!(err, OutboundError::ListenNotLoopback(_)));
    assert_eq!(
        err.to_string(),
        "outbound listen address `0.0.0.0:15001` is not a loopback address"
    );
    let err = new(route("127.0.0.1:15001", &[], "127.0.0.1:15443"));
    assert_eq!(
        err.to_string(),
        "outbound route `127.0.0.1:15001` has no expected upstream spiffe ids"
    );
    let err = new(route("127.0.0.1:15001", &[SERVER_ID], "upstream"));
    assert_eq!(
        err.to_string(),
        "outbound upstream `upstream` is invalid: expected `host:port`"
    );
    for (protocol, timeout, reason) in [
        (Protocol::Http, "soon", "not a duration like `15s`"),
        (
            Protocol::Http,
            "10ms",
            "outside the allowed range of 100ms to 1h",
        ),
        (
            Protocol::Http,
            "2h",
            "outside the allowed range of 100ms to 1h",
        ),
        (
            Protocol::Tcp,
            "1s",
            "only `http` routes have responses to wait for",
        ),
    ] {
        let mut r = route("127.0.0.1:15001", &[SERVER_ID], "127.0.0.1:15443");
        r.protocol = protocol;
        r.response_timeout = Some(timeout.to_owned());
        let err = new(r).to_string();
        assert!(
            err.starts_with(&format!(
                "outbound route `127.0.0.1:15001` response_timeout `{timeout}` is invalid: {reason}"
            )),
            "{err}"
        );
    }
}

#[tokio::test]
async fn upstream_that_never_accepts_hits_the_connect_timeout_and_gets_504() {
    // A listener with a backlog of one that never accepts: once its queue is full the kernel
    // drops further SYNs, so a connect neither succeeds nor fails.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    loop {
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(stream) => fillers.push(stream.unwrap()),
            Err(_) => break,
        }
        assert!(fillers.len() < 64, "the backlog never filled");
    }

    let pki = Pki::new();
    let mut limits = OutboundLimits::default();
    limits.connect_timeout = Duration::from_millis(300);
    let proxy = Proxy::start(ProxyOptions {
        upstream: addr.to_string(),
        limits,
        ..ProxyOptions::http(&pki, &Upstream::http(&pki).await)
    })
    .await;

    let reply = get_once(&proxy).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        reply.body,
        format!("connecting to upstream `{addr}` timed out after 300ms\n")
    );
    assert!(proxy.hooks.handshake_failures().is_empty());
    assert_eq!(proxy.hooks.statuses(), [Some(504)]);
    drop(listener);
    proxy.stop().await;
}

/// Requests waiting for the same HTTP/2 connection attempt share its failure: 8 at once to a
/// silent upstream make one attempt (each 504), not 8 in turn.
#[tokio::test]
async fn concurrent_h2_requests_to_a_silent_upstream_share_one_failed_attempt() {
    let pki = Pki::new();
    let (_upstream, proxy) = with_short_timeouts(&pki, App::Silent, |_| {}).await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let addr = proxy.addr;
        set.spawn(async move { LocalClient::h2(addr).await.get(addr, "/").await });
    }
    while let Some(reply) = set.join_next().await {
        let reply = reply.unwrap();
        assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{}", reply.body);
        assert!(
            reply.body.contains("no answer within 300ms"),
            "{}",
            reply.body
        );
    }
    let attempts = proxy.hooks.handshake_failures().len();
    assert!(
        attempts <= 2,
        "{attempts} handshake attempts for 8 waiting requests"
    );
    proxy.stop().await;
}
