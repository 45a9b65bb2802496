//! The CA journal: root, intermediate and JWT signing keys with their lifetimes and states
//! (prepared -> active -> retired). Preparing, activating (`ca.rotated`) and retiring are audited.

use serde_json::json;

use super::error::DatastoreError;
use super::model::{CaRecord, CaRecordKind, CaRecordState};
use super::{CA_ACTOR, Datastore, now_unix};

type CaRow = (String, String, Vec<u8>, i64, i64, String);

// === impl Datastore ===

impl Datastore {
    /// Journals a CA key. Audits `ca.prepared`, `ca.rotated` (an intermediate or JWT key that is
    /// active from the start) or `ca.root` (a root), with the CA as actor.
    pub async fn append_ca_record(&self, r: &CaRecord) -> Result<(), DatastoreError> {
        in_tx!(self, |tx, audit| {
            sqlx::query(
                "INSERT INTO ca_records (id, kind, der, not_before, not_after, state, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(r.id.clone())
            .bind(r.kind.as_str())
            .bind(r.der.clone())
            .bind(r.not_before)
            .bind(r.not_after)
            .bind(r.state.as_str())
            .bind(now_unix())
            .execute(&mut *tx)
            .await
            .map_err(|err| match &err {
                sqlx::Error::Database(db) if db.is_unique_violation() => {
                    DatastoreError::AlreadyExists {
                        what: "ca record",
                        id: r.id.clone(),
                    }
                }
                _ => DatastoreError::Query(err),
            })?;
            audit.record(audit_kind(r.kind, r.state), CA_ACTOR, &r.id, detail(r))?;
        });
        Ok(())
    }

    /// Every journaled CA key, oldest `not_before` first.
    pub async fn list_ca_records(&self) -> Result<Vec<CaRecord>, DatastoreError> {
        let rows: Vec<CaRow> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, kind, der, not_before, not_after, state FROM ca_records ORDER BY not_before, id",
            )
            .fetch_all(pool)
            .await?
        });
        rows.into_iter().map(from_row).collect()
    }

    /// Moves a CA key to `state`, auditing `ca.rotated` when an intermediate or JWT key becomes
    /// active and `ca.retired` when one is retired.
    pub async fn set_ca_record_state(
        &self,
        id: &str,
        state: CaRecordState,
    ) -> Result<(), DatastoreError> {
        in_tx!(self, |tx, audit| {
            let row: Option<CaRow> = sqlx::query_as(
                "SELECT id, kind, der, not_before, not_after, state FROM ca_records WHERE id = $1",
            )
            .bind(id.to_owned())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                return Err(DatastoreError::NotFound {
                    what: "ca record",
                    id: id.to_owned(),
                });
            };
            let mut record = from_row(row)?;
            if record.state != state {
                sqlx::query("UPDATE ca_records SET state = $1 WHERE id = $2")
                    .bind(state.as_str())
                    .bind(id.to_owned())
                    .execute(&mut *tx)
                    .await?;
                record.state = state;
                audit.record(
                    audit_kind(record.kind, state),
                    CA_ACTOR,
                    id,
                    detail(&record),
                )?;
            }
        });
        Ok(())
    }
}

fn audit_kind(kind: CaRecordKind, state: CaRecordState) -> &'static str {
    match (kind, state) {
        (CaRecordKind::Root, _) => "ca.root",
        (_, CaRecordState::Prepared) => "ca.prepared",
        (_, CaRecordState::Active) => "ca.rotated",
        (_, CaRecordState::Retired) => "ca.retired",
    }
}

fn detail(r: &CaRecord) -> serde_json::Value {
    json!({
        "kind": r.kind.as_str(),
        "state": r.state.as_str(),
        "not_before": r.not_before,
        "not_after": r.not_after,
    })
}

fn from_row(row: CaRow) -> Result<CaRecord, DatastoreError> {
    let (id, kind, der, not_before, not_after, state) = row;
    let corrupt = |detail: String| DatastoreError::Corrupt {
        what: "ca record",
        id: id.clone(),
        detail,
    };
    Ok(CaRecord {
        kind: kind.parse().map_err(corrupt)?,
        state: state.parse().map_err(corrupt)?,
        der,
        not_before,
        not_after,
        id,
    })
}
