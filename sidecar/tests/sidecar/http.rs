//! HTTP/1.1 and HTTP/2 through the inbound listener: decisions, XFCC, hot reload, bad input.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

#[tokio::test]
async fn allowed_http1_request_reaches_app_with_xfcc() {
    let f = Fixture::start(Options::default()).await;
    let web = f.client(WEB_ID).http1();
    let (status, _, body) = web.request(f.inbound, get("/orders?id=7")).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.starts_with("HTTP/1.1 "), "{body}");
    assert!(
        body.contains(&format!("xfcc=By={SIDECAR_ID};Hash="))
            && body.contains(&format!(";URI={WEB_ID}")),
        "{body}"
    );
    assert_eq!(f.app.seen(), 1);
    let records = f.decisions(1).await;
    let r = &records[0];
    assert_eq!(r.decision, warden_policy::Outcome::Allow);
    assert_eq!(r.peer_spiffe_id.as_deref(), Some(WEB_ID));
    assert_eq!(r.path, "/orders");
    assert_eq!(r.query, "id=7");
    assert_eq!(r.action, "GET");
    assert_eq!(r.upstream_status, Some(200));
    assert_eq!(r.tls_version.as_deref(), Some("TLSv1.3"));
    assert_eq!(r.policy_ids, ["web-reads-api"]);
    // The record replays as the same request (`warden policy diff`).
    let spec = r.to_spec().unwrap();
    assert_eq!(spec.principal, WEB_ID);
}

