//! Warden's identity core: SPIFFE IDs and trust domains (parsed, never merely validated),
//! workload selectors, X.509-SVID and JWT-SVID handling, trust bundles and the SPIFFE-aware
//! rustls verifiers that every Warden process uses.

mod selector;
mod spiffe_id;

pub use selector::{MAX_SELECTOR_LEN, Selector, SelectorError};
pub use spiffe_id::{MAX_SPIFFE_ID_LEN, MAX_TRUST_DOMAIN_LEN, SpiffeId, SpiffeIdError, TrustDomain};
