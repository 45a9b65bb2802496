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

/// Bound on cached tokens; the cache is emptied when it is reached.
const MAX_CACHED: usize = 10_000;

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
            if tokens.len() >= MAX_CACHED {
                tokens.clear();
            }
            tokens.insert(key, minted.clone());
        }
        Ok(minted)
    }
}
