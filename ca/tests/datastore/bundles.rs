//! Trust bundles: JWKS round trip, listing, deletion.

use std::time::Duration;

use warden_ca::datastore::DatastoreError;
use warden_identity::test_util::TestCa;
use warden_identity::{JwtAuthority, JwtSigner};

use super::harness::{ADMIN, audit_kinds, backends};

#[tokio::test]
async fn bundle_round_trips_through_the_store() {
    for b in backends().await {
        let ca = TestCa::new("other.org");
        let mut bundle = ca.bundle();
        let signer = JwtSigner::generate("kid-1").unwrap();
        bundle.add_jwt_authority(JwtAuthority::new(
            "kid-1",
            signer.public_key_spki_der(),
            None,
        ));
        bundle.set_sequence(7);
        bundle.set_refresh_hint(Duration::from_secs(300));
        b.ds.set_bundle(&bundle, ADMIN).await.unwrap();
        let td = "other.org".parse().unwrap();
        assert_eq!(
            b.ds.get_bundle(&td).await.unwrap(),
            Some(bundle.clone()),
            "{}",
            b.name
        );

        // Replacing keeps one row per trust domain.
        bundle.set_sequence(8);
        b.ds.set_bundle(&bundle, ADMIN).await.unwrap();
        let own = TestCa::new("example.org").bundle();
        b.ds.set_bundle(&own, "ca").await.unwrap();
        let all = b.ds.list_bundles().await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].trust_domain().name(), "example.org");
        assert_eq!(all[1].sequence(), 8);

        b.ds.delete_bundle(&td, ADMIN).await.unwrap();
        assert_eq!(b.ds.get_bundle(&td).await.unwrap(), None);
        let err = b.ds.delete_bundle(&td, ADMIN).await.unwrap_err();
        assert!(
            matches!(err, DatastoreError::NotFound { what: "bundle", .. }),
            "{err}"
        );
        let kinds = audit_kinds(&b.ds).await;
        assert_eq!(
            kinds,
            ["bundle.set", "bundle.set", "bundle.set", "bundle.deleted"]
        );
    }
}

#[tokio::test]
async fn corrupt_stored_bundle_is_reported_by_trust_domain() {
    for b in backends().await {
        b.ds.set_bundle(&TestCa::new("other.org").bundle(), ADMIN)
            .await
            .unwrap();
        b.raw_exec("UPDATE bundles SET jwks = 'not json' WHERE trust_domain = 'other.org'")
            .await;
        let err =
            b.ds.get_bundle(&"other.org".parse().unwrap())
                .await
                .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("stored bundle `other.org` is corrupt"),
            "{}: {err}",
            b.name
        );
    }
}
