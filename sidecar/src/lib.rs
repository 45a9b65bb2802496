//! Warden's enforcing sidecar: terminates SPIFFE mutual TLS in front of a local app, decides every
//! request with the Cedar policy engine, and originates mutual TLS for the app's outbound calls.
//!
//! Module ownership while it is being built: `outbound` (outbound listeners, mTLS origination,
//! connection pools); everything else (config, identity source, inbound, decision log, metrics,
//! `run`).

pub mod outbound;
