//! Change impact: replay recorded requests (decision-log JSON lines) against two policy sets and
//! list every request whose decision would change, with the policies responsible.
//!
//! The file is read one line at a time, so a log of any size replays in bounded memory: a line
//! longer than [`MAX_RECORD_LINE_BYTES`] is a bad line (reported and skipped, like any line that
//! is not a decision record), and only the first [`MAX_REPORTED_BAD_LINES`] bad lines are listed.

use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::decision::Decision;
use crate::error::{LoadError, Problem};
use crate::policy_set::PolicySet;
use crate::record::DecisionRecord;

/// The longest line of a requests file, without its line ending. A decision record holds a
/// request's head (the sidecar accepts at most 8 MiB of headers) escaped as JSON, which this
/// leaves room for; a longer line is not one.
pub const MAX_RECORD_LINE_BYTES: usize = 32 * 1024 * 1024;

/// How many bad lines are listed; the rest are counted in one last problem.
pub const MAX_REPORTED_BAD_LINES: usize = 100;

/// The longest snippet of a bad line shown with its problem.
const MAX_SNIPPET_BYTES: usize = 4096;

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
    replayed_redacted: usize,
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

    /// How many of the replayed requests had a header or query value logged as `<redacted>`
    /// (see [`DecisionRecord::has_redacted_values`]): their replay is not the request itself.
    pub fn replayed_redacted(&self) -> usize {
        self.replayed_redacted
    }

    /// Every request whose outcome changed, in file order.
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }
}

/// Replays every record of `requests` against `old` and `new`. Blank lines are skipped; a line
/// that is not a decision record (nor UTF-8, or longer than [`MAX_RECORD_LINE_BYTES`]) is a
/// located error. Every line is checked: the error lists the first [`MAX_REPORTED_BAD_LINES`]
/// bad lines and counts the others.
pub fn diff(old: &PolicySet, new: &PolicySet, requests: &Path) -> Result<DiffReport, LoadError> {
    diff_capped(old, new, requests, MAX_RECORD_LINE_BYTES)
}

fn diff_capped(
    old: &PolicySet,
    new: &PolicySet,
    requests: &Path,
    max_line: usize,
) -> Result<DiffReport, LoadError> {
    let cannot_read = |e: std::io::Error| {
        LoadError::new(vec![Problem::in_file(
            requests,
            format!("cannot read requests file: {e}"),
        )])
    };
    let mut reader = BufReader::new(std::fs::File::open(requests).map_err(cannot_read)?);
    let file = Arc::new(requests.to_path_buf());
    let mut bad = BadLines::default();
    let mut report = DiffReport::default();
    let mut buf = Vec::new();
    for n in 1.. {
        buf.clear();
        let line = match read_line(&mut reader, &mut buf, max_line).map_err(cannot_read)? {
            Line::End => break,
            Line::TooLong => {
                bad.push(
                    &file,
                    n,
                    1,
                    "",
                    format!("line {n} is longer than {max_line} bytes"),
                );
                continue;
            }
            Line::Read => match std::str::from_utf8(&buf) {
                Ok(line) => line,
                Err(e) => {
                    let text = String::from_utf8_lossy(&buf);
                    let column = column_at(&text, e.valid_up_to());
                    bad.push(
                        &file,
                        n,
                        column,
                        &text,
                        format!("line {n} is not UTF-8 text"),
                    );
                    continue;
                }
            },
        };
        if line.trim().is_empty() {
            continue;
        }
        let record: DecisionRecord = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => {
                let column = column_at(line, e.column().saturating_sub(1));
                let message = format!("line {n} is not a decision record: {e}");
                bad.push(&file, n, column, line, message);
                continue;
            }
        };
        let spec = match record.to_spec() {
            Ok(s) => s,
            Err(e) => {
                bad.push(&file, n, 1, line, e);
                continue;
            }
        };
        let time = match spec.parsed_time() {
            Ok(t) => t,
            Err(e) => {
                bad.push(&file, n, 1, line, e);
                continue;
            }
        };
        let headers = spec.header_refs();
        let request = spec.request(&headers, time);
        let (before, after) = (old.decide(&request), new.decide(&request));
        report.replayed += 1;
        if record.has_redacted_values() {
            report.replayed_redacted += 1;
        }
        if before.outcome() != after.outcome() {
            report.changes.push(Change {
                line: n,
                record,
                old: before,
                new: after,
            });
        }
    }
    bad.finish(&file)?;
    Ok(report)
}

