//! Warden's node agent: attests its node to the CA, keeps the SVIDs of the workloads it may
//! serve in a cache (synced, pre-fetched in batches, rotated at half-life), attests workloads
//! from their Unix-socket credentials and serves them the SPIFFE Workload API.

pub mod cache;
mod jwt_validate;
pub mod metrics;
pub mod trust;
pub mod workload_api;
mod workload_attestor;

pub use jwt_validate::{JwtValidationError, ValidatedJwt, validate_jwt_svid};
pub use workload_attestor::{AttestError, PeerCredentials, WorkloadAttestor};
