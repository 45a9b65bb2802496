//! The append-only, hash-chained audit log.
//!
//! `hash_n = SHA-256(hash_{n-1} || canonical(seq, at, kind, actor, subject, detail))` with
//! `hash_0` = 32 zero bytes. The canonical encoding is a version tag, then the 32-byte previous
//! hash, `seq` (u64 big-endian), `at` (i64 big-endian) and each text field as a u64 big-endian
//! byte length followed by its UTF-8 bytes; `detail` is hashed exactly as stored, so verifying
//! never depends on how a JSON library re-serialises it. The chain head (last seq and hash) is
//! kept in `audit_head`, updated in the same transaction as every append, so that deleting the
//! newest records is detected as well.
//!
//! From the record `audit_head.keyed_from` on, the links are keyed ([`keyed`]): an HMAC under
//! the CA's audit key instead of a bare hash, so that only the key's holder can chain records.

mod keyed;

use std::sync::Arc;

use sha2::{Digest, Sha256};

use keyed::same_hash;
pub use keyed::{AuditKey, AuditKeying};

use super::error::DatastoreError;
use super::model::{AuditEvent, AuditRecord, AuditVerification, BadAuditRecord};
use super::{Datastore, now_unix};

/// Rows per multi-row `INSERT` (7 parameters each; well under SQLite's and PostgreSQL's limits).
pub(crate) const INSERT_CHUNK: usize = 500;
/// Default and largest page for [`Datastore::list_audit`].
const DEFAULT_LIST_LIMIT: u32 = 100;
const MAX_LIST_LIMIT: u32 = 1000;
/// Records read per query while verifying.
const VERIFY_PAGE: u32 = 1000;
const HASH_DOMAIN: &[u8] = b"warden-audit-v1\0";

type AuditRow = (i64, i64, String, String, String, String, String);

/// Audit records pushed during a write transaction, chained from the locked head; written by
/// `in_tx!` just before commit.
#[derive(Debug)]
pub(crate) struct AuditBatch {
    seq: u64,
    hash: [u8; 32],
    at: i64,
    key: Option<Arc<AuditKey>>,
    rows: Vec<AuditRecord>,
}

// === impl AuditBatch ===

impl AuditBatch {
    /// Starts a batch at the chain head `(seq, hex hash)` read from `audit_head`, chaining
    /// under `key` from its `keyed_from` on.
    pub(crate) fn from_head(
        head: (i64, String),
        key: Option<Arc<AuditKey>>,
    ) -> Result<Self, DatastoreError> {
        let (seq, hash) = head;
        let corrupt = |detail: &str| DatastoreError::Corrupt {
            what: "audit head",
            id: "1".into(),
            detail: detail.into(),
        };
        let seq = u64::try_from(seq).map_err(|_| corrupt("negative sequence number"))?;
        let hash = decode_hash(&hash).ok_or_else(|| corrupt("hash is not 64 hex characters"))?;
        Ok(Self {
            seq,
            hash,
            at: now_unix(),
            key,
            rows: Vec::new(),
        })
    }

    /// Chains `ev` onto the batch and returns its sequence number.
    pub(crate) fn push(&mut self, ev: &AuditEvent) -> Result<u64, DatastoreError> {
        let detail = serde_json::to_string(&ev.detail).map_err(|e| {
            DatastoreError::Invalid(format!("audit detail is not serialisable: {e}"))
        })?;
        let seq = self.seq + 1;
        let fields = [ev.kind.as_str(), &ev.actor, &ev.subject, &detail];
        let hash = link(self.key.as_deref(), &self.hash, seq, self.at, fields);
        self.rows.push(AuditRecord {
            seq,
            at: self.at,
            kind: ev.kind.clone(),
            actor: ev.actor.clone(),
            subject: ev.subject.clone(),
            detail,
            hash: hex::encode(hash),
        });
        self.seq = seq;
        self.hash = hash;
        Ok(seq)
    }

    /// Shorthand for [`push`](Self::push) of a freshly built event.
    pub(crate) fn record(
        &mut self,
        kind: &str,
        actor: &str,
        subject: &str,
        detail: serde_json::Value,
    ) -> Result<u64, DatastoreError> {
        self.push(&AuditEvent {
            kind: kind.into(),
            actor: actor.into(),
            subject: subject.into(),
            detail,
        })
    }

    /// The records to insert.
    pub(crate) fn rows(&self) -> &[AuditRecord] {
        &self.rows
    }

