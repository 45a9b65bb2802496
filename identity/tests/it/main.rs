//! Integration tests of warden-identity: one binary, one module per area. Test names cite the
//! SPIFFE rule they check (`_x1`, `_b4`, `_j2`, ...; see shared/SPIFFE-RULES.md).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers outside #[test] functions: a failure there is a test failure"
)]

mod bundle_rules;
mod fuzz_corpus;
mod jwt_rules;
mod support;
mod svid;
mod tls_handshake;
mod x509_rules;
