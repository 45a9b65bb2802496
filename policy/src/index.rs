//! The scope index: every policy sits in one bucket keyed by the most selective part of its
//! scope, so a request looks up only the buckets its principal, action and resource (and their
//! ancestors) can hit instead of evaluating every policy.
//!
//! INVARIANT (upheld by `ScopeIndex::new` and checked by the differential test): a policy whose
//! scope matches a request is always among that request's candidates. Candidates whose scope does
//! not match are harmless, since Cedar evaluates the scope again.

use std::collections::HashMap;

use cedar_policy as cedar;

/// Policy ids grouped by scope key.
#[derive(Debug, Default)]
pub(crate) struct ScopeIndex {
    by_principal: HashMap<cedar::EntityUid, Vec<u32>>,
    by_resource: HashMap<cedar::EntityUid, Vec<u32>>,
    by_action: HashMap<cedar::EntityUid, Vec<u32>>,
    by_principal_type: HashMap<cedar::EntityTypeName, Vec<u32>>,
    by_resource_type: HashMap<cedar::EntityTypeName, Vec<u32>>,
    unscoped: Vec<u32>,
    ids: Vec<cedar::PolicyId>,
}

/// A request's scope: each entity with its ancestors.
#[derive(Debug)]
pub(crate) struct Scope<'a> {
    pub(crate) principal: &'a cedar::EntityUid,
    pub(crate) principal_ancestors: Vec<&'a cedar::EntityUid>,
    pub(crate) action: &'a cedar::EntityUid,
    pub(crate) action_ancestors: Vec<&'a cedar::EntityUid>,
    pub(crate) resource: &'a cedar::EntityUid,
    pub(crate) resource_ancestors: Vec<&'a cedar::EntityUid>,
}

// === impl ScopeIndex ===

impl ScopeIndex {
    /// Indexes every static and template-linked policy of `set`.
    pub(crate) fn new(set: &cedar::PolicySet) -> Self {
        let mut index = Self::default();
        let mut policies: Vec<&cedar::Policy> = set.policies().collect();
        policies.sort_by(|a, b| a.id().cmp(b.id()));
        for policy in policies {
            let n = u32::try_from(index.ids.len()).unwrap_or(u32::MAX);
            index.ids.push(policy.id().clone());
            index.insert(policy, n);
        }
        index
    }

    fn insert(&mut self, policy: &cedar::Policy, n: u32) {
        use cedar::{ActionConstraint as A, PrincipalConstraint as P, ResourceConstraint as R};
        let push = |map: &mut HashMap<cedar::EntityUid, Vec<u32>>, uid: cedar::EntityUid| {
            map.entry(uid).or_default().push(n);
        };
        match policy.principal_constraint() {
            P::Eq(uid) | P::In(uid) | P::IsIn(_, uid) => return push(&mut self.by_principal, uid),
            P::Any | P::Is(_) => {}
        }
        match policy.resource_constraint() {
            R::Eq(uid) | R::In(uid) | R::IsIn(_, uid) => return push(&mut self.by_resource, uid),
            R::Any | R::Is(_) => {}
        }
        match policy.action_constraint() {
            A::Eq(uid) => return push(&mut self.by_action, uid),
            A::In(uids) if !uids.is_empty() => {
                for uid in uids {
                    push(&mut self.by_action, uid);
                }
                return;
            }
            A::In(_) | A::Any => {}
        }
        if let P::Is(ty) = policy.principal_constraint() {
            return self.by_principal_type.entry(ty).or_default().push(n);
        }
        if let R::Is(ty) = policy.resource_constraint() {
            return self.by_resource_type.entry(ty).or_default().push(n);
        }
        self.unscoped.push(n);
    }

    /// Ids of every policy that may apply to `scope`, each once, in index order.
    pub(crate) fn candidates(&self, scope: &Scope<'_>) -> Vec<&cedar::PolicyId> {
        let mut hits: Vec<u32> = self.unscoped.clone();
        let mut add =
            |bucket: Option<&Vec<u32>>| hits.extend(bucket.into_iter().flatten().copied());
        for uid in std::iter::once(scope.principal).chain(scope.principal_ancestors.iter().copied())
        {
            add(self.by_principal.get(uid));
        }
        for uid in std::iter::once(scope.resource).chain(scope.resource_ancestors.iter().copied()) {
            add(self.by_resource.get(uid));
        }
        for uid in std::iter::once(scope.action).chain(scope.action_ancestors.iter().copied()) {
            add(self.by_action.get(uid));
        }
        add(self
            .by_principal_type
            .get(&scope.principal.type_name().clone()));
        add(self
            .by_resource_type
            .get(&scope.resource.type_name().clone()));
        hits.sort_unstable();
        hits.dedup();
        hits.iter()
            .filter_map(|&n| self.ids.get(n as usize))
            .collect()
    }

    /// How many policies are indexed.
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }
}
