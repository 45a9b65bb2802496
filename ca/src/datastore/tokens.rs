//! Join tokens: stored only as their SHA-256, single use even under concurrent consumption, and
//! consumed in the same transaction as the agent they attest is recorded.

use serde_json::json;

use super::agents::insert_agent;
use super::error::{DatastoreError, TokenError};
use super::model::AgentRecord;
use super::{Datastore, now_unix};

/// Marks the token with hex hash `$hash` used at `$now` inside the transaction `$tx`, pushing
/// its `token.used` record onto `$audit`; returns early with the [`TokenError`] naming why not.
macro_rules! consume_token {
    ($tx:ident, $audit:ident, $hash:expr, $now:expr) => {{
        let hash: &str = $hash;
        let now: i64 = $now;
        let done = sqlx::query(
            "UPDATE join_tokens SET used_at = $1 \
             WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1",
        )
        .bind(now)
        .bind(hash.to_owned())
        .execute(&mut *$tx)
        .await?;
        if done.rows_affected() != 1 {
            let row: Option<(i64, Option<i64>)> =
                sqlx::query_as("SELECT expires_at, used_at FROM join_tokens WHERE token_hash = $1")
                    .bind(hash.to_owned())
                    .fetch_optional(&mut *$tx)
                    .await?;
            return Err(match row {
                None => TokenError::Unknown,
                Some((_, Some(_))) => TokenError::AlreadyUsed,
                Some((_, None)) => TokenError::Expired,
            });
        }
        $audit.record("token.used", "ca", token_id(hash), json!({ "used_at": now }))?;
    }};
}

// === impl Datastore ===

impl Datastore {
    /// Stores a join token's hash with its expiry (unix seconds), auditing `token.created`
    /// (with the first 16 hex characters of the hash, never the token).
    pub async fn create_join_token(
        &self,
        token_hash: &[u8; 32],
        expires_at: i64,
        actor: &str,
    ) -> Result<(), DatastoreError> {
        let hash = hex::encode(token_hash);
        let token_id = token_id(&hash);
        let now = now_unix();
        in_tx!(self, |tx, audit| {
            sqlx::query(
                "INSERT INTO join_tokens (token_hash, expires_at, created_at) VALUES ($1, $2, $3)",
            )
            .bind(hash.clone())
            .bind(expires_at)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|err| match &err {
                sqlx::Error::Database(db) if db.is_unique_violation() => {
                    DatastoreError::AlreadyExists {
                        what: "join token",
                        id: token_id.to_owned(),
                    }
                }
                _ => DatastoreError::Query(err),
            })?;
            audit.record(
                "token.created",
                actor,
                token_id,
                json!({ "expires_at": expires_at }),
            )?;
        });
        Ok(())
    }

    /// Marks the token used if it exists, is unexpired at `now` and unused, auditing
    /// `token.used`. Exactly one of any number of concurrent calls for one token succeeds: the
    /// check and the update are one conditional `UPDATE` inside a serialised transaction.
    pub async fn consume_join_token(
        &self,
        token_hash: &[u8; 32],
        now: i64,
    ) -> Result<(), TokenError> {
        let hash = hex::encode(token_hash);
        in_tx!(self, |tx, audit| {
            consume_token!(tx, audit, &hash, now);
        });
        tracing::info!(token.id = %token_id(&hash), "join token used");
        Ok(())
    }

    /// Consumes the join token (as [`consume_join_token`](Self::consume_join_token)) and records
    /// the agent it attested (as [`attest_agent`](Self::attest_agent)) in one transaction: both
    /// happen, or neither does, so a failure never burns the token without creating the agent.
    pub async fn attest_agent_with_join_token(
        &self,
        token_hash: &[u8; 32],
        now: i64,
        agent: &AgentRecord,
    ) -> Result<(), TokenError> {
        let hash = hex::encode(token_hash);
        in_tx!(self, |tx, audit| {
            consume_token!(tx, audit, &hash, now);
            insert_agent!(tx, audit, agent);
        });
        tracing::info!(
            token.id = %token_id(&hash),
            spiffe_id = %agent.spiffe_id,
            "join token used; agent attested"
        );
        Ok(())
    }
}

impl Datastore {
    /// Whether the join token could be used at `now` (known, unused, unexpired), read without
    /// a transaction: a cheap first look, so that an unknown token (anyone can send one) costs
    /// no signature and no write lock. Using it still takes
    /// [`attest_agent_with_join_token`](Self::attest_agent_with_join_token), which checks again.
    pub async fn check_join_token(
        &self,
        token_hash: &[u8; 32],
        now: i64,
    ) -> Result<(), TokenError> {
        let hash = hex::encode(token_hash);
        let row: Option<(i64, Option<i64>)> = on_pool!(self, pool => {
            sqlx::query_as("SELECT expires_at, used_at FROM join_tokens WHERE token_hash = $1")
                .bind(hash.clone())
                .fetch_optional(pool)
                .await
                .map_err(DatastoreError::Query)?
        });
        match row {
            None => Err(TokenError::Unknown),
            Some((_, Some(_))) => Err(TokenError::AlreadyUsed),
            Some((expires_at, None)) if expires_at <= now => Err(TokenError::Expired),
            Some(_) => Ok(()),
        }
    }

    /// Revokes the unused join token whose ID (the first 16 hex characters of its hash, the
    /// last segment of its agent ID) is `id`, auditing `token.revoked`: an agent can no longer
    /// attest with it. A token already used is refused (its agent is evicted or banned
    /// instead), as is an unknown one.
    pub async fn revoke_join_token(&self, id: &str, actor: &str) -> Result<(), DatastoreError> {
        if id.len() != 16
            || !id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(DatastoreError::Invalid(format!(
                "`{}` is not a join token id (16 lowercase hex characters)",
                id.chars().take(64).collect::<String>()
            )));
        }
        in_tx!(self, |tx, audit| {
            let done = sqlx::query(
                "DELETE FROM join_tokens WHERE substr(token_hash, 1, 16) = $1 AND used_at IS NULL",
            )
            .bind(id.to_owned())
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                let used: Option<(i64,)> = sqlx::query_as(
                    "SELECT used_at FROM join_tokens WHERE substr(token_hash, 1, 16) = $1",
                )
                .bind(id.to_owned())
                .fetch_optional(&mut *tx)
                .await?;
                return Err(match used {
                    Some(_) => DatastoreError::Invalid(format!(
                        "join token `{id}` was already used: evict or ban its agent instead"
                    )),
                    None => DatastoreError::NotFound {
                        what: "join token",
                        id: id.to_owned(),
                    },
                });
            }
            audit.record("token.revoked", actor, id, json!({}))?;
        });
        tracing::info!(token.id = %id, "join token revoked");
        Ok(())
    }
}

/// A short, non-secret name for a token: the first 16 hex characters of its SHA-256 (the same
/// as the last segment of the agent ID it yields).
fn token_id(hash_hex: &str) -> &str {
    hash_hex.get(..16).unwrap_or(hash_hex)
}
