//! Which verified SPIFFE IDs a TLS endpoint accepts as its peer.

use crate::{SpiffeId, TrustDomain};

/// Which peer SPIFFE IDs are acceptable once the peer's SVID has been verified.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Authorize {
    /// Any ID whose trust domain has a bundle in the source; use when a later step (such as
    /// a Cedar policy) decides.
    AnyTrusted,
    /// Any ID in this trust domain.
    AnyInTrustDomain(TrustDomain),
    /// Any ID in one of these trust domains.
    AnyInTrustDomains(Vec<TrustDomain>),
    /// Exactly this ID.
    Exactly(SpiffeId),
    /// One of these IDs.
    AnyOf(Vec<SpiffeId>),
}

// === impl Authorize ===

impl Authorize {
    /// Whether `id` (already verified) is acceptable.
    pub fn allows(&self, id: &SpiffeId) -> bool {
        match self {
            Self::AnyTrusted => true,
            Self::AnyInTrustDomain(td) => id.is_member_of(td),
            Self::AnyInTrustDomains(tds) => tds.iter().any(|td| id.is_member_of(td)),
            Self::Exactly(want) => want == id,
            Self::AnyOf(ids) => ids.contains(id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    #[test]
    fn authorize_matches_trust_domains_and_ids() {
        let td = TrustDomain::new("a.org").unwrap();
        let x = id("spiffe://a.org/x");
        let y = id("spiffe://b.org/y");
        assert!(Authorize::AnyTrusted.allows(&y));
        assert!(Authorize::AnyInTrustDomain(td.clone()).allows(&x));
        assert!(!Authorize::AnyInTrustDomain(td.clone()).allows(&y));
        assert!(
            Authorize::AnyInTrustDomains(vec![td, TrustDomain::new("b.org").unwrap()]).allows(&y)
        );
        assert!(Authorize::Exactly(x.clone()).allows(&x));
        assert!(!Authorize::Exactly(x.clone()).allows(&id("spiffe://a.org/x/y")));
        assert!(Authorize::AnyOf(vec![x.clone(), y.clone()]).allows(&y));
        assert!(!Authorize::AnyOf(vec![x]).allows(&y));
    }
}
