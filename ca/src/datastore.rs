//! The CA's datastore: registration entries, join tokens, attested agents, trust bundles, the CA
//! journal, the issued-SVID log and the append-only, hash-chained audit log.
//!
//! Two backends share one schema (`ca/migrations/{sqlite,postgres}`) and one set of SQL
//! statements (`$1`-style parameters work on both): SQLite in WAL mode, the default for a single
//! CA, and PostgreSQL, for several CA replicas sharing one database. Times are unix seconds.
//!
//! Every write that changes trust runs in one transaction together with its audit record(s).
//! Those transactions are serialised: SQLite takes the write lock up front (`BEGIN IMMEDIATE`),
//! PostgreSQL locks the audit chain head row (`SELECT ... FOR UPDATE`), so two replicas can never
//! fork the chain.

/// Runs `$body` with `$pool` bound to the backend's concrete pool. The body is compiled once per
/// backend, so it must type-check against both.
macro_rules! on_pool {
    ($ds:expr, $pool:ident => $body:expr) => {
        match &$ds.backend {
            $crate::datastore::Backend::Sqlite($pool) => $body,
            $crate::datastore::Backend::Postgres($pool) => $body,
        }
    };
}

/// Runs `$body` inside a serialised write transaction with `$tx` (the transaction) and `$audit`
/// (an [`audit::AuditBatch`] positioned at the locked chain head) in scope. After the body the
/// audit records it pushed are written, the chain head is advanced and the transaction commits.
/// An early return (`?`) drops the transaction, which rolls it back.
macro_rules! in_tx {
    ($ds:expr, |$tx:ident, $audit:ident| $body:expr) => {
        match &$ds.backend {
            $crate::datastore::Backend::Sqlite(pool) => {
                let mut $tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let head: (i64, String) =
                    sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
                        .fetch_one(&mut *$tx)
                        .await?;
                #[allow(unused_mut)]
                let mut $audit =
                    $crate::datastore::audit::AuditBatch::from_head(head, $ds.audit_key.clone())?;
                let out = $body;
                $crate::datastore::audit::flush_audit!($tx, $audit);
                $tx.commit().await?;
                out
            }
            $crate::datastore::Backend::Postgres(pool) => {
                let mut $tx = pool.begin().await?;
                let head: (i64, String) =
                    sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")
                        .fetch_one(&mut *$tx)
                        .await?;
                #[allow(unused_mut)]
                let mut $audit =
                    $crate::datastore::audit::AuditBatch::from_head(head, $ds.audit_key.clone())?;
                let out = $body;
                $crate::datastore::audit::flush_audit!($tx, $audit);
                $tx.commit().await?;
                out
            }
        }
    };
}

mod agents;
pub(crate) mod audit;
mod bundles;
mod ca_journal;
mod entries;
mod error;
mod model;
mod open;
mod svids;
mod tokens;
mod validate;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use warden_identity::{SpiffeId, TrustDomain};

pub use audit::{AuditKey, AuditKeying};
pub use error::{DatastoreError, EntryError, TokenError};
pub use model::{
    AgentRecord, AgentRenewal, AuditEvent, AuditRecord, AuditVerification, BadAuditRecord,
    CaRecord, CaRecordKind, CaRecordState, Entry, EntryFilter, IssuedJwtSvid, IssuedSvid, NewEntry,
};
pub use validate::{MAX_HINT_LEN, MAX_JWT_SVID_TTL, MAX_X509_SVID_TTL, MIN_SVID_TTL};

/// Audit actor used for acts of the CA itself (rotation, issuance bookkeeping).
pub const CA_ACTOR: &str = "ca";

/// The CA's datastore: a pool over SQLite or PostgreSQL. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Datastore {
    backend: Backend,
    /// A printable description of where the data lives (never contains a password).
    location: String,
    /// The key audit records are chained under from its `keyed_from` on (see [`audit`]); `None`:
    /// every record is chained unkeyed.
    audit_key: Option<Arc<AuditKey>>,
}

/// The concrete pool behind a [`Datastore`].
#[derive(Clone)]
pub(crate) enum Backend {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// The path prefix every agent ID has (`spiffe://<td>/agent/...`). The agent API treats a caller
/// whose ID has it as that agent, so no registration entry may have an ID under it.
pub const AGENT_PATH_PREFIX: &str = "/agent/";

/// The SPIFFE ID a join-token agent gets:
/// `spiffe://<td>/agent/join_token/<first 16 hex chars of sha256(token)>`.
///
/// The token itself never appears in the ID (IDs are logged and audited).
pub fn join_token_agent_id(td: &TrustDomain, token: &str) -> SpiffeId {
    let short: String = hex::encode(join_token_hash(token))
        .chars()
        .take(16)
        .collect();
    valid_id(td, &format!("{JOIN_TOKEN_AGENT_PREFIX}{short}"))
}

/// The path prefix of a join token's agent ID; the token's ID follows it.
pub const JOIN_TOKEN_AGENT_PREFIX: &str = "/agent/join_token/";

/// SHA-256 of a join token: the only form in which the datastore keeps it.
pub fn join_token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The CA's own SPIFFE ID, `spiffe://<td>/warden/ca`: the parent of node alias entries, and the
/// ID agents accept the CA's server certificate by, so no registration entry may have it.
pub fn ca_spiffe_id(td: &TrustDomain) -> SpiffeId {
    valid_id(td, "/warden/ca")
}

/// Builds an ID from a path made only of constant segments and lowercase hex.
#[expect(
    clippy::expect_used,
    reason = "callers pass constant segments or lowercase hex, which are always valid path segments"
)]
fn valid_id(td: &TrustDomain, path: &str) -> SpiffeId {
    td.id(path)
        .expect("constant path segments form a valid spiffe id")
}

/// The current time in unix seconds.
pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

// === impl Datastore ===

impl Datastore {
    /// Where the data lives, for logs: a file path or `postgres://host/db` without credentials.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Whether this store is backed by PostgreSQL (else SQLite).
    pub fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// This store, chaining audit records under `key` from its `keyed_from` on, and verifying
    /// them so.
    #[must_use]
    pub fn with_audit_key(mut self, key: AuditKey) -> Self {
        self.audit_key = Some(Arc::new(key));
        self
    }

    /// Closes the pool; later calls fail.
    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }
}

impl std::fmt::Debug for Datastore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datastore")
            .field(
                "backend",
                &if self.is_postgres() {
                    "postgres"
                } else {
                    "sqlite"
                },
            )
            .field("location", &self.location)
            .field("audit_keyed", &self.audit_key.is_some())
            .finish()
    }
}
