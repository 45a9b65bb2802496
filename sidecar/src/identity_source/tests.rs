//! Updates from the Workload API: parsing, refusals, and the stream's keep-alive.

use std::collections::HashMap;

use warden_identity::test_util::TestCa;

use super::*;

fn response(ca: &TestCa, ids: &[&str]) -> X509svidResponse {
    X509svidResponse {
        svids: ids
            .iter()
            .map(|id| {
                let svid = ca.issue_svid(&id.parse().unwrap(), Duration::from_secs(600));
                X509svid {
                    spiffe_id: (*id).to_owned(),
                    x509_svid: svid.cert_chain_der(),
                    x509_svid_key: svid.private_key().secret_pkcs8_der().to_vec(),
                    bundle: ca.bundle().x509_authorities_der(),
                    hint: String::new(),
                }
            })
            .collect(),
        crl: vec![],
        federated_bundles: HashMap::new(),
    }
}

#[test]
fn picks_the_first_svid_by_default_and_the_wanted_one_when_configured_w7() {
    let ca = TestCa::new("example.org");
    let msg = response(&ca, &["spiffe://example.org/a", "spiffe://example.org/b"]);
    let (svid, set) = parse_update(&msg, None).unwrap();
    assert_eq!(svid.spiffe_id().as_str(), "spiffe://example.org/a");
    assert_eq!(set.len(), 1);
    let want: SpiffeId = "spiffe://example.org/b".parse().unwrap();
    let (svid, _) = parse_update(&msg, Some(&want)).unwrap();
    assert_eq!(svid.spiffe_id(), &want);
    let missing: SpiffeId = "spiffe://example.org/c".parse().unwrap();
    assert_eq!(
        parse_update(&msg, Some(&missing)).unwrap_err(),
        UpdateError::NotEntitled(missing)
    );
}

#[test]
fn federated_bundles_are_added_per_trust_domain_b8_w12() {
    let ca = TestCa::new("example.org");
    let other = TestCa::new("partner.org");
    let mut msg = response(&ca, &["spiffe://example.org/a"]);
    msg.federated_bundles.insert(
        "spiffe://partner.org".to_owned(),
        other.bundle().x509_authorities_der(),
    );
    let (_, set) = parse_update(&msg, None).unwrap();
    assert_eq!(set.len(), 2);
    assert!(set.get(other.trust_domain()).is_some());
}

#[test]
fn a_federated_trust_domain_without_x509_authorities_trusts_nothing_and_the_update_applies_b1_w6() {
    let ca = TestCa::new("example.org");
    let other = TestCa::new("partner.org");
    let mut msg = response(&ca, &["spiffe://example.org/a"]);
    msg.federated_bundles
        .insert("spiffe://jwt-only.org".to_owned(), Vec::new());
    msg.federated_bundles.insert(
        "spiffe://partner.org".to_owned(),
        other.bundle().x509_authorities_der(),
    );
    let (svid, set) = parse_update(&msg, None).unwrap();
    assert_eq!(svid.spiffe_id().as_str(), "spiffe://example.org/a");
    assert_eq!(set.len(), 2);
    assert!(set.get(&"jwt-only.org".parse().unwrap()).is_none());
    assert!(set.get(other.trust_domain()).is_some());
    // The SVID's own bundle may not be empty.
    let mut msg = response(&ca, &["spiffe://example.org/a"]);
    if let Some(s) = msg.svids.first_mut() {
        s.bundle.clear();
    }
    assert!(matches!(
        parse_update(&msg, None),
        Err(UpdateError::BadBundle { .. })
    ));
}

#[test]
fn unusable_messages_are_rejected_with_a_reason() {
    let ca = TestCa::new("example.org");
    let empty = X509svidResponse::default();
    assert_eq!(
        parse_update(&empty, None).unwrap_err(),
        UpdateError::NoSvids
    );
    let mut msg = response(&ca, &["spiffe://example.org/a"]);
    if let Some(s) = msg.svids.first_mut() {
        s.x509_svid.truncate(10);
    }
    assert!(matches!(
        parse_update(&msg, None),
        Err(UpdateError::BadSvid { .. })
    ));
    let mut msg = response(&ca, &["spiffe://example.org/a"]);
    if let Some(s) = msg.svids.first_mut() {
        s.spiffe_id = "spiffe://example.org/other".to_owned();
    }
    assert!(matches!(
        parse_update(&msg, None),
        Err(UpdateError::BadSvid { .. })
    ));
    let mut msg = response(&ca, &["spiffe://example.org/a"]);
    msg.federated_bundles
        .insert("spiffe://partner.org".to_owned(), vec![1, 2, 3]);
    assert!(matches!(
        parse_update(&msg, None),
        Err(UpdateError::BadBundle { .. })
    ));
    // A leaf among a bundle's authorities would be a trust anchor (B-5): refused, own bundle or
    // federated.
    let leaf = ca
        .issue_svid(
            &"spiffe://example.org/b".parse().unwrap(),
            Duration::from_secs(600),
        )
        .leaf()
        .to_vec();
    let mut msg = response(&ca, &["spiffe://example.org/a"]);
    if let Some(s) = msg.svids.first_mut() {
        s.bundle.extend_from_slice(&leaf);
    }
    let err = parse_update(&msg, None).unwrap_err();
    assert!(
        matches!(&err, UpdateError::BadBundle { reason, .. } if reason.contains("not a certificate authority")),
        "{err:?}"
    );
    let partner = TestCa::new("partner.org");
    let mut msg = response(&ca, &["spiffe://example.org/a"]);
    let mut der = partner.root_cert().to_vec();
    der.extend_from_slice(&leaf);
    msg.federated_bundles
        .insert("spiffe://partner.org".to_owned(), der);
    assert!(matches!(
        parse_update(&msg, None),
        Err(UpdateError::BadBundle { td, .. }) if td == "partner.org"
    ));
}