#[tokio::test]
async fn denied_request_gets_403_naming_the_decision_and_never_reaches_app() {
    let f = Fixture::start(Options::default()).await;
    let other = f.client(OTHER_ID);
    let (status, _, body) = other.request(f.inbound, get("/orders")).await.unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    let records = f.decisions(1).await;
    assert!(body.contains(&records[0].decision_id), "{body}");
    assert_eq!(records[0].decision, warden_policy::Outcome::Deny);
    assert_eq!(records[0].upstream_status, None);
    // A denied write with a body: the body never reaches the app either.
    let web = f.client(WEB_ID);
    let post = Request::post("/orders")
        .header("host", "api")
        .body(Full::new(Bytes::from_static(b"secret payload")))
        .unwrap();
    let (status, _, _) = web.request(f.inbound, post).await.unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(f.app.seen(), 0);
    let m = wait_for_metric(&f, r#"decision="deny",status_class="4xx"} 2"#).await;
    assert!(m.contains(r#"warden_sidecar_requests_total{direction="inbound",decision="deny",status_class="4xx"} 2"#), "{m}");
}

#[tokio::test]
async fn http2_requests_are_decided_and_forwarded_as_h2c() {
    let f = Fixture::start(Options::default()).await;
    let web = f.client(WEB_ID);
    let (status, _, body) = web.request(f.inbound, get_h2("/a")).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.starts_with("HTTP/2.0 "), "{body}");
    assert!(body.contains(&format!("URI={WEB_ID}")), "{body}");
    let other = f.client(OTHER_ID);
    let (status, _, _) = other.request(f.inbound, get_h2("/a")).await.unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(f.app.seen(), 1);
    // Policies and the log see `:authority` as `host`, as over HTTP/1.1.
    let records = f.decisions(2).await;
    assert!(
        records[0]
            .headers
            .contains(&("host".to_owned(), "api.local".to_owned())),
        "{:?}",
        records[0].headers
    );
}

#[tokio::test]
async fn http2_connection_multiplexes_many_requests_to_the_app_pool() {
    let f = Fixture::start(Options::default()).await;
    let web = f.client(WEB_ID);
    let tls = web.connect(f.inbound).await.unwrap();
    let sender = crate::raw_http::h2_sender(tls).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut s = sender.clone();
        tasks.push(tokio::spawn(async move {
            s.send_request(get_h2(&format!("/m/{i}")))
                .await
                .unwrap()
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(f.app.seen(), 50);
}

#[tokio::test]
async fn http2_bodies_larger_than_every_flow_control_window_pass_intact() {
    let f = Fixture::start(Options::default()).await;
    let web = f.client(WEB_ID);
    // 3 MiB: more than the caller's and the app's stream windows (64 KiB) and the app leg's
    // own receive window (2 MiB), so both directions wait for WINDOW_UPDATEs on the way.
    let payload: String = (0..3 * 1024 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let mut req = get_h2("/upload");
    *req.body_mut() = Full::new(Bytes::from(payload.clone()));
    let (status, _, body) = web.request(f.inbound, req).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let echoed = body
        .strip_prefix("HTTP/2.0 xfcc=")
        .and_then(|rest| rest.split_once(" body="))
        .map(|(_, echoed)| echoed)
        .unwrap_or_else(|| panic!("unexpected reply: {}", &body[..body.len().min(200)]));
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "the echoed body differs");
    assert_eq!(f.app.seen(), 1);
}

/// Sends `paths` one after another on one HTTP/1.1 connection; returns each status and the
/// request target the app saw.
async fn keep_alive(f: &Fixture, paths: &[&str]) -> Vec<(StatusCode, String)> {
    let mut sender = f.client(WEB_ID).http1().http1_sender(f.inbound).await;
    let mut out = Vec::new();
    for path in paths {
        sender.ready().await.unwrap();
        let resp = sender.send_request(get(path)).await.unwrap();
        let status = resp.status();
        let uri = resp.headers()["x-seen-uri"].to_str().unwrap().to_owned();
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap();
        out.push((status, uri));
    }
    out
}

#[tokio::test]
async fn http1_caller_keeps_one_app_connection_across_its_requests() {
    let f = Fixture::start(Options::default()).await;
    let seen = keep_alive(&f, &["/a?x=1", "/b", "/c"]).await;
    assert_eq!(
        seen,
        [
            (StatusCode::OK, "/a?x=1".to_owned()),
            (StatusCode::OK, "/b".to_owned()),
            (StatusCode::OK, "/c".to_owned()),
        ],
        "origin-form targets, all allowed"
    );
    assert_eq!(f.app.connections(), 1, "three requests, one app connection");
}

#[tokio::test]
async fn concurrent_callers_get_their_own_app_connections_and_later_ones_reuse_them() {
    let f = Fixture::start(Options::default()).await;
    // Two callers hold their connections open at the same time.
    let web = f.client(WEB_ID).http1();
    let mut open = Vec::new();
    for path in ["/one", "/two"] {
        let mut sender = web.http1_sender(f.inbound).await;
        let resp = sender.send_request(get(path)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap();
        open.push(sender);
    }
    assert_eq!(f.app.connections(), 2, "one app connection per open caller");
    // Both leave; their app connections go idle and the next callers take them.
    drop(open);
    tokio::time::sleep(Duration::from_millis(300)).await;
    keep_alive(&f, &["/three"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    keep_alive(&f, &["/four"]).await;
    assert_eq!(f.app.seen(), 4);
    assert_eq!(
        f.app.connections(),
        2,
        "later callers reuse the idle app connections"
    );
}

#[tokio::test]
async fn app_closing_its_connection_between_requests_costs_the_caller_nothing() {
    let f = Fixture::start(Options::default()).await;
    let seen = keep_alive(&f, &["/close/1", "/after", "/close/2", "/last"]).await;
    let statuses: Vec<_> = seen.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [StatusCode::OK; 4]);
    assert_eq!(f.app.seen(), 4);
    assert_eq!(
        f.app.connections(),
        3,
        "a new app connection after each close"
    );
}

#[tokio::test]
async fn app_closing_its_h2_connection_costs_h2_callers_nothing() {
    let f = Fixture::start(Options::default()).await;
    let web = f.client(WEB_ID);
    for path in ["/a", "/close/1", "/b", "/close/2", "/c"] {
        let (status, _, body) = web.request(f.inbound, get_h2(path)).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert!(body.starts_with("HTTP/2.0 "), "{body}");
    }
    assert_eq!(f.app.seen(), 5);
    // One shared h2c connection, a new one after a close. The app's first GOAWAY still admits
    // new streams, so a request sent just before the sidecar reads it is served on the closing
    // connection: 2 or 3 connections, never one per request, and no request lost.
    let connections = f.app.connections();
    assert!(
        (2..=3).contains(&connections),
        "{connections} app connections"
    );
}

/// Over HTTP/2 and HTTP/1.1. Spelled with underscores the header is dropped too: servers that
/// turn header names into CGI-style variables would merge it with the sidecar's.
#[tokio::test]
async fn spoofed_xfcc_from_the_caller_is_replaced() {
    let f = Fixture::start(Options::default()).await;
    for web in [f.client(WEB_ID), f.client(WEB_ID).http1()] {
        let req = Request::get("/x")
            .header("host", "api")
            .header(
                "x-forwarded-client-cert",
                "By=spiffe://example.org/api;URI=spiffe://example.org/admin",
            )
            .header("x_forwarded_client_cert", "URI=spiffe://example.org/admin")
            .header("X_Forwarded-Client_Cert", "URI=spiffe://example.org/admin")
            .header("x-kept", "1")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (status, headers, body) = web.request(f.inbound, req).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(!body.contains("admin"), "{body}");
        assert!(body.contains(&format!("URI={WEB_ID}")), "{body}");
        assert_eq!(body.matches("URI=").count(), 1, "{body}");
        let seen = headers["x-seen-headers"].to_str().unwrap();
        assert!(seen.contains("x-kept"), "{seen}");
        assert!(!seen.contains("client_cert"), "{seen}");
        assert_eq!(seen.matches("forwarded").count(), 1, "{seen}");
    }
}

#[tokio::test]
async fn editing_the_policy_file_changes_decisions_without_restart() {
    let f = Fixture::start(Options::default()).await;
    let other = f.client(OTHER_ID);
    let (status, _, _) = other.request(f.inbound, get("/x")).await.unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    let extra = format!(
        "{POLICIES}\n@id(\"other-reads\")\npermit (principal == Mesh::Workload::\"{OTHER_ID}\", action == Mesh::Action::\"GET\", resource);\n"
    );
    std::fs::write(f.policies.join("test.cedar"), extra).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, _, _) = other.request(f.inbound, get("/x")).await.unwrap();
        if status == StatusCode::OK {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "policy change not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_metric(&f, r#"policy_reloads_total{result="replaced"} 1"#).await;
    // A broken edit is rejected (counted), and the set in force stays.
    std::fs::write(
        f.policies.join("test.cedar"),
        "permit (principal, action, resource",
    )
    .unwrap();
    wait_for_metric(&f, r#"policy_reloads_total{result="rejected"} 1"#).await;
    let (status, _, _) = other.request(f.inbound, get("/x")).await.unwrap();
    assert_eq!(status, StatusCode::OK);
}

/// hyper's read buffer lets a header section that completes in one read pass its size limit
/// (here 60,000 bytes, then 10,000 more): the sidecar's own count refuses it.
#[tokio::test]
async fn a_header_section_over_the_limit_gets_431_even_when_it_arrives_in_pieces() {
    let f = Fixture::start(Options::default()).await;
    let mut tls = f.client(WEB_ID).http1().connect(f.inbound).await.unwrap();
    let first = format!(
        "GET /x HTTP/1.1\r\nHost: a\r\nx-a: {}\r\n",
        "a".repeat(60_000)
    );
    tls.write_all(first.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rest = format!("x-b: {}\r\n\r\n", "b".repeat(10_000));
    tls.write_all(rest.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    assert_eq!(f.app.seen(), 0);
}

#[tokio::test]
async fn malformed_http_gets_400() {
    let f = Fixture::start(Options::default()).await;
    let web = f.client(WEB_ID);
    let mut tls = web.connect(f.inbound).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    drop(tls);
    tls = web.http1().connect(f.inbound).await.unwrap();
    tls.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nbad header line\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(f.app.seen(), 0);
}

#[tokio::test]
async fn too_many_or_too_large_headers_get_431() {
    let f = Fixture::start(Options::default()).await;
    let web = f.client(WEB_ID);
    let mut req = get("/x");
    for i in 0..120 {
        req.headers_mut().insert(
            http::HeaderName::try_from(format!("x-h{i}")).unwrap(),
            http::HeaderValue::from_static("1"),
        );
    }
    let c = web.http1();
    let (status, _, _) = c.request(f.inbound, req).await.unwrap();
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let mut req = get("/x");
    req.headers_mut().insert(
        "x-big",
        http::HeaderValue::try_from("a".repeat(70_000)).unwrap(),
    );
    let (status, _, _) = c.request(f.inbound, req).await.unwrap();
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // HTTP/2: too many headers (each small, the list well under the size limit), and gRPC.
    let mut req = get_h2("/x");
    for i in 0..120 {
        req.headers_mut().insert(
            http::HeaderName::try_from(format!("x-h{i}")).unwrap(),
            http::HeaderValue::from_static("1"),
        );
    }
    let (status, _, body) = web.request(f.inbound, req).await.unwrap();
    assert_eq!(
        status,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "{body}"
    );
    assert_eq!(body, "too many request headers\n");
    let mut req = get_h2("/pkg.Svc/Call");
    *req.method_mut() = http::Method::POST;
    req.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/grpc"),
    );
    for i in 0..120 {
        req.headers_mut().insert(
            http::HeaderName::try_from(format!("x-h{i}")).unwrap(),
            http::HeaderValue::from_static("1"),
        );
    }
    let (status, headers, _) = web.request(f.inbound, req).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["grpc-status"], "8");
    // Exactly at the limit (100 headers) still passes.
    let mut req = get_h2("/x");
    for i in 0..100 {
        req.headers_mut().insert(
            http::HeaderName::try_from(format!("x-h{i}")).unwrap(),
            http::HeaderValue::from_static("1"),
        );
    }
    let (status, _, body) = web.request(f.inbound, req).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        f.app.seen(),
        1,
        "only the request within the limit reached the app"
    );
}

#[tokio::test]
async fn app_down_gets_502() {
    let f = Fixture::start_with_app_down().await;
    let web = f.client(WEB_ID);
    let (status, _, body) = web.request(f.inbound, get("/x")).await.unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let records = f.decisions(1).await;
    assert_eq!(records[0].upstream_status, Some(502));
}

#[tokio::test]
async fn app_closing_without_an_answer_gets_503() {
    // An "app" that accepts and hangs up at once.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            drop(s);
        }
    });
    let f = Fixture::start(Options {
        app_addr: Some(addr),
        ..Options::default()
    })
    .await;
    let (status, _, body) = f
        .client(WEB_ID)
        .http1()
        .request(f.inbound, get("/x"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}

/// A plaintext GET (permissive mode): the caller is `Mesh::Unauthenticated`, which the test
/// policies let read `/public…` only.
async fn plaintext_get(f: &Fixture, path: &str) -> (StatusCode, http::HeaderMap, String) {
    let tcp = tokio::net::TcpStream::connect(f.inbound).await.unwrap();
    send(hyper_util::rt::TokioIo::new(tcp), false, get(path))
        .await
        .unwrap()
}

#[tokio::test]
async fn paths_are_normalized_before_the_decision_and_the_app_gets_the_normal_form() {
    let f = Fixture::start(Options {
        inbound_extra: r#"mtls = "permissive""#,
        ..Options::default()
    })
    .await;
    // Every spelling of /private is /private, though the raw text starts with /public.
    for path in [
        "/public/../private",
        "/public/%2E%2E/private",
        "/public/./../private",
        "/public/.%2e/private",
        "/public//../../private",
        "/public\\..\\private",
    ] {
        let (status, _, body) = plaintext_get(&f, path).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
    }
    assert_eq!(f.app.seen(), 0);
    // Other spellings of /public… are allowed, and the app gets the normal form.
    for (path, seen) in [
        ("//public/a", "/public/a"),
        ("/%70ublic/./a//b?x=%2e", "/public/a/b?x=%2e"),
        ("/public/a/%2e%2E/b", "/public/b"),
        ("/public/group%2fname", "/public/group%2Fname"),
        ("/public\\a", "/public/a"),
    ] {
        let (status, headers, body) = plaintext_get(&f, path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(headers["x-seen-uri"], seen, "{path}");
    }
    // A malformed escape, or an encoded NUL, is refused before any decision and reaches nobody.
    let (status, _, body) = plaintext_get(&f, "/public/%zz").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("percent-encoding"), "{body}");
    let (status, _, body) = plaintext_get(&f, "/public/a%00.txt").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("NUL"), "{body}");
    // A dot segment with parameters is /private to servers that drop them (Tomcat, Spring).
    let (status, _, body) = plaintext_get(&f, "/public/..;x/private").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("`;` parameters"), "{body}");
    assert_eq!(f.app.seen(), 5);
    // The log shows each path as decided.
    let records = f.decisions_exactly(11).await;
    assert!(
        records[..6].iter().all(|r| r.path == "/private"),
        "{records:?}"
    );
    assert_eq!(records[7].path, "/public/a/b");
    assert_eq!(records[7].query, "x=%2e");
    // HTTP/2 (`:path`, with scheme and authority kept): the same.
    let web = f.client(WEB_ID);
    let (status, headers, body) = web
        .request(f.inbound, get_h2("/x/../orders?id=1"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen = headers["x-seen-uri"].to_str().unwrap();
    assert!(seen.ends_with("/orders?id=1"), "{seen}");
    assert_eq!(f.decisions(12).await[11].path, "/orders");
}

#[tokio::test]
async fn credentials_reach_the_app_but_not_the_decision_log() {
    let f = Fixture::start(Options::default()).await;
    let web = f.client(WEB_ID).http1();
    let mut req = get("/orders?page=2&access_token=hunter2");
    req.headers_mut()
        .insert("x-auth-token", http::HeaderValue::from_static("hunter3"));
    req.headers_mut()
        .insert("x-request-id", http::HeaderValue::from_static("r-1"));
    let (status, headers, body) = web.request(f.inbound, req).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-seen-uri"], "/orders?page=2&access_token=hunter2");
    let records = f.decisions(1).await;
    assert_eq!(records[0].query, "page=2&access_token=<redacted>");
    let logged = |name: &str| {
        records[0]
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(logged("x-auth-token").as_deref(), Some("<redacted>"));
    assert_eq!(logged("x-request-id").as_deref(), Some("r-1"));
    let text = std::fs::read_to_string(&f.log).unwrap();
    assert!(!text.contains("hunter"), "{text}");
}
