//! Integration tests of the sidecar with real sockets, real TLS and real gRPC: an in-test
//! Workload API server, apps that count what reaches them, and mTLS clients.

// Test fixtures fail loudly: a panic is the test failing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

mod app_protocol;
mod app_refusals;
mod app_resets;
mod app_stream_limit;
mod flow_control;
mod grpc;
mod grpc_bidi;
mod h2;
mod host;
mod http;
mod lapse;
mod lifecycle;
mod modes;
mod rapid_reset;
mod raw_http;
mod resumption;
mod smuggling;
mod source;
mod tls;
mod upgrade;
