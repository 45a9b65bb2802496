//! Federated bundles kept fresh from the peers' bundle endpoints (`https_spiffe`), as SPIRE's
//! `federates_with`: the first bundle comes out of band, then each fetch is authenticated with
//! the bundle held and stored when it changed; nothing held, a wrong endpoint or a federation
//! with the CA's own trust domain are errors naming the problem.

use std::time::Duration;

use warden_ca::datastore::ca_spiffe_id;
use warden_ca::federation::{Endpoint, Refreshed, Relationship, refresh};
use warden_ca::server::ServerError;
use warden_identity::{Bundle, TrustDomain};

use crate::support::*;

pub(crate) fn partner_td() -> TrustDomain {
    "partner.org".parse().unwrap()
}

/// partner.org's CA, serving its bundle endpoint.
pub(crate) async fn partner() -> (TestCa, Relationship) {
    let ca = start_ca_for(partner_td(), |c| {
        c.bundle_endpoint_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let rel = Relationship {
        trust_domain: partner_td(),
        url: format!("https://{}/", ca.running.bundle_endpoint_addr.unwrap()),
        endpoint: Endpoint::Spiffe(ca_spiffe_id(&partner_td())),
    };
    (ca, rel)
}

/// The partner's X.509 authorities only: what an operator hands over out of band.
fn roots_of(ca: &TestCa) -> Bundle {
    let mut b = Bundle::new(partner_td());
    for cert in ca.running.authority.bundle().x509_authorities() {
        b.add_x509_authority(cert.clone());
    }
    b
}

/// The JWT keys of `b` (a bundle document carries no expiry for them).
pub(crate) fn jwt_keys(b: &Bundle) -> Vec<(String, Vec<u8>)> {
    b.jwt_authorities()
        .iter()
        .map(|k| (k.kid().to_owned(), k.public_key().to_vec()))
        .collect()
}

#[tokio::test]
async fn a_federated_bundle_is_fetched_with_the_one_held_and_stored_when_it_changed() {
    let (partner, rel) = partner().await;
    let ours = start_ca().await;
    let own = (*ours.running.authority.bundle()).clone();
    let err = refresh(&rel, &ours.ds(), &own, None).await.unwrap_err();
    assert!(err.contains("warden bundle set"), "{err}");

    ours.ds()
        .set_bundle(&roots_of(&partner), "test")
        .await
        .unwrap();
    let (what, next) = refresh(&rel, &ours.ds(), &own, None).await.unwrap();
    assert_eq!(what, Refreshed::Stored);
    // The next fetch is due after the served bundle's refresh hint (within 30 s to 1 h).
    let hint = partner.running.authority.bundle().refresh_hint().unwrap();
    assert_eq!(
        next,
        hint.clamp(Duration::from_secs(30), Duration::from_secs(3600))
    );
    let held = ours.ds().get_bundle(&partner_td()).await.unwrap().unwrap();
    let served = partner.running.authority.bundle();
    assert_eq!(held.x509_authorities(), served.x509_authorities());
    assert_eq!(jwt_keys(&held), jwt_keys(&served));
    assert!(!held.jwt_authorities().is_empty());

    let (what, _) = refresh(&rel, &ours.ds(), &own, None).await.unwrap();
    assert_eq!(what, Refreshed::Unchanged);

    // The sequence only grows (B-2): with a held one above what the peer serves, a change is
    // stored after it.
    let mut ahead = roots_of(&partner);
    ahead.set_sequence(99);
    ours.ds().set_bundle(&ahead, "test").await.unwrap();
    let (what, _) = refresh(&rel, &ours.ds(), &own, None).await.unwrap();
    assert_eq!(what, Refreshed::Stored);
    let held = ours.ds().get_bundle(&partner_td()).await.unwrap().unwrap();
    assert_eq!(held.sequence(), 100);
    assert!(served.sequence() < 99, "{}", served.sequence());

    // An endpoint that is not the one named, and one no bundle held authenticates.
    let wrong = Relationship {
        endpoint: Endpoint::Spiffe("spiffe://partner.org/someone-else".parse().unwrap()),
        ..rel.clone()
    };
    let err = refresh(&wrong, &ours.ds(), &own, None).await.unwrap_err();
    assert!(err.contains("tls handshake failed"), "{err}");
    let stranger = start_ca_for(partner_td(), |_| {}).await;
    ours.ds()
        .set_bundle(&roots_of(&stranger), "test")
        .await
        .unwrap();
    let err = refresh(&rel, &ours.ds(), &own, None).await.unwrap_err();
    assert!(err.contains("tls handshake failed"), "{err}");
    // The bundle held is left as it was.
    let held = ours.ds().get_bundle(&partner_td()).await.unwrap().unwrap();
    assert_eq!(
        held.x509_authorities(),
        roots_of(&stranger).x509_authorities()
    );
}

/// The server keeps a configured relationship fresh by itself: set the first bundle after it
/// started, and the next attempt (10 s after the failed first) stores the full one.
#[tokio::test]
async fn a_configured_federation_is_refreshed_by_the_server() {
    let (partner, rel) = partner().await;
    let ours = start_ca_configured(|c| c.federation = vec![rel.clone()]).await;
    ours.ds()
        .set_bundle(&roots_of(&partner), "test")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let held = ours.ds().get_bundle(&partner_td()).await.unwrap().unwrap();
        if !held.jwt_authorities().is_empty() {
            assert_eq!(
                jwt_keys(&held),
                jwt_keys(&partner.running.authority.bundle())
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not refreshed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let audit = ours.ds().list_audit(0, 1000).await.unwrap();
    assert!(
        audit.iter().any(|r| r.actor == "federation"),
        "no bundle stored by `federation` in the audit log"
    );
    let metrics = crate::http_get(ours.running.http_addr, "/metrics").await;
    assert!(
        metrics.contains(
            r#"warden_ca_federation_refreshes_total{trust_domain="partner.org",result="stored"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_federation_with_the_cas_own_trust_domain_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path()).await;
    let mut cfg = config(dir.path(), default_ttls(), Vec::new());
    cfg.federation = vec![Relationship {
        trust_domain: td(),
        url: "https://127.0.0.1:1/".into(),
        endpoint: Endpoint::Spiffe(ca_spiffe_id(&td())),
    }];
    let err = warden_ca::server::start(&cfg).await.unwrap_err();
    assert!(matches!(err, ServerError::FederationWithSelf(_)), "{err}");
    assert!(err.to_string().contains("own trust domain"), "{err}");
}
