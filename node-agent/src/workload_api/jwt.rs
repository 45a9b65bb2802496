//! JWT-SVIDs for the Workload API: minted on demand through a [`JwtMinter`] (the CA, in the
//! running agent) and cached per entry and audience set until half of their lifetime is over.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::cache::{Entry, refresh_at};

/// A JWT-SVID as minted.
#[derive(Clone)]
pub struct MintedJwt {
    /// The compact JWS.
    pub token: String,
    /// When it was minted.
    pub issued_at: SystemTime,
    /// Its `exp`.
    pub expires_at: SystemTime,
}

impl fmt::Debug for MintedJwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MintedJwt")
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Why a JWT-SVID could not be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// The CA could not be reached.
    #[error("the ca is unreachable: {0}")]
    Unavailable(String),
    /// The CA refused.
    #[error("the ca refused to sign: {0}")]
    Refused(String),
}

/// The future a [`JwtMinter`] returns.
pub type MintFuture<'a> = Pin<Box<dyn Future<Output = Result<MintedJwt, MintError>> + Send + 'a>>;

/// Signs JWT-SVIDs for entries.
pub trait JwtMinter: Send + Sync + fmt::Debug + 'static {
    /// Mints a JWT-SVID for `entry` with `audience`.
    fn mint<'a>(&'a self, entry: &'a Entry, audience: &'a [String]) -> MintFuture<'a>;
}

type Key = (String, Vec<String>);

/// Cached JWT-SVIDs, keyed by entry id and sorted audience list.
#[derive(Debug)]
pub(crate) struct JwtCache {
    minter: Arc<dyn JwtMinter>,
    tokens: Mutex<HashMap<Key, MintedJwt>>,
}

/// Most tokens cached in all.
const MAX_CACHED: usize = 10_000;
/// Most tokens cached for one entry (one per audience set): a workload asking for ever new
/// audiences pushes out its own tokens, not the other workloads'.
const MAX_PER_ENTRY: usize = 64;

// === impl JwtCache ===

impl JwtCache {
    pub(crate) fn new(minter: Arc<dyn JwtMinter>) -> Self {
        Self {
            minter,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// A cached token for `entry` and `audience` that is still before its half-life at
    /// `now`, or a freshly minted one.
    pub(crate) async fn get(
        &self,
        entry: &Entry,
        audience: &[String],
        now: SystemTime,
    ) -> Result<MintedJwt, MintError> {
        let mut sorted = audience.to_vec();
        sorted.sort();
        sorted.dedup();
        let key = (format!("{}@{}", entry.id, entry.revision), sorted);
        if let Ok(tokens) = self.tokens.lock()
            && let Some(hit) = tokens.get(&key)
            && now < refresh_at(hit.issued_at, hit.expires_at, 0.0)
        {
            return Ok(hit.clone());
        }
        let minted = self.minter.mint(entry, &key.1).await?;
        if let Ok(mut tokens) = self.tokens.lock() {
            make_room(&mut tokens, &key.0, now);
            tokens.insert(key, minted.clone());
        }
        Ok(minted)
    }
}

/// Frees a place for one more token of `entry`: past [`MAX_PER_ENTRY`] that entry's oldest
/// goes; past [`MAX_CACHED`] the tokens past their half-life go, then the oldest. (A miss is a
/// call to the CA, so these scans cost little beside it.)
fn make_room(tokens: &mut HashMap<Key, MintedJwt>, entry: &str, now: SystemTime) {
    let oldest = |tokens: &HashMap<Key, MintedJwt>, of_entry: bool| {
        tokens
            .iter()
            .filter(|(k, _)| !of_entry || k.0 == entry)
            .min_by_key(|(_, t)| t.issued_at)
            .map(|(k, _)| k.clone())
    };
    if tokens.keys().filter(|k| k.0 == entry).count() >= MAX_PER_ENTRY
        && let Some(k) = oldest(tokens, true)
    {
        tokens.remove(&k);
    }
    if tokens.len() >= MAX_CACHED {
        tokens.retain(|_, t| now < refresh_at(t.issued_at, t.expires_at, 0.0));
    }
    if tokens.len() >= MAX_CACHED
        && let Some(k) = oldest(tokens, false)
    {
        tokens.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// Mints placeholder tokens and counts the calls.
    #[derive(Debug, Default)]
    struct Counting(AtomicUsize);

    impl JwtMinter for Counting {
        fn mint<'a>(&'a self, _entry: &'a Entry, _audience: &'a [String]) -> MintFuture<'a> {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                let issued_at = SystemTime::now();
                Ok(MintedJwt {
                    token: format!("token-{n}"),
                    issued_at: issued_at + Duration::from_millis(n as u64),
                    expires_at: issued_at + Duration::from_secs(300),
                })
            })
        }
    }

    fn entry(id: &str) -> Entry {
        Entry {
            id: id.into(),
            spiffe_id: format!("spiffe://example.org/{id}").parse().unwrap(),
            selectors: Vec::new(),
            federates_with: Vec::new(),
            hint: String::new(),
            revision: 1,
            created_at: 0,
        }
    }

    /// A workload asking for ever new audiences evicts its own tokens only: another
    /// workload's cached token is still served without a new mint.
    #[tokio::test]
    async fn one_entrys_audiences_do_not_push_out_another_entrys_tokens() {
        let minter = Arc::new(Counting::default());
        let cache = JwtCache::new(Arc::clone(&minter) as Arc<dyn JwtMinter>);
        let now = SystemTime::now();
        let other = cache
            .get(&entry("b"), &["ledger".into()], now)
            .await
            .unwrap();
        for n in 0..(MAX_PER_ENTRY * 3) {
            cache
                .get(&entry("a"), &[format!("aud-{n}")], now)
                .await
                .unwrap();
        }
        let mints = minter.0.load(Ordering::SeqCst);
        let again = cache
            .get(&entry("b"), &["ledger".into()], now)
            .await
            .unwrap();
        assert_eq!(again.token, other.token);
        assert_eq!(minter.0.load(Ordering::SeqCst), mints, "minted again");
        let tokens = cache.tokens.lock().unwrap();
        let of_a = tokens.keys().filter(|k| k.0.starts_with("a@")).count();
        assert_eq!(of_a, MAX_PER_ENTRY);
        // The newest audiences are the ones kept.
        let newest = (
            "a@1".to_owned(),
            vec![format!("aud-{}", MAX_PER_ENTRY * 3 - 1)],
        );
        assert!(tokens.contains_key(&newest));
    }
}
