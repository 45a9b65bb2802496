//! The agent's view of what it may serve: registration entries, the X.509-SVID held for each,
//! and the trust bundles. The sync loop owns the mutable [`Cache`]; every change publishes an
//! immutable [`CacheState`] through a `watch` channel that the Workload API streams follow.

mod svid;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;
use warden_api::v1;
use warden_identity::{Selector, SpiffeId, TrustDomain};

use crate::trust::BundleSet;

pub use svid::{Svid, SvidError, refresh_at, spiffe_id_of};

/// A registration entry the agent may mint SVIDs for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Entry id assigned by the CA.
    pub id: String,
    /// The workload's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// All must be present for a workload to match.
    pub selectors: Vec<Selector>,
    /// Trust domains whose bundles the workload also receives.
    pub federates_with: Vec<TrustDomain>,
    /// Workload API hint (≤ 1024 bytes, else dropped).
    pub hint: String,
    /// Bumped by the CA on every update.
    pub revision: u64,
    /// Unix seconds; older entries come first, so the oldest match is the default SVID.
    pub created_at: i64,
}

/// Why an entry from the CA was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// The SPIFFE ID does not parse.
    #[error("entry `{id}`: invalid spiffe id `{value}`")]
    SpiffeId {
        /// Entry id.
        id: String,
        /// The bad value.
        value: String,
    },
    /// A selector does not parse.
    #[error("entry `{id}`: invalid selector `{value}`")]
    Selector {
        /// Entry id.
        id: String,
        /// The bad value.
        value: String,
    },
    /// No selectors: it would match every workload.
    #[error("entry `{0}` has no selectors")]
    NoSelectors(String),
    /// A federated trust domain does not parse.
    #[error("entry `{id}`: invalid trust domain `{value}`")]
    TrustDomain {
        /// Entry id.
        id: String,
        /// The bad value.
        value: String,
    },
}

/// The longest hint passed to workloads (rule W-13).
pub const MAX_HINT_LEN: usize = 1024;

// === impl Entry ===

impl TryFrom<&v1::Entry> for Entry {
    type Error = EntryError;

    fn try_from(e: &v1::Entry) -> Result<Self, Self::Error> {
        let spiffe_id = e.spiffe_id.parse().map_err(|_| EntryError::SpiffeId {
            id: e.id.clone(),
            value: e.spiffe_id.clone(),
        })?;
        let selectors = e
            .selectors
            .iter()
            .map(|s| {
                s.parse().map_err(|_| EntryError::Selector {
                    id: e.id.clone(),
                    value: s.clone(),
                })
            })
            .collect::<Result<Vec<Selector>, _>>()?;
        if selectors.is_empty() {
            return Err(EntryError::NoSelectors(e.id.clone()));
        }
        let federates_with = e
            .federates_with
            .iter()
            .map(|t| {
                let name = t.strip_prefix("spiffe://").unwrap_or(t);
                TrustDomain::new(name).map_err(|_| EntryError::TrustDomain {
                    id: e.id.clone(),
                    value: t.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let hint = if e.hint.len() > MAX_HINT_LEN {
            String::new()
        } else {
            e.hint.clone()
        };
        Ok(Self {
            id: e.id.clone(),
            spiffe_id,
            selectors,
            federates_with,
            hint,
            revision: e.revision,
            created_at: e.created_at,
        })
    }
}

impl Entry {
    /// Whether every selector of the entry is among the workload's.
    pub fn matches(&self, workload: &BTreeSet<Selector>) -> bool {
        !self.selectors.is_empty() && self.selectors.iter().all(|s| workload.contains(s))
    }
}

/// One identity the agent can serve: an entry and its current SVID.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The entry.
    pub entry: Arc<Entry>,
    /// Its current X.509-SVID.
    pub svid: Arc<Svid>,
}

/// An immutable view of the cache, published on every change.
#[derive(Debug, Clone)]
pub struct CacheState {
    /// True once the agent has attested and completed one full sync.
    pub ready: bool,
    /// The agent's own trust domain.
    pub trust_domain: TrustDomain,
    /// Own and federated bundles.
    pub bundles: Arc<BundleSet>,
    /// Identities in serving order (oldest entry first, then by id).
    pub identities: Arc<Vec<Identity>>,
}

// === impl CacheState ===

impl CacheState {
    /// An empty, not-ready state.
    pub fn empty(trust_domain: TrustDomain) -> Self {
        Self {
            ready: false,
            trust_domain,
            bundles: Arc::new(BundleSet::new()),
            identities: Arc::new(Vec::new()),
        }
    }

    /// The identities whose entry selectors are all among `selectors`, default first.
    pub fn matching<'a>(&'a self, selectors: &BTreeSet<Selector>) -> Vec<&'a Identity> {
        self.identities
            .iter()
            .filter(|i| i.entry.matches(selectors))
            .collect()
    }
}

/// The mutable cache owned by the sync loop.
#[derive(Debug)]
pub struct Cache {
    trust_domain: TrustDomain,
    ready: bool,
    entries: BTreeMap<String, Arc<Entry>>,
    svids: BTreeMap<String, Arc<Svid>>,
    bundles: Arc<BundleSet>,
    tx: watch::Sender<Arc<CacheState>>,
}

// === impl Cache ===

impl Cache {
    /// A new, empty cache and the receiver that follows it.
    pub fn new(trust_domain: TrustDomain) -> (Self, watch::Receiver<Arc<CacheState>>) {
        let (tx, rx) = watch::channel(Arc::new(CacheState::empty(trust_domain.clone())));
        let cache = Self {
            trust_domain,
            ready: false,
            entries: BTreeMap::new(),
            svids: BTreeMap::new(),
            bundles: Arc::new(BundleSet::new()),
            tx,
        };
        (cache, rx)
    }

