//! Opening datastores: file mode, WAL, reopening, bad locations and credential redaction.

use std::os::unix::fs::PermissionsExt as _;

use warden_ca::datastore::{Datastore, DatastoreError};

#[tokio::test]
async fn sqlite_file_is_created_0600_in_wal_mode_and_reopens_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warden.db");
    let ds = Datastore::open(path.to_str().unwrap()).await.unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    ds.create_join_token(&[7; 32], 100, "admin:uid=0")
        .await
        .unwrap();
    assert!(
        dir.path().join("warden.db-wal").exists(),
        "journal mode is WAL"
    );
    ds.close().await;
    // Reopening runs the migrations again (a no-op) and keeps the data.
    let again = Datastore::open(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    assert_eq!(again.list_audit(0, 0).await.unwrap().len(), 1);
    assert!(again.verify_audit().await.unwrap().is_ok());
    assert!(!again.is_postgres());
    assert_eq!(again.location(), path.display().to_string());
}

#[tokio::test]
async fn unusable_locations_are_named() {
    let err = Datastore::open("sqlite::memory:").await.unwrap_err();
    assert!(matches!(err, DatastoreError::Location { .. }), "{err}");
    assert!(err.to_string().contains("expected a file path"), "{err}");

    let err = Datastore::open("/nonexistent-dir/warden.db")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot create the datastore file `/nonexistent-dir/warden.db`"),
        "{err}"
    );
}

#[tokio::test]
async fn postgres_connection_errors_never_show_the_password() {
    // Nothing listens on port 1; the error must name the server but not the credentials.
    let err = Datastore::open("postgres://warden:hunter2@127.0.0.1:1/warden?connect_timeout=2")
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("cannot open the datastore `postgres://127.0.0.1:1/warden`"),
        "{text}"
    );
    assert!(
        !text.contains("hunter2") && !format!("{err:?}").contains("hunter2"),
        "{text}"
    );
}
