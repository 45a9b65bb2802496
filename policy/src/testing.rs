//! Policy tests: `*.test.toml` files next to the policies, each a list of named cases (a request
//! and the expected decision, optionally the expected determining policy ids). A case whose
//! request cannot be built (a caller that is not a SPIFFE ID, a method with no action) fails,
//! whatever it expects, unless it says `expect_error`. See `policies/README.md` for the format.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use crate::decision::{Decision, Outcome};
use crate::error::{LoadError, Problem};
use crate::policy_set::PolicySet;
use crate::record::RequestSpec;
use crate::source::SourceFile;

/// Suffix of policy test files.
pub const TEST_FILE_SUFFIX: &str = ".test.toml";

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(rename = "case", default)]
    cases: Vec<TestCase>,
}

/// One test case as written.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    /// Where the case's name is in the file, for errors about the case.
    name: toml::Spanned<String>,
    principal: String,
    action: String,
    resource: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    query: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    source: Option<IpAddr>,
    #[serde(default)]
    tls_version: Option<String>,
    #[serde(default)]
    time: Option<toml::Spanned<String>>,
    expect: Outcome,
    #[serde(default)]
    policies: Option<Vec<String>>,
    /// The request is meant to be malformed: a part of the error it must be denied with.
    #[serde(default)]
    expect_error: Option<String>,
}

/// The result of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    file: PathBuf,
    name: String,
    expected: Outcome,
    expected_policies: Option<Vec<String>>,
    expected_error: Option<String>,
    decision: Decision,
}

/// Every case of every test file of a directory.
#[derive(Debug, Clone, Default)]
pub struct TestReport {
    results: Vec<CaseResult>,
}

// === impl CaseResult ===

impl CaseResult {
    /// The test file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The case's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The expected outcome.
    pub fn expected(&self) -> Outcome {
        self.expected
    }

    /// The expected determining policies, if the case lists them.
    pub fn expected_policies(&self) -> Option<&[String]> {
        self.expected_policies.as_deref()
    }

    /// The part of a request error the case expects (`expect_error`), if it expects one.
    pub fn expected_error(&self) -> Option<&str> {
        self.expected_error.as_deref()
    }

    /// What the policy set decided.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// Whether the decision matches the expectation. An error fails the case unless the case
    /// expects it (`expect_error`, a part of its text): a request that could not be built (see
    /// [`Decision::request_error`]), and a policy whose condition errored, which denies when it
    /// is a `forbid` but shows the policy is broken: a deny that comes only from an erroring
    /// `forbid` must not pass for the `forbid` working. A case that expects an error fails
    /// when there was none.
    pub fn passed(&self) -> bool {
        let errors = self.decision.errors();
        let error_as_expected = match (&self.expected_error, self.decision.request_error()) {
            (None, _) => errors.is_empty(),
            (Some(want), Some(got)) => got.contains(want.as_str()),
            (Some(want), None) => errors.iter().any(|e| e.contains(want.as_str())),
        };
        error_as_expected
            && self.decision.outcome() == self.expected
            && self.expected_policies.as_ref().is_none_or(|p| {
                let mut want = p.clone();
                want.sort();
                want == self.decision.policy_ids()
            })
    }
}

// === impl TestReport ===

impl TestReport {
    /// Every case's result, in file and case order.
    pub fn results(&self) -> &[CaseResult] {
        &self.results
    }

    /// How many cases passed.
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.passed()).count()
    }

    /// How many cases failed.
    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }
}

/// Runs every `*.test.toml` file of `dir` against `set`. A test file that does not parse, or a
/// case whose request is malformed (bad time), is a located error.
pub fn run_tests(set: &PolicySet, dir: &Path) -> Result<TestReport, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        LoadError::new(vec![Problem::in_file(
            dir,
            format!("cannot read policy directory: {e}"),
        )])
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(TEST_FILE_SUFFIX))
        })
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(LoadError::new(vec![Problem::in_file(
            dir,
            format!("directory has no `*{TEST_FILE_SUFFIX}` policy test files"),
        )]));
    }
    let mut problems = Vec::new();
    let mut report = TestReport::default();
    for path in paths {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(Problem::in_file(
                    &path,
                    format!("cannot read test file: {e}"),
                ));
                continue;
            }
        };
        let file = SourceFile::new(path.clone(), text);
        let parsed: TestFile = match toml::from_str(file.text()) {
            Ok(p) => p,
            Err(e) => {
                let offset = e.span().map_or(0, |s| s.start);
                problems.push(Problem::at(
                    &file,
                    offset,
                    format!("invalid test file: {}", e.message()),
                    None,
                ));
                continue;
            }
        };
        if parsed.cases.is_empty() {
            // A file that tests nothing would pass, and look like coverage.
            problems.push(Problem::at(
                &file,
                0,
                "test file has no `[[case]]`".to_owned(),
                None,
            ));
            continue;
        }
        for case in parsed.cases {
            let spec = case.spec();
            let time = match spec.parsed_time() {
                Ok(t) => t,
                Err(e) => {
                    // At the bad value (or the case's name, when the time is not the problem).
                    let offset = case
                        .time
                        .as_ref()
                        .map_or(case.name.span().start, |t| t.span().start);
                    problems.push(Problem::at(
                        &file,
                        offset,
                        format!("case `{}`: {e}", case.name.get_ref()),
                        None,
                    ));
                    continue;
                }
            };
            let headers = spec.header_refs();
            let decision = set.decide(&spec.request(&headers, time));
            report.results.push(CaseResult {
                file: path.clone(),
                name: case.name.into_inner(),
                expected: case.expect,
                expected_policies: case.policies,
                expected_error: case.expect_error,
                decision,
            });
        }
    }
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(LoadError::new(problems))
    }
}

