//! Attested node agents: insert (or replace) on attestation, update-only renewal, the current and
//! previous SVID serial the agent API accepts, eviction (delete; it may attest again) and banning
//! (kept with `banned`, refused forever).

use serde_json::json;
use warden_identity::{Selector, SpiffeId};

use super::Datastore;
use super::error::DatastoreError;
use super::model::{AgentRecord, AgentRenewal};

const AGENT_COLUMNS: &str = "spiffe_id, attestor, selectors, serial, previous_serial, expires_at, \
     banned, attested_at, renewed_at";

type AgentRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    i64,
    bool,
    i64,
    i64,
);

/// Inserts (or replaces, unless banned) the attested agent `$a` inside the transaction `$tx`,
/// pushing its `agent.attested` record onto `$audit`; returns early with
/// [`DatastoreError::AgentBanned`] (converted with `into`) when the ID is banned. Shared by
/// [`Datastore::attest_agent`] and the join-token attestation, which consumes its token in the
/// same transaction.
macro_rules! insert_agent {
    ($tx:ident, $audit:ident, $a:expr) => {{
        let a: &$crate::datastore::AgentRecord = $a;
        let id = a.spiffe_id.to_string();
        let done = sqlx::query(
            "INSERT INTO agents (spiffe_id, attestor, selectors, serial, previous_serial, expires_at, \
             banned, attested_at, renewed_at) \
             VALUES ($1, $2, $3, $4, NULL, $5, $6, $7, $8) \
             ON CONFLICT (spiffe_id) DO UPDATE SET attestor = excluded.attestor, \
             selectors = excluded.selectors, serial = excluded.serial, previous_serial = NULL, \
             expires_at = excluded.expires_at, attested_at = excluded.attested_at, \
             renewed_at = excluded.renewed_at \
             WHERE agents.banned = $9",
        )
        .bind(id.clone())
        .bind(a.attestor.clone())
        .bind($crate::datastore::agents::encode_selectors(&a.selectors)?)
        .bind(a.serial.clone())
        .bind(a.expires_at)
        .bind(a.banned)
        .bind(a.attested_at)
        .bind(a.renewed_at)
        .bind(false)
        .execute(&mut *$tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err($crate::datastore::DatastoreError::AgentBanned(id).into());
        }
        $audit.record(
            "agent.attested",
            &id,
            &id,
            serde_json::json!({
                "attestor": a.attestor,
                "selectors": a.selectors.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "serial": a.serial,
                "expires_at": a.expires_at,
            }),
        )?;
    }};
}
pub(crate) use insert_agent;

// === impl Datastore ===

impl Datastore {
    /// Records an attested agent, auditing `agent.attested` with the agent as actor. An agent
    /// with the same ID that is not banned is replaced (it attested again, e.g. an x509pop node
    /// that lost its data dir), and `a.previous_serial` is ignored: after an attestation only
    /// its new SVID is accepted. A banned agent is never overwritten:
    /// [`DatastoreError::AgentBanned`].
    pub async fn attest_agent(&self, a: &AgentRecord) -> Result<(), DatastoreError> {
        in_tx!(self, |tx, audit| {
            insert_agent!(tx, audit, a);
        });
        tracing::info!(spiffe_id = %a.spiffe_id, "agent attested");
        Ok(())
    }

    /// Records a renewal, auditing `agent.renewed` with the agent as actor: the new serial
    /// becomes current and the presented one previous. Only an existing agent is updated, and
    /// only while the presented serial is still its current or previous one; otherwise nothing
    /// is written and the error says why: evicted ([`DatastoreError::NotFound`]), banned
    /// ([`DatastoreError::AgentBanned`]), or superseded meanwhile
    /// ([`DatastoreError::AgentSerialMismatch`]). So a renewal racing an eviction, a ban or
    /// another renewal never undoes it.
    pub async fn renew_agent(&self, r: &AgentRenewal) -> Result<(), DatastoreError> {
        let id = r.spiffe_id.to_string();
        in_tx!(self, |tx, audit| {
            let done = sqlx::query(
                "UPDATE agents SET serial = $1, previous_serial = $2, expires_at = $3, renewed_at = $4 \
                 WHERE spiffe_id = $5 AND banned = $6 AND (serial = $2 OR previous_serial = $2)",
            )
            .bind(r.serial.clone())
            .bind(r.presented_serial.clone())
            .bind(r.expires_at)
            .bind(r.renewed_at)
            .bind(id.clone())
            .bind(false)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() != 1 {
                let banned: Option<bool> =
                    sqlx::query_scalar("SELECT banned FROM agents WHERE spiffe_id = $1")
                        .bind(id.clone())
                        .fetch_optional(&mut *tx)
                        .await?;
                return Err(match banned {
                    None => DatastoreError::NotFound {
                        what: "agent",
                        id: id.clone(),
                    },
                    Some(true) => DatastoreError::AgentBanned(id.clone()),
                    Some(false) => DatastoreError::AgentSerialMismatch {
                        id: id.clone(),
                        serial: r.presented_serial.clone(),
                    },
                });
            }
            audit.record(
                "agent.renewed",
                &id,
                &id,
                json!({
                    "serial": r.serial,
                    "previous_serial": r.presented_serial,
                    "expires_at": r.expires_at,
                }),
            )?;
        });
        tracing::info!(spiffe_id = %id, "agent renewed");
        Ok(())
    }