    /// The new head `(seq, hex hash)`, if anything was pushed.
    pub(crate) fn new_head(&self) -> Option<(i64, String)> {
        if self.rows.is_empty() {
            return None;
        }
        Some((seq_to_i64(self.seq), hex::encode(self.hash)))
    }
}

/// Writes a batch's rows and the new chain head inside the open transaction `$tx`.
macro_rules! flush_audit {
    ($tx:ident, $audit:ident) => {{
        for chunk in $audit.rows().chunks($crate::datastore::audit::INSERT_CHUNK) {
            let mut qb = sqlx::QueryBuilder::new(
                "INSERT INTO audit_log (seq, at, kind, actor, subject, detail, hash) ",
            );
            qb.push_values(chunk, |mut b, r| {
                b.push_bind($crate::datastore::audit::seq_to_i64(r.seq))
                    .push_bind(r.at)
                    .push_bind(r.kind.clone())
                    .push_bind(r.actor.clone())
                    .push_bind(r.subject.clone())
                    .push_bind(r.detail.clone())
                    .push_bind(r.hash.clone());
            });
            qb.build().execute(&mut *$tx).await?;
        }
        if let Some((seq, hash)) = $audit.new_head() {
            sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
                .bind(seq)
                .bind(hash)
                .execute(&mut *$tx)
                .await?;
        }
    }};
}
pub(crate) use flush_audit;

/// Sequence numbers are stored as BIGINT; they never come near `i64::MAX`.
pub(crate) fn seq_to_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn decode_hash(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text).ok()?;
    <[u8; 32]>::try_from(bytes.as_slice()).ok()
}

/// Record `seq`'s link: keyed from `key`'s `keyed_from` on, else [`chain_hash`].
fn link(key: Option<&AuditKey>, prev: &[u8; 32], seq: u64, at: i64, fields: [&str; 4]) -> [u8; 32] {
    match key {
        Some(key) if seq >= key.keyed_from() => key.link(prev, seq, at, fields),
        _ => {
            let [kind, actor, subject, detail] = fields;
            chain_hash(prev, seq, at, kind, actor, subject, detail)
        }
    }
}

/// One unkeyed link of the chain (see the module doc for the encoding).
pub(crate) fn chain_hash(
    prev: &[u8; 32],
    seq: u64,
    at: i64,
    kind: &str,
    actor: &str,
    subject: &str,
    detail: &str,
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(HASH_DOMAIN);
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(at.to_be_bytes());
    for field in [kind, actor, subject, detail] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    h.finalize().into()
}

fn to_record(row: AuditRow) -> AuditRecord {
    let (seq, at, kind, actor, subject, detail, hash) = row;
    AuditRecord {
        seq: u64::try_from(seq).unwrap_or(0),
        at,
        kind,
        actor,
        subject,
        detail,
        hash,
    }
}

// === impl Datastore ===

impl Datastore {
    /// Appends one audit record in its own transaction and returns its sequence number.
    pub async fn append_audit(&self, ev: &AuditEvent) -> Result<u64, DatastoreError> {
        Ok(in_tx!(self, |tx, audit| audit.push(ev)?))
    }

