//! Opening a datastore: URL parsing, the SQLite file (created 0600, WAL, busy timeout) or the
//! PostgreSQL pool, and the embedded schema migrations.

use std::borrow::Cow;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::Duration;

use sqlx::SqlSafeStr as _;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::error::DatastoreError;
use super::{Backend, Datastore};

/// How long an SQLite connection waits for the write lock before failing.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const SQLITE_MAX_CONNECTIONS: u32 = 8;
const POSTGRES_MAX_CONNECTIONS: u32 = 16;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "agent previous serial",
        include_str!("../../migrations/sqlite/0002_agent_previous_serial.sql"),
    ),
    (
        3,
        "audit keying",
        include_str!("../../migrations/sqlite/0003_audit_keying.sql"),
    ),
];
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "agent previous serial",
        include_str!("../../migrations/postgres/0002_agent_previous_serial.sql"),
    ),
    (
        3,
        "audit keying",
        include_str!("../../migrations/postgres/0003_audit_keying.sql"),
    ),
];

// === impl Datastore ===

impl Datastore {
    /// Opens (creating if needed) the datastore at `url` and brings its schema up to date.
    ///
    /// - `postgres://user:pass@host:port/db` (or `postgresql://`): a PostgreSQL pool.
    /// - `sqlite:/path/to/warden.db`, `sqlite:///path`, or a plain path: an SQLite file, created
    ///   with mode 0600 if missing, in WAL mode with a busy timeout.
    pub async fn open(url: &str) -> Result<Self, DatastoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::open_postgres(url).await
        } else {
            let path = url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
                .unwrap_or(url);
            Self::open_sqlite(Path::new(path)).await
        }
    }

    async fn open_sqlite(path: &Path) -> Result<Self, DatastoreError> {
        let location = path.display().to_string();
        if path.as_os_str().is_empty()
            || path.to_string_lossy().contains('?')
            || location == ":memory:"
        {
            return Err(DatastoreError::Location {
                location,
                reason:
                    "expected a file path (`sqlite:/path/to/warden.db` or `/path/to/warden.db`)"
                        .into(),
            });
        }
        // Create the file ourselves so that it is 0600 from the first byte; SQLite gives the WAL
        // and shared-memory files the same mode as the database file.
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|source| DatastoreError::CreateFile {
                path: location.clone(),
                source,
            })?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(SQLITE_MAX_CONNECTIONS)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|source| DatastoreError::Connect {
                location: location.clone(),
                source,
            })?;
        migrator(SQLITE_MIGRATIONS)
            .run(&pool)
            .await
            .map_err(DatastoreError::Migrate)?;
        tracing::debug!(datastore = %location, "opened sqlite datastore");
        Ok(Datastore {
            audit_key: None,
            backend: Backend::Sqlite(pool),
            location,
        })
    }

    async fn open_postgres(url: &str) -> Result<Self, DatastoreError> {
        let location = redact_url(url);
        let pool = PgPoolOptions::new()
            .max_connections(POSTGRES_MAX_CONNECTIONS)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect(url)
            .await
            .map_err(|source| DatastoreError::Connect {
                location: location.clone(),
                source,
            })?;
        migrator(POSTGRES_MIGRATIONS)
            .run(&pool)
            .await
            .map_err(DatastoreError::Migrate)?;
        tracing::debug!(datastore = %location, "opened postgres datastore");
        Ok(Datastore {
            audit_key: None,
            backend: Backend::Postgres(pool),
            location,
        })
    }
}

fn migrator(migrations: &'static [(i64, &'static str, &'static str)]) -> Migrator {
    Migrator::with_migrations(
        migrations
            .iter()
            .map(|(version, name, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*name),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// `postgres://user:secret@host/db?x` -> `postgres://host/db` (no credentials, no options).
pub(crate) fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let rest = rest.split_once('?').map_or(rest, |(before, _)| before);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{rest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_drops_credentials_and_options() {
        assert_eq!(
            redact_url("postgres://u:s3cret@db:5432/warden?sslmode=require"),
            "postgres://db:5432/warden"
        );
        assert_eq!(
            redact_url("postgresql://db/warden"),
            "postgresql://db/warden"
        );
        assert_eq!(
            redact_url("postgres://db/warden?password=a@b"),
            "postgres://db/warden"
        );
    }
}
