//! Workload entities are named by canonical SPIFFE IDs everywhere, so that what a policy,
//! `links.json` or `entities.json` says of a workload is what applies to it; and requests name
//! `Mesh::Action`s, whatever other namespaces a schema declares.

use warden_policy::PolicySet;

use crate::support::{dir_with, http, schema};

const ALLOW_ALL: &str = "@id(\"all\")\npermit(principal, action, resource);\n";

fn load_problems(files: &[(&str, &str)]) -> String {
    let dir = dir_with(files);
    PolicySet::load(dir.path()).unwrap_err().to_string()
}

#[test]
fn a_workload_in_entities_json_not_in_canonical_form_is_refused_id1() {
    let entities = r#"[{"uid": {"type": "Mesh::Workload", "id": "SPIFFE://Example.org/ns/x/sa/y"},
        "attrs": {}, "parents": [{"type": "Mesh::Team", "id": "quarantined"}]},
        {"uid": {"type": "Mesh::Team", "id": "quarantined"}, "attrs": {}, "parents": []}]"#;
    let e = load_problems(&[("a.cedar", ALLOW_ALL), ("entities.json", entities)]);
    assert!(
        e.contains("entities.json") && e.contains("`spiffe://example.org/ns/x/sa/y`"),
        "{e}"
    );
}

#[test]
fn a_workload_written_with_entity_escape_gets_its_derived_parents() {
    let entities = r#"[{"uid": {"__entity": {"type": "Mesh::Workload", "id": "spiffe://example.org/ns/bad/sa/y"}},
        "attrs": {"trust_domain": "example.org", "path": "/ns/bad/sa/y"}, "parents": []}]"#;
    let forbid = "@id(\"no-bad\")\nforbid(principal in Mesh::Namespace::\"spiffe://example.org/ns/bad\", action, resource);\n";
    let dir = dir_with(&[
        ("a.cedar", ALLOW_ALL),
        ("b.cedar", forbid),
        ("entities.json", entities),
    ]);
    let set = PolicySet::load(dir.path()).unwrap();
    for caller in [
        "spiffe://example.org/ns/bad/sa/y",
        "spiffe://example.org/ns/bad/sa/z",
    ] {
        let decision = set.decide(&http(caller, "GET", "api", "/"));
        assert!(
            !decision.is_allowed(),
            "{caller}: {:?}",
            decision.policy_ids()
        );
        assert_eq!(decision.policy_ids(), ["no-bad"], "{caller}");
    }
}

#[test]
fn a_policy_naming_a_workload_not_in_canonical_form_is_refused_id1() {
    let forbid = "@id(\"no-y\")\nforbid(principal == Mesh::Workload::\"spiffe://Example.org/y\", action, resource);\n";
    let e = load_problems(&[("a.cedar", ALLOW_ALL), ("b.cedar", forbid)]);
    assert!(
        e.contains("b.cedar") && e.contains("`spiffe://example.org/y`"),
        "{e}"
    );
    let condition = "@id(\"no-z\")\nforbid(principal, action, resource) when { principal == Mesh::Workload::\"spiffe://example.org/z\" || principal == Mesh::Workload::\"SPIFFE://example.org/w\" };\n";
    let e = load_problems(&[("a.cedar", ALLOW_ALL), ("c.cedar", condition)]);
    assert!(
        e.contains("c.cedar") && e.contains("`spiffe://example.org/w`"),
        "{e}"
    );
}

#[test]
fn a_link_naming_a_workload_not_in_canonical_form_is_refused_id1() {
    let template = "@id(\"deny-one\")\nforbid(principal == ?principal, action, resource);\n";
    let links = r#"[{"id": "deny-y", "template": "deny-one",
        "values": {"?principal": "Mesh::Workload::\"spiffe://EXAMPLE.org/y\""}}]"#;
    let e = load_problems(&[
        ("a.cedar", ALLOW_ALL),
        ("t.cedar", template),
        ("links.json", links),
    ]);
    assert!(
        e.contains("links.json") && e.contains("`spiffe://example.org/y`"),
        "{e}"
    );
}

#[test]
fn an_action_of_another_namespace_with_the_same_id_does_not_stand_for_the_mesh_one() {
    let other = "\nnamespace Other {\n  entity X;\n  action \"GET\" appliesTo { principal: [X], resource: [X] };\n}\n";
    let forbid = "@id(\"no-get\")\nforbid(principal, action == Mesh::Action::\"GET\", resource);\n";
    // Hash order decided which `GET` a request got: load it a few times.
    for _ in 0..8 {
        let dir = dir_with(&[("a.cedar", ALLOW_ALL), ("b.cedar", forbid)]);
        std::fs::write(
            dir.path().join("mesh.cedarschema"),
            format!("{}{other}", schema()),
        )
        .unwrap();
        let set = PolicySet::load(dir.path()).unwrap();
        let decision = set.decide(&http("spiffe://example.org/a", "GET", "api", "/"));
        assert_eq!(decision.policy_ids(), ["no-get"], "{:?}", decision.errors());
        assert!(!decision.is_allowed());
        let decision = set.decide(&http("spiffe://example.org/a", "POST", "api", "/"));
        assert!(decision.is_allowed(), "{:?}", decision.errors());
    }
}

#[test]
fn namespaces_and_trust_domains_not_in_canonical_form_are_refused_id1() {
    let forbid = "@id(\"no-bad\")\nforbid(principal in Mesh::Namespace::\"spiffe://Example.org/ns/bad\", action, resource);\n";
    let e = load_problems(&[("a.cedar", ALLOW_ALL), ("b.cedar", forbid)]);
    assert!(
        e.contains("b.cedar") && e.contains("`spiffe://example.org/ns/bad`"),
        "{e}"
    );
    let forbid = "@id(\"no-td\")\nforbid(principal in Mesh::TrustDomain::\"Other.org\", action, resource);\n";
    let e = load_problems(&[("a.cedar", ALLOW_ALL), ("b.cedar", forbid)]);
    assert!(e.contains("write `other.org`"), "{e}");
    let entities = r#"[{"uid": {"type": "Mesh::Workload", "id": "spiffe://example.org/ns/x/sa/y"},
        "attrs": {}, "parents": [{"type": "Mesh::Namespace", "id": "spiffe://EXAMPLE.org/ns/q"}]}]"#;
    let e = load_problems(&[("a.cedar", ALLOW_ALL), ("entities.json", entities)]);
    assert!(
        e.contains("entities.json") && e.contains("`spiffe://example.org/ns/q`"),
        "{e}"
    );
    let template = "@id(\"deny-ns\")\nforbid(principal in ?principal, action, resource);\n";
    let links = r#"[{"id": "deny-q", "template": "deny-ns",
        "values": {"?principal": "Mesh::Namespace::\"spiffe://Example.org/ns/q\""}}]"#;
    let e = load_problems(&[
        ("a.cedar", ALLOW_ALL),
        ("t.cedar", template),
        ("links.json", links),
    ]);
    assert!(
        e.contains("links.json") && e.contains("`spiffe://example.org/ns/q`"),
        "{e}"
    );
}

#[test]
fn a_workload_not_in_canonical_form_is_reported_once() {
    let entities = r#"[{"uid": {"type": "Mesh::Workload", "id": "SPIFFE://example.org/w"},
        "attrs": {}, "parents": []}]"#;
    let dir = dir_with(&[("a.cedar", ALLOW_ALL), ("entities.json", entities)]);
    let err = PolicySet::load(dir.path()).unwrap_err();
    assert_eq!(err.problems().len(), 1, "{err}");
}
