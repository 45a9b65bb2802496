//! Warden's policy engine: the Cedar mesh schema, loading and strict validation of a policy
//! directory with located errors, a scope index so a request evaluates only the policies that can
//! apply, fail-closed decisions, hot reload, and the decision-log record shared with the sidecar.
//!
//! ```no_run
//! use std::net::{IpAddr, Ipv4Addr};
//! use warden_policy::{Caller, Operation, PolicySet, Request};
//!
//! let set = PolicySet::load("policies".as_ref()).map_err(|e| e.to_string())?;
//! let decision = set.decide(&Request {
//!     caller: Caller::Spiffe("spiffe://example.org/ns/prod/sa/frontend"),
//!     operation: Operation::Http("GET"),
//!     resource: "api",
//!     path: "/v1/orders",
//!     query: "",
//!     headers: &[("accept", "application/json")],
//!     source: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)),
//!     tls: None,
//!     time: std::time::SystemTime::now(),
//! });
//! println!("{} by {:?}", decision.outcome(), decision.policy_ids());
//! # Ok::<(), String>(())
//! ```

mod context;
mod decision;
mod diff;
mod error;
mod eval;
mod fmt;
mod index;
mod json_line;
mod loader;
mod model;
mod policy_set;
mod record;
mod redact;
mod reload;
mod request;
mod source;
mod testing;

pub use decision::{Decision, Outcome};
pub use diff::{Change, DiffReport, MAX_RECORD_LINE_BYTES, MAX_REPORTED_BAD_LINES, diff};
pub use error::{LoadError, Problem};
pub use fmt::{FormattedFile, format_dir};
pub use loader::{ENTITIES_FILE, LINKS_FILE, PolicyInfo, PolicyKind};
pub use model::{
    ACTION_TYPE, CONNECT_ACTION, GRPC_ACTION, NAMESPACE_TYPE, SERVICE_TYPE, TRUST_DOMAIN_TYPE,
    UNAUTHENTICATED_ID, UNAUTHENTICATED_TYPE, WORKLOAD_TYPE,
};
pub use policy_set::{Evaluation, MAX_CACHED_PEERS, PolicySet};
pub use record::{
    DEFAULT_TLS_VERSION, DecisionLine, DecisionRecord, LoggedHeaders, REDACTED, RequestSpec,
    finish_line,
};
pub use redact::{is_secret_name, redact_query};
pub use reload::{DEFAULT_POLL_INTERVAL, Engine, Reload};
pub use request::{Caller, Operation, Request, RequestError, TlsFacts, parse_time};
pub use source::Location;
pub use testing::{CaseResult, TEST_FILE_SUFFIX, TestReport, run_tests};
