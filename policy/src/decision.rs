//! A decision: allow or deny, the policies that determined it, evaluation errors, time taken and
//! the version of the policy set that made it. Only the engine constructs one.

use std::sync::Arc;
use std::time::Duration;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// A `permit` applied and no `forbid` did (nor errored).
    Allow,
    /// Anything else: no `permit`, a `forbid`, an error in a `forbid`, or a bad request.
    Deny,
}

/// The result of one [`crate::PolicySet::decide`] call.
#[derive(Debug, Clone)]
pub struct Decision {
    outcome: Outcome,
    policy_ids: Vec<String>,
    errors: Vec<String>,
    /// Whether the request could not be built, so no policy was evaluated (`errors` is then
    /// that one error).
    request_error: bool,
    eval_time: Duration,
    version: Arc<str>,
}

// === impl Outcome ===

impl Outcome {
    /// `allow` or `deny`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Decision ===

impl Decision {
    pub(crate) fn new(
        outcome: Outcome,
        policy_ids: Vec<String>,
        errors: Vec<String>,
        eval_time: Duration,
        version: Arc<str>,
    ) -> Self {
        Self {
            outcome,
            policy_ids,
            errors,
            request_error: false,
            eval_time,
            version,
        }
    }

    /// A deny because the request could not be built (see [`Decision::request_error`]).
    pub(crate) fn malformed(error: String, eval_time: Duration, version: Arc<str>) -> Self {
        Self {
            outcome: Outcome::Deny,
            policy_ids: Vec::new(),
            errors: vec![error],
            request_error: true,
            eval_time,
            version,
        }
    }

    /// Allow or deny.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// Whether the request is allowed.
    pub fn is_allowed(&self) -> bool {
        self.outcome == Outcome::Allow
    }

    /// Ids (from `@id`) of the policies that determined the outcome, sorted: the permits that
    /// allowed it, or the forbids that denied it (empty for a default deny).
    pub fn policy_ids(&self) -> &[String] {
        &self.policy_ids
    }

    /// Evaluation and request errors, each naming its policy where there is one, sorted.
    pub fn errors(&self) -> &[String] {
        &self.errors
    }

    /// Why the request itself could not be decided (a caller that is not a SPIFFE ID, a method
    /// with no action in the schema, a malformed gRPC path, a request the schema rejects): it
    /// was denied without evaluating any policy. The same text is in [`Decision::errors`];
    /// `None` when the policies decided (even if some of them errored).
    pub fn request_error(&self) -> Option<&str> {
        if self.request_error {
            self.errors.first().map(String::as_str)
        } else {
            None
        }
    }

    /// Time from the request's parts to this decision.
    pub fn eval_time(&self) -> Duration {
        self.eval_time
    }

    /// The policy set's version (content digest).
    pub fn version(&self) -> &str {
        &self.version
    }
}
