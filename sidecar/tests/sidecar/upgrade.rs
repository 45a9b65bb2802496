//! HTTP/1.1 upgrades through the inbound listener: decided like any request, then tunnelled
//! to the app's upgraded connection; refused, declined, idle and stopping cases.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::raw_http::*;
use crate::support::*;

#[tokio::test]
async fn http1_upgrade_is_decided_then_tunnelled_to_the_app_both_ways() {
    let f = Fixture::start(Options::default()).await;
    let mut tls = f.client(WEB_ID).http1().connect(f.inbound).await.unwrap();
    let head = upgrade(&mut tls, "GET", "echo").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo\r\n"), "{head}");
    assert!(head.contains("connection: upgrade\r\n"), "{head}");
    // The app got the sidecar's XFCC, not the caller's.
    let xfcc = read_line(&mut tls).await;
    assert!(xfcc.contains(&format!("URI={WEB_ID}")), "{xfcc}");
    assert!(!xfcc.contains("admin"), "{xfcc}");
    echo(&mut tls, "ping\n").await;
    echo(&mut tls, &"x".repeat(100_000)).await;
    // Closing our side closes the tunnel: the app's echo ends and the sidecar closes ours.
    tls.shutdown().await.unwrap();
    closed(&mut tls, WAIT).await;
    assert_eq!(f.app.seen(), 1);
    let records = f.decisions(1).await;
    assert_eq!(records[0].action, "GET");
    assert_eq!(records[0].path, "/chat");
    assert_eq!(records[0].upstream_status, Some(101));
    assert_eq!(records[0].decision, warden_policy::Outcome::Allow);
}

#[tokio::test]
async fn upgrade_denied_by_policy_gets_403_and_the_connection_stays_http() {
    let f = Fixture::start(Options::default()).await;
    // `web` may GET but not POST.
    let mut tls = f.client(WEB_ID).http1().connect(f.inbound).await.unwrap();
    let head = upgrade(&mut tls, "POST", "echo").await;
    assert!(head.starts_with("http/1.1 403"), "{head}");
    assert!(!head.contains("upgrade:"), "{head}");
    // The 403's body, then an ordinary request on the same connection.
    let body = read_body(&mut tls, &head).await;
    assert!(body.contains("denied by policy"), "{body}");
    assert_eq!(f.app.seen(), 0);
    tls.write_all(b"GET /after HTTP/1.1\r\nhost: api.local\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut tls).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(f.app.seen(), 1);
}

#[tokio::test]
async fn upgrade_the_app_declines_is_an_ordinary_response() {
    let f = Fixture::start(Options::default()).await;
    let mut tls = f.client(WEB_ID).http1().connect(f.inbound).await.unwrap();
    // The app only switches to `echo`: anything else gets its usual 200.
    let head = upgrade(&mut tls, "GET", "chat.v2").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("upgrade:"), "{head}");
    let records = f.decisions(1).await;
    assert_eq!(records[0].upstream_status, Some(200));
}

#[tokio::test]
async fn upgraded_connection_idle_for_the_idle_timeout_is_closed() {
    let f = Fixture::start_with_limits("idle_timeout = \"1s\"\n").await;
    let mut tls = f.client(WEB_ID).http1().connect(f.inbound).await.unwrap();
    let head = upgrade(&mut tls, "GET", "echo").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    read_line(&mut tls).await;
    echo(&mut tls, "still here\n").await;
    closed(&mut tls, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn stopping_the_sidecar_closes_upgraded_connections() {
    let mut f = Fixture::start(Options::default()).await;
    let mut tls = f.client(WEB_ID).http1().connect(f.inbound).await.unwrap();
    let head = upgrade(&mut tls, "GET", "echo").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    read_line(&mut tls).await;
    tokio::time::timeout(WAIT, f.shutdown()).await.unwrap();
    closed(&mut tls, WAIT).await;
}

#[tokio::test]
async fn upgraded_connection_is_closed_when_a_new_policy_no_longer_allows_its_request() {
    let f = Fixture::start(Options::default()).await;
    let mut tls = f.client(WEB_ID).http1().connect(f.inbound).await.unwrap();
    let head = upgrade(&mut tls, "GET", "echo").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    read_line(&mut tls).await;
    echo(&mut tls, "before\n").await;
    // A new policy that still lets `web` GET, but not upgrade to `echo`.
    let without = format!(
        "{POLICIES}\n@id(\"no-echo\")\nforbid (principal, action == Mesh::Action::\"GET\", resource)\n\
         when {{ context.headers.contains({{name: \"upgrade\", value: \"echo\"}}) }};\n"
    );
    std::fs::write(f.policies.join("test.cedar"), without).unwrap();
    closed(&mut tls, WAIT).await;
    let records = f.decisions(2).await;
    assert_eq!(records[1].decision, warden_policy::Outcome::Deny);
    assert_eq!(records[1].policy_ids, ["no-echo"]);
    assert_eq!(records[1].path, "/chat");
    assert_eq!(records[1].action, "GET");
    // Plain GETs are still allowed.
    let (status, _, _) = f
        .client(WEB_ID)
        .request(f.inbound, get("/after"))
        .await
        .unwrap();
    assert_eq!(status, http::StatusCode::OK);
}

#[tokio::test]
async fn upgraded_connection_stays_open_when_a_new_policy_still_allows_it() {
    let f = Fixture::start(Options::default()).await;
    let mut tls = f.client(WEB_ID).http1().connect(f.inbound).await.unwrap();
    let head = upgrade(&mut tls, "GET", "echo").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    read_line(&mut tls).await;
    let other = format!(
        "{POLICIES}\n@id(\"unrelated\")\nforbid (principal, action == Mesh::Action::\"GET\", resource)\n\
         when {{ context.path == \"/nowhere\" }};\n"
    );
    std::fs::write(f.policies.join("test.cedar"), other).unwrap();
    // The re-decision is logged (allowed), and the tunnel still carries bytes.
    let records = f.decisions(2).await;
    assert_eq!(records[1].decision, warden_policy::Outcome::Allow);
    echo(&mut tls, "after\n").await;
}

#[tokio::test]
async fn upgrade_to_an_app_that_is_down_gets_502_and_the_connection_stays_http() {
    let f = Fixture::start_with_app_down().await;
    let mut tls = f.client(WEB_ID).http1().connect(f.inbound).await.unwrap();
    let head = upgrade(&mut tls, "GET", "echo").await;
    assert!(head.starts_with("http/1.1 502"), "{head}");
    assert!(!head.contains("upgrade:"), "{head}");
    let records = f.decisions(1).await;
    assert_eq!(records[0].upstream_status, Some(502));
    // No tunnel: the connection still speaks HTTP (the app is still down).
    read_body(&mut tls, &head).await;
    tls.write_all(b"GET /again HTTP/1.1\r\nhost: api.local\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut tls).await;
    assert!(head.starts_with("http/1.1 502"), "{head}");
}

#[tokio::test]
async fn an_upgraded_connection_is_closed_when_its_callers_svid_expires() {
    let f = Fixture::start(Options::default()).await;
    let client = crate::lapse::short_lived(&f).http1();
    let mut tls = client.connect(f.inbound).await.unwrap();
    let head = upgrade(&mut tls, "GET", "echo").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    read_line(&mut tls).await;
    // Bytes keep moving through the tunnel until the sidecar closes it.
    let open_for = echo_until_closed(&mut tls, b"ping\n").await;
    assert!(open_for >= Duration::from_millis(500), "{open_for:?}");
}
