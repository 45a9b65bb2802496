//! Workload ids written in policy files, `links.json` and `entities.json` must be SPIFFE IDs in
//! canonical form. A request's principal is its caller's ID as parsed (rule ID-1: the scheme and
//! trust domain are case-insensitive, and parsing lowercases them), so an entity written
//! `Mesh::Workload::"spiffe://Example.org/x"` would never be that principal: a `forbid` naming it
//! would silently not apply, and its `entities.json` memberships would be lost.

use std::str::FromStr;

use warden_identity::SpiffeId;

use crate::model::WORKLOAD_TYPE;

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

/// What is wrong with the workload entities a policy (or template) names, in Cedar's JSON form
/// of it (`Policy::to_json`): its scope's entities and the entity literals of its conditions.
pub(super) fn problems_in(policy: &serde_json::Value) -> Vec<String> {
    let mut problems = Vec::new();
    walk(policy, &mut problems);
    problems
}

fn walk(value: &serde_json::Value, problems: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            if map.get("type").and_then(|t| t.as_str()) == Some(WORKLOAD_TYPE)
                && let Some(id) = map.get("id").and_then(|i| i.as_str())
                && let Err(e) = canonical(id)
            {
                problems.push(e);
            }
            for v in map.values() {
                walk(v, problems);
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                walk(v, problems);
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
        let found = problems_in(&policy.to_json().unwrap());
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
