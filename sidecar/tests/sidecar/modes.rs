//! Modes: permissive mTLS (plaintext as `Mesh::Unauthenticated`), dry-run, and opaque TCP.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::StatusCode;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

#[tokio::test]
async fn permissive_mode_serves_plaintext_as_unauthenticated_and_mtls_as_before() {
    let f = Fixture::start(Options {
        inbound_extra: r#"mtls = "permissive""#,
        ..Options::default()
    })
    .await;
    let tcp = TcpStream::connect(f.inbound).await.unwrap();
    let mut req = get("/public/index.html");
    req.headers_mut().insert(
        "x-forwarded-client-cert",
        http::HeaderValue::from_static("URI=spiffe://example.org/web"),
    );
    let (status, _, body) = send(TokioIo::new(tcp), false, req).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("xfcc= "),
        "plaintext caller must get no xfcc: {body}"
    );
    let tcp = TcpStream::connect(f.inbound).await.unwrap();
    let (status, _, _) = send(TokioIo::new(tcp), false, get("/private"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    let web = f.client(WEB_ID);
    let (status, _, body) = web.request(f.inbound, get("/private")).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(&format!("URI={WEB_ID}")), "{body}");
    let records = f.decisions(3).await;
    assert_eq!(records[0].peer_spiffe_id, None);
    assert_eq!(records[0].tls_version, None);
    assert_eq!(records[0].policy_ids, ["anonymous-reads-public"]);
    assert_eq!(records[0].to_spec().unwrap().principal, "anonymous");
    assert_eq!(f.app.seen(), 2);
}

#[tokio::test]
async fn permissive_mode_serves_plaintext_h2c_by_prior_knowledge() {
    let f = Fixture::start(Options {
        inbound_extra: r#"mtls = "permissive""#,
        ..Options::default()
    })
    .await;
    for (path, expected) in [
        ("/public/a", StatusCode::OK),
        ("/private", StatusCode::FORBIDDEN),
    ] {
        let tcp = TcpStream::connect(f.inbound).await.unwrap();
        let (status, headers, body) = send(TokioIo::new(tcp), true, get_h2(path)).await.unwrap();
        assert_eq!(status, expected, "{path}: {body}");
        assert!(headers.contains_key("date"), "{headers:?}");
        if expected == StatusCode::OK {
            assert!(body.starts_with("HTTP/2.0 xfcc= "), "{body}");
        }
    }
    let records = f.decisions(2).await;
    assert!(records.iter().all(|r| r.peer_spiffe_id.is_none()));
    assert_eq!(f.app.seen(), 1);
}

#[tokio::test]
async fn strict_mode_refuses_plaintext() {
    let f = Fixture::start(Options::default()).await;
    let tcp = TcpStream::connect(f.inbound).await.unwrap();
    let result = send(TokioIo::new(tcp), false, get("/public/x")).await;
    assert!(result.is_err(), "{result:?}");
    assert_eq!(f.app.seen(), 0);
}

#[tokio::test]
async fn dry_run_logs_the_deny_and_forwards() {
    let f = Fixture::start(Options {
        policy_extra: r#"mode = "dry-run""#,
        ..Options::default()
    })
    .await;
    let other = f.client(OTHER_ID);
    let (status, _, _) = other.request(f.inbound, get("/x")).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(f.app.seen(), 1);
    let records = f.decisions(1).await;
    assert_eq!(records[0].decision, warden_policy::Outcome::Deny);
    assert_eq!(records[0].upstream_status, Some(200));
}

/// A TCP echo server counting connections.
async fn echo() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, count)
}

