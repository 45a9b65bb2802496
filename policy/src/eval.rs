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
use cedar_policy_core::ast::{self, Effect, Expr, ExprKind, Literal, SlotEnv, ValueKind, Var};
use cedar_policy_core::evaluator::Evaluator;
use cedar_policy_core::extensions::Extensions;

use crate::context::Needs;

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
    /// The context attributes the condition reads.
    needs: Needs,
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
        let condition = core.condition();
        Self {
            id: policy.id().clone(),
            effect: core.effect(),
            needs: context_needs(&condition),
            condition,
            scope,
            body,
            env: core.env().clone(),
        }
    }
}

/// The context attributes `expr` reads: those named by `context.<name>` and `context has
/// <name>`; all of them when `context` appears any other way (compared, or passed whole).
fn context_needs(expr: &Expr) -> Needs {
    let is_context = |e: &Expr| matches!(e.expr_kind(), ExprKind::Var(Var::Context));
    let mut needs = Needs::NONE;
    let mut uses = 0_usize;
    let mut named = 0_usize;
    for e in expr.subexpressions() {
        match e.expr_kind() {
            ExprKind::Var(Var::Context) => uses += 1,
            ExprKind::GetAttr { expr, attr } | ExprKind::HasAttr { expr, attr }
                if is_context(expr) =>
            {
                named += 1;
                needs = needs.union(Needs::attribute(attr));
            }
            ExprKind::ExtHasAttr { expr, attrs } if is_context(expr) => {
                named += 1;
                needs = needs.union(Needs::attribute(attrs.first()));
            }
            _ => {}
        }
    }
    match uses == named {
        true => needs,
        false => Needs::ALL,
    }
}

/// The policies one (caller, resource, action) triple evaluates, and the context attributes
/// they read.
#[derive(Debug)]
pub(crate) struct CandidateList {
    pub(crate) list: Vec<Candidate>,
    pub(crate) needs: Needs,
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
) -> CandidateList {
    let core: &ast::Request = request.as_ref();
    let evaluator = Evaluator::new(core.clone(), entities.as_ref(), Extensions::all_available());
    let list: Vec<Candidate> = policies
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
        .collect();
    let needs = list
        .iter()
        .fold(Needs::NONE, |needs, c| needs.union(c.policy.needs));
    CandidateList { list, needs }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(condition: &str) -> Needs {
        let text = format!("permit (principal, action, resource){condition};");
        let policy = cedar::Policy::parse(None, text).unwrap();
        Compiled::new(&policy).needs
    }

    #[test]
    fn a_condition_needs_the_context_attributes_it_names() {
        assert_eq!(needs(""), Needs::NONE);
        assert_eq!(
            needs(r#" when { principal == Mesh::Workload::"a" }"#),
            Needs::NONE
        );
        assert_eq!(
            needs(r#" when { context.path like "/a*" }"#),
            Needs::attribute("path")
        );
        assert_eq!(
            needs(r#" when { context has tls && context.tls.version == "TLSv1.3" }"#),
            Needs::attribute("tls")
        );
        assert_eq!(
            needs(r#" when { context has tls.version }"#),
            Needs::attribute("tls")
        );
        assert_eq!(
            needs(
                r#" when { context.headers.contains({name: "a", value: "b"}) } unless { context.query == "" }"#
            ),
            Needs::attribute("headers").union(Needs::attribute("query"))
        );
    }

    #[test]
    fn context_used_whole_or_by_an_unknown_name_needs_all_of_it() {
        assert_eq!(needs(r#" when { context == {} }"#), Needs::ALL);
        assert_eq!(
            needs(r#" when { context.path == "/" && context == {path: "/"} }"#),
            Needs::ALL
        );
        assert_eq!(needs(r#" when { context.nope == 1 }"#), Needs::ALL);
        assert_eq!(needs(r#" when { context has nope }"#), Needs::ALL);
    }
}
