//! Loading and validation: located errors for every kind of bad input.

use warden_policy::{LoadError, PolicySet};

use crate::support::{dir_with, shipped};

fn load_err(files: &[(&str, &str)]) -> (tempfile::TempDir, LoadError) {
    let dir = dir_with(files);
    let err = PolicySet::load(dir.path()).unwrap_err();
    (dir, err)
}

#[test]
fn shipped_example_loads_and_validates_in_strict_mode() {
    let set = PolicySet::load(&shipped()).unwrap();
    assert!(set.version().starts_with("sha256:"));
    assert!(set.policy("frontend-reads-api").is_some());
    assert!(set.policy("payments-team-reads-api").is_some());
}

#[test]
fn syntax_error_is_reported_with_file_line_and_column() {
    let (_d, err) = load_err(&[(
        "a.cedar",
        "@id(\"a\")\npermit(principal, action, resource);\n\n@id(\"b\")\npermit(principal, action resource);\n",
    )]);
    let p = &err.problems()[0];
    let loc = p.location().unwrap();
    assert!(loc.file().ends_with("a.cedar"));
    assert_eq!(loc.line(), 5);
    assert!(p.snippet().unwrap().contains("action resource"), "{p}");
}

#[test]
fn unknown_entity_type_is_located_in_its_file() {
    let (_d, err) = load_err(&[
        (
            "ok.cedar",
            "@id(\"ok\")\npermit(principal, action, resource);\n",
        ),
        (
            "bad.cedar",
            "\n\n@id(\"bad\")\npermit(principal == Mesh::Robot::\"r\", action, resource);\n",
        ),
    ]);
    let p = &err.problems()[0];
    assert!(p.location().unwrap().file().ends_with("bad.cedar"), "{p}");
    assert_eq!(p.location().unwrap().line(), 4);
    assert!(
        p.message().contains("bad") && p.message().contains("Mesh::Robot"),
        "{p}"
    );
}

#[test]
fn unknown_attribute_is_a_validation_error() {
    let (_d, err) = load_err(&[(
        "a.cedar",
        "@id(\"a\")\npermit(principal, action == Mesh::Action::\"GET\", resource)\nwhen { context.colour == \"red\" };\n",
    )]);
    let p = &err.problems()[0];
    assert_eq!(p.location().unwrap().line(), 3, "{p}");
    assert!(p.message().contains("colour"), "{p}");
}

#[test]
fn type_error_is_a_validation_error() {
    let (_d, err) = load_err(&[(
        "a.cedar",
        "@id(\"a\")\npermit(principal, action == Mesh::Action::\"GET\", resource)\nwhen { context.path > 3 };\n",
    )]);
    assert!(err.problems()[0].message().contains("policy `a`"), "{err}");
}

#[test]
fn optional_attribute_without_has_fails_strict_validation() {
    let (_d, err) = load_err(&[(
        "a.cedar",
        "@id(\"a\")\npermit(principal, action == Mesh::Action::\"GET\", resource)\nwhen { context.tls.version == \"TLSv1.3\" };\n",
    )]);
    assert!(err.to_string().contains("tls"), "{err}");
}

#[test]
fn missing_id_names_the_file_and_line() {
    let (_d, err) = load_err(&[(
        "a.cedar",
        "// header\n\npermit(principal, action, resource);\n",
    )]);
    let p = &err.problems()[0];
    assert!(p.message().contains("no `@id"), "{p}");
    assert_eq!(p.location().unwrap().line(), 3);
}

#[test]
fn duplicate_id_names_both_files() {
    let (_d, err) = load_err(&[
        (
            "a.cedar",
            "@id(\"same\")\npermit(principal, action, resource);\n",
        ),
        (
            "b.cedar",
            "@id(\"same\")\nforbid(principal, action, resource);\n",
        ),
    ]);
    let text = err.to_string();
    assert!(
        text.contains("a.cedar")
            && text.contains("b.cedar")
            && text.contains("duplicate policy id `same`"),
        "{text}"
    );
}

#[test]
fn directory_without_policies_is_an_error() {
    let (_d, err) = load_err(&[]);
    assert!(
        err.to_string().contains("no `.cedar` policy files"),
        "{err}"
    );
}

#[test]
fn missing_directory_is_an_error() {
    let err = PolicySet::load(std::path::Path::new("/nonexistent/policies")).unwrap_err();
    assert!(
        err.to_string().contains("cannot read policy directory"),
        "{err}"
    );
}

