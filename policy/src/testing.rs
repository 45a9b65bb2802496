//! Policy tests: `*.test.toml` files next to the policies, each a list of named cases (a request
//! and the expected decision, optionally the expected determining policy ids). See
//! `policies/README.md` for the format.

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
}

/// The result of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    file: PathBuf,
    name: String,
    expected: Outcome,
    expected_policies: Option<Vec<String>>,
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

    /// What the policy set decided.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// Whether the decision matches the expectation.
    pub fn passed(&self) -> bool {
        self.decision.outcome() == self.expected
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
        RequestSpec {
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
        }
    }
}
