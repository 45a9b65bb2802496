//! Integration tests of the node agent: the Workload API driven by an independent client
//! (the `spiffe` crate from crates.io) over a real Unix socket.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test support code outside #[test] functions; a failure is a test failure"
)]

mod agent_recovery;
mod agent_sync;
mod support;
mod test_ca;
mod workload_api;
mod workload_api_jwt;
mod workload_api_limits;
mod workload_api_streams;