#[test]
fn an_expired_or_not_yet_valid_svid_is_refused_and_the_old_one_kept() {
    let ca = TestCa::new("example.org");
    let id: SpiffeId = "spiffe://example.org/a".parse().unwrap();
    let source = IdentitySource::new(Path::new("/nonexistent"), None);
    let good = response(&ca, &["spiffe://example.org/a"]);
    source.apply(&good).unwrap();
    let first = source.subscribe().borrow().as_ref().unwrap().not_after;
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    for (not_before, not_after, why) in [
        (now - 2 * hour, now - hour, "expired"),
        (now + hour, now + 2 * hour, "not valid before"),
    ] {
        let svid = ca.issue_svid_valid(&id, not_before, not_after);
        let mut msg = good.clone();
        if let Some(s) = msg.svids.first_mut() {
            s.x509_svid = svid.cert_chain_der();
            s.x509_svid_key = svid.private_key().secret_pkcs8_der().to_vec();
        }
        let err = source.apply(&msg).unwrap_err();
        assert!(
            matches!(&err, UpdateError::BadSvid { reason, .. } if reason.contains(why)),
            "{err}"
        );
        assert_eq!(
            source.subscribe().borrow().as_ref().unwrap().not_after,
            first
        );
    }
    // A little clock skew (a `notBefore` a minute ahead) is accepted.
    let svid = ca.issue_svid_valid(&id, now + Duration::from_secs(60), now + hour);
    let mut msg = good.clone();
    if let Some(s) = msg.svids.first_mut() {
        s.x509_svid = svid.cert_chain_der();
        s.x509_svid_key = svid.private_key().secret_pkcs8_der().to_vec();
    }
    source.apply(&msg).unwrap();
}

#[test]
fn a_trust_domain_given_twice_among_the_federated_bundles_is_refused_b7() {
    let ca = TestCa::new("example.org");
    let a = TestCa::new("partner.org");
    let b = TestCa::new("partner.org");
    let mut msg = response(&ca, &["spiffe://example.org/a"]);
    msg.federated_bundles.insert(
        "spiffe://partner.org".to_owned(),
        a.bundle().x509_authorities_der(),
    );
    msg.federated_bundles
        .insert("partner.org".to_owned(), b.bundle().x509_authorities_der());
    let err = parse_update(&msg, None).unwrap_err();
    assert!(
        matches!(&err, UpdateError::BadBundle { td, reason } if td == "partner.org" && reason.contains("more than once")),
        "{err}"
    );
}

/// A Workload API endpoint that completes the HTTP/2 handshake, takes the stream and then
/// never answers anything, pings included (a hung agent): the stream's keep-alive notices, and
/// the sidecar connects again. Without it, the sidecar would wait on that stream for good.
#[tokio::test]
async fn a_hung_agent_is_noticed_by_the_keep_alive_and_the_stream_reopened() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let (accepted, mut accepts) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut conn, _)) = listener.accept().await {
            let _ = accepted.send(());
            // The client's preface and SETTINGS, then an empty SETTINGS and the ACK of its.
            let mut buf = [0u8; 256];
            let _ = conn.read(&mut buf).await;
            let settings = [0, 0, 0, 4, 0, 0, 0, 0, 0];
            let ack = [0, 0, 0, 4, 1, 0, 0, 0, 0];
            let _ = conn.write_all(&settings).await;
            let _ = conn.write_all(&ack).await;
            // Then nothing: no response, no PING acknowledged, nothing read.
            held.push(conn);
        }
    });
    let source = Arc::new(
        IdentitySource::new(&socket, None).with_keep_alive(KeepAlive {
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(200),
        }),
    );
    let running = tokio::spawn(Arc::clone(&source).run());
    let wait = Duration::from_secs(10);
    for n in 1..=2 {
        tokio::time::timeout(wait, accepts.recv())
            .await
            .unwrap_or_else(|_| panic!("connection {n} never came"))
            .unwrap();
    }
    running.abort();
}
