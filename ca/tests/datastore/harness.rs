//! Backends for the suite: a fresh SQLite file and, if configured, a fresh PostgreSQL database.

use rand::RngCore as _;
use sqlx::Connection as _;
use warden_ca::datastore::{Datastore, NewEntry};

/// The variable naming a PostgreSQL server the suite may create databases on.
pub(crate) const PG_ENV: &str = "WARDEN_TEST_POSTGRES_URL";

/// One backend under test: the store, plus what is needed to edit it behind its back.
pub(crate) struct Backend {
    pub(crate) name: &'static str,
    pub(crate) ds: Datastore,
    pub(crate) url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    /// Runs raw SQL on the store's database through a separate connection, as an attacker or a
    /// careless operator with file/database access would.
    pub(crate) async fn raw_exec(&self, sql: &str) {
        if self.url.starts_with("postgres") {
            let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut c)
                .await
                .unwrap();
        } else {
            let mut c = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut c)
                .await
                .unwrap();
        }
    }

    /// Counts rows of a table through a separate connection.
    pub(crate) async fn count(&self, table: &str) -> i64 {
        let sql = sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}"));
        if self.url.starts_with("postgres") {
            let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
            sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
        } else {
            let mut c = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
            sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
        }
    }
}

/// SQLite, and PostgreSQL when [`PG_ENV`] is set.
pub(crate) async fn backends() -> Vec<Backend> {
    let mut out = vec![sqlite().await];
    match std::env::var(PG_ENV) {
        Ok(base) if !base.is_empty() => out.push(postgres(&base).await),
        _ => eprintln!("postgresql backend skipped: {PG_ENV} is not set (see scripts/postgres.sh)"),
    }
    out
}

/// A fresh SQLite datastore in a temp dir.
pub(crate) async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warden.db");
    let url = format!("sqlite:{}", path.display());
    let ds = Datastore::open(&url).await.unwrap();
    Backend {
        name: "sqlite",
        ds,
        url,
        _dir: Some(dir),
    }
}

async fn postgres(base: &str) -> Backend {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    let db = format!("warden_test_{}", hex::encode(bytes));
    let mut admin = sqlx::PgConnection::connect(base).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let (without_query, query) = base
        .split_once('?')
        .map_or((base, None), |(a, q)| (a, Some(q)));
    let prefix = without_query
        .rsplit_once('/')
        .map_or(without_query, |(p, _)| p);
    let url = match query {
        Some(q) => format!("{prefix}/{db}?{q}"),
        None => format!("{prefix}/{db}"),
    };
    let ds = Datastore::open(&url).await.unwrap();
    Backend {
        name: "postgres",
        ds,
        url,
        _dir: None,
    }
}

/// The kinds of all audit records, oldest first.
pub(crate) async fn audit_kinds(ds: &Datastore) -> Vec<String> {
    ds.list_audit(0, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.kind)
        .collect()
}

/// A valid entry for `spiffe://example.org/<name>` under `parent`.
pub(crate) fn new_entry(name: &str, parent: &str, selectors: &[&str]) -> NewEntry {
    NewEntry {
        spiffe_id: format!("spiffe://example.org/{name}").parse().unwrap(),
        parent_id: parent.parse().unwrap(),
        selectors: selectors.iter().map(|s| s.parse().unwrap()).collect(),
        x509_svid_ttl: 0,
        jwt_svid_ttl: 0,
        dns_names: vec![],
        federates_with: vec![],
        hint: String::new(),
    }
}

/// An agent ID in example.org.
pub(crate) const AGENT: &str = "spiffe://example.org/agent/join_token/0123456789abcdef";
/// The admin actor used by the tests.
pub(crate) const ADMIN: &str = "admin:uid=1000";
