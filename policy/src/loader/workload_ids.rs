//! Workloads, namespaces and trust domains written in policy files, `links.json` and
//! `entities.json` must be named in canonical form. A request's principal is its caller's ID as
//! parsed (rule ID-1: the scheme and trust domain are case-insensitive, and parsing lowercases
//! them), and so are the namespaces and trust domain derived from it, so an entity written
//! `Mesh::Workload::"spiffe://Example.org/x"` or `Mesh::Namespace::"spiffe://Example.org/ns/x"`
//! would never be that principal or its parent: a `forbid` naming it would silently not apply,
//! and its `entities.json` memberships would be lost.

use std::str::FromStr;

use warden_identity::{SpiffeId, TrustDomain};

use crate::model::{NAMESPACE_TYPE, TRUST_DOMAIN_TYPE, WORKLOAD_TYPE};

/// `raw` as a SPIFFE ID, if it is one written as the engine will see it.
pub(super) fn canonical(raw: &str) -> Result<SpiffeId, String> {
    let id = SpiffeId::from_str(raw)
        .map_err(|e| format!("workload id `{raw}` is not a spiffe id: {e}"))?;
    if id.as_str() != raw {
        return Err(format!(
            "workload id `{raw}` is not in canonical form: write `{}` (the scheme and trust \
             domain are lowercase)",
            id.as_str()
        ));
    }
    Ok(id)
}

/// What is wrong with `id` as the id of an entity of type `type_name`: a workload and a
/// namespace are canonical SPIFFE IDs, a trust domain a canonical name; other types are free.
pub(super) fn check(type_name: &str, id: &str) -> Result<(), String> {
    match type_name {
        WORKLOAD_TYPE => canonical(id).map(drop),
        NAMESPACE_TYPE => {
            let parsed = SpiffeId::from_str(id)
                .map_err(|e| format!("namespace `{id}` is not a spiffe id: {e}"))?;
            if parsed.as_str() != id {
                return Err(format!(
                    "namespace `{id}` is not in canonical form: write `{}` (the scheme and \
                     trust domain are lowercase)",
                    parsed.as_str()
                ));
            }
            Ok(())
        }
        TRUST_DOMAIN_TYPE => {
            let parsed = TrustDomain::new(id)
                .map_err(|e| format!("trust domain `{id}` is not a trust domain name: {e}"))?;
            if parsed.name() != id {
                return Err(format!(
                    "trust domain `{id}` is not in canonical form: write `{}` (a lowercase \
                     name without `spiffe://`)",
                    parsed.name()
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// What is wrong with the workloads, namespaces and trust domains a JSON document names: a
/// policy or template in Cedar's JSON form (`Policy::to_json`: its scope's entities and the
/// entity literals of its conditions), or an entities file. `skip_workloads`: workloads are
/// checked elsewhere.
pub(super) fn problems_in(value: &serde_json::Value, skip_workloads: bool) -> Vec<String> {
    let mut problems = Vec::new();
    walk(value, skip_workloads, &mut problems);
    problems
}

fn walk(value: &serde_json::Value, skip_workloads: bool, problems: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(type_name) = map.get("type").and_then(|t| t.as_str())
                && let Some(id) = map.get("id").and_then(|i| i.as_str())
                && !(skip_workloads && type_name == WORKLOAD_TYPE)
                && let Err(e) = check(type_name, id)
            {
                problems.push(e);
            }
            for v in map.values() {
                walk(v, skip_workloads, problems);
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                walk(v, skip_workloads, problems);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_ids_pass_and_others_name_the_canonical_form() {
        assert!(canonical("spiffe://example.org/ns/a").is_ok());
        let e = canonical("SPIFFE://Example.org/ns/a").unwrap_err();
        assert!(
            e.contains("`SPIFFE://Example.org/ns/a`") && e.contains("`spiffe://example.org/ns/a`"),
            "{e}"
        );
        let e = canonical("spifee://example.org/a").unwrap_err();
        assert!(e.contains("is not a spiffe id"), "{e}");
    }

    #[test]
    fn scope_and_condition_literals_are_both_found() {
        let policy: cedar_policy::Policy = r#"permit(principal == Mesh::Workload::"spiffe://A.org/x", action, resource) when { principal in [Mesh::Workload::"spiffe://B.org/y", Mesh::Workload::"spiffe://c.org/z"] };"#
            .parse()
            .unwrap();
        let found = problems_in(&policy.to_json().unwrap(), false);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found.iter().any(|p| p.contains("spiffe://a.org/x")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|p| p.contains("spiffe://b.org/y")),
            "{found:?}"
        );
    }
}
