//! Rotation of intermediates and JWT keys, driven by a manual clock (no sleeping), and a
//! short-TTL server whose bundle carries old and new intermediates.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use warden_ca::authority::{Authority, ManualClock, Ttls};
use warden_ca::datastore::{CaRecordKind, CaRecordState, Datastore};

use super::support::*;

fn phases(a: &Authority) -> Vec<&'static str> {
    a.intermediates().into_iter().map(|(_, p)| p).collect()
}

#[tokio::test]
async fn intermediate_is_prepared_at_half_life_activated_at_five_sixths_and_kept_until_expiry() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path()).await;
    let ds = Datastore::open(&dir.path().join("datastore.sqlite3").display().to_string())
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let ttls = Ttls {
        ca: Duration::from_secs(600),
        x509_svid: Duration::from_secs(3600),
        jwt_svid: Duration::from_secs(300),
    };
    let a = Authority::load(dir.path(), td(), ds.clone(), clock.clone(), ttls)
        .await
        .unwrap();
    assert_eq!(phases(&a), ["active"]);
    let first = a.intermediates()[0].0.clone();
    let b0 = a.bundle();
    assert_eq!(b0.x509_authorities().len(), 2); // root + active
    assert_eq!(b0.jwt_authorities().len(), 1);
    let (_, csr) = key_and_csr(None);
    let id = "spiffe://example.org/w".parse().unwrap();
    // SVID TTL is capped at the signing intermediate's NotAfter.
    let early = a.sign_x509_svid(&csr, &id, &[], Duration::ZERO).unwrap();
    assert!(early.not_after <= SystemTime::now() + Duration::from_secs(601));

    clock.advance(Duration::from_secs(299));
    assert!(!a.tick().await.unwrap());
    clock.advance(Duration::from_secs(1));
    assert!(a.tick().await.unwrap());
    assert_eq!(phases(&a), ["active", "prepared"]);
    let b1 = a.bundle();
    assert_eq!(
        b1.x509_authorities().len(),
        3,
        "prepared intermediate is published"
    );
    assert_eq!(
        b1.jwt_authorities().len(),
        2,
        "prepared jwt key is published"
    );
    assert_eq!(b1.sequence(), b0.sequence() + 1);
    // Still signing with the first one.
    let s = a.sign_x509_svid(&csr, &id, &[], Duration::ZERO).unwrap();
    assert_eq!(s.cert_chain[1], early.cert_chain[1]);

    clock.advance(Duration::from_secs(199)); // t = 499: more than 1/6 remains
    assert!(!a.tick().await.unwrap());
    clock.advance(Duration::from_secs(1)); // t = 500: 1/6 remains
    assert!(a.tick().await.unwrap());
    assert_eq!(phases(&a), ["retired", "active"]);
    let s2 = a.sign_x509_svid(&csr, &id, &[], Duration::ZERO).unwrap();
    assert_ne!(
        s2.cert_chain[1], early.cert_chain[1],
        "new intermediate signs"
    );
    let b2 = a.bundle();
    assert_eq!(
        b2.x509_authorities().len(),
        3,
        "retired intermediate stays published"
    );
    // The old SVID still verifies against the new bundle.
    let mut set = warden_identity::BundleSet::new();
    set.insert((*b2).clone());
    warden_identity::verify_x509_svid(&early.cert_chain, &set, clock.now_for_test()).unwrap();

    // The journal agrees.
    let recs = ds.list_ca_records().await.unwrap();
    let state = |id: &str| recs.iter().find(|r| r.id == id).unwrap().state;
    assert_eq!(state(&first), CaRecordState::Retired);
    assert_eq!(
        recs.iter()
            .filter(|r| r.kind == CaRecordKind::Intermediate && r.state == CaRecordState::Active)
            .count(),
        1
    );

    clock.advance(Duration::from_secs(100)); // t = 600: the first one expired
    assert!(a.tick().await.unwrap());
    let b3 = a.bundle();
    assert!(!b3.x509_authorities().contains(&early.cert_chain[1]));
    // The second one is now at half of its life: its successor is prepared.
    assert_eq!(phases(&a), ["active", "prepared"]);

    // A restart resumes from the journal: same active intermediate.
    let active = a.intermediates()[0].0.clone();
    let again = Authority::load(dir.path(), td(), ds.clone(), clock.clone(), ttls)
        .await
        .unwrap();
    assert_eq!(again.intermediates()[0].0, active);
}

trait NowForTest {
    fn now_for_test(&self) -> SystemTime;
}

impl NowForTest for ManualClock {
    fn now_for_test(&self) -> SystemTime {
        use warden_ca::authority::Clock;
        self.now()
    }
}

#[tokio::test]
async fn short_ttl_server_publishes_old_and_new_intermediates_and_keeps_serving() {
    let ttls = Ttls {
        ca: Duration::from_secs(6),
        x509_svid: Duration::from_secs(60),
        jwt_svid: Duration::from_secs(60),
    };
    let ca = start_ca_with(ttls, vec![]).await;
    let first = ca.running.authority.bundle();
    // Poll (bounded) until a rotation has published a second intermediate.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let b = ca.running.authority.bundle();
        if b.x509_authorities().len() >= 3 {
            assert!(b.sequence() > first.sequence());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no rotation within 20s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Agents can still attest (the server SVID is reissued as intermediates rotate).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let before = ca.running.authority.intermediates();
    loop {
        if ca
            .running
            .authority
            .intermediates()
            .iter()
            .any(|(s, p)| *p == "active" && !before.iter().any(|(b, bp)| b == s && *bp == "active"))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no activation within 20s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let svid = ca.attest("tok-rotated").await;
    verify_both(
        svid.cert_chain(),
        &ca.bundles(),
        &ca.running.authority.root_cert().clone(),
    );
}

/// With an agent TTL shorter than the rotation loop's period (30 s with the default CA TTL),
/// the CA's own server certificate (issued for the agent TTL) is reissued before it expires:
/// agents can still connect after its first lifetime.
#[tokio::test]
async fn the_ca_server_certificate_outlives_a_short_agent_ttl() {
    let ca = start_ca_configured(|c| c.agent_ttl = Duration::from_secs(3)).await;
    // Past the first certificate's end (its TTL; it is backdated, not postdated).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let svid = ca.attest("tok-after-first-lifetime").await;
    assert!(svid.not_after() > SystemTime::now());
}