/// The 1-based column (in characters) of byte `offset` of `line`, at most its end.
fn column_at(line: &str, offset: usize) -> usize {
    let end = line.trim_end_matches(['\n', '\r']).len();
    line.get(..offset.min(end)).map_or(0, |s| s.chars().count()) + 1
}

/// The bad lines found so far: the first [`MAX_REPORTED_BAD_LINES`] as problems, the others
/// counted.
#[derive(Default)]
struct BadLines {
    problems: Vec<Problem>,
    more: usize,
}

impl BadLines {
    fn push(
        &mut self,
        file: &Arc<PathBuf>,
        line: usize,
        column: usize,
        text: &str,
        message: String,
    ) {
        if self.problems.len() >= MAX_REPORTED_BAD_LINES {
            self.more += 1;
            return;
        }
        let mut end = text.len().min(MAX_SNIPPET_BYTES);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let snippet = match text.get(..end) {
            Some(cut) if end < text.trim_end().len() => format!("{cut}…"),
            _ => text.to_owned(),
        };
        self.problems
            .push(Problem::on_line(file, line, column, &snippet, message));
    }

    fn finish(mut self, file: &Path) -> Result<(), LoadError> {
        if self.more > 0 {
            self.problems.push(Problem::in_file(
                file,
                format!(
                    "{} more bad lines (only the first {MAX_REPORTED_BAD_LINES} are listed)",
                    self.more
                ),
            ));
        }
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(LoadError::new(self.problems))
        }
    }
}

/// What [`read_line`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    /// A line (with its `\n`, unless it is the last one and has none) is in the buffer.
    Read,
    /// The line was longer than the cap; it was read to its end and dropped.
    TooLong,
    /// The end of the file.
    End,
}

