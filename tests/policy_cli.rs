//! End-to-end: `warden policy validate|fmt|test|eval|diff` driven as a security engineer would,
//! against the shipped example and temporary copies of it.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test helpers fail fast, like the tests they serve"
)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

fn warden() -> Command {
    Command::cargo_bin("warden").unwrap()
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = warden().args(args).output().unwrap();
    let code = out.status.code().unwrap_or(-1);
    (
        code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `warden policy eval DIR` for an anonymous `GET` on `api`, then `extra`.
fn eval_anonymous_get(dir: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "policy",
        "eval",
        s(dir),
        "--principal",
        "anonymous",
        "--action",
        "GET",
        "--resource",
        "api",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// A copy of the shipped example in a temporary directory.
fn copy_of_shipped() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(shipped()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn validate_accepts_the_shipped_example() {
    let (code, out, err) = run(&["policy", "validate", s(&shipped())]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("ok: ") && out.contains("version sha256:"),
        "{out}"
    );
}

#[test]
fn validate_reports_a_type_error_with_file_line_and_column_and_exits_1() {
    let dir = copy_of_shipped();
    std::fs::write(
        dir.path().join("broken.cedar"),
        "// a typo\n@id(\"typo\")\npermit(principal, action == Mesh::Action::\"GET\", resource)\nwhen { context.paht == \"/\" };\n",
    )
    .unwrap();
    let (code, _out, err) = run(&["policy", "validate", s(dir.path())]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("broken.cedar:4:"), "{err}");
    assert!(
        err.contains("paht") && err.contains("policy `typo`"),
        "{err}"
    );
}

/// 200 nested parentheses overflowed the stack and aborted `warden` (and would have aborted
/// a sidecar reloading the file); they are a located error now, as are deep chains.
#[test]
fn validate_and_fmt_report_policies_nested_too_deep() {
    let dir = copy_of_shipped();
    let parens = format!("{}true{}", "(".repeat(200), ")".repeat(200));
    std::fs::write(
        dir.path().join("deep.cedar"),
        format!("@id(\"deep\")\npermit(principal, action, resource) when {{ {parens} }};\n"),
    )
    .unwrap();
    for args in [&["validate"][..], &["fmt", "--check"][..]] {
        let dir_arg = s(dir.path());
        let (code, _out, err) = run(&[&["policy"][..], args, &[dir_arg]].concat());
        assert!(code == 1 || code == 3, "{args:?}: {code} {err}");
        assert!(err.contains("deep.cedar:2:"), "{args:?}: {err}");
        assert!(err.contains("nest more than 64 deep"), "{args:?}: {err}");
    }
    let chain = vec!["context has path"; 400].join(" || ");
    std::fs::write(
        dir.path().join("deep.cedar"),
        format!("@id(\"deep\")\npermit(principal, action, resource) when {{ {chain} }};\n"),
    )
    .unwrap();
    let (code, _out, err) = run(&["policy", "validate", s(dir.path())]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("levels deep; the limit is 256"), "{err}");
}

#[test]
fn validate_rejects_an_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _out, err) = run(&["policy", "validate", s(dir.path())]);
    assert_eq!(code, 3);
    assert!(err.contains("no `.cedar` policy files"), "{err}");
}

#[test]
fn test_runs_the_shipped_cases() {
    let (code, out, err) = run(&["policy", "test", s(&shipped())]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.trim_end().ends_with(" passed, 0 failed"), "{out}");
}

#[test]
fn test_prints_each_failing_case_and_exits_2() {
    let dir = copy_of_shipped();
    std::fs::write(
        dir.path().join("extra.test.toml"),
        "[[case]]\nname = \"monitoring may delete (wrong)\"\nprincipal = \"spiffe://example.org/ns/monitoring/sa/prometheus\"\naction = \"DELETE\"\nresource = \"api\"\nexpect = \"allow\"\npolicies = [\"monitoring-reads-metrics\"]\n",
    )
    .unwrap();
    let (code, out, _err) = run(&["policy", "test", s(dir.path())]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("FAIL monitoring may delete (wrong)"), "{out}");
    assert!(
        out.contains("expected: allow by [monitoring-reads-metrics]")
            && out.contains("got:      deny by []"),
        "{out}"
    );
    assert!(out.contains(" passed, 1 failed"), "{out}");
}

#[test]
fn test_fails_a_case_whose_request_is_malformed_unless_it_expects_the_error() {
    let dir = copy_of_shipped();
    std::fs::write(
        dir.path().join("extra.test.toml"),
        "[[case]]\nname = \"typo in the scheme\"\nprincipal = \"spifee://example.org/ns/prod/sa/frontend\"\naction = \"GET\"\nresource = \"api\"\nexpect = \"deny\"\n\n\
         [[case]]\nname = \"typo in the method, on purpose\"\nprincipal = \"spiffe://example.org/ns/prod/sa/frontend\"\naction = \"PSOT\"\nresource = \"api\"\nexpect = \"deny\"\nexpect_error = \"no action in the schema\"\n",
    )
    .unwrap();
    let (code, out, _err) = run(&["policy", "test", s(dir.path())]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("FAIL typo in the scheme"), "{out}");
    assert!(
        out.contains("got:      deny by [], request error")
            && out.contains("error:    caller `spifee://example.org/ns/prod/sa/frontend`"),
        "{out}"
    );
    assert!(!out.contains("FAIL typo in the method"), "{out}");
    assert!(out.contains(" passed, 1 failed"), "{out}");
}

#[test]
fn test_reports_a_malformed_test_file_with_its_line() {
    let dir = copy_of_shipped();
    std::fs::write(
        dir.path().join("bad.test.toml"),
        "[[case]]\nname = \"x\"\nexpect = \"maybe\"\n",
    )
    .unwrap();
    let (code, _out, err) = run(&["policy", "test", s(dir.path())]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("bad.test.toml:"), "{err}");
}

#[test]
fn test_reports_a_bad_time_at_its_value_and_a_file_without_cases() {
    let dir = copy_of_shipped();
    // The case's name appears earlier in the file (in a comment): the error points at the time.
    std::fs::write(
        dir.path().join("bad.test.toml"),
        "# night-call is below\n[[case]]\nname = \"night-call\"\nprincipal = \"spiffe://example.org/ns/prod/sa/web\"\n\
         action = \"GET\"\nresource = \"api\"\ntime = \"2026-02-30T01:00:00Z\"\nexpect = \"deny\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("empty.test.toml"), "# nothing yet\n").unwrap();
    let (code, _out, err) = run(&["policy", "test", s(dir.path())]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("bad.test.toml:7:") && err.contains("case `night-call`"),
        "{err}"
    );
    assert!(
        err.contains("empty.test.toml:1:") && err.contains("no `[[case]]`"),
        "{err}"
    );
}

#[test]
fn eval_explains_an_allow_with_policy_locations() {
    let (code, out, err) = run(&[
        "policy",
        "eval",
        s(&shipped()),
        "--principal",
        "spiffe://example.org/ns/prod/sa/frontend",
        "--action",
        "POST",
        "--resource",
        "api",
        "--path",
        "/v1/orders",
        "--header",
        "Content-Type=application/json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("decision: allow"), "{out}");
    assert!(
        out.contains("policy:   frontend-places-orders (") && out.contains("frontend.cedar:"),
        "{out}"
    );
}

#[test]
fn eval_exits_2_on_deny_and_names_the_forbid() {
    let (code, out, _err) = run(&[
        "policy",
        "eval",
        s(&shipped()),
        "--principal",
        "spiffe://example.org/ns/prod/sa/legacy-batch",
        "--action",
        "grpc",
        "--resource",
        "api",
        "--path",
        "/grpc.health.v1.Health/Check",
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("decision: deny")
            && out.contains("quarantine-legacy-batch (")
            && out.contains("operations.cedar:"),
        "{out}"
    );
}

#[test]
fn eval_denies_a_bad_spiffe_id_with_the_reason() {
    let (code, out, _err) = run(&[
        "policy",
        "eval",
        s(&shipped()),
        "--principal",
        "spiffe://EXAMPLE.org/a b",
        "--action",
        "GET",
        "--resource",
        "api",
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("is not a spiffe id"), "{out}");
}

/// A reader that went away (`warden policy eval … | grep -q deny`) is no crash: the rest of
/// the output is dropped and the decision's exit code stands (allow 0, deny 2).
#[test]
fn eval_with_its_stdout_closed_keeps_the_decisions_exit_code() {
    for (principal, want) in [
        ("spiffe://example.org/ns/prod/sa/frontend", 0),
        ("spiffe://example.org/ns/prod/sa/legacy-batch", 2),
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(assert_cmd::cargo::cargo_bin!("warden"))
            .args([
                "policy",
                "eval",
                s(&shipped()),
                "--principal",
                principal,
                "--action",
                "POST",
                "--resource",
                "api",
                "--path",
                "/v1/orders",
                "--header",
                "Content-Type=application/json",
            ])
            .stdout(writer)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(want), "{principal}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// A `--time` that is no time is a usage error (64), like a `--header` without `=`: the
/// request is refused before any policy is read.
#[test]
fn eval_rejects_a_time_that_is_not_one() {
    let (code, _out, err) = eval_anonymous_get(&shipped(), &["--time", "yesterday"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("time `yesterday` is not"), "{err}");
}

#[test]
fn eval_on_an_invalid_set_exits_3() {
    let dir = copy_of_shipped();
    std::fs::write(
        dir.path().join("x.cedar"),
        "permit(principal, action, resource);",
    )
    .unwrap();
    let (code, _out, err) = eval_anonymous_get(dir.path(), &[]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("x.cedar:1:1") && err.contains("no `@id"),
        "{err}"
    );
}

#[test]
fn eval_rejects_a_header_without_equals() {
    let (code, _out, err) = eval_anonymous_get(&shipped(), &["--header", "novalue"]);
    assert_ne!(code, 0);
    assert!(err.contains("header `novalue` is not `name=value`"));
}

#[test]
fn fmt_check_lists_unformatted_files_and_fmt_fixes_them() {
    let dir = copy_of_shipped();
    std::fs::write(
        dir.path().join("ugly.cedar"),
        "@id(\"u\")   permit(principal,action,resource)  ;",
    )
    .unwrap();
    let (code, out, _) = run(&["policy", "fmt", "--check", s(dir.path())]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("not formatted:") && out.contains("ugly.cedar"),
        "{out}"
    );
    let (code, out, err) = run(&["policy", "fmt", s(dir.path())]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = run(&["policy", "fmt", "--check", s(dir.path())]);
    assert_eq!(code, 0, "{out}");
    let (code, _, err) = run(&["policy", "validate", s(dir.path())]);
    assert_eq!(code, 0, "formatting keeps the set valid: {err}");
}

/// A file `fmt` cannot rewrite is left as it was, and the command fails naming it. Before,
/// `fmt` truncated the file and then wrote it: a failure in between left it empty, which is
/// still a valid policy file, with the policies in it gone.
#[test]
fn fmt_that_cannot_write_a_file_leaves_it_whole() {
    let dir = copy_of_shipped();
    let ugly = "@id(\"u\")   permit(principal,action,resource)  ;";
    std::fs::write(dir.path().join("ugly.cedar"), ugly).unwrap();
    // A directory where the rewrite's temporary file goes.
    std::fs::create_dir(dir.path().join(".ugly.cedar.fmt.tmp")).unwrap();
    let (code, out, err) = run(&["policy", "fmt", s(dir.path())]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("cannot write") && err.contains("ugly.cedar"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ugly.cedar")).unwrap(),
        ugly
    );
}

#[test]
fn fmt_reports_a_syntax_error_with_its_location() {
    let dir = copy_of_shipped();
    std::fs::write(
        dir.path().join("bad.cedar"),
        "@id(\"b\")\npermit(principal action, resource);",
    )
    .unwrap();
    // Exit 3, an invalid policy set, as for `validate`: not 1, which `--check` gives for files
    // that are only unformatted.
    let (code, _, err) = run(&["policy", "fmt", "--check", s(dir.path())]);
    assert_eq!(code, 3);
    assert!(err.contains("bad.cedar:2:"), "{err}");
    let (code, _, err) = run(&["policy", "fmt", s(&dir.path().join("missing"))]);
    assert_eq!(code, 3, "{err}");
}

const LOG: &str = r#"{"time":"2026-01-05T14:00:00.000Z","decision_id":"1","peer_spiffe_id":"spiffe://example.org/ns/prod/sa/frontend","source_addr":"10.0.0.7:5000","resource":"api","method":"GET","path":"/v1/orders","headers":[],"action":"GET","tls_version":"TLSv1.3","decision":"allow","policy_ids":["frontend-reads-api"],"policy_version":"sha256:x","eval_time_us":3,"upstream_status":200,"latency_us":500}
{"time":"2026-01-05T14:00:01.000Z","decision_id":"2","peer_spiffe_id":"spiffe://example.org/ns/prod/sa/legacy-batch","source_addr":"10.0.0.8:5000","resource":"api","method":"POST","path":"/grpc.health.v1.Health/Check","action":"grpc","tls_version":"TLSv1.3","decision":"deny","policy_ids":["quarantine-legacy-batch"],"policy_version":"sha256:x","eval_time_us":3,"latency_us":20}
"#;

/// `warden policy diff` of the shipped set against a copy without the legacy batch job's
/// quarantine, over the decision log `log`.
fn diff_without_quarantine(log: &str) -> (i32, String, String) {
    let new = copy_of_shipped();
    let ops = std::fs::read_to_string(new.path().join("operations.cedar")).unwrap();
    let cut = ops.find("// The legacy batch job").unwrap();
    std::fs::write(new.path().join("operations.cedar"), &ops[..cut]).unwrap();
    let path = new.path().join("decisions.jsonl");
    std::fs::write(&path, log).unwrap();
    run(&[
        "policy",
        "diff",
        s(&shipped()),
        s(new.path()),
        "--requests",
        s(&path),
    ])
}

#[test]
fn diff_lists_requests_whose_decision_changes_with_the_policies_responsible() {
    let (code, out, err) = diff_without_quarantine(LOG);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("decisions.jsonl:2: spiffe://example.org/ns/prod/sa/legacy-batch grpc api"),
        "{out}"
    );
    assert!(out.contains("deny -> allow"), "{out}");
    assert!(
        out.contains("old: [quarantine-legacy-batch]")
            && out.contains("new: [prod-checks-api-health]"),
        "{out}"
    );
    assert!(
        out.contains("2 requests replayed, 1 decisions change"),
        "{out}"
    );
}

#[test]
fn diff_marks_changes_replayed_with_redacted_values() {
    let redacted = LOG.replace(
        r#""path":"/grpc.health.v1.Health/Check","#,
        r#""path":"/grpc.health.v1.Health/Check","headers":[["authorization","<redacted>"]],"#,
    );
    assert_ne!(redacted, LOG);
    let (code, out, err) = diff_without_quarantine(&redacted);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("deny -> allow"), "{out}");
    assert!(out.contains("note: replayed with <redacted>"), "{out}");
    assert!(
        out.contains("1 replayed requests had header or query values logged as <redacted>"),
        "{out}"
    );
}

#[test]
fn diff_reports_a_malformed_log_line_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("d.jsonl");
    std::fs::write(
        &log,
        format!("{}\n{{\"time\": 3}}\n", LOG.lines().next().unwrap()),
    )
    .unwrap();
    let (code, _out, err) = run(&[
        "policy",
        "diff",
        s(&shipped()),
        s(&shipped()),
        "--requests",
        s(&log),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("d.jsonl:2:") && err.contains("not a decision record"),
        "{err}"
    );
}
