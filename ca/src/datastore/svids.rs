//! The issued-SVID log: every X.509-SVID the CA signs, written in one batched transaction per
//! signing request together with one `svid.issued` audit record per SVID; and one
//! `jwt_svid.issued` audit record per JWT-SVID (which has no serial to log).

use serde_json::json;
use warden_identity::SpiffeId;

use super::Datastore;
use super::audit::INSERT_CHUNK;
use super::error::DatastoreError;
use super::model::{IssuedJwtSvid, IssuedSvid};

/// Fails the transaction `tx` unless the agent `id` is still known and not banned: one evicted
/// or banned while its request was signed gets nothing (an eviction or a ban commits either
/// before this check, which then sees it, or after the SVIDs are logged).
macro_rules! still_admitted {
    ($tx:ident, $id:expr) => {
        let banned: Option<bool> =
            sqlx::query_scalar("SELECT banned FROM agents WHERE spiffe_id = $1")
                .bind($id.clone())
                .fetch_optional(&mut *$tx)
                .await?;
        match banned {
            None => {
                return Err(DatastoreError::NotFound {
                    what: "agent",
                    id: $id.clone(),
                });
            }
            Some(true) => return Err(DatastoreError::AgentBanned($id.clone())),
            Some(false) => {}
        }
    };
}

// === impl Datastore ===

impl Datastore {
    /// Logs SVIDs issued to `agent` (one transaction, multi-row inserts) and audits each as
    /// `svid.issued` (serial, SPIFFE ID, entry, expiry) with the agent as actor. A serial that
    /// was already logged fails the whole batch with [`DatastoreError::AlreadyExists`].
    pub async fn record_issued_svids(
        &self,
        svids: &[IssuedSvid],
        agent: &SpiffeId,
    ) -> Result<(), DatastoreError> {
        if svids.is_empty() {
            return Ok(());
        }
        let agent_id = agent.to_string();
        in_tx!(self, |tx, audit| {
            still_admitted!(tx, agent_id);
            for chunk in svids.chunks(INSERT_CHUNK) {
                let mut qb = sqlx::QueryBuilder::new(
                    "INSERT INTO issued_svids (serial, spiffe_id, entry_id, agent_id, issued_at, expires_at) ",
                );
                qb.push_values(chunk, |mut b, s| {
                    b.push_bind(s.serial.clone())
                        .push_bind(s.spiffe_id.to_string())
                        .push_bind(s.entry_id.clone())
                        .push_bind(agent_id.clone())
                        .push_bind(s.issued_at)
                        .push_bind(s.expires_at);
                });
                qb.build()
                    .execute(&mut *tx)
                    .await
                    .map_err(|err| match &err {
                        sqlx::Error::Database(db) if db.is_unique_violation() => {
                            DatastoreError::AlreadyExists {
                                what: "issued svid serial",
                                id: chunk
                                    .iter()
                                    .map(|s| s.serial.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", "),
                            }
                        }
                        _ => DatastoreError::Query(err),
                    })?;
            }
            for s in svids {
                audit.record(
                    "svid.issued",
                    &agent_id,
                    s.spiffe_id.as_str(),
                    json!({ "serial": s.serial, "entry_id": s.entry_id, "expires_at": s.expires_at }),
                )?;
            }
        });
        Ok(())
    }

    /// Audits a JWT-SVID issued to `agent` as `jwt_svid.issued`, with the agent as actor, its
    /// SPIFFE ID as subject, and the entry, audience, signing key ID and expiry as detail (never
    /// the token).
    pub async fn record_jwt_svid_issued(
        &self,
        jwt: &IssuedJwtSvid,
        agent: &SpiffeId,
    ) -> Result<(), DatastoreError> {
        let agent_id = agent.to_string();
        in_tx!(self, |tx, audit| {
            still_admitted!(tx, agent_id);
            audit.record(
                "jwt_svid.issued",
                agent.as_str(),
                jwt.spiffe_id.as_str(),
                json!({
                    "entry_id": jwt.entry_id,
                    "audience": jwt.audience,
                    "kid": jwt.kid,
                    "expires_at": jwt.expires_at,
                }),
            )?;
        });
        Ok(())
    }
}