/// A sidecar whose inbound is `protocol = "tcp"` in front of `addr`.
async fn tcp_fixture(addr: std::net::SocketAddr) -> Fixture {
    Fixture::start(Options {
        inbound_extra: r#"protocol = "tcp""#,
        app_addr: Some(addr),
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn tcp_mode_decides_connect_once_then_copies_bytes() {
    let (addr, connections) = echo().await;
    let f = tcp_fixture(addr).await;
    let web = f.client(WEB_ID);
    let mut tls = web.connect(f.inbound).await.unwrap();
    for msg in [&b"ping"[..], b"pong and more"] {
        tls.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tls.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, msg);
    }
    let other = f.client(OTHER_ID);
    let mut tls = other.connect(f.inbound).await.unwrap();
    let _ = tls.write_all(b"ping").await;
    let mut buf = Vec::new();
    let n = tokio::time::timeout(WAIT, tls.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(
        n.is_err() || buf.is_empty(),
        "denied connection got bytes: {buf:?}"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    let records = f.decisions(2).await;
    assert_eq!(records[0].action, "connect");
    assert_eq!(records[0].decision, warden_policy::Outcome::Allow);
    assert_eq!(records[1].decision, warden_policy::Outcome::Deny);
}

/// Permissive mode in front of a TCP service: a plaintext client's bytes are copied as they
/// come, whatever they look like (here the start of the HTTP/2 preface, which the HTTP sniffing
/// waited on for the rest until the handshake timeout).
#[tokio::test]
async fn permissive_tcp_mode_copies_a_plaintext_clients_first_bytes_at_once() {
    let (addr, connections) = echo().await;
    let f = Fixture::start(Options {
        inbound_extra: "protocol = \"tcp\"\nmtls = \"permissive\"",
        limits: r#"handshake_timeout = "60s""#,
        app_addr: Some(addr),
        ..Options::default()
    })
    .await;
    let anonymous_connects = "@id(\"anonymous-connects\")\npermit (principal is Mesh::Unauthenticated, action == Mesh::Action::\"connect\", resource);\n";
    std::fs::write(
        f.policies.join("test.cedar"),
        format!("{POLICIES}\n{anonymous_connects}"),
    )
    .unwrap();
    wait_for_metric(&f, r#"policy_reloads_total{result="replaced"} 1"#).await;
    let mut tcp = TcpStream::connect(f.inbound).await.unwrap();
    tcp.write_all(b"PRI").await.unwrap();
    let mut buf = [0u8; 3];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut buf))
        .await
        .expect("the first bytes waited for more")
        .unwrap();
    assert_eq!(&buf, b"PRI");
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    let records = f.decisions(1).await;
    assert_eq!(records[0].action, "connect");
    assert_eq!(records[0].peer_spiffe_id, None);
}

#[tokio::test]
async fn tcp_connection_is_closed_when_a_new_policy_no_longer_allows_it() {
    let (addr, _) = echo().await;
    let f = tcp_fixture(addr).await;
    let web = f.client(WEB_ID);
    let mut tls = web.connect(f.inbound).await.unwrap();
    tls.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.unwrap();
    let without = POLICIES.replace(
        "@id(\"web-connects\")",
        "@id(\"web-connects\")\nforbid (principal, action, resource);\n@id(\"unused\")",
    );
    std::fs::write(f.policies.join("test.cedar"), without).unwrap();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(WAIT, tls.read_to_end(&mut rest)).await;
    assert!(
        r.is_ok(),
        "connection stayed open after its permit was revoked"
    );
    let records = f.decisions(2).await;
    assert_eq!(records[1].decision, warden_policy::Outcome::Deny);
    assert_eq!(records[1].action, "connect");
}

#[tokio::test]
async fn tcp_connection_is_closed_when_its_callers_svid_expires() {
    let (addr, _) = echo().await;
    let f = tcp_fixture(addr).await;
    let client = crate::lapse::short_lived(&f);
    let mut tls = client.connect(f.inbound).await.unwrap();
    // Bytes keep moving (the idle timeout never fires) until the sidecar closes the connection.
    let open_for = crate::raw_http::echo_until_closed(&mut tls, b"ping").await;
    assert!(
        open_for >= std::time::Duration::from_millis(500),
        "{open_for:?}"
    );
}