/// Reads one line into `buf` (empty on entry), keeping at most `max` bytes before its `\n`.
fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> std::io::Result<Line> {
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    if reader.by_ref().take(limit).read_until(b'\n', buf)? == 0 {
        return Ok(Line::End);
    }
    if buf.last() == Some(&b'\n') || buf.len() <= max {
        return Ok(Line::Read);
    }
    buf.clear();
    loop {
        let chunk = match reader.fill_buf() {
            Ok(chunk) => chunk,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(Line::TooLong);
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(Line::TooLong);
            }
            None => {
                let len = chunk.len();
                reader.consume(len);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    const ALLOWED: &str = r#"{"time":"2026-01-05T14:00:00.000Z","decision_id":"1","peer_spiffe_id":"spiffe://example.org/ns/prod/sa/frontend","source_addr":"10.0.0.7:5000","resource":"api","method":"GET","path":"/v1/orders","headers":[],"action":"GET","tls_version":"TLSv1.3","decision":"allow","policy_ids":["frontend-reads-api"],"policy_version":"sha256:x","eval_time_us":3,"upstream_status":200,"latency_us":500}"#;
    const QUARANTINED: &str = r#"{"time":"2026-01-05T14:00:01.000Z","decision_id":"2","peer_spiffe_id":"spiffe://example.org/ns/prod/sa/legacy-batch","source_addr":"10.0.0.8:5000","resource":"api","method":"POST","path":"/grpc.health.v1.Health/Check","action":"grpc","tls_version":"TLSv1.3","decision":"deny","policy_ids":["quarantine-legacy-batch"],"policy_version":"sha256:x","eval_time_us":3,"latency_us":20}"#;

    fn shipped() -> PolicySet {
        PolicySet::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies").as_ref()).unwrap()
    }

    /// The shipped schema and one policy that allows everything.
    fn allow_all() -> (tempfile::TempDir, PolicySet) {
        let dir = tempfile::tempdir().unwrap();
        let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/mesh.cedarschema");
        std::fs::copy(schema, dir.path().join("mesh.cedarschema")).unwrap();
        let permit = "@id(\"all\")\npermit(principal, action, resource);\n";
        std::fs::write(dir.path().join("a.cedar"), permit).unwrap();
        let set = PolicySet::load(dir.path()).unwrap();
        (dir, set)
    }

    fn log(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn lines(input: &[u8], max: usize) -> Vec<(Line, Vec<u8>)> {
        // A tiny buffer, so that a long line is skipped over several fills.
        let mut reader = BufReader::with_capacity(3, Cursor::new(input.to_vec()));
        let mut out = Vec::new();
        loop {
            let mut buf = Vec::new();
            let line = read_line(&mut reader, &mut buf, max).unwrap();
            if line == Line::End {
                return out;
            }
            out.push((line, buf));
        }
    }

    #[test]
    fn read_line_keeps_lines_up_to_the_cap_and_skips_longer_ones_whole() {
        let read = |s: &str| (Line::Read, s.as_bytes().to_vec());
        let too_long = (Line::TooLong, Vec::new());
        assert_eq!(
            lines(b"abcde\nabcdef\n\nxy\r\nabcdefghijklmnop\nz", 5),
            [
                read("abcde\n"),
                too_long.clone(),
                read("\n"),
                read("xy\r\n"),
                too_long.clone(),
                read("z"),
            ]
        );
        assert_eq!(lines(b"abcde", 5), [read("abcde")]);
        assert_eq!(lines(b"abcdef", 5), [too_long]);
        assert_eq!(lines(b"", 5), []);
    }

    #[test]
    fn a_valid_log_replays_with_its_line_numbers() {
        let (_dir, new) = allow_all();
        let text = format!("{ALLOWED}\r\n\n  \n{QUARANTINED}");
        let (_log, path) = log(&text);
        let report = diff(&shipped(), &new, &path).unwrap();
        assert_eq!(report.replayed(), 2);
        let changed: Vec<(usize, &str)> = report
            .changes()
            .iter()
            .map(|c| (c.line(), c.record().decision_id.as_str()))
            .collect();
        assert_eq!(changed, [(4, "2")]);
    }

    #[test]
    fn a_method_that_does_not_go_with_the_action_is_a_bad_line() {
        let (_dir, new) = allow_all();
        let wrong = [
            ALLOWED.replace(r#""method":"GET""#, r#""method":"DELETE""#),
            QUARANTINED.replace(r#""method":"POST""#, r#""method":"GET""#),
            ALLOWED.replace(r#""method":"GET","#, ""),
        ];
        let (_log, path) = log(&format!("{ALLOWED}\n{}", wrong.join("\n")));
        let err = diff(&shipped(), &new, &path).unwrap_err();
        let lines: Vec<usize> = err
            .problems()
            .iter()
            .filter_map(|p| p.location().map(|l| l.line()))
            .collect();
        assert_eq!(lines, [2, 3, 4], "{err}");
        let text = err.to_string();
        assert!(
            text.contains(r#"method "DELETE" does not go with action "GET""#),
            "{text}"
        );
        assert!(text.contains(r#"action "grpc""#), "{text}");
    }

    #[test]
    fn records_with_redacted_values_are_counted() {
        let (_dir, new) = allow_all();
        let header = ALLOWED.replace(
            r#""headers":[]"#,
            r#""headers":[["authorization","<redacted>"]]"#,
        );
        let query = ALLOWED.replace(
            r#""path":"/v1/orders","#,
            r#""path":"/v1/orders","query":"page=2&access_token=<redacted>","#,
        );
        let plain = ALLOWED.replace(r#""headers":[]"#, r#""headers":[["x-a","redacted"]]"#);
        let (_log, path) = log(&[header, query.clone(), plain, QUARANTINED.to_owned()].join("\n"));
        let report = diff(&shipped(), &new, &path).unwrap();
        assert_eq!((report.replayed(), report.replayed_redacted()), (4, 2));
        let record: DecisionRecord = serde_json::from_str(&query).unwrap();
        assert!(record.has_redacted_values());
    }

    #[test]
    fn a_line_over_the_cap_is_a_bad_line_named_by_file_and_number() {
        let long = format!(
            r#"{{"time":"2026-01-05T14:00:00.000Z","path":"/{}"}}"#,
            "a".repeat(600)
        );
        let text = format!("{ALLOWED}\n{long}\n{QUARANTINED}\n{{\"time\": 3}}\n");
        let (_log, path) = log(&text);
        let set = shipped();
        let err = diff_capped(&set, &set, &path, 512).unwrap_err();
        let found: Vec<String> = err.problems().iter().map(ToString::to_string).collect();
        assert_eq!(found.len(), 2, "{found:?}");
        let first = err.problems().first().unwrap();
        let at = first.location().unwrap();
        assert_eq!((at.file(), at.line(), at.column()), (path.as_path(), 2, 1));
        assert_eq!(first.message(), "line 2 is longer than 512 bytes");
        let second = err.problems().get(1).unwrap();
        assert_eq!(second.location().unwrap().line(), 4);
        assert!(
            second
                .message()
                .starts_with("line 4 is not a decision record")
        );
        assert_eq!(second.snippet(), Some("{\"time\": 3}"));
        // Under the real cap the long line is just a record with a missing field.
        let err = diff(&set, &set, &path).unwrap_err();
        assert!(
            err.problems()
                .first()
                .unwrap()
                .message()
                .starts_with("line 2 is not a decision record")
        );
    }

    #[test]
    fn a_line_that_is_not_utf8_is_located_and_the_others_are_still_checked() {
        let (_log, path) = log("");
        let mut bytes = format!("{ALLOWED}\n").into_bytes();
        bytes.extend_from_slice(b"{\"time\xff\": 1}\n{\"time\": 3}\n");
        std::fs::write(&path, bytes).unwrap();
        let set = shipped();
        let err = diff(&set, &set, &path).unwrap_err();
        let at: Vec<(usize, usize)> = err
            .problems()
            .iter()
            .map(|p| (p.location().unwrap().line(), p.location().unwrap().column()))
            .collect();
        assert_eq!(at, [(2, 7), (3, 10)]);
        assert_eq!(
            err.problems().first().unwrap().message(),
            "line 2 is not UTF-8 text"
        );
    }

    #[test]
    fn only_the_first_bad_lines_are_listed_with_short_snippets() {
        let garbage = "x".repeat(2 * MAX_SNIPPET_BYTES);
        let text = format!(
            "{}\n",
            [garbage.as_str(); MAX_REPORTED_BAD_LINES + 50].join("\n")
        );
        let (_log, path) = log(&text);
        let set = shipped();
        let err = diff(&set, &set, &path).unwrap_err();
        assert_eq!(err.problems().len(), MAX_REPORTED_BAD_LINES + 1);
        let snippet = err.problems().first().unwrap().snippet().unwrap();
        assert!(snippet.len() <= MAX_SNIPPET_BYTES + '…'.len_utf8() && snippet.ends_with('…'));
        let last = err.problems().last().unwrap();
        assert_eq!(
            (last.file(), last.message()),
            (
                Some(path.as_path()),
                format!("50 more bad lines (only the first {MAX_REPORTED_BAD_LINES} are listed)")
                    .as_str()
            )
        );
    }
}
