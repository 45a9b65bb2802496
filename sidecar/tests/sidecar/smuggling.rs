//! Requests that would tell the policy one thing and the app another: gRPC claimed by
//! `content-type` alone, headers a `Connection` option removes after the decision, two hosts (and
//! an HTTP/2 `host` without `:authority`), an upgraded connection decided again on another
//! spelling of its path, and a client certificate header sent as a trailer.

use http::{Method, StatusCode};

use crate::raw_http::*;
use crate::support::*;

fn with(
    mut req: http::Request<http_body_util::Full<bytes::Bytes>>,
    method: Method,
    types: &[&'static str],
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    *req.method_mut() = method;
    for t in types {
        req.headers_mut()
            .append("content-type", http::HeaderValue::from_static(t));
    }
    req
}

#[tokio::test]
async fn only_an_http2_post_with_one_grpc_content_type_is_decided_as_grpc() {
    let f = Fixture::start(Options::default()).await;
    let web = f.client(WEB_ID);
    // `web` may call gRPC methods but not POST: claiming gRPC any other way must not turn its
    // request into an allowed `grpc` call, nor reach the app.
    for (req, h2, why) in [
        (
            with(get("/pkg.Svc/Call"), Method::POST, &["application/grpc"]),
            false,
            "over HTTP/1.1",
        ),
        (
            with(
                get_h2("/pkg.Svc/Call"),
                Method::DELETE,
                &["application/grpc"],
            ),
            true,
            "a DELETE",
        ),
        (
            with(
                get_h2("/pkg.Svc/Call"),
                Method::POST,
                &["text/plain", "application/grpc"],
            ),
            true,
            "two content types",
        ),
    ] {
        let h1 = web.http1();
        let client = if h2 { &web } else { &h1 };
        let (status, _, body) = client.request(f.inbound, req).await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{why}: {body}");
    }
    assert_eq!(f.app.seen(), 0);
    // gRPC-Web is not gRPC: decided as the POST it is (denied for `web`).
    let req = with(
        get_h2("/pkg.Svc/Call"),
        Method::POST,
        &["application/grpc-web+proto"],
    );
    let (status, _, body) = web.request(f.inbound, req).await.unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // A real gRPC call, with a format suffix, is `grpc`.
    let req = with(
        get_h2("/pkg.Svc/Call"),
        Method::POST,
        &["application/grpc+proto"],
    );
    let (status, headers, _) = web.request(f.inbound, req).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(!headers.contains_key("grpc-status"), "{headers:?}");
    let records = f.decisions(2).await;
    assert_eq!(
        records
            .iter()
            .map(|r| r.action.as_str())
            .collect::<Vec<_>>(),
        ["POST", "grpc"]
    );
    assert_eq!(f.app.seen(), 1);
}

/// An HTTP method spelled `grpc` is not a gRPC call: sent first by a caller with no grants, it
/// is denied and does not change how later gRPC calls are decided.
#[tokio::test]
async fn an_http_method_spelled_grpc_is_denied_and_leaves_grpc_calls_alone() {
    let f = Fixture::start(Options::default()).await;
    for id in [OTHER_ID, WEB_ID] {
        let mut req = get("/x");
        *req.method_mut() = Method::from_bytes(b"grpc").unwrap();
        let (status, _, body) = f.client(id).http1().request(f.inbound, req).await.unwrap();
        assert_eq!(status, StatusCode::FORBIDDEN, "{id}: {body}");
    }
    let req = with(get_h2("/pkg.Svc/Call"), Method::POST, &["application/grpc"]);
    let (status, headers, _) = f.client(WEB_ID).request(f.inbound, req).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(!headers.contains_key("grpc-status"), "{headers:?}");
    let records = f.decisions_exactly(3).await;
    assert_eq!(
        records[0].errors,
        ["method `grpc` is not an HTTP method: `grpc` is the action of another kind of request"]
    );
    assert_eq!(f.app.seen(), 1);
}

#[tokio::test]
async fn a_connection_option_cannot_strip_the_identity_and_the_policy_sees_what_the_app_gets() {
    let f = Fixture::start(Options::default()).await;
    let mut req = get("/x");
    req.headers_mut().insert(
        "connection",
        http::HeaderValue::from_static("x-forwarded-client-cert, host, x-tenant"),
    );
    req.headers_mut()
        .insert("x-tenant", http::HeaderValue::from_static("a"));
    let (status, headers, body) = f
        .client(WEB_ID)
        .http1()
        .request(f.inbound, req)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    // The app got the caller's identity and the host…
    assert!(body.contains(&format!(";URI={WEB_ID}")), "{body}");
    let seen = headers["x-seen-headers"].to_str().unwrap();
    assert!(seen.split(',').any(|h| h == "host"), "{seen}");
    // …and not the header the option named, which the decision did not see either.
    assert!(!seen.split(',').any(|h| h == "x-tenant"), "{seen}");
    let records = f.decisions(1).await;
    assert!(
        records[0]
            .headers
            .iter()
            .all(|(name, _)| name != "x-tenant" && name != "connection"),
        "{:?}",
        records[0].headers
    );
}

#[tokio::test]
async fn two_hosts_or_a_host_that_is_not_the_authority_get_400() {
    let f = Fixture::start(Options::default()).await;
    let web = f.client(WEB_ID);
    let mut req = get("/x");
    req.headers_mut()
        .append("host", http::HeaderValue::from_static("admin.local"));
    let (status, _, body) = web.http1().request(f.inbound, req).await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body, "more than one host\n");
    let mut req = get_h2("/x");
    req.headers_mut()
        .insert("host", http::HeaderValue::from_static("admin.local"));
    let (status, _, body) = web.request(f.inbound, req).await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body, "host and :authority differ\n");
    assert_eq!(f.app.seen(), 0);
    // Not decided: no decision line, counted with decision `none`.
    wait_for_metric(
        &f,
        r#"warden_sidecar_requests_total{direction="inbound",decision="none",status_class="4xx"} 2"#,
    )
    .await;
    f.decisions_exactly(0).await;
    // The same host in both is fine, and the app gets the caller's authority, as the policy
    // saw it.
    let mut req = get_h2("/x");
    req.headers_mut()
        .insert("host", http::HeaderValue::from_static("API.local"));
    let (status, headers, body) = web.request(f.inbound, req).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-seen-uri"], "http://api.local/x");
}

