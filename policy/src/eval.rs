//! Cedar's authorization over a candidate list, with each policy's condition built once.
//!
//! `cedar_policy::Authorizer::is_authorized` rebuilds every policy's condition expression
//! (`TemplateBody::condition`: the scope constraints and-ed with the body) on every call, and
//! assembles a full response with annotations per policy; on the sidecar's path that was most of
//! the time spent in Cedar. Here the condition of each policy is built once, at load, and a
//! request runs Cedar's own evaluator (`cedar_policy_core::evaluator::Evaluator`) over it.
//!
//! A policy's scope (its `principal`, `action` and `resource` constraints) depends on nothing but
//! those three entities and the entity hierarchy, which are the same for every request of one
//! caller and action to one service. So the scope is evaluated once per such triple, when its
//! candidate list is built ([`candidates`]): a policy whose scope does not hold is left out, one
//! whose scope holds is evaluated per request by its `when`/`unless` body alone; one whose scope
//! fails to evaluate keeps its whole condition, so that each request reports the error as Cedar
//! would. Cedar evaluates the condition `principal && (action && (resource && body))` left to
//! right, so with the scope known to hold, the body decides and fails exactly as within it.
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
    /// The scope constraints alone: `principal && (action && resource)`.
    scope: Expr,
    /// The condition once the scope holds: `true && body`, as the innermost `&&` of
    /// `condition` evaluates it (the body's type is checked there).
    body: Expr,
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
        let template = core.template();
        let loc = template.loc().cloned();
        let scope = Expr::and(
            template.principal_constraint().as_expr(),
            Expr::and(
                template.action_constraint().as_expr(),
                template.resource_constraint().as_expr(),
            ),
        );
        let body = Expr::and(
            Expr::val(true),
            template
                .non_scope_constraints()
                .cloned()
                .unwrap_or_else(|| Expr::val(true)),
        )
        .with_maybe_source_loc(loc);
        Self {
            id: policy.id().clone(),
            effect: core.effect(),
            condition: core.condition(),
            scope,
            body,
            env: core.env().clone(),
        }
    }
}

/// A policy that may apply to one (principal, action, resource): what a request still has to
/// evaluate of it.
#[derive(Debug)]
pub(crate) struct Candidate {
    policy: Arc<Compiled>,
    /// The scope is known to hold: only the body is evaluated.
    scope_holds: bool,
}

/// The candidates among `policies` for `request`'s principal, action and resource (its context is
/// not read): policies whose scope is false are left out.
pub(crate) fn candidates(
    request: &cedar::Request,
    entities: &cedar::Entities,
    policies: impl IntoIterator<Item = Arc<Compiled>>,
) -> Vec<Candidate> {
    let core: &ast::Request = request.as_ref();
    let evaluator = Evaluator::new(core.clone(), entities.as_ref(), Extensions::all_available());
    policies
        .into_iter()
        .filter_map(|policy| {
            let scope_holds = match evaluator.interpret(&policy.scope, &policy.env) {
                Ok(value) => match value.value_kind() {
                    ValueKind::Lit(Literal::Bool(true)) => true,
                    ValueKind::Lit(Literal::Bool(false)) => return None,
                    _ => false,
                },
                // Evaluated whole per request, which reports the error.
                Err(_) => false,
            };
            Some(Candidate {
                policy,
                scope_holds,
            })
        })
        .collect()
}

/// Decides `request` against `policies` with `entities`, by Cedar's rules.
pub(crate) fn authorize(
    request: &cedar::Request,
    entities: &cedar::Entities,
    candidates: &[Candidate],
) -> Evaluated {
    let core: &ast::Request = request.as_ref();
    let evaluator = Evaluator::new(core.clone(), entities.as_ref(), Extensions::all_available());
    let mut permits: Vec<&Compiled> = Vec::new();
    let mut forbids: Vec<&Compiled> = Vec::new();
    let mut errors = Vec::new();
    for candidate in candidates {
        let policy = &*candidate.policy;
        let condition = match candidate.scope_holds {
            true => &policy.body,
            false => &policy.condition,
        };
        // The condition is an `&&` chain, which evaluates to a boolean or fails.
        let message = match evaluator.interpret(condition, &policy.env) {
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