    /// Forgets the agent's previous serial once it has presented its current one, `serial`: from
    /// then on only `serial` is accepted. Does nothing if `serial` is no longer current (a newer
    /// renewal or attestation won). Not audited: it only narrows what is accepted, and the renewal
    /// that set the previous serial is.
    pub async fn confirm_agent_serial(
        &self,
        id: &SpiffeId,
        serial: &str,
    ) -> Result<(), DatastoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "UPDATE agents SET previous_serial = NULL \
                 WHERE spiffe_id = $1 AND serial = $2 AND previous_serial IS NOT NULL",
            )
            .bind(id.to_string())
            .bind(serial.to_owned())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The agent's record, if it ever attested and was not evicted.
    pub async fn get_agent(&self, id: &SpiffeId) -> Result<Option<AgentRecord>, DatastoreError> {
        let row: Option<AgentRow> = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {AGENT_COLUMNS} FROM agents WHERE spiffe_id = $1")))
                .bind(id.to_string())
                .fetch_optional(pool)
                .await?
        });
        row.map(from_row).transpose()
    }

    /// Every agent, banned ones included, ordered by SPIFFE ID.
    pub async fn list_agents(&self) -> Result<Vec<AgentRecord>, DatastoreError> {
        let rows: Vec<AgentRow> = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {AGENT_COLUMNS} FROM agents ORDER BY spiffe_id")))
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(from_row).collect()
    }

    /// Deletes the agent's record (auditing `agent.evicted`, with whether it was banned): its SVID
    /// is no longer renewed and it may mint nothing until it attests again. A ban goes with the
    /// record.
    pub async fn evict_agent(&self, id: &SpiffeId, actor: &str) -> Result<(), DatastoreError> {
        let id = id.to_string();
        let was_banned = in_tx!(self, |tx, audit| {
            let banned: Option<bool> =
                sqlx::query_scalar("DELETE FROM agents WHERE spiffe_id = $1 RETURNING banned")
                    .bind(id.clone())
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(banned) = banned else {
                return Err(DatastoreError::NotFound {
                    what: "agent",
                    id: id.clone(),
                });
            };
            audit.record("agent.evicted", actor, &id, json!({ "was_banned": banned }))?;
            banned
        });
        tracing::info!(spiffe_id = %id, was_banned, "agent evicted");
        Ok(())
    }

    /// Marks the agent banned (auditing `agent.banned`): it is refused, even with a valid SVID or
    /// a new attestation for the same ID, until it is evicted ([`Self::evict_agent`] deletes the
    /// record with its ban, as SPIRE's eviction lifts a ban).
    pub async fn ban_agent(&self, id: &SpiffeId, actor: &str) -> Result<(), DatastoreError> {
        let id = id.to_string();
        in_tx!(self, |tx, audit| {
            let done = sqlx::query("UPDATE agents SET banned = $1 WHERE spiffe_id = $2")
                .bind(true)
                .bind(id.clone())
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() != 1 {
                return Err(DatastoreError::NotFound {
                    what: "agent",
                    id: id.clone(),
                });
            }
            audit.record("agent.banned", actor, &id, json!({}))?;
        });
        tracing::info!(spiffe_id = %id, "agent banned");
        Ok(())
    }
}

pub(super) fn encode_selectors(selectors: &[Selector]) -> Result<String, DatastoreError> {
    let list: Vec<String> = selectors.iter().map(ToString::to_string).collect();
    serde_json::to_string(&list)
        .map_err(|e| DatastoreError::Invalid(format!("cannot encode selectors: {e}")))
}

fn from_row(row: AgentRow) -> Result<AgentRecord, DatastoreError> {
    let (
        spiffe_id,
        attestor,
        selectors,
        serial,
        previous_serial,
        expires_at,
        banned,
        attested_at,
        renewed_at,
    ) = row;
    let corrupt = |detail: String| DatastoreError::Corrupt {
        what: "agent",
        id: spiffe_id.clone(),
        detail,
    };
    let selectors = serde_json::from_str::<Vec<String>>(&selectors)
        .map_err(|e| corrupt(format!("selectors: {e}")))?
        .iter()
        .map(|s| s.parse::<Selector>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| corrupt(e.to_string()))?;
    Ok(AgentRecord {
        spiffe_id: spiffe_id
            .parse()
            .map_err(|e| corrupt(format!("spiffe_id: {e}")))?,
        attestor,
        selectors,
        serial,
        previous_serial,
        expires_at,
        banned,
        attested_at,
        renewed_at,
    })
}
