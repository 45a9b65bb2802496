//! TLS session resumption on the inbound listener: a reconnecting caller resumes its session
//! and is served as the caller its full handshake verified, but never once the X.509
//! authorities have changed, its certificate has expired, or resumption is off.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use rustls::HandshakeKind;
use warden_identity::test_util::TestCa;

use crate::lapse::short_lived;
use crate::support::*;

/// `client` keeping up to 8 session tickets per server, as rustls clients do by default.
fn resuming(client: &Client) -> Client {
    let mut config = (*client.config).clone();
    config.resumption = rustls::client::Resumption::in_memory_sessions(8);
    Client {
        config: Arc::new(config),
    }
}

/// One GET over a new connection: the handshake's kind, the status and the body (the app
/// echoes the `x-forwarded-client-cert` it was given).
async fn get_once(
    f: &Fixture,
    client: &Client,
) -> Result<(HandshakeKind, StatusCode, String), String> {
    let tls = client.connect(f.inbound).await.map_err(|e| e.to_string())?;
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    let (status, _, body) = send(hyper_util::rt::TokioIo::new(tls), false, get("/x")).await?;
    Ok((kind, status, body))
}

/// [`get_once`], which must be served (200) after a handshake of `kind`; the body.
async fn served(f: &Fixture, client: &Client, kind: HandshakeKind) -> String {
    let (got, status, body) = get_once(f, client).await.unwrap();
    assert_eq!((got, status), (kind, StatusCode::OK), "{body}");
    body
}

/// The inbound handshakes counted so far: (full, resumed).
async fn handshake_counts(f: &Fixture) -> (u64, u64) {
    let m = f.metrics().await;
    (handshakes(&m, "full"), handshakes(&m, "resumed"))
}

fn handshakes(metrics: &str, kind: &str) -> u64 {
    let series =
        format!(r#"warden_sidecar_tls_handshakes_total{{direction="inbound",kind="{kind}"}} "#);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_reconnecting_caller_resumes_its_session_and_is_served_as_the_same_caller() {
    let f = Fixture::start(Options::default()).await;
    let client = resuming(&f.client(WEB_ID).http1());
    let first = served(&f, &client, HandshakeKind::Full).await;
    let second = served(&f, &client, HandshakeKind::Resumed).await;
    // The same caller: the same SPIFFE ID and certificate hash in the XFCC header.
    assert!(second.contains(&format!("URI={WEB_ID}")), "{second}");
    assert_eq!(first, second);
    let records = f.decisions_exactly(2).await;
    assert!(
        records
            .iter()
            .all(|r| r.peer_spiffe_id.as_deref() == Some(WEB_ID)),
        "{records:?}"
    );
    assert_eq!(handshake_counts(&f).await, (1, 1));
    assert_eq!(f.app.seen(), 2);
}

#[tokio::test]
async fn a_session_is_not_resumed_after_the_x509_authorities_change_x11() {
    let f = Fixture::start(Options::default()).await;
    let client = resuming(&f.client(WEB_ID).http1());
    served(&f, &client, HandshakeKind::Full).await;
    // A new root beside the old one: the caller's chain still verifies, but only a full
    // handshake may say so. The sidecar keeps an SVID of the old root, so the caller's config
    // (and its tickets: rustls ties them to the verifier) stays as it was.
    let new_ca = TestCa::new(TD);
    let mut both = f.ca.bundle();
    both.add_x509_authority(new_ca.root_cert().clone());
    let own = f.ca.issue_svid(&id(SIDECAR_ID), Duration::from_secs(3600));
    f.api.set_with_bundle(&own, &both, &[]);
    // Wait until the sidecar has the new bundle: a caller of the new root is served.
    let newcomer = Client::new(
        Some(new_ca.issue_svid(&id(WEB_ID), Duration::from_secs(600))),
        TestCa::bundle_set(&[&f.ca]),
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while newcomer.request(f.inbound, get("/x")).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new bundle was never used"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    served(&f, &client, HandshakeKind::Full).await;
    assert_eq!(handshake_counts(&f).await.1, 0);
}

#[tokio::test]
async fn a_session_is_not_resumed_once_the_callers_certificate_has_expired() {
    let f = Fixture::start(Options::default()).await;
    let client = resuming(&short_lived(&f).http1());
    served(&f, &client, HandshakeKind::Full).await;
    // `notAfter` is in whole seconds: a 2 s certificate is expired 3.1 s after its issue.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    // The sidecar takes the ticket (a full handshake would fail in its verifier instead), then
    // refuses the session at accept.
    let tls = client.connect(f.inbound).await.unwrap();
    assert_eq!(
        tls.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Resumed)
    );
    let result = send(hyper_util::rt::TokioIo::new(tls), false, get("/x")).await;
    assert!(
        result.is_err(),
        "served on an expired certificate: {result:?}"
    );
    let m = wait_for_metric(&f, r#"reason="expired"} 1"#).await;
    assert_eq!(handshakes(&m, "resumed"), 0, "{m}");
    assert_eq!(f.app.seen(), 1);
}

#[tokio::test]
async fn with_session_resumption_off_every_handshake_is_full() {
    let f = Fixture::start(Options {
        inbound_extra: r#"session_resumption = "off""#,
        ..Options::default()
    })
    .await;
    let client = resuming(&f.client(WEB_ID).http1());
    for _ in 0..2 {
        served(&f, &client, HandshakeKind::Full).await;
    }
    assert_eq!(handshake_counts(&f).await, (2, 0));
}

#[tokio::test]
async fn a_session_is_not_resumed_past_session_resumption() {
    let f = Fixture::start(Options {
        inbound_extra: r#"session_resumption = "1s""#,
        ..Options::default()
    })
    .await;
    let client = resuming(&f.client(WEB_ID).http1());
    served(&f, &client, HandshakeKind::Full).await;
    // The ticket says it lives 1 s, so the client no longer offers it (the sidecar's own
    // refusal of an older ticket is `a_ticket_is_not_honoured_past_its_lifetime` in
    // `inbound::resumption`): this is the key reaching the tickets. Issue times are whole
    // seconds: a 1 s lifetime is over within 2 s.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    served(&f, &client, HandshakeKind::Full).await;
}
