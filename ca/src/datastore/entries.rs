//! Registration entries: create, update, delete, get, list, and the entries an agent may mint
//! (its own, plus those of the node aliases whose selectors it has).

use std::collections::BTreeMap;

use rand::RngCore as _;
use serde_json::json;
use warden_identity::{Selector, SpiffeId, TrustDomain};

use super::error::DatastoreError;
use super::model::{Entry, EntryFilter, NewEntry};
use super::validate::validate_entry;
use super::{Datastore, ca_spiffe_id, now_unix};

const ENTRY_COLUMNS: &str = "id, spiffe_id, parent_id, selectors, x509_svid_ttl, jwt_svid_ttl, \
     dns_names, federates_with, hint, revision, created_at, updated_at";

type EntryRow = (
    String,
    String,
    String,
    String,
    i64,
    i64,
    String,
    String,
    String,
    i64,
    i64,
    i64,
);

// === impl Datastore ===

impl Datastore {
    /// Validates and stores a new entry, auditing `entry.created` in the same transaction.
    /// An entry with the same SPIFFE ID, parent and selectors already existing is refused.
    pub async fn create_entry(&self, e: &NewEntry, actor: &str) -> Result<Entry, DatastoreError> {
        let e = validate_entry(e)?;
        let now = now_unix();
        let entry = Entry {
            id: new_entry_id(),
            spiffe_id: e.spiffe_id,
            parent_id: e.parent_id,
            selectors: e.selectors,
            x509_svid_ttl: e.x509_svid_ttl,
            jwt_svid_ttl: e.jwt_svid_ttl,
            dns_names: e.dns_names,
            federates_with: e.federates_with,
            hint: e.hint,
            revision: 1,
            created_at: now,
            updated_at: now,
        };
        let (selectors, dns, federates) = list_columns(&entry)?;
        in_tx!(self, |tx, audit| {
            sqlx::query(
                "INSERT INTO entries (id, spiffe_id, parent_id, selectors, x509_svid_ttl, jwt_svid_ttl, \
                 dns_names, federates_with, hint, revision, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .bind(entry.id.clone())
            .bind(entry.spiffe_id.to_string())
            .bind(entry.parent_id.to_string())
            .bind(selectors)
            .bind(i64::from(entry.x509_svid_ttl))
            .bind(i64::from(entry.jwt_svid_ttl))
            .bind(dns)
            .bind(federates)
            .bind(entry.hint.clone())
            .bind(1_i64)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|err| already_exists(err, &entry))?;
            audit.record("entry.created", actor, &entry.id, entry_detail(&entry))?;
        });
        tracing::info!(entry.id = %entry.id, spiffe_id = %entry.spiffe_id, "entry created");
        Ok(entry)
    }

    /// Replaces the entry `e.id` with `e`'s fields and bumps its revision, auditing
    /// `entry.updated`. When `e.revision` is non-zero it must be the stored revision
    /// (optimistic concurrency); 0 overwrites whatever is stored.
    pub async fn update_entry(&self, e: &Entry, actor: &str) -> Result<Entry, DatastoreError> {
        let valid = validate_entry(&e.to_new())?;
        let now = now_unix();
        let mut entry = Entry {
            id: e.id.clone(),
            spiffe_id: valid.spiffe_id,
            parent_id: valid.parent_id,
            selectors: valid.selectors,
            x509_svid_ttl: valid.x509_svid_ttl,
            jwt_svid_ttl: valid.jwt_svid_ttl,
            dns_names: valid.dns_names,
            federates_with: valid.federates_with,
            hint: valid.hint,
            revision: 0,
            created_at: 0,
            updated_at: now,
        };
        let (selectors, dns, federates) = list_columns(&entry)?;
        let stored = in_tx!(self, |tx, audit| {
            let current: Option<(i64, i64)> =
                sqlx::query_as("SELECT revision, created_at FROM entries WHERE id = $1")
                    .bind(entry.id.clone())
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some((revision, created_at)) = current else {
                return Err(DatastoreError::NotFound {
                    what: "entry",
                    id: entry.id.clone(),
                });
            };
            let revision = u64::try_from(revision).unwrap_or(0);
            if e.revision != 0 && e.revision != revision {
                return Err(DatastoreError::Conflict {
                    id: entry.id.clone(),
                    expected: e.revision,
                });
            }
            entry.revision = revision + 1;
            entry.created_at = created_at;
            sqlx::query(
                "UPDATE entries SET spiffe_id = $1, parent_id = $2, selectors = $3, x509_svid_ttl = $4, \
                 jwt_svid_ttl = $5, dns_names = $6, federates_with = $7, hint = $8, revision = $9, \
                 updated_at = $10 WHERE id = $11",
            )
            .bind(entry.spiffe_id.to_string())
            .bind(entry.parent_id.to_string())
            .bind(selectors)
            .bind(i64::from(entry.x509_svid_ttl))
            .bind(i64::from(entry.jwt_svid_ttl))
            .bind(dns)
            .bind(federates)
            .bind(entry.hint.clone())
            .bind(i64::try_from(entry.revision).unwrap_or(i64::MAX))
            .bind(now)
            .bind(entry.id.clone())
            .execute(&mut *tx)
            .await
            .map_err(|err| already_exists(err, &entry))?;
            audit.record("entry.updated", actor, &entry.id, entry_detail(&entry))?;
            entry
        });
        tracing::info!(entry.id = %stored.id, revision = stored.revision, "entry updated");
        Ok(stored)
    }