    /// Another receiver.
    pub fn subscribe(&self) -> watch::Receiver<Arc<CacheState>> {
        self.tx.subscribe()
    }

    /// Replaces the entry set. Entries that disappeared, changed SPIFFE ID or changed revision
    /// lose their SVIDs. Returns the ids of entries that need a (new) SVID.
    pub fn set_entries(&mut self, entries: Vec<Entry>) -> Vec<String> {
        let mut next = BTreeMap::new();
        for e in entries {
            next.insert(e.id.clone(), Arc::new(e));
        }
        let previous = &self.entries;
        // Keep an SVID only for an entry that still exists unchanged (same ID and revision):
        // an updated entry (DNS names, TTL...) gets a fresh SVID on this sync.
        self.svids.retain(|id, svid| {
            next.get(id).is_some_and(|e| {
                e.spiffe_id == *svid.spiffe_id()
                    && previous
                        .get(id)
                        .is_none_or(|old| old.revision == e.revision)
            })
        });
        self.entries = next;
        self.entries
            .keys()
            .filter(|id| !self.svids.contains_key(*id))
            .cloned()
            .collect()
    }

    /// The entries.
    pub fn entries(&self) -> impl Iterator<Item = &Arc<Entry>> {
        self.entries.values()
    }

    /// One entry.
    pub fn entry(&self, id: &str) -> Option<&Arc<Entry>> {
        self.entries.get(id)
    }

    /// Stores a (new) SVID for an entry; ignored if the entry is gone or the ID differs.
    pub fn set_svid(&mut self, entry_id: &str, svid: Svid) -> bool {
        match self.entries.get(entry_id) {
            Some(e) if e.spiffe_id == *svid.spiffe_id() => {
                self.svids.insert(entry_id.to_owned(), Arc::new(svid));
                true
            }
            _ => false,
        }
    }

    /// Entry ids whose SVID is missing or due for rotation at `now`.
    pub fn due(&self, now: SystemTime, jitter: impl Fn(&str) -> f64) -> Vec<String> {
        self.entries
            .keys()
            .filter(|id| match self.svids.get(*id) {
                None => true,
                Some(s) => s.needs_rotation(now, jitter(id)),
            })
            .cloned()
            .collect()
    }

    /// The earliest time any held SVID is due for rotation.
    pub fn next_rotation(&self, jitter: impl Fn(&str) -> f64) -> Option<SystemTime> {
        self.svids
            .iter()
            .map(|(id, s)| refresh_at(s.not_before(), s.not_after(), jitter(id)))
            .min()
    }

    /// Replaces the bundles.
    pub fn set_bundles(&mut self, bundles: BundleSet) {
        self.bundles = Arc::new(bundles);
    }

    /// Marks the cache as filled.
    pub fn set_ready(&mut self) {
        self.ready = true;
    }

    /// Whether an SVID is held for the entry.
    pub fn has_svid(&self, entry_id: &str) -> bool {
        self.svids.contains_key(entry_id)
    }

    /// Number of SVIDs held.
    pub fn svid_count(&self) -> usize {
        self.svids.len()
    }

