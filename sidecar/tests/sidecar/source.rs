//! The caller's address as policies and the decision log see it.

use std::net::SocketAddr;

use http::StatusCode;

use crate::support::*;

/// On a dual-stack listener (`[::]`) an IPv4 caller arrives as `::ffff:a.b.c.d`, which Cedar's
/// `ip()` refuses: it is decided, and logged, as its IPv4 address instead of being denied.
#[tokio::test]
async fn an_ipv4_caller_of_a_dual_stack_inbound_is_decided_by_its_ipv4_address() {
    if std::net::TcpListener::bind("[::]:0").is_err() {
        eprintln!("skipped: this machine has no IPv6 to listen on");
        return;
    }
    let f = Fixture::start(Options {
        listen: Some("[::]:0"),
        ..Options::default()
    })
    .await;
    let v4 = SocketAddr::from(([127, 0, 0, 1], f.inbound.port()));
    let (status, _, body) = f
        .client(WEB_ID)
        .http1()
        .request(v4, get("/orders"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let records = f.decisions(1).await;
    assert_eq!(records[0].decision, warden_policy::Outcome::Allow);
    assert!(
        records[0].source_addr.starts_with("127.0.0.1:"),
        "{}",
        records[0].source_addr
    );
}