#[tokio::test]
async fn an_upgraded_connection_is_decided_again_on_its_normalized_path() {
    let f = Fixture::start(Options::default()).await;
    let mut tls = f.client(WEB_ID).http1().connect(f.inbound).await.unwrap();
    let head = upgrade_at(&mut tls, "GET", "echo", "/ws/./chat").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    read_line(&mut tls).await;
    // Forbidding the path as the first decision (and the app) saw it closes the tunnel.
    let without = format!(
        "{POLICIES}\n@id(\"no-ws-chat\")\nforbid (principal, action == Mesh::Action::\"GET\", resource)\n\
         when {{ context.path == \"/ws/chat\" }};\n"
    );
    std::fs::write(f.policies.join("test.cedar"), without).unwrap();
    closed(&mut tls, WAIT).await;
    let records = f.decisions(2).await;
    assert_eq!(records[0].path, "/ws/chat");
    assert_eq!(records[1].path, "/ws/chat");
    assert_eq!(records[1].policy_ids, ["no-ws-chat"]);
}

#[tokio::test]
async fn a_client_certificate_header_sent_as_an_http2_trailer_does_not_reach_the_app() {
    let f = Fixture::start(Options::default()).await;
    let tls = f.client(WEB_ID).connect(f.inbound).await.unwrap();
    let mut sender = crate::raw_http::h2_sender(tls).await;
    let mut trailers = http::HeaderMap::new();
    trailers.insert(
        "x-forwarded-client-cert",
        http::HeaderValue::from_static("URI=spiffe://example.org/admin"),
    );
    trailers.insert(
        "x_forwarded_client_cert",
        http::HeaderValue::from_static("URI=spiffe://example.org/admin"),
    );
    trailers.insert("x-kept", http::HeaderValue::from_static("1"));
    let frames = vec![
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from("hi"))),
        Ok(hyper::body::Frame::trailers(trailers)),
    ];
    let req = http::Request::get("https://api.local/x")
        .version(http::Version::HTTP_2)
        .body(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-seen-trailers"], "x-kept");
}

/// The same over HTTP/1.1: a chunked body's trailers, announced by `Trailer`.
#[tokio::test]
async fn a_client_certificate_header_sent_as_an_http1_trailer_does_not_reach_the_app() {
    use tokio::io::AsyncWriteExt;
    let f = Fixture::start(Options::default()).await;
    let mut tls = f.client(WEB_ID).http1().connect(f.inbound).await.unwrap();
    let request = "GET /x HTTP/1.1\r\nhost: api.local\r\ntransfer-encoding: chunked\r\n\
         trailer: x-forwarded-client-cert, x-kept, X_Forwarded_Client_Cert\r\n\r\n2\r\nhi\r\n0\r\n\
         x-forwarded-client-cert: By=x;URI=spiffe://example.org/admin\r\nx-kept: 1\r\n\
         x_forwarded_client_cert: URI=spiffe://example.org/admin\r\n\r\n";
    tls.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut tls).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("\r\nx-seen-trailers: x-kept\r\n"), "{head}");
    // The body came too (a `GET` with a chunked body), and the caller's identity is the
    // sidecar's.
    let body = read_body(&mut tls, &head).await;
    assert!(body.ends_with(" body=hi"), "{body}");
    assert!(body.contains(&format!(";URI={WEB_ID}")), "{body}");
    // The policy saw the list the app got.
    let records = f.decisions_exactly(1).await;
    assert!(
        records[0]
            .headers
            .iter()
            .any(|(name, value)| name == "trailer" && value == "x-kept"),
        "{:?}",
        records[0].headers
    );
}