#[test]
fn directory_without_schema_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.cedar"),
        "@id(\"a\")\npermit(principal, action, resource);",
    )
    .unwrap();
    let err = PolicySet::load(dir.path()).unwrap_err();
    assert!(err.to_string().contains("no `.cedarschema`"), "{err}");
}

#[test]
fn schema_syntax_error_is_located() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mesh.cedarschema"),
        "namespace Mesh {\n  entity Workload = {\n    path: Strin g,\n  };\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("a.cedar"),
        "@id(\"a\")\npermit(principal, action, resource);",
    )
    .unwrap();
    let err = PolicySet::load(dir.path()).unwrap_err();
    let p = &err.problems()[0];
    assert!(
        p.location().unwrap().file().ends_with("mesh.cedarschema"),
        "{p}"
    );
    assert_eq!(p.location().unwrap().line(), 3, "{p}");
}

#[cfg(target_os = "linux")]
#[test]
fn unreadable_file_is_an_error() {
    // A regular file no one can read from the start, root included (permissions would not stop
    // root, which these tests may run as): `/proc/self/mem` answers EIO at offset 0.
    let dir = dir_with(&[(
        "a.cedar",
        "@id(\"a\")\npermit(principal, action, resource);",
    )]);
    let path = dir.path().join("b.cedar");
    std::os::unix::fs::symlink("/proc/self/mem", &path).unwrap();
    assert!(path.is_file() && std::fs::read(&path).is_err());
    let err = PolicySet::load(dir.path()).unwrap_err();
    assert!(
        err.to_string().contains("cannot read file") && err.to_string().contains("b.cedar"),
        "{err}"
    );
}

const PERMIT: &str = "@id(\"a\")\npermit(principal, action, resource);";

#[cfg(unix)]
#[test]
fn a_set_file_that_is_a_symlink_to_nothing_is_an_error() {
    let dir = dir_with(&[("a.cedar", PERMIT)]);
    let path = dir.path().join("forbids.cedar");
    std::os::unix::fs::symlink(dir.path().join("gone.txt"), &path).unwrap();
    let err = PolicySet::load(dir.path()).unwrap_err();
    assert_eq!(err.problems().len(), 1, "{err}");
    let text = err.to_string();
    assert!(text.contains("forbids.cedar"), "{text}");
    assert!(
        text.contains("symbolic link to") && text.contains("gone.txt"),
        "{text}"
    );
    // A link to a file is read through.
    std::fs::write(
        dir.path().join("gone.txt"),
        "@id(\"b\")\nforbid(principal, action, resource);",
    )
    .unwrap();
    let set = PolicySet::load(dir.path()).unwrap();
    assert!(set.policy("b").is_some());
}

#[test]
fn a_directory_named_like_a_policy_file_is_an_error() {
    let dir = dir_with(&[("a.cedar", PERMIT)]);
    std::fs::create_dir(dir.path().join("more.cedar")).unwrap();
    let err = PolicySet::load(dir.path()).unwrap_err();
    assert!(err.to_string().contains("is a directory"), "{err}");
}

#[test]
fn a_set_file_named_in_capitals_is_an_error_not_skipped() {
    for (name, right) in [
        ("Forbids.Cedar", "Forbids.cedar"),
        ("b.CEDAR", "b.cedar"),
        ("Entities.json", "entities.json"),
        ("LINKS.JSON", "links.json"),
        ("extra.CedarSchema", "extra.cedarschema"),
    ] {
        let dir = dir_with(&[("a.cedar", PERMIT)]);
        std::fs::write(
            dir.path().join(name),
            "forbid(principal, action, resource);",
        )
        .unwrap();
        let err = PolicySet::load(dir.path()).unwrap_err();
        assert_eq!(err.problems().len(), 1, "{name}: {err}");
        let text = err.to_string();
        assert!(text.contains(name), "{text}");
        assert!(text.contains(&format!("(`{right}`)")), "{name}: {text}");
    }
}

#[test]
fn non_utf8_file_is_an_error() {
    let dir = dir_with(&[]);
    std::fs::write(dir.path().join("a.cedar"), [0xff, 0xfe, 0x00]).unwrap();
    let err = PolicySet::load(dir.path()).unwrap_err();
    assert!(err.to_string().contains("not valid utf-8"), "{err}");
}

#[test]
fn entities_file_with_bad_workload_id_is_located() {
    let (_d, err) = load_err(&[
        (
            "a.cedar",
            "@id(\"a\")\npermit(principal, action, resource);",
        ),
        (
            "entities.json",
            "[\n {\"uid\": {\"type\": \"Mesh::Workload\", \"id\": \"http://x\"}, \"parents\": []}\n]",
        ),
    ]);
    let p = &err.problems()[0];
    assert!(p.message().contains("`http://x` is not a spiffe id"), "{p}");
    assert_eq!(p.location().unwrap().line(), 2);
}

