//! The datastore and admin API suite. Every test runs on SQLite (a real file in a temp dir) and,
//! when `WARDEN_TEST_POSTGRES_URL` is set, on PostgreSQL too (a fresh database per test; see
//! `scripts/postgres.sh`). Without the variable the PostgreSQL half prints that it is skipped.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers outside #[test] functions: a failure there is a test failure"
)]

mod datastore {
    pub(crate) mod harness;

    mod admin;
    mod agents;
    mod audit;
    mod bundles;
    mod ca_journal;
    mod entries;
    mod open;
    mod tokens;
}