    /// Records with `seq > after`, oldest first; `limit` 0 means 100, at most 1000.
    pub async fn list_audit(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, DatastoreError> {
        let limit = match limit {
            0 => DEFAULT_LIST_LIMIT,
            n => n.min(MAX_LIST_LIMIT),
        };
        let rows: Vec<AuditRow> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT seq, at, kind, actor, subject, detail, hash FROM audit_log \
                 WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(seq_to_i64(after))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        });
        Ok(rows.into_iter().map(to_record).collect())
    }

    /// Recomputes the whole chain and names the first record that was edited, deleted or
    /// inserted out of order, and detects deletion of the newest records through the chain head.
    pub async fn verify_audit(&self) -> Result<AuditVerification, DatastoreError> {
        let key = self.audit_key.as_deref();
        match (key, self.audit_keying().await?) {
            (None, Some(keying)) => {
                return Err(DatastoreError::Invalid(format!(
                    "the audit chain is keyed from record {} (key `{}`): only a CA holding that \
                     key (`audit.key` in its data dir) can verify it",
                    keying.keyed_from, keying.key_id
                )));
            }
            (Some(key), stored)
                if stored
                    .as_ref()
                    .is_none_or(|s| s.keyed_from != key.keyed_from() || s.key_id != key.id()) =>
            {
                let said = stored.map_or("not keyed".to_owned(), |s| {
                    format!("keyed by key `{}` from record {}", s.key_id, s.keyed_from)
                });
                return Ok(bad(
                    0,
                    key.keyed_from(),
                    format!(
                        "the chain head says the chain is {said}, but it is kept under key `{}` \
                         from record {}: the head was edited",
                        key.id(),
                        key.keyed_from()
                    ),
                ));
            }
            _ => {}
        }
        let mut prev = [0u8; 32];
        let mut expected_seq: u64 = 1;
        let mut checked: u64 = 0;
        // Records are appended while this runs (each with the head, in one transaction): the
        // records up to the head read first are checked, then up to the head read again, until
        // it no longer moves. A record past a head that stays put was added without it.
        let mut head = self.audit_head().await?;
        'chain: loop {
            let page = self.list_audit(expected_seq - 1, VERIFY_PAGE).await?;
            let page_len = page.len();
            for r in page {
                if r.seq > head.0 {
                    let again = self.audit_head().await?;
                    if again.0 == head.0 {
                        return Ok(bad(
                            checked,
                            r.seq,
                            format!(
                                "record {} is past the chain head (record {}): it was added \
                                 without it",
                                r.seq, head.0
                            ),
                        ));
                    }
                    head = again;
                    continue 'chain;
                }
                if r.seq != expected_seq {
                    return Ok(bad(
                        checked,
                        expected_seq,
                        format!(
                            "record {expected_seq} is missing (deleted): the next stored record is {}",
                            r.seq
                        ),
                    ));
                }
                let fields = [r.kind.as_str(), &r.actor, &r.subject, &r.detail];
                let computed = link(key, &prev, r.seq, r.at, fields);
                if !decode_hash(&r.hash).is_some_and(|stored| same_hash(&stored, &computed)) {
                    return Ok(bad(
                        checked,
                        r.seq,
                        format!(
                            "record {} was edited: its hash does not match its contents and the record before it",
                            r.seq
                        ),
                    ));
                }
                prev = computed;
                checked += 1;
                expected_seq += 1;
            }
            if checked >= head.0 {
                // Up to the head: done once nothing is past it and it has not moved (a record
                // past it comes in the next page, and is judged above).
                if self.list_audit(head.0, 1).await?.is_empty() {
                    let again = self.audit_head().await?;
                    if again.0 == head.0 {
                        break;
                    }
                    head = again;
                }
            } else if page_len == 0 {
                // Short of the head, and nothing more: the newest records were deleted.
                break;
            }
        }
        let head_seq = head.0;
        if head_seq > checked {
            return Ok(bad(
                checked,
                checked + 1,
                format!(
                    "records {}..={head_seq} are missing (deleted from the end of the log)",
                    checked + 1
                ),
            ));
        }
        if head_seq != checked || !decode_hash(&head.1).is_some_and(|h| same_hash(&h, &prev)) {
            // (`checked` never passes the head: a record past it ends the check above.)
            return Ok(bad(
                checked,
                checked,
                format!(
                    "the chain head (record {head_seq}) does not match the last record {checked}"
                ),
            ));
        }
        Ok(AuditVerification {
            records: checked,
            first_bad: None,
        })
    }
}

impl Datastore {
    /// The chain head: the last record's sequence number and hash.
    async fn audit_head(&self) -> Result<(u64, String), DatastoreError> {
        let head: (i64, String) = on_pool!(self, pool => {
            sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1").fetch_one(pool).await?
        });
        Ok((u64::try_from(head.0).unwrap_or(0), head.1))
    }
}

// === keying ===

impl Datastore {
    /// How the chain is keyed, if it is (`audit_head.keyed_from` and `key_id`).
    pub async fn audit_keying(&self) -> Result<Option<AuditKeying>, DatastoreError> {
        let row: (Option<i64>, Option<String>) = on_pool!(self, pool => {
            sqlx::query_as("SELECT keyed_from, key_id FROM audit_head WHERE id = 1")
                .fetch_one(pool)
                .await?
        });
        match row {
            (Some(from), Some(key_id)) => Ok(Some(AuditKeying {
                keyed_from: u64::try_from(from).unwrap_or(0),
                key_id,
            })),
            (None, None) => Ok(None),
            _ => Err(DatastoreError::Corrupt {
                what: "audit head",
                id: "1".into(),
                detail: "keyed_from and key_id are not both set".into(),
            }),
        }
    }

    /// The number of the last record (0 when there is none).
    pub async fn audit_head_seq(&self) -> Result<u64, DatastoreError> {
        let seq: i64 = on_pool!(self, pool => {
            sqlx::query_scalar("SELECT seq FROM audit_head WHERE id = 1").fetch_one(pool).await?
        });
        Ok(u64::try_from(seq).unwrap_or(0))
    }