// === impl TestCase ===

impl TestCase {
    fn spec(&self) -> RequestSpec {
        let mut spec = RequestSpec {
            principal: self.principal.clone(),
            action: self.action.clone(),
            resource: self.resource.clone(),
            path: self.path.clone(),
            query: self.query.clone(),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            source: self.source.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            tls_version: self.tls_version.clone(),
            time: self.time.as_ref().map(|t| t.get_ref().clone()),
        };
        spec.canonicalize();
        spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICIES: &str = "@id(\"home-domain\")\npermit(principal, action == Mesh::Action::\"PATCH\", resource) when { context has tls && context.tls.peer_trust_domain == \"example.org\" };\n\
        @id(\"reads\")\npermit(principal, action in Mesh::Action::\"read\", resource);\n\
        @id(\"no-delete\")\nforbid(principal, action == Mesh::Action::\"DELETE\", resource) when { 9223372036854775807 + 1 > 0 };\n";

    /// Runs one test file against [`POLICIES`] and returns each case's name and whether it passed.
    fn run(cases: &str) -> Vec<(String, bool)> {
        let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/mesh.cedarschema");
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(schema, dir.path().join("mesh.cedarschema")).unwrap();
        std::fs::write(dir.path().join("a.cedar"), POLICIES).unwrap();
        std::fs::write(dir.path().join("a.test.toml"), cases).unwrap();
        let set = PolicySet::load(dir.path()).unwrap();
        let report = run_tests(&set, dir.path()).unwrap();
        report
            .results()
            .iter()
            .map(|r| (r.name().to_owned(), r.passed()))
            .collect()
    }

    fn case(name: &str, principal: &str, action: &str, rest: &str) -> String {
        format!(
            "[[case]]\nname = \"{name}\"\nprincipal = \"{principal}\"\naction = \"{action}\"\nresource = \"api\"\n{rest}\n"
        )
    }

    const WORKLOAD: &str = "spiffe://example.org/ns/prod/sa/web";

    #[test]
    fn a_request_that_cannot_be_built_fails_a_case_expecting_deny() {
        let cases = [
            case(
                "typo in the scheme",
                "spifee://example.org/ns/prod/sa/web",
                "GET",
                "expect = \"deny\"",
            ),
            case("typo in the method", WORKLOAD, "PSOT", "expect = \"deny\""),
            case(
                "typo, with policies",
                WORKLOAD,
                "PSOT",
                "expect = \"deny\"\npolicies = []",
            ),
            case(
                "a real deny",
                WORKLOAD,
                "POST",
                "expect = \"deny\"\npolicies = []",
            ),
        ]
        .concat();
        let results = run(&cases);
        assert_eq!(
            results,
            [
                ("typo in the scheme".to_owned(), false),
                ("typo in the method".to_owned(), false),
                ("typo, with policies".to_owned(), false),
                ("a real deny".to_owned(), true),
            ]
        );
    }

    /// The sidecar gives policies the trust domain of the caller's parsed (lowercase) ID.
    #[test]
    fn the_peer_trust_domain_is_the_canonical_one() {
        let cases = [
            case(
                "as written by the sidecar",
                WORKLOAD,
                "PATCH",
                "expect = \"allow\"\npolicies = [\"home-domain\"]",
            ),
            case(
                "with capitals",
                "SPIFFE://Example.ORG/ns/prod/sa/web",
                "PATCH",
                "expect = \"allow\"\npolicies = [\"home-domain\"]",
            ),
        ]
        .concat();
        let passed: Vec<bool> = run(&cases).iter().map(|r| r.1).collect();
        assert_eq!(passed, [true, true]);
    }

    #[test]
    fn expect_error_passes_only_on_that_request_error() {
        let cases = [
            case(
                "unknown method",
                WORKLOAD,
                "PSOT",
                "expect = \"deny\"\nexpect_error = \"has no action in the schema\"",
            ),
            case(
                "bad id",
                "spifee://example.org/x",
                "GET",
                "expect = \"deny\"\nexpect_error = \"is not a spiffe id\"",
            ),
            case(
                "another error than expected",
                WORKLOAD,
                "PSOT",
                "expect = \"deny\"\nexpect_error = \"is not a spiffe id\"",
            ),
            case(
                "an error expected from a good request",
                WORKLOAD,
                "POST",
                "expect = \"deny\"\nexpect_error = \"has no action\"",
            ),
        ]
        .concat();
        let results = run(&cases);
        let passed: Vec<bool> = results.iter().map(|r| r.1).collect();
        assert_eq!(passed, [true, true, false, false], "{results:?}");
    }

    /// A `forbid` that errors denies (fail closed), but a case does not pass for it unless it
    /// says it expects that error: the deny came from a broken policy, not from its condition.
    #[test]
    fn a_deny_from_an_erroring_forbid_passes_only_when_the_error_is_expected() {
        let cases = [
            case(
                "delete",
                WORKLOAD,
                "DELETE",
                "expect = \"deny\"\npolicies = [\"no-delete\"]",
            ),
            case(
                "delete, error expected",
                WORKLOAD,
                "DELETE",
                "expect = \"deny\"\npolicies = [\"no-delete\"]\nexpect_error = \"policy `no-delete`\"",
            ),
            case(
                "delete, another error expected",
                WORKLOAD,
                "DELETE",
                "expect = \"deny\"\nexpect_error = \"policy `reads`\"",
            ),
        ]
        .concat();
        let passed: Vec<bool> = run(&cases).iter().map(|r| r.1).collect();
        assert_eq!(passed, [false, true, false]);
    }
}
