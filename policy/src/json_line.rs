//! The start of a decision-log line, written by hand: exactly the bytes `serde_json` writes for
//! a [`DecisionLine`] (the differential tests below hold it to that), without `serde_json`'s
//! byte-by-byte escaping of the strings that need none — nearly all of them (escaping was the
//! largest single cost of logging a decision). A string that needs escaping is written by
//! `serde_json` itself.

use std::io::Write as _;

use crate::decision::Outcome;
use crate::record::{DecisionLine, REDACTED, rfc3339_millis_text};
use crate::redact::redact_query;

/// Appends the line's JSON object without its closing `}`.
pub(crate) fn write_start(line: &DecisionLine<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"time\":");
    rfc3339_millis_text(&line.time, |text| string(out, text));
    out.extend_from_slice(b",\"decision_id\":");
    string(out, line.decision_id);
    out.extend_from_slice(b",\"peer_spiffe_id\":");
    optional(out, line.peer_spiffe_id);
    out.extend_from_slice(b",\"source_addr\":");
    string(out, line.source_addr);
    out.extend_from_slice(b",\"resource\":");
    string(out, line.resource);
    out.extend_from_slice(b",\"method\":");
    string(out, line.method);
    out.extend_from_slice(b",\"path\":");
    string(out, line.path);
    out.extend_from_slice(b",\"query\":");
    string(out, &redact_query(line.query));
    out.extend_from_slice(b",\"headers\":[");
    for (i, (name, value)) in line.headers.headers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'[');
        string(out, name);
        out.push(b',');
        let value = match line.headers.is_redacted(name) {
            true => REDACTED,
            false => value,
        };
        string(out, value);
        out.push(b']');
    }
    out.extend_from_slice(b"],\"action\":");
    string(out, line.action);
    out.extend_from_slice(b",\"tls_version\":");
    optional(out, line.tls_version);
    out.extend_from_slice(match line.decision {
        Outcome::Allow => b",\"decision\":\"allow\"",
        Outcome::Deny => b",\"decision\":\"deny\"",
    });
    out.extend_from_slice(b",\"policy_ids\":");
    strings(out, line.policy_ids);
    out.extend_from_slice(b",\"policy_version\":");
    string(out, line.policy_version);
    // Writing into a `Vec` cannot fail.
    let _ = write!(out, ",\"eval_time_us\":{}", line.eval_time_us);
    out.extend_from_slice(b",\"errors\":");
    strings(out, line.errors);
}

/// A JSON string: as is between quotes when nothing in it needs escaping (no `"`, `\` or
/// control character), else as `serde_json` escapes it.
fn string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    // No early exit: the compiler checks many bytes at a time.
    let needs_escape = bytes.iter().fold(false, |acc, &b| {
        acc | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if needs_escape {
        // Writing into a `Vec` cannot fail, and a `str` always serializes.
        let _ = serde_json::to_writer(&mut *out, s);
        return;
    }
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    out.extend_from_slice(bytes);
    out.push(b'"');
}

fn optional(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn strings(out: &mut Vec<u8>, all: &[String]) {
    out.push(b'[');
    for (i, s) in all.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, s);
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use proptest::prelude::*;

    use super::*;
    use crate::record::LoggedHeaders;

    /// What `serde_json` writes for `line`, without the closing `}`.
    fn by_serde(line: &DecisionLine<'_>) -> Vec<u8> {
        let mut out = serde_json::to_vec(line).unwrap();
        assert_eq!(out.pop(), Some(b'}'));
        out
    }

    fn by_hand(line: &DecisionLine<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        write_start(line, &mut out);
        out
    }

    fn line<'a>(
        strings: &'a [String],
        headers: &'a [(&'a str, &'a str)],
        ids: &'a [String],
        optional: bool,
    ) -> DecisionLine<'a> {
        let s = |i: usize| strings[i % strings.len()].as_str();
        DecisionLine {
            time: UNIX_EPOCH + Duration::from_millis(1_764_100_000_123),
            decision_id: s(0),
            peer_spiffe_id: optional.then(|| s(1)),
            source_addr: s(2),
            resource: s(3),
            method: s(4),
            path: s(5),
            query: s(6),
            headers: LoggedHeaders {
                headers,
                redacted: &["authorization"],
            },
            action: s(7),
            tls_version: optional.then(|| s(8)),
            decision: if optional {
                Outcome::Allow
            } else {
                Outcome::Deny
            },
            policy_ids: ids,
            policy_version: s(9),
            eval_time_us: 18_446_744_073_709_551_615,
            errors: &ids[..ids.len() / 2],
        }
    }

    #[test]
    fn hand_written_line_is_byte_for_byte_serde_json() {
        let strings: Vec<String> = [
            "ebd20a3fb672e8d4-95fb6",
            "spiffe://example.org/ns/default/sa/client",
            "127.0.0.1:37080",
            "backend",
            "GET",
            "/a \"quoted\" path\\with\\backslashes",
            "q=\u{1}\u{1f}\n\r\t\u{8}\u{c}&access_token=hunter2&page=2",
            "ünïcødé ✓ \u{7f} / </script>",
            "",
            "sha256:05f5e9ae1f0ccb2531f415fd414ab42d59fc9300b458f6cfdca6f694e5536b8d",
        ]
        .map(str::to_owned)
        .to_vec();
        let headers = [
            ("accept", "*/*"),
            ("authorization", "Bearer secret"),
            ("x-auth-token", "hunter3"),
            ("x-odd", "a\"b\\c\u{0}"),
        ];
        let ids = ["permit-1".to_owned(), "it's \"forbid\"".to_owned()];
        for optional in [true, false] {
            for headers in [&headers[..], &[]] {
                for ids in [&ids[..], &[]] {
                    let line = line(&strings, headers, ids, optional);
                    assert_eq!(
                        String::from_utf8(by_hand(&line)).unwrap(),
                        String::from_utf8(by_serde(&line)).unwrap()
                    );
                }
            }
        }
        // The redacted values never appear; the others do.
        let line = line(&strings, &headers, &ids, true);
        let text = String::from_utf8(by_hand(&line)).unwrap();
        for secret in ["secret", "hunter2", "hunter3"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(
            text.contains("&access_token=<redacted>&page=2") && text.contains("\"*/*\""),
            "{text}"
        );
    }

    #[test]
    fn time_is_the_same_text_as_serde_writes_at_any_millisecond() {
        let strings = vec!["x".to_owned()];
        for millis in [0_u64, 999, 1_764_100_000_000, 4_102_444_799_999] {
            let mut line = line(&strings, &[], &[], true);
            line.time = UNIX_EPOCH + Duration::from_millis(millis);
            assert_eq!(by_hand(&line), by_serde(&line));
        }
        let mut line = line(&strings, &[], &[], true);
        line.time = SystemTime::now();
        assert_eq!(by_hand(&line), by_serde(&line));
    }

    /// Strings of ASCII (controls, quotes and backslashes included) and some other characters.
    const TEXT: &str = "[\\x00-\\x7F\\u{e9}\\u{2713}\\u{1F600}]{0,24}";

    proptest! {
        #[test]
        fn any_strings_are_written_as_serde_json_writes_them(
            strings in proptest::collection::vec(TEXT, 10),
            names in proptest::collection::vec(TEXT, 0..4),
            ids in proptest::collection::vec(TEXT, 0..4),
        ) {
            let headers: Vec<(&str, &str)> =
                names.iter().map(|n| (n.as_str(), strings[0].as_str())).collect();
            let line = line(&strings, &headers, &ids, true);
            prop_assert_eq!(by_hand(&line), by_serde(&line));
        }
    }
}
