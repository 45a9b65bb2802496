//! Integration tests of warden-policy, against real policy directories on disk.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers fail fast, like the tests they serve"
)]

mod decide;
mod depth;
mod differential;
mod load;
mod reload;
mod support;
mod workload_ids;
