//! Generated gRPC code (tonic + prost, compiled by protox at build time).
//!
//! - [`workload`]: the SPIFFE Workload API, exactly as specified (service `SpiffeWorkloadAPI`,
//!   no package; paths `/SpiffeWorkloadAPI/<Method>`).
//! - [`v1`]: Warden's own CA <-> agent API (`warden.v1.AgentApi`) and admin API
//!   (`warden.v1.AdminApi`), with their shared messages.
//! - [`health`]: the standard gRPC health checking protocol (`grpc.health.v1.Health`).

/// The SPIFFE Workload API.
#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations
)]
pub mod workload {
    tonic::include_proto!("_");
}

/// Warden's agent and admin APIs.
#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations
)]
pub mod v1 {
    tonic::include_proto!("warden.v1");
}

/// The standard gRPC health checking protocol (`grpc.health.v1.Health`), which the demo app
/// serves.
#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations
)]
pub mod health {
    tonic::include_proto!("grpc.health.v1");
}

/// The gRPC metadata key every Workload API call must carry with the value `true` (rule W-2).
pub const WORKLOAD_API_HEADER: &str = "workload.spiffe.io";

/// The encoded `FileDescriptorSet` of `workload.proto`, for gRPC server reflection (rule W-14).
pub const WORKLOAD_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/workload_descriptor.bin"));

pub mod transport;
