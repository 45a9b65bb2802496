//! Integration tests of the outbound side: real sockets, real TLS (SVIDs minted by the
//! identity crate's `TestCa`), an upstream that is a rustls mutual TLS server in front of a small
//! hyper app (and a tonic Workload API service for gRPC), local clients speaking HTTP/1.1, h2c and
//! gRPC to the outbound listener.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers outside #[test] functions: a failure there is a test failure"
)]

#[path = "outbound/client.rs"]
mod client;
#[path = "outbound/grpc_app.rs"]
mod grpc_app;
#[path = "outbound/support.rs"]
mod support;

#[path = "outbound/failures.rs"]
mod failures;
#[path = "outbound/flow_control.rs"]
mod flow_control;
#[path = "outbound/grpc.rs"]
mod grpc;
#[path = "outbound/http.rs"]
mod http;
#[path = "outbound/http1_over_h2.rs"]
mod http1_over_h2;
#[path = "outbound/local.rs"]
mod local;
#[path = "outbound/rotation.rs"]
mod rotation;
#[path = "outbound/tcp.rs"]
mod tcp;
#[path = "outbound/timeouts.rs"]
mod timeouts;