#[test]
fn entities_file_with_unknown_type_is_an_error() {
    let (_d, err) = load_err(&[
        (
            "a.cedar",
            "@id(\"a\")\npermit(principal, action, resource);",
        ),
        (
            "entities.json",
            "[{\"uid\": {\"type\": \"Mesh::Robot\", \"id\": \"r\"}, \"attrs\": {}, \"parents\": []}]",
        ),
    ]);
    assert!(
        err.to_string().contains("entities.json") && err.to_string().contains("Mesh::Robot"),
        "{err}"
    );
}

#[test]
fn entities_file_with_bad_json_is_located() {
    let (_d, err) = load_err(&[
        (
            "a.cedar",
            "@id(\"a\")\npermit(principal, action, resource);",
        ),
        ("entities.json", "[\n  {,\n]"),
    ]);
    assert_eq!(err.problems()[0].location().unwrap().line(), 2, "{err}");
}

#[test]
fn link_to_missing_template_is_an_error() {
    let (_d, err) = load_err(&[
        (
            "a.cedar",
            "@id(\"a\")\npermit(principal, action, resource);",
        ),
        (
            "links.json",
            r#"[{"id": "l", "template": "a", "values": {"?principal": "Mesh::Team::\"x\""}}]"#,
        ),
    ]);
    assert!(
        err.to_string().contains("`a`, which is not a template"),
        "{err}"
    );
}

#[test]
fn link_id_clashing_with_a_policy_is_a_duplicate() {
    let (_d, err) = load_err(&[
        (
            "a.cedar",
            "@id(\"a\")\npermit(principal in ?principal, action, resource);",
        ),
        (
            "links.json",
            r#"[{"id": "a", "template": "a", "values": {"?principal": "Mesh::Team::\"x\""}}]"#,
        ),
    ]);
    assert!(err.to_string().contains("duplicate policy id `a`"), "{err}");
}

#[test]
fn version_changes_with_content_and_only_with_content() {
    let a = dir_with(&[(
        "a.cedar",
        "@id(\"a\")\npermit(principal, action, resource);",
    )]);
    let b = dir_with(&[(
        "a.cedar",
        "@id(\"a\")\npermit(principal, action, resource);",
    )]);
    let c = dir_with(&[(
        "a.cedar",
        "@id(\"a\")\nforbid(principal, action, resource);",
    )]);
    let (va, vb, vc) = (
        PolicySet::load(a.path()).unwrap().version().to_owned(),
        PolicySet::load(b.path()).unwrap().version().to_owned(),
        PolicySet::load(c.path()).unwrap().version().to_owned(),
    );
    assert_eq!(va, vb);
    assert_ne!(va, vc);
}

#[test]
fn every_problem_in_a_directory_is_reported() {
    let (_d, err) = load_err(&[
        ("a.cedar", "permit(principal, action, resource);"),
        ("b.cedar", "@id(\"b\") permit(principal, action, resource"),
    ]);
    assert!(err.problems().len() >= 2, "{err}");
}

#[test]
fn entities_file_with_a_parent_cycle_says_so() {
    let (_d, err) = load_err(&[
        (
            "a.cedar",
            "@id(\"a\")\npermit(principal, action, resource);",
        ),
        (
            "entities.json",
            r#"[{"uid": {"type": "Mesh::Team", "id": "t"}, "attrs": {}, "parents": [{"type": "Mesh::Team", "id": "t"}]}]"#,
        ),
    ]);
    assert!(err.to_string().contains("Mesh::Team::\"t\""), "{err}");
}

#[test]
fn shipped_example_is_canonically_formatted() {
    let files = warden_policy::format_dir(&shipped()).unwrap();
    for f in &files {
        assert!(
            !f.changed(),
            "{} is not formatted; canonical form:\n{}",
            f.path().display(),
            f.formatted()
        );
    }
}

#[test]
fn linked_policy_is_located_at_its_template() {
    let set = PolicySet::load(&shipped()).unwrap();
    let loc = set
        .policy("payments-team-reads-api")
        .unwrap()
        .location()
        .unwrap()
        .to_string();
    assert!(loc.ends_with("templates.cedar:3:1"), "{loc}");
    let loc = set
        .policy("forbid-old-tls")
        .unwrap()
        .location()
        .unwrap()
        .to_string();
    assert!(loc.ends_with("baseline.cedar:8:1"), "{loc}");
}
