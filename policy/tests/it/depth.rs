//! Policy files that nest deeper than the loader allows: refused with a located error on any
//! thread (the watcher's is small), never a stack overflow that aborts the process.

use std::path::Path;

use warden_policy::{Engine, LoadError, PolicySet, format_dir};

use crate::support::{dir_with, http};

/// Runs `f` on a thread with 2 MiB of stack, the size of the policy watcher's and of a tokio
/// worker's.
fn on_small_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn_scoped(s, f)
            .unwrap()
            .join()
            .unwrap()
    })
}

fn policy(body: &str) -> String {
    format!("@id(\"deep\")\npermit(principal, action, resource) when {{ {body} }};\n")
}

fn chain(terms: usize) -> String {
    policy(&vec!["context has path"; terms].join(" && "))
}

fn load_err(dir: &Path) -> LoadError {
    on_small_stack(|| PolicySet::load(dir).unwrap_err())
}

#[test]
fn deeply_nested_brackets_are_refused_at_their_place() {
    let text = policy(&format!("{}true{}", "(".repeat(500), ")".repeat(500)));
    let dir = dir_with(&[("a.cedar", &text)]);
    let err = load_err(dir.path());
    let p = &err.problems()[0];
    assert!(p.message().contains("nest more than 64 deep"), "{err}");
    let loc = p.location().unwrap();
    assert!(loc.file().ends_with("a.cedar"));
    assert_eq!(loc.line(), 2);
    // `warden policy fmt` reads the file through the same check.
    let err = on_small_stack(|| format_dir(dir.path()).unwrap_err());
    assert!(err.to_string().contains("nest more than 64 deep"), "{err}");
}

#[test]
fn a_condition_deeper_than_the_limit_is_refused_and_one_within_it_decides() {
    let dir = dir_with(&[("a.cedar", &chain(300))]);
    let err = load_err(dir.path());
    let p = &err.problems()[0];
    assert!(
        p.message().contains("levels deep; the limit is 256"),
        "{err}"
    );
    assert_eq!(p.location().unwrap().line(), 1);

    // Within it: loaded, decided and dropped on a small stack. Cedar's evaluator checks the
    // stack it has left, so a condition too deep for this thread is an evaluation error (a
    // deny), not an overflow; a shallow one allows.
    let dir = dir_with(&[("a.cedar", &chain(250))]);
    let errors = on_small_stack(|| {
        let set = PolicySet::load(dir.path()).unwrap();
        let d = set.decide(&http("spiffe://example.org/a", "GET", "api", "/x"));
        assert!(d.is_allowed() || !d.errors().is_empty(), "{:?}", d.errors());
        d.errors().to_vec()
    });
    assert!(
        errors.iter().all(|e| e.contains("recursion limit reached")),
        "{errors:?}"
    );
    let dir = dir_with(&[("a.cedar", &chain(10))]);
    let set = on_small_stack(|| PolicySet::load(dir.path()).unwrap());
    assert!(
        set.decide(&http("spiffe://example.org/a", "GET", "api", "/x"))
            .is_allowed()
    );
}

/// Under the operator bound, Cedar parses the chain: what it builds is thousands of levels deep,
/// and refusing it drops it, recursively. The load's own large stack takes that, whatever the
/// caller's thread.
#[test]
fn a_long_chain_under_the_operator_bound_is_refused_without_overflowing() {
    let dir = dir_with(&[("a.cedar", &chain(5000))]);
    let err = load_err(dir.path());
    assert!(err.to_string().contains("5001 levels deep"), "{err}");
}

#[test]
fn a_statement_with_too_many_operators_is_refused_before_it_is_parsed() {
    let dir = dir_with(&[("a.cedar", &chain(20_000))]);
    let err = load_err(dir.path());
    assert!(
        err.to_string().contains("more than 16384 operators"),
        "{err}"
    );
}

#[test]
fn a_deeply_nested_schema_is_refused() {
    let schema = crate::support::schema().replacen(
        "namespace Mesh {",
        &format!(
            "namespace Mesh {{\n  type Deep = {}String{};",
            "{ a: ".repeat(100),
            " }".repeat(100)
        ),
        1,
    );
    let dir = dir_with(&[("a.cedar", &policy("true"))]);
    std::fs::write(dir.path().join("mesh.cedarschema"), schema).unwrap();
    let err = load_err(dir.path());
    assert_eq!(err.problems().len(), 1, "{err}");
    assert!(err.to_string().contains("nest more than 64 deep"), "{err}");
}

#[test]
fn a_reload_of_a_file_nested_too_deep_keeps_the_set_in_force() {
    let dir = dir_with(&[("a.cedar", &policy("true"))]);
    let engine = Engine::new(dir.path()).unwrap();
    let before = engine.current().version().to_owned();
    let text = policy(&format!("{}true{}", "[".repeat(5000), "]".repeat(5000)));
    std::fs::write(dir.path().join("a.cedar"), text).unwrap();
    let result = on_small_stack(|| engine.reload());
    assert!(result.is_err());
    assert_eq!(engine.current().version(), before);
}