    /// Publishes the current state to every receiver (if it changed).
    pub fn publish(&self) {
        let mut identities: Vec<Identity> = self
            .entries
            .iter()
            .filter_map(|(id, e)| {
                self.svids.get(id).map(|s| Identity {
                    entry: Arc::clone(e),
                    svid: Arc::clone(s),
                })
            })
            .collect();
        identities.sort_by(|a, b| {
            (a.entry.created_at, &a.entry.id).cmp(&(b.entry.created_at, &b.entry.id))
        });
        let state = CacheState {
            ready: self.ready,
            trust_domain: self.trust_domain.clone(),
            bundles: Arc::clone(&self.bundles),
            identities: Arc::new(identities),
        };
        self.tx.send_replace(Arc::new(state));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use rcgen::{CertificateParams, KeyPair, PublicKeyData, SanType};
    use rustls_pki_types::PrivatePkcs8KeyDer;

    use super::*;

    /// A self-signed SVID for `id`, valid from a second ago for `life`.
    pub(crate) fn svid(id: &str, life: Duration) -> Svid {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::seconds(1);
        params.not_after = now + time::Duration::try_from(life).unwrap();
        let cert = params.self_signed(&key).unwrap();
        Svid::new(
            vec![cert.der().clone()],
            PrivatePkcs8KeyDer::from(key.serialize_der()),
            &key.subject_public_key_info(),
        )
        .unwrap()
    }

    fn entry(id: &str, path: &str, revision: u64, created_at: i64) -> Entry {
        Entry::try_from(&v1::Entry {
            id: id.into(),
            spiffe_id: format!("spiffe://example.org/{path}"),
            selectors: vec!["unix:uid:1000".into()],
            revision,
            created_at,
            ..Default::default()
        })
        .unwrap()
    }

    fn cache() -> (Cache, watch::Receiver<Arc<CacheState>>) {
        Cache::new(TrustDomain::new("example.org").unwrap())
    }

    #[test]
    fn deleted_or_updated_entries_lose_their_svids() {
        let (mut c, rx) = cache();
        assert_eq!(
            c.set_entries(vec![entry("a", "a", 1, 1), entry("b", "b", 1, 2)]),
            vec!["a", "b"]
        );
        assert!(c.set_svid("a", svid("spiffe://example.org/a", Duration::from_secs(60))));
        assert!(c.set_svid("b", svid("spiffe://example.org/b", Duration::from_secs(60))));
        c.publish();
        assert_eq!(rx.borrow().identities.len(), 2);
        // `b` deleted, `a` updated (revision 2): `a` needs a new SVID, `b` is gone.
        assert_eq!(c.set_entries(vec![entry("a", "a", 2, 1)]), vec!["a"]);
        c.publish();
        assert!(rx.borrow().identities.is_empty());
        assert!(!c.has_svid("b"));
    }

    #[test]
    fn svid_for_another_id_or_unknown_entry_is_refused() {
        let (mut c, _rx) = cache();
        c.set_entries(vec![entry("a", "a", 1, 1)]);
        assert!(!c.set_svid(
            "a",
            svid("spiffe://example.org/other", Duration::from_secs(60))
        ));
        assert!(!c.set_svid(
            "zz",
            svid("spiffe://example.org/a", Duration::from_secs(60))
        ));
        assert_eq!(c.svid_count(), 0);
    }

    #[test]
    fn due_lists_missing_svids_and_those_past_half_life() {
        let (mut c, _rx) = cache();
        c.set_entries(vec![entry("a", "a", 1, 1), entry("b", "b", 1, 2)]);
        c.set_svid(
            "a",
            svid("spiffe://example.org/a", Duration::from_secs(100)),
        );
        let now = SystemTime::now();
        assert_eq!(c.due(now, |_| 0.0), vec!["b"]);
        assert_eq!(
            c.due(now + Duration::from_secs(60), |_| 0.0),
            vec!["a", "b"]
        );
        let next = c.next_rotation(|_| 0.0).unwrap();
        assert!(next > now + Duration::from_secs(40) && next < now + Duration::from_secs(60));
    }

    #[test]
    fn oldest_matching_entry_is_served_first() {
        let (mut c, rx) = cache();
        c.set_entries(vec![entry("z", "new", 1, 50), entry("y", "old", 1, 10)]);
        c.set_svid(
            "z",
            svid("spiffe://example.org/new", Duration::from_secs(60)),
        );
        c.set_svid(
            "y",
            svid("spiffe://example.org/old", Duration::from_secs(60)),
        );
        c.set_ready();
        c.publish();
        let state = rx.borrow();
        let sel: BTreeSet<Selector> = ["unix:uid:1000".parse().unwrap()].into();
        let ids: Vec<String> = state
            .matching(&sel)
            .iter()
            .map(|i| i.entry.spiffe_id.to_string())
            .collect();
        assert_eq!(
            ids,
            vec!["spiffe://example.org/old", "spiffe://example.org/new"]
        );
        let other: BTreeSet<Selector> = ["unix:uid:1001".parse().unwrap()].into();
        assert!(state.matching(&other).is_empty());
    }

    #[test]
    fn entry_without_selectors_or_with_bad_fields_is_refused() {
        let base = v1::Entry {
            id: "e".into(),
            spiffe_id: "spiffe://example.org/w".into(),
            selectors: vec!["unix:uid:1".into()],
            ..Default::default()
        };
        let none = v1::Entry {
            selectors: vec![],
            ..base.clone()
        };
        assert_eq!(
            Entry::try_from(&none),
            Err(EntryError::NoSelectors("e".into()))
        );
        let bad_sel = v1::Entry {
            selectors: vec!["nope".into()],
            ..base.clone()
        };
        assert!(matches!(
            Entry::try_from(&bad_sel),
            Err(EntryError::Selector { .. })
        ));
        let bad_id = v1::Entry {
            spiffe_id: "http://x".into(),
            ..base.clone()
        };
        assert!(matches!(
            Entry::try_from(&bad_id),
            Err(EntryError::SpiffeId { .. })
        ));
        let bad_td = v1::Entry {
            federates_with: vec!["Bad TD".into()],
            ..base
        };
        assert!(matches!(
            Entry::try_from(&bad_td),
            Err(EntryError::TrustDomain { .. })
        ));
    }
}
