//! Canonical formatting of `.cedar` files (Cedar's own formatter: 80 columns, 2-space indent,
//! comments kept).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy as cedar;

use crate::error::{LoadError, Problem, from_diagnostic};
use crate::loader::depth;
use crate::source::SourceFile;

/// One `.cedar` file and its canonical form.
#[derive(Debug, Clone)]
pub struct FormattedFile {
    path: PathBuf,
    original: String,
    formatted: String,
}

// === impl FormattedFile ===

impl FormattedFile {
    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether formatting changes the file.
    pub fn changed(&self) -> bool {
        self.original != self.formatted
    }

    /// The canonical text.
    pub fn formatted(&self) -> &str {
        &self.formatted
    }
}

/// Formats every `.cedar` file of `dir` (without writing). A file that does not parse is a
/// located error.
pub fn format_dir(dir: &Path) -> Result<Vec<FormattedFile>, LoadError> {
    // Cedar's parser and formatter recurse per nesting level: see `loader::depth`.
    depth::on_load_stack(|| format_files(dir))
}

fn format_files(dir: &Path) -> Result<Vec<FormattedFile>, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        LoadError::new(vec![Problem::in_file(
            dir,
            format!("cannot read policy directory: {e}"),
        )])
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cedar") && p.is_file())
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(LoadError::new(vec![Problem::in_file(
            dir,
            "directory has no `.cedar` policy files".to_owned(),
        )]));
    }
    let config = cedar_policy_formatter::Config::default();
    let mut problems = Vec::new();
    let mut out = Vec::new();
    for path in paths {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(Problem::in_file(&path, format!("cannot read file: {e}")));
                continue;
            }
        };
        let file = SourceFile::new(path.clone(), text);
        if let Err(too_deep) = depth::scan(file.text()) {
            problems.push(Problem::at(&file, too_deep.offset, too_deep.message, None));
            continue;
        }
        if let Err(errors) = cedar::PolicySet::from_str(file.text()) {
            problems.extend(errors.iter().map(|e| from_diagnostic(e, &file, 0, "")));
            continue;
        }
        match cedar_policy_formatter::policies_str_to_pretty(file.text(), &config) {
            Ok(formatted) => out.push(FormattedFile {
                path,
                original: file.text().to_owned(),
                formatted,
            }),
            Err(e) => problems.push(Problem::in_file(&path, format!("cannot format: {e}"))),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(LoadError::new(problems))
    }
}
