//! Integration tests of the node agent: the Workload API driven by an independent client
//! (the `spiffe` crate from crates.io) over a real Unix socket.

mod support;
mod workload_api;
mod workload_api_streams;