/// The policy sees every header the app gets: a UTF-8 value is decided on as text; a value that
/// is not UTF-8 text gets 400 (before, it was left out of the decision and passed to the app).
#[tokio::test]
async fn a_header_value_the_policy_cannot_read_as_text_gets_400() {
    use tokio::io::AsyncWriteExt;
    let f = Fixture::start(Options::default()).await;
    let request = |value: &[u8]| {
        let mut out = b"GET /x HTTP/1.1\r\nhost: api.local\r\nx-tenant: ".to_vec();
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
        out
    };
    let mut tls = f.client(WEB_ID).http1().connect(f.inbound).await.unwrap();
    tls.write_all(&request("caf\u{e9}".as_bytes()))
        .await
        .unwrap();
    let head = read_head(&mut tls).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    read_body(&mut tls, &head).await;
    // ISO-8859-1 `é`, not UTF-8.
    tls.write_all(&request(b"caf\xe9")).await.unwrap();
    let head = read_head(&mut tls).await;
    assert!(head.starts_with("http/1.1 400"), "{head}");
    let body = read_body(&mut tls, &head).await;
    assert_eq!(
        body,
        "header `x-tenant` has a value that is not UTF-8 text\n"
    );
    assert_eq!(f.app.seen(), 1);
    let records = f.decisions_exactly(1).await;
    assert!(
        records[0]
            .headers
            .iter()
            .any(|(name, value)| name == "x-tenant" && value == "caf\u{e9}"),
        "{:?}",
        records[0].headers
    );
}

/// HTTP/2 carries a header value with leading or trailing whitespace (RFC 9113 §8.2.1 forbids
/// it, h2 lets it through), which an HTTP/1.1 app's parser trims: such a request gets 400, so a
/// rule on the value cannot be stepped around with a space.
#[tokio::test]
async fn an_http2_header_value_with_surrounding_whitespace_gets_400() {
    let f = Fixture::start(Options::default()).await;
    let web = f.client(WEB_ID);
    for value in [" 1", "1 ", "\t1"] {
        let mut req = get_h2("/x");
        req.headers_mut()
            .insert("x-debug", http::HeaderValue::from_str(value).unwrap());
        let (status, _, body) = web.request(f.inbound, req).await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{value:?}: {body}");
        assert_eq!(
            body,
            "header `x-debug` has a value that starts or ends with a space or tab\n"
        );
    }
    // Inside the value, spaces are data.
    let mut req = get_h2("/x");
    req.headers_mut()
        .insert("x-debug", http::HeaderValue::from_static("1 2"));
    let (status, _, body) = web.request(f.inbound, req).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(f.app.seen(), 1);
}

/// An HTTP/2 request with `host` and no `:authority` (RFC 9113 §8.3.1 allows it; hyper's and
/// h2's clients always send `:authority`, so the frames are written by hand).
#[tokio::test]
async fn an_http2_host_without_authority_is_what_the_policy_and_the_app_see() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = Fixture::start(Options::default()).await;
    let mut tls = f.client(WEB_ID).connect(f.inbound).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // HPACK, literals without indexing and without Huffman coding: `:method GET` (static 2),
    // `:scheme https` (static 7), `:path /x` (name static 4), `host: API.local` (name static 38).
    let mut block = vec![0x82, 0x87, 0x04, 2];
    block.extend_from_slice(b"/x");
    block.extend_from_slice(&[0x0f, 38 - 15, 9]);
    block.extend_from_slice(b"API.local");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&frame(4, 0, 0, &[])); // SETTINGS
    out.extend_from_slice(&frame(1, 0x5, 1, &block)); // HEADERS, END_STREAM | END_HEADERS
    tls.write_all(&out).await.unwrap();
    // The answer's HEADERS on stream 1: `:status 200` is static entry 8.
    let status = tokio::time::timeout(WAIT, async {
        loop {
            let mut head = [0u8; 9];
            tls.read_exact(&mut head).await.unwrap();
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            tls.read_exact(&mut payload).await.unwrap();
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            assert_ne!(head[3], 0x3, "RST_STREAM: {payload:?}");
            if head[3] == 0x1 && stream == 1 {
                return payload[0];
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(status, 0x88, "not 200");
    // In one spelling (`host.rs`): lower case, for the app and the policy alike.
    assert_eq!(f.app.last_uri(), "http://api.local/x");
    let records = f.decisions_exactly(1).await;
    assert!(
        records[0]
            .headers
            .iter()
            .any(|(name, value)| name == "host" && value == "api.local"),
        "{:?}",
        records[0].headers
    );
}
