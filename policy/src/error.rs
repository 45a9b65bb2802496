//! Errors of loading a policy set: each problem carries the file, line and column, the offending
//! line of source and the validator's explanation.

use crate::source::{Location, SourceFile};

/// One located problem in a policy directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    location: Option<Location>,
    file: Option<std::path::PathBuf>,
    message: String,
    snippet: Option<String>,
    help: Option<String>,
}

/// Why a policy directory could not be loaded: every problem found, in file order.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", render(.problems))]
#[non_exhaustive]
pub struct LoadError {
    problems: Vec<Problem>,
}

// === impl Problem ===

impl Problem {
    /// A problem at a byte offset of a source file.
    pub(crate) fn at(
        file: &SourceFile,
        offset: usize,
        message: String,
        help: Option<String>,
    ) -> Self {
        let snippet = file.line_text(offset).trim_end().to_owned();
        Self {
            location: Some(file.location(offset)),
            file: Some(file.path().to_owned()),
            message,
            snippet: (!snippet.is_empty()).then_some(snippet),
            help,
        }
    }

    /// A problem at a 1-based line and column of a file read line by line; `line_text` is that
    /// line (shown as the snippet, without its line ending).
    pub(crate) fn on_line(
        file: &std::sync::Arc<std::path::PathBuf>,
        line: usize,
        column: usize,
        line_text: &str,
        message: String,
    ) -> Self {
        let snippet = line_text.trim_end().to_owned();
        Self {
            location: Some(Location::new(std::sync::Arc::clone(file), line, column)),
            file: Some(file.to_path_buf()),
            message,
            snippet: (!snippet.is_empty()).then_some(snippet),
            help: None,
        }
    }

    /// A problem with a whole file (or directory).
    pub(crate) fn in_file(path: &std::path::Path, message: String) -> Self {
        Self {
            location: None,
            file: Some(path.to_owned()),
            message,
            snippet: None,
            help: None,
        }
    }

    /// Where the problem is, when it has a line and column.
    pub fn location(&self) -> Option<&Location> {
        self.location.as_ref()
    }

    /// The file the problem is in.
    pub fn file(&self) -> Option<&std::path::Path> {
        self.file.as_deref()
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The offending source line.
    pub fn snippet(&self) -> Option<&str> {
        self.snippet.as_deref()
    }

    /// The validator's or parser's hint, if it gave one.
    pub fn help(&self) -> Option<&str> {
        self.help.as_deref()
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.location, &self.file) {
            (Some(loc), _) => write!(f, "{loc}: {}", self.message)?,
            (None, Some(file)) => write!(f, "{}: {}", file.display(), self.message)?,
            (None, None) => write!(f, "{}", self.message)?,
        }
        if let (Some(snippet), Some(loc)) = (&self.snippet, &self.location) {
            let width = loc.line().to_string().len();
            write!(
                f,
                "\n {:width$} |\n {} | {snippet}\n {:width$} | {:>col$}",
                "",
                loc.line(),
                "",
                "^",
                col = loc.column()
            )?;
        }
        if let Some(help) = &self.help {
            write!(f, "\n  = help: {help}")?;
        }
        Ok(())
    }
}

// === impl LoadError ===

impl LoadError {
    pub(crate) fn new(problems: Vec<Problem>) -> Self {
        Self { problems }
    }

    /// Every problem found.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }
}

fn render(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Turns a Cedar diagnostic (parse, schema or validation error) into problems located in `file`.
/// Diagnostics without a label are placed at the start of `fallback` (the policy's statement).
pub(crate) fn from_diagnostic(
    diag: &dyn miette::Diagnostic,
    file: &SourceFile,
    fallback: usize,
    prefix: &str,
) -> Problem {
    let offset = diag
        .labels()
        .and_then(|mut l| l.next())
        .map_or(fallback, |l| l.offset());
    let help = diag.help().map(|h| h.to_string());
    let mut message = format!("{prefix}{diag}");
    let mut source = diag.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    Problem::at(file, offset, message, help)
}
