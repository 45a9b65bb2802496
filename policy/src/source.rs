//! Source files of a policy set: their text, byte offsets mapped to line and column, and the
//! split of a `.cedar` file into statements (Cedar's own spans carry no file name, and the
//! library keeps no location for a parsed policy).

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A place in a source file: path, 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    file: Arc<PathBuf>,
    line: usize,
    column: usize,
}

/// One source file and the start offset of each of its lines.
#[derive(Debug, Clone)]
pub(crate) struct SourceFile {
    path: Arc<PathBuf>,
    text: Arc<str>,
    line_starts: Vec<usize>,
}

// === impl Location ===

impl Location {
    /// A 1-based line and column of `file`.
    pub(crate) fn new(file: Arc<PathBuf>, line: usize, column: usize) -> Self {
        Self { file, line, column }
    }

    /// The file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The 1-based line.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The 1-based column, in characters.
    pub fn column(&self) -> usize {
        self.column
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

// === impl SourceFile ===

impl SourceFile {
    pub(crate) fn new(path: PathBuf, text: String) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            path: Arc::new(path),
            text: text.into(),
            line_starts,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// The location of a byte offset (clamped to the end of the file).
    pub(crate) fn location(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let line_idx = self
            .line_starts
            .partition_point(|&s| s <= offset)
            .saturating_sub(1);
        let line_start = self.line_starts.get(line_idx).copied().unwrap_or(0);
        let column = self
            .text
            .get(line_start..offset)
            .map_or(0, |s| s.chars().count())
            + 1;
        Location {
            file: Arc::clone(&self.path),
            line: line_idx + 1,
            column,
        }
    }

    /// The text of the line holding `offset`, without its newline.
    pub(crate) fn line_text(&self, offset: usize) -> &str {
        let offset = offset.min(self.text.len());
        let start = self
            .text
            .get(..offset)
            .and_then(|s| s.rfind('\n'))
            .map_or(0, |i| i + 1);
        let end = self
            .text
            .get(offset..)
            .and_then(|s| s.find('\n'))
            .map_or(self.text.len(), |i| offset + i);
        self.text.get(start..end).unwrap_or_default()
    }
}

/// Byte offsets where each policy statement of a `.cedar` file starts (its first token after
/// comments and blanks). Statements end with `;` outside strings and comments, which is how
/// Cedar's grammar ends every policy; the nth start belongs to the nth policy (`policy<n>`).
pub(crate) fn statement_starts(text: &str) -> Vec<usize> {
    let bytes = text.as_bytes();
    let mut starts = Vec::new();
    let mut in_statement = false;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                i = past_comment(bytes, i);
                continue;
            }
            b'"' => {
                if !in_statement {
                    starts.push(i);
                    in_statement = true;
                }
                i = past_string(bytes, i);
                continue;
            }
            b';' => in_statement = false,
            c if c.is_ascii_whitespace() => {}
            _ => {
                if !in_statement {
                    starts.push(i);
                    in_statement = true;
                }
            }
        }
        i += 1;
    }
    starts
}

/// The offset just past the `//` comment that starts at `at` (its line's end).
pub(crate) fn past_comment(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).is_some_and(|&c| c != b'\n') {
        at += 1;
    }
    at
}

/// The offset just past the string literal whose opening `"` is at `at` (escapes skipped; the
/// end of the text if it is not closed).
pub(crate) fn past_string(bytes: &[u8], mut at: usize) -> usize {
    at += 1;
    while let Some(&c) = bytes.get(at) {
        at += 1;
        match c {
            b'\\' => at += 1,
            b'"' => break,
            _ => {}
        }
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_counts_lines_and_columns_from_one() {
        let f = SourceFile::new("a.cedar".into(), "ab\ncd\n".into());
        assert_eq!((f.location(0).line(), f.location(0).column()), (1, 1));
        assert_eq!((f.location(4).line(), f.location(4).column()), (2, 2));
        assert_eq!(f.line_text(4), "cd");
        assert_eq!(f.location(999).line(), 3);
    }

    #[test]
    fn statement_starts_skip_comments_and_semicolons_in_strings() {
        let text = "// c; x\n@id(\"a;b\")\npermit(principal, action, resource);\n\n  forbid(principal, action, resource) when { \"\\\";\" == \"\" };";
        let starts = statement_starts(text);
        assert_eq!(starts.len(), 2);
        assert_eq!(text.get(starts[0]..starts[0] + 3), Some("@id"));
        assert_eq!(text.get(starts[1]..starts[1] + 6), Some("forbid"));
    }
}
