//! A cache of accepted peer chains, so a caller that reconnects with the same X.509-SVID does not
//! pay for the chain's signature checks again (two P-256 ECDSA verifications for a leaf and one
//! intermediate: the largest part of a server handshake's CPU).
//!
//! What a hit still requires, every time:
//! - the same chain, byte for byte (SHA-256 of every certificate, length-prefixed);
//! - the very same bundle set: the cache holds the `Arc<BundleSet>` it verified against and is
//!   emptied when the source hands out another one (holding it also keeps its address from being
//!   reused by a later set);
//! - the current time inside every chain certificate's validity period;
//! - an entry younger than [`MAX_AGE`], which bounds how long anything the key does not capture
//!   (the anchoring bundle authority's own expiry, checked when the chain is verified) could go
//!   unnoticed.
//!
//! Only accepted chains are cached; a refused chain is verified again at every attempt. The
//! handshake signature (CertificateVerify) and the authorization of the SPIFFE ID are checked
//! by the caller on every handshake, hit or miss.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ring::digest;
use rustls::pki_types::CertificateDer;

use crate::{BundleSet, SpiffeId};

/// Most chains remembered; past it the cache starts over.
const MAX_ENTRIES: usize = 1024;
/// Longest an accepted chain is trusted without verifying it again.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(60);

/// Accepted chains for one bundle set.
#[derive(Debug, Default)]
pub(crate) struct ChainCache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    bundles: Option<Arc<BundleSet>>,
    entries: HashMap<[u8; 32], Entry>,
}

#[derive(Debug)]
struct Entry {
    id: SpiffeId,
    /// The latest `notBefore` and the earliest `notAfter` of the chain, in Unix seconds.
    valid_from: u64,
    valid_until: u64,
    verified_at: Instant,
}

/// A chain's cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChainKey([u8; 32]);

impl ChainKey {
    pub(crate) fn of(chain: &[CertificateDer<'_>]) -> Self {
        let mut ctx = digest::Context::new(&digest::SHA256);
        for cert in chain {
            ctx.update(&u64::try_from(cert.len()).unwrap_or(u64::MAX).to_le_bytes());
            ctx.update(cert.as_ref());
        }
        let mut key = [0_u8; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        Self(key)
    }
}

impl ChainCache {
    /// The SPIFFE ID of a chain accepted earlier against `bundles`, if the entry still holds at
    /// `now` (Unix seconds).
    pub(crate) fn get(
        &self,
        key: ChainKey,
        bundles: &Arc<BundleSet>,
        now: u64,
    ) -> Option<SpiffeId> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if !inner
            .bundles
            .as_ref()
            .is_some_and(|b| Arc::ptr_eq(b, bundles))
        {
            return None;
        }
        let entry = inner.entries.get(&key.0)?;
        let fresh = entry.verified_at.elapsed() < MAX_AGE;
        let valid = entry.valid_from <= now && now < entry.valid_until;
        (fresh && valid).then(|| entry.id.clone())
    }

    /// Remembers that `chain` (with key `key`) was accepted against `bundles` as `id`.
    pub(crate) fn insert(
        &self,
        key: ChainKey,
        chain: &[CertificateDer<'_>],
        bundles: &Arc<BundleSet>,
        id: &SpiffeId,
    ) {
        let Some((valid_from, valid_until)) = validity(chain) else {
            return;
        };
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if !inner
            .bundles
            .as_ref()
            .is_some_and(|b| Arc::ptr_eq(b, bundles))
        {
            inner.entries.clear();
            inner.bundles = Some(Arc::clone(bundles));
        }
        if inner.entries.len() >= MAX_ENTRIES {
            inner.entries.clear();
        }
        inner.entries.insert(
            key.0,
            Entry {
                id: id.clone(),
                valid_from,
                valid_until,
                verified_at: Instant::now(),
            },
        );
    }
}

/// The intersection of the chain's validity periods, in Unix seconds; `None` if a certificate
/// does not parse (then nothing is cached).
fn validity(chain: &[CertificateDer<'_>]) -> Option<(u64, u64)> {
    let mut from = 0_u64;
    let mut until = u64::MAX;
    for cert in chain {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
        let v = parsed.validity();
        let nb = u64::try_from(v.not_before.timestamp()).unwrap_or(0);
        let na = u64::try_from(v.not_after.timestamp()).ok()?;
        from = from.max(nb);
        until = until.min(na);
    }
    Some((from, until))
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::*;
    use crate::test_util::TestCa;

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn a_hit_needs_the_same_chain_the_same_bundles_and_a_valid_time() {
        let ca = TestCa::new("example.org");
        let id: SpiffeId = "spiffe://example.org/web".parse().unwrap();
        let svid = ca.issue_svid(&id, Duration::from_secs(600));
        let other = ca.issue_svid(&id, Duration::from_secs(600));
        let chain = svid.cert_chain().to_vec();
        let bundles = Arc::new(TestCa::bundle_set(&[&ca]));
        let cache = ChainCache::default();
        let key = ChainKey::of(&chain);
        assert_eq!(
            cache.get(key, &bundles, now()),
            None,
            "nothing before insert"
        );
        cache.insert(key, &chain, &bundles, &id);
        assert_eq!(cache.get(key, &bundles, now()), Some(id.clone()));
        // Another certificate for the same ID is another key.
        let other_key = ChainKey::of(other.cert_chain());
        assert_ne!(other_key, key);
        assert_eq!(cache.get(other_key, &bundles, now()), None);
        // Past the leaf's notAfter, and before its notBefore.
        assert_eq!(cache.get(key, &bundles, now() + 601), None);
        assert_eq!(cache.get(key, &bundles, now() - 3600), None);
        // Another bundle set, even with the same content, is a miss.
        let again = Arc::new(TestCa::bundle_set(&[&ca]));
        assert_eq!(cache.get(key, &again, now()), None);
        // Inserting under the new set forgets everything verified under the old one.
        cache.insert(other_key, other.cert_chain(), &again, &id);
        assert_eq!(cache.get(key, &bundles, now()), None);
        assert_eq!(cache.get(key, &again, now()), None);
        assert_eq!(cache.get(other_key, &again, now()), Some(id));
    }

    #[test]
    fn keys_separate_how_bytes_split_between_certificates() {
        let a = [
            CertificateDer::from(vec![1, 2]),
            CertificateDer::from(vec![3]),
        ];
        let b = [
            CertificateDer::from(vec![1]),
            CertificateDer::from(vec![2, 3]),
        ];
        assert_ne!(ChainKey::of(&a), ChainKey::of(&b));
        assert_eq!(ChainKey::of(&a), ChainKey::of(&a.clone()));
    }

    #[test]
    fn unparsable_chains_are_not_cached() {
        let ca = TestCa::new("example.org");
        let bundles = Arc::new(TestCa::bundle_set(&[&ca]));
        let id: SpiffeId = "spiffe://example.org/web".parse().unwrap();
        let junk = [CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])];
        let key = ChainKey::of(&junk);
        let cache = ChainCache::default();
        cache.insert(key, &junk, &bundles, &id);
        assert_eq!(cache.get(key, &bundles, now()), None);
    }
}
