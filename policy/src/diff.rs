//! Change impact: replay recorded requests (decision-log JSON lines) against two policy sets and
//! list every request whose decision would change, with the policies responsible.

use std::path::Path;

use crate::decision::Decision;
use crate::error::{LoadError, Problem};
use crate::policy_set::PolicySet;
use crate::record::DecisionRecord;
use crate::source::SourceFile;

/// One request whose decision differs between the sets.
#[derive(Debug, Clone)]
pub struct Change {
    line: usize,
    record: DecisionRecord,
    old: Decision,
    new: Decision,
}

/// The result of a replay.
#[derive(Debug, Clone, Default)]
pub struct DiffReport {
    replayed: usize,
    changes: Vec<Change>,
}

// === impl Change ===

impl Change {
    /// 1-based line of the record in the requests file.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The recorded request.
    pub fn record(&self) -> &DecisionRecord {
        &self.record
    }

    /// The old set's decision.
    pub fn old(&self) -> &Decision {
        &self.old
    }

    /// The new set's decision.
    pub fn new_decision(&self) -> &Decision {
        &self.new
    }
}

// === impl DiffReport ===

impl DiffReport {
    /// How many requests were replayed.
    pub fn replayed(&self) -> usize {
        self.replayed
    }

    /// Every request whose outcome changed, in file order.
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }
}

/// Replays every record of `requests` against `old` and `new`. Blank lines are skipped; a line
/// that is not a decision record is a located error.
pub fn diff(old: &PolicySet, new: &PolicySet, requests: &Path) -> Result<DiffReport, LoadError> {
    let text = std::fs::read_to_string(requests).map_err(|e| {
        LoadError::new(vec![Problem::in_file(
            requests,
            format!("cannot read requests file: {e}"),
        )])
    })?;
    let file = SourceFile::new(requests.to_owned(), text);
    let mut problems = Vec::new();
    let mut report = DiffReport::default();
    let mut offset = 0;
    for (n, line) in file.text().split_inclusive('\n').enumerate() {
        let start = offset;
        offset += line.len();
        if line.trim().is_empty() {
            continue;
        }
        let record: DecisionRecord = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => {
                let at = start + e.column().saturating_sub(1);
                problems.push(Problem::at(
                    &file,
                    at,
                    format!("line {} is not a decision record: {e}", n + 1),
                    None,
                ));
                continue;
            }
        };
        let spec = match record.to_spec() {
            Ok(s) => s,
            Err(e) => {
                problems.push(Problem::at(&file, start, e, None));
                continue;
            }
        };
        let time = match spec.parsed_time() {
            Ok(t) => t,
            Err(e) => {
                problems.push(Problem::at(&file, start, e, None));
                continue;
            }
        };
        let headers = spec.header_refs();
        let request = spec.request(&headers, time);
        let (before, after) = (old.decide(&request), new.decide(&request));
        report.replayed += 1;
        if before.outcome() != after.outcome() {
            report.changes.push(Change {
                line: n + 1,
                record,
                old: before,
                new: after,
            });
        }
    }
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(LoadError::new(problems))
    }
}
