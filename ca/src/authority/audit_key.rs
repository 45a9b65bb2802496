//! The audit key file, `audit.key` in the data dir (0600, beside the root key): the key the
//! datastore's audit chain is kept under from record `keyed_from` on (see
//! `datastore::audit::keyed`). The datastore records which key (by its id, never the key) and
//! from which record; a CA whose file does not match, or is missing, refuses to start.
//!
//! The file is three lines: `warden audit key v1`, `keyed-from <record>`, `secret <64 hex>`.

use std::path::Path;

use ring::rand::{SecureRandom as _, SystemRandom};
use zeroize::Zeroizing;

use super::{AuthorityError, files};
use crate::datastore::{AuditKey, Datastore};

/// The audit key's file name in the data dir.
pub const AUDIT_KEY_FILE: &str = "audit.key";

const HEADER: &str = "warden audit key v1";

/// The data dir's audit key, made (and the datastore's chain keyed from its next record) when
/// neither has one; checked against the datastore's keying otherwise.
pub(crate) async fn prepare(data_dir: &Path, ds: &Datastore) -> Result<AuditKey, AuthorityError> {
    let path = data_dir.join(AUDIT_KEY_FILE);
    let stored = ds.audit_keying().await?;
    if path.exists() {
        let key = read(&path)?;
        return match stored {
            Some(s) if s.key_id == key.id() && s.keyed_from == key.keyed_from() => Ok(key),
            Some(s) => Err(AuthorityError::BadFile {
                what: "audit key",
                path,
                reason: format!(
                    "it is key `{}` from record {}, but the datastore's audit chain is kept under \
                     key `{}` from record {}: this is another CA's key file",
                    key.id(),
                    key.keyed_from(),
                    s.key_id,
                    s.keyed_from
                ),
            }),
            None => {
                ds.set_audit_keying(&key).await?;
                Ok(key)
            }
        };
    }
    if let Some(s) = stored {
        return Err(AuthorityError::Config(format!(
            "the datastore's audit chain is kept under key `{}` from record {}, but `{}` is \
             missing: copy it from the CA that made it (the audit log cannot be extended or \
             verified without it)",
            s.key_id,
            s.keyed_from,
            path.display()
        )));
    }
    // The secret's copies here are zeroed when dropped (the HMAC key keeps its own).
    let mut secret = Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(secret.as_mut())
        .map_err(|_| AuthorityError::Config("no randomness for the audit key".into()))?;
    let key = AuditKey::new(&secret, ds.audit_head_seq().await? + 1);
    let hex_secret = Zeroizing::new(hex::encode(secret.as_ref()));
    let mut text = Zeroizing::new(String::with_capacity(HEADER.len() + hex_secret.len() + 64));
    text.push_str(HEADER);
    text.push_str(&format!("\nkeyed-from {}\nsecret ", key.keyed_from()));
    text.push_str(&hex_secret);
    text.push('\n');
    files::write_secret(&path, text.as_bytes())?;
    if let Err(e) = ds.set_audit_keying(&key).await {
        let _ = std::fs::remove_file(&path);
        return Err(e.into());
    }
    tracing::info!(
        key_id = key.id(),
        keyed_from = key.keyed_from(),
        path = %path.display(),
        "audit chain keyed"
    );
    Ok(key)
}

/// Parses the key file; errors never show the secret.
fn read(path: &Path) -> Result<AuditKey, AuthorityError> {
    let bad = |reason: &str| AuthorityError::BadFile {
        what: "audit key",
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    };
    let bytes = files::read_secret(path, "audit key")?;
    let text = std::str::from_utf8(&bytes).map_err(|_| bad("not text"))?;
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(bad(&format!("the first line is not `{HEADER}`")));
    }
    let keyed_from = lines
        .next()
        .and_then(|l| l.strip_prefix("keyed-from "))
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|n| *n >= 1)
        .ok_or_else(|| bad("the second line is not `keyed-from <record number, 1 or more>`"))?;
    let secret = lines
        .next()
        .and_then(|l| l.strip_prefix("secret "))
        .and_then(|h| hex::decode(h).ok().map(Zeroizing::new))
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok().map(Zeroizing::new))
        .ok_or_else(|| bad("the third line is not `secret <64 hex characters>`"))?;
    if lines.any(|l| !l.trim().is_empty()) {
        return Err(bad("there is more after the secret"));
    }
    Ok(AuditKey::new(&secret, keyed_from))
}