    /// Records that the chain is keyed under `key` from its `keyed_from` on. Fails, changing
    /// nothing, when the chain is keyed already or has records at or past `keyed_from` (they
    /// were chained unkeyed).
    pub async fn set_audit_keying(&self, key: &AuditKey) -> Result<(), DatastoreError> {
        let keyed_from = seq_to_i64(key.keyed_from());
        in_tx!(self, |tx, _audit| {
            let (seq, hash, from): (i64, String, Option<i64>) =
                sqlx::query_as("SELECT seq, hash, keyed_from FROM audit_head WHERE id = 1")
                    .fetch_one(&mut *tx)
                    .await?;
            if let Some(from) = from {
                return Err(DatastoreError::Invalid(format!(
                    "the audit chain is keyed already (from record {from})"
                )));
            }
            if seq >= keyed_from {
                return Err(DatastoreError::Invalid(format!(
                    "the audit chain has {seq} records: it cannot be keyed from record {keyed_from}"
                )));
            }
            sqlx::query("UPDATE audit_head SET keyed_from = $1, key_id = $2 WHERE id = 1")
                .bind(keyed_from)
                .bind(key.id())
                .execute(&mut *tx)
                .await?;
            // The keying is itself the first keyed record, at once holding every record before
            // it fast and saying when the key came.
            let mut keyed = AuditBatch::from_head((seq, hash), Some(Arc::new(key.clone())))?;
            keyed.record(
                "audit.keyed",
                super::CA_ACTOR,
                key.id(),
                serde_json::json!({ "keyed_from": key.keyed_from(), "key_id": key.id() }),
            )?;
            flush_audit!(tx, keyed);
        });
        Ok(())
    }
}

fn bad(records: u64, seq: u64, problem: String) -> AuditVerification {
    AuditVerification {
        records,
        first_bad: Some(BadAuditRecord { seq, problem }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_hash_depends_on_every_field_and_the_previous_hash() {
        let base = chain_hash(&[0; 32], 1, 10, "k", "a", "s", "{}");
        assert_ne!(base, chain_hash(&[1; 32], 1, 10, "k", "a", "s", "{}"));
        assert_ne!(base, chain_hash(&[0; 32], 2, 10, "k", "a", "s", "{}"));
        assert_ne!(base, chain_hash(&[0; 32], 1, 11, "k", "a", "s", "{}"));
        assert_ne!(base, chain_hash(&[0; 32], 1, 10, "kx", "a", "s", "{}"));
        assert_ne!(base, chain_hash(&[0; 32], 1, 10, "k", "ax", "s", "{}"));
        assert_ne!(base, chain_hash(&[0; 32], 1, 10, "k", "a", "sx", "{}"));
        assert_ne!(base, chain_hash(&[0; 32], 1, 10, "k", "a", "s", "{ }"));
    }

    #[test]
    fn chain_hash_is_unambiguous_across_field_boundaries() {
        // Length prefixes: moving a byte from one field to the next changes the hash.
        assert_ne!(
            chain_hash(&[0; 32], 1, 1, "ab", "c", "", ""),
            chain_hash(&[0; 32], 1, 1, "a", "bc", "", "")
        );
    }

    #[test]
    fn batch_chains_records_from_the_head() {
        let mut b = AuditBatch::from_head((0, "00".repeat(32)), None).unwrap();
        let ev = AuditEvent {
            kind: "k".into(),
            actor: "a".into(),
            subject: "s".into(),
            detail: serde_json::json!({"x": 1}),
        };
        assert_eq!(b.push(&ev).unwrap(), 1);
        assert_eq!(b.push(&ev).unwrap(), 2);
        let rows = b.rows();
        let h1 = chain_hash(&[0; 32], 1, rows[0].at, "k", "a", "s", "{\"x\":1}");
        assert_eq!(rows[0].hash, hex::encode(h1));
        assert_eq!(
            rows[1].hash,
            hex::encode(chain_hash(&h1, 2, rows[1].at, "k", "a", "s", "{\"x\":1}"))
        );
        assert_eq!(b.new_head(), Some((2, rows[1].hash.clone())));
    }

    #[test]
    fn corrupt_head_is_named() {
        let err = AuditBatch::from_head((0, "zz".into()), None).unwrap_err();
        assert!(
            err.to_string().contains("stored audit head `1` is corrupt"),
            "{err}"
        );
    }
}