    /// Deletes an entry, auditing `entry.deleted`.
    pub async fn delete_entry(&self, id: &str, actor: &str) -> Result<(), DatastoreError> {
        in_tx!(self, |tx, audit| {
            let row: Option<EntryRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {ENTRY_COLUMNS} FROM entries WHERE id = $1"
            )))
            .bind(id.to_owned())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                return Err(DatastoreError::NotFound {
                    what: "entry",
                    id: id.to_owned(),
                });
            };
            let entry = from_row(row)?;
            sqlx::query("DELETE FROM entries WHERE id = $1")
                .bind(id.to_owned())
                .execute(&mut *tx)
                .await?;
            audit.record("entry.deleted", actor, id, entry_detail(&entry))?;
        });
        tracing::info!(entry.id = %id, "entry deleted");
        Ok(())
    }

    /// The entry `id`, or [`DatastoreError::NotFound`].
    pub async fn get_entry(&self, id: &str) -> Result<Entry, DatastoreError> {
        let row: Option<EntryRow> = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE id = $1")))
                .bind(id.to_owned())
                .fetch_optional(pool)
                .await?
        });
        from_row(row.ok_or_else(|| DatastoreError::NotFound {
            what: "entry",
            id: id.to_owned(),
        })?)
    }

    /// Entries matching every set field of `filter`, ordered by SPIFFE ID then ID.
    pub async fn list_entries(&self, filter: &EntryFilter) -> Result<Vec<Entry>, DatastoreError> {
        let rows: Vec<EntryRow> = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {ENTRY_COLUMNS} FROM entries \
                 WHERE ($1 IS NULL OR parent_id = $1) AND ($2 IS NULL OR spiffe_id = $2) \
                 ORDER BY spiffe_id, id"
            )))
            .bind(filter.parent_id.as_ref().map(ToString::to_string))
            .bind(filter.spiffe_id.as_ref().map(ToString::to_string))
            .fetch_all(pool)
            .await?
        });
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let e = from_row(row)?;
            if filter.matches(&e) {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// The entries `agent_id` may mint SVIDs for: those parented directly to it, plus those
    /// parented to a node alias (an entry whose parent is the CA's own ID,
    /// `spiffe://<td>/warden/ca`) whose selectors are all among `agent_selectors`. The alias
    /// entries themselves are not returned. Ordered by SPIFFE ID then ID.
    pub async fn entries_for_agent(
        &self,
        agent_id: &SpiffeId,
        agent_selectors: &[Selector],
    ) -> Result<Vec<Entry>, DatastoreError> {
        let ca_id = ca_spiffe_id(&agent_id.trust_domain());
        let aliases = self
            .list_entries(&EntryFilter {
                parent_id: Some(ca_id),
                ..EntryFilter::default()
            })
            .await?;
        let mut parents = vec![agent_id.to_string()];
        parents.extend(
            aliases
                .iter()
                .filter(|alias| alias.selectors.iter().all(|s| agent_selectors.contains(s)))
                // An alias with a reserved ID (stored before such IDs were refused) would stand
                // in for an agent or for the CA: it is no parent.
                .filter(|alias| issuable(alias))
                .map(|alias| alias.spiffe_id.to_string()),
        );
        parents.sort();
        parents.dedup();
        let rows: Vec<EntryRow> = on_pool!(self, pool => {
            let mut qb = sqlx::QueryBuilder::new(format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE parent_id IN ("));
            let mut list = qb.separated(", ");
            for p in &parents {
                list.push_bind(p.clone());
            }
            qb.push(") ORDER BY spiffe_id, id");
            qb.build_query_as().fetch_all(pool).await?
        });
        let mut by_id = BTreeMap::new();
        for row in rows {
            let e = from_row(row)?;
            if issuable(&e) {
                by_id.insert(e.id.clone(), e);
            }
        }
        let mut out: Vec<Entry> = by_id.into_values().collect();
        out.sort_by(|a, b| a.spiffe_id.cmp(&b.spiffe_id).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }
}

/// 128 random bits, hex.
fn new_entry_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn list_columns(e: &Entry) -> Result<(String, String, String), DatastoreError> {
    let enc = |v: Vec<String>| {
        serde_json::to_string(&v)
            .map_err(|err| DatastoreError::Invalid(format!("cannot encode entry: {err}")))
    };
    Ok((
        enc(e.selectors.iter().map(ToString::to_string).collect())?,
        enc(e.dns_names.clone())?,
        enc(e.federates_with.iter().map(ToString::to_string).collect())?,
    ))
}

fn already_exists(err: sqlx::Error, e: &Entry) -> DatastoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => DatastoreError::AlreadyExists {
            what: "entry",
            id: format!("{} (parent `{}`, same selectors)", e.spiffe_id, e.parent_id),
        },
        _ => DatastoreError::Query(err),
    }
}

/// What the audit log says about an entry.
fn entry_detail(e: &Entry) -> serde_json::Value {
    json!({
        "spiffe_id": e.spiffe_id.to_string(),
        "parent_id": e.parent_id.to_string(),
        "selectors": e.selectors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "x509_svid_ttl": e.x509_svid_ttl,
        "jwt_svid_ttl": e.jwt_svid_ttl,
        "dns_names": e.dns_names,
        "federates_with": e.federates_with.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "hint": e.hint,
        "revision": e.revision,
    })
}

pub(crate) fn from_row(row: EntryRow) -> Result<Entry, DatastoreError> {
    let (
        id,
        spiffe_id,
        parent_id,
        selectors,
        x509,
        jwt,
        dns,
        federates,
        hint,
        revision,
        created_at,
        updated_at,
    ) = row;
    let corrupt = |detail: String| DatastoreError::Corrupt {
        what: "entry",
        id: id.clone(),
        detail,
    };
    let list = |text: &str, field: &str| {
        serde_json::from_str::<Vec<String>>(text).map_err(|e| corrupt(format!("{field}: {e}")))
    };
    let selectors = list(&selectors, "selectors")?
        .iter()
        .map(|s| s.parse::<Selector>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| corrupt(e.to_string()))?;
    let federates_with = list(&federates, "federates_with")?
        .iter()
        .map(|s| TrustDomain::new(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| corrupt(e.to_string()))?;
    Ok(Entry {
        spiffe_id: spiffe_id
            .parse()
            .map_err(|e| corrupt(format!("spiffe_id: {e}")))?,
        parent_id: parent_id
            .parse()
            .map_err(|e| corrupt(format!("parent_id: {e}")))?,
        selectors,
        x509_svid_ttl: u32::try_from(x509)
            .map_err(|_| corrupt("x509_svid_ttl out of range".into()))?,
        jwt_svid_ttl: u32::try_from(jwt)
            .map_err(|_| corrupt("jwt_svid_ttl out of range".into()))?,
        dns_names: list(&dns, "dns_names")?,
        federates_with,
        hint,
        revision: u64::try_from(revision).map_err(|_| corrupt("negative revision".into()))?,
        created_at,
        updated_at,
        id,
    })
}

/// Whether a stored entry may be issued (or, an alias, stand as a parent). Entries are checked
/// when written; one stored before reserved IDs were refused (or written around the CA) is
/// never used, and said so.
fn issuable(e: &Entry) -> bool {
    match super::validate::check_not_reserved(&e.spiffe_id) {
        Ok(()) => true,
        Err(reserved) => {
            tracing::warn!(entry = %e.id, error = %reserved, "a stored entry has a reserved spiffe id: it is not used; delete it");
            false
        }
    }
}
