//! The audit chain's key: from record `keyed_from` on, a record's hash is
//! `HMAC-SHA256(key, "warden-audit-v2\0" || canonical(prev, seq, at, kind, actor, subject,
//! detail))` (the same encoding as the unkeyed links), so that whoever can write the datastore
//! but does not hold the key (`audit.key` in the CA's data dir) cannot edit, insert or replace
//! records without the verification naming the first one. Each keyed link covers the hash
//! before it, so the unkeyed records before `keyed_from` are held fast too once a keyed record
//! follows them.

use ring::hmac;
use subtle::ConstantTimeEq as _;

const KEYED_DOMAIN: &[u8] = b"warden-audit-v2\0";
const KEY_ID_DOMAIN: &[u8] = b"warden-audit-key-id\0";

/// The key the audit chain is kept under, from record `keyed_from` on. Its `Debug` shows the
/// key's id, never the key.
#[derive(Clone)]
pub struct AuditKey {
    key: hmac::Key,
    keyed_from: u64,
    id: String,
}

/// How a datastore's chain is keyed, as its head records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditKeying {
    /// The first record chained under the key.
    pub keyed_from: u64,
    /// The key's id ([`AuditKey::id`]).
    pub key_id: String,
}

// === impl AuditKey ===

impl AuditKey {
    /// The key `secret`, keying the chain from record `keyed_from` on.
    pub fn new(secret: &[u8; 32], keyed_from: u64) -> Self {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let tag = hmac::sign(&key, KEY_ID_DOMAIN);
        let id = hex::encode(tag.as_ref().get(..16).unwrap_or_default());
        Self {
            key,
            keyed_from,
            id,
        }
    }

    /// The first record chained under the key.
    pub fn keyed_from(&self) -> u64 {
        self.keyed_from
    }

    /// A name for the key that tells nothing of it: 32 hex characters of an HMAC under it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The keyed link of record `seq` (see the module doc).
    pub(crate) fn link(&self, prev: &[u8; 32], seq: u64, at: i64, fields: [&str; 4]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(KEYED_DOMAIN);
        ctx.update(prev);
        ctx.update(&seq.to_be_bytes());
        ctx.update(&at.to_be_bytes());
        for field in fields {
            ctx.update(&(field.len() as u64).to_be_bytes());
            ctx.update(field.as_bytes());
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKey")
            .field("id", &self.id)
            .field("keyed_from", &self.keyed_from)
            .finish_non_exhaustive()
    }
}

/// Whether two hashes are equal, in time that does not depend on where they differ.
pub(crate) fn same_hash(a: &[u8; 32], b: &[u8; 32]) -> bool {
    bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keyed_link_depends_on_the_key_and_every_field() {
        let k = AuditKey::new(&[7; 32], 1);
        let base = k.link(&[0; 32], 1, 10, ["k", "a", "s", "{}"]);
        assert_ne!(
            base,
            AuditKey::new(&[8; 32], 1).link(&[0; 32], 1, 10, ["k", "a", "s", "{}"])
        );
        assert_ne!(base, k.link(&[1; 32], 1, 10, ["k", "a", "s", "{}"]));
        assert_ne!(base, k.link(&[0; 32], 2, 10, ["k", "a", "s", "{}"]));
        assert_ne!(base, k.link(&[0; 32], 1, 11, ["k", "a", "s", "{}"]));
        assert_ne!(base, k.link(&[0; 32], 1, 10, ["ka", "", "s", "{}"]));
        assert_ne!(base, k.link(&[0; 32], 1, 10, ["k", "a", "s", "{ }"]));
        assert!(same_hash(
            &base,
            &k.link(&[0; 32], 1, 10, ["k", "a", "s", "{}"])
        ));
    }

    #[test]
    fn the_key_id_names_the_key_and_debug_shows_no_key() {
        let secret = [0xab; 32];
        let k = AuditKey::new(&secret, 5);
        assert_eq!(k.id().len(), 32);
        assert_eq!(k.id(), AuditKey::new(&secret, 9).id());
        assert_ne!(k.id(), AuditKey::new(&[0xac; 32], 5).id());
        let shown = format!("{k:?}");
        assert!(
            shown.contains(k.id()) && shown.contains("keyed_from: 5"),
            "{shown}"
        );
        assert!(!shown.contains(&hex::encode(secret)), "{shown}");
        assert!(!shown.to_lowercase().contains("abab"), "{shown}");
    }
}
