//! Warden's node agent: attests its node to the CA, keeps the SVIDs of the workloads it may
//! serve in a cache (synced, pre-fetched in batches, rotated at half-life), attests workloads
//! from their Unix-socket credentials and serves them the SPIFFE Workload API.
//!
//! The service surface is [`run`], [`Config`] and [`AgentError`]; the other public modules
//! exist for the `warden` CLI, tests and benchmarks.
#![doc = include_str!("../README.md")]

mod agent;
pub mod ca_client;
pub mod cache;
pub mod client;
pub mod config;
pub mod http;
pub mod metrics;
pub mod store;
pub mod trust;
pub mod workload_api;
mod workload_attestor;

pub use agent::{AgentError, run};
pub use config::{Config, ConfigError, RawConfig};
pub use workload_attestor::{AttestError, PeerCredentials, ProcessPin, WorkloadAttestor};
