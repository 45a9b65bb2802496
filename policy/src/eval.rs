//! Cedar's authorization over a candidate list, with each policy's condition built once.
//!
//! `cedar_policy::Authorizer::is_authorized` rebuilds every policy's condition expression
//! (`TemplateBody::condition`: the scope constraints and-ed with the body) on every call, and
//! assembles a full response with annotations per policy; on the sidecar's path that was most of
//! the time spent in Cedar. Here the condition of each policy is built once, at load, and a
//! request runs Cedar's own evaluator (`cedar_policy_core::evaluator::Evaluator`) over it.
//!
//! The rules are Cedar's (`cedar_policy_core::authorizer`): a policy whose condition errors is
//! skipped and its error reported; any satisfied `forbid` denies, and the satisfied forbids are
//! the reason; otherwise any satisfied `permit` allows, and the satisfied permits are the reason;
//! otherwise the request is denied with no reason. The differential tests decide thousands of
//! generated requests both this way and with `Authorizer::is_authorized` over the whole set and
//! require the same outcome, reasons and error texts.

use std::sync::Arc;

use cedar_policy as cedar;
use cedar_policy_core::ast::{self, Effect, Expr, Literal, SlotEnv, ValueKind};
use cedar_policy_core::evaluator::Evaluator;
use cedar_policy_core::extensions::Extensions;

/// One policy, ready to evaluate.
#[derive(Debug)]
pub(crate) struct Compiled {
    id: cedar::PolicyId,
    effect: Effect,
    /// The whole condition: scope constraints and body, as Cedar builds it.
    condition: Expr,
    /// Slot values of a template-linked policy; empty for a static one.
    env: SlotEnv,
}

/// What evaluating a candidate list found.
#[derive(Debug, Default)]
pub(crate) struct Evaluated {
    /// Cedar's decision.
    pub(crate) allowed: bool,
    /// The determining policies, unsorted.
    pub(crate) reason: Vec<String>,
    /// Each policy whose condition errored: its id, whether it is a `forbid`, and Cedar's text
    /// for the error.
    pub(crate) errors: Vec<(String, bool, String)>,
}

// === impl Compiled ===

impl Compiled {
    pub(crate) fn new(policy: &cedar::Policy) -> Self {
        let core: &ast::Policy = policy.as_ref();
        Self {
            id: policy.id().clone(),
            effect: core.effect(),
            condition: core.condition(),
            env: core.env().clone(),
        }
    }
}

/// Decides `request` against `policies` with `entities`, by Cedar's rules.
pub(crate) fn authorize(
    request: &cedar::Request,
    entities: &cedar::Entities,
    policies: &[Arc<Compiled>],
) -> Evaluated {
    let core: &ast::Request = request.as_ref();
    let evaluator = Evaluator::new(core.clone(), entities.as_ref(), Extensions::all_available());
    let mut permits: Vec<&Compiled> = Vec::new();
    let mut forbids: Vec<&Compiled> = Vec::new();
    let mut errors = Vec::new();
    for policy in policies {
        // The condition is an `&&` chain, which evaluates to a boolean or fails.
        let message = match evaluator.interpret(&policy.condition, &policy.env) {
            Ok(value) => match value.value_kind() {
                ValueKind::Lit(Literal::Bool(true)) => {
                    match policy.effect {
                        Effect::Permit => permits.push(policy),
                        Effect::Forbid => forbids.push(policy),
                    }
                    continue;
                }
                ValueKind::Lit(Literal::Bool(false)) => continue,
                _ => format!("the condition of policy `{}` is not a boolean", policy.id),
            },
            // The text of cedar_policy's `PolicyEvaluationError`.
            Err(error) => format!("error while evaluating policy `{}`: {error}", policy.id),
        };
        let id: &str = policy.id.as_ref();
        errors.push((id.to_owned(), policy.effect == Effect::Forbid, message));
    }
    let (allowed, determining) = if !forbids.is_empty() {
        (false, forbids)
    } else {
        (!permits.is_empty(), permits)
    };
    Evaluated {
        allowed,
        reason: determining
            .iter()
            .map(|p| AsRef::<str>::as_ref(&p.id).to_owned())
            .collect(),
        errors,
    }
}
