//! Which files of a policy directory make the set, read whole: every `.cedar` file, the one
//! `.cedarschema`, `entities.json` and `links.json`. A file named like one of them in other
//! case, a symbolic link to nothing or a directory is an error, not skipped: skipping it could
//! drop a `forbid` from the set unnoticed.

use std::path::{Path, PathBuf};

use super::depth;
use super::{ENTITIES_FILE, LINKS_FILE};
use crate::error::{LoadError, Problem};
use crate::source::SourceFile;

/// The files of a directory, read.
#[derive(Debug)]
pub(super) struct Files {
    pub(super) schema: Option<SourceFile>,
    pub(super) policies: Vec<SourceFile>,
    pub(super) entities: Option<SourceFile>,
    pub(super) links: Option<SourceFile>,
}

/// Reads the set files of `dir`, in name order; every file that cannot be part of the set is a
/// problem. Only a directory that cannot be listed is an error at once.
pub(super) fn read_files(dir: &Path, problems: &mut Vec<Problem>) -> Result<Files, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        LoadError::new(vec![Problem::in_file(
            dir,
            format!("cannot read policy directory: {e}"),
        )])
    })?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    let mut files = Files {
        schema: None,
        policies: Vec::new(),
        entities: None,
        links: None,
    };
    let mut schemas = Vec::new();
    let mut refused_schema = false;
    for path in paths {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default()
            .to_owned();
        match set_name(&path) {
            None => continue,
            Some(SetName::WrongCase(right)) => {
                // Skipping it could drop a `forbid` from the set unnoticed.
                problems.push(Problem::in_file(
                    &path,
                    format!("file is not read: set files are named in lowercase (`{right}`); rename it or move it out of the directory"),
                ));
                continue;
            }
            Some(SetName::Exact) => {}
        }
        if !path.is_file() {
            let what = match std::fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => match std::fs::read_link(&path) {
                    Ok(target) => format!(
                        "is a symbolic link to `{}`, which does not exist",
                        target.display()
                    ),
                    Err(_) => "is a symbolic link to nothing".to_owned(),
                },
                Ok(m) if m.is_dir() => "is a directory, not a file".to_owned(),
                _ => "is not a regular file".to_owned(),
            };
            problems.push(Problem::in_file(
                &path,
                format!("{what}; the set cannot be read whole"),
            ));
            continue;
        }
        let text = match std::fs::read(&path).map(String::from_utf8) {
            Ok(Ok(text)) => text,
            Ok(Err(_)) => {
                problems.push(Problem::in_file(
                    &path,
                    "file is not valid utf-8".to_owned(),
                ));
                continue;
            }
            Err(e) => {
                problems.push(Problem::in_file(&path, format!("cannot read file: {e}")));
                continue;
            }
        };
        let file = SourceFile::new(path, text);
        if matches!(ext.as_str(), "cedar" | "cedarschema")
            && let Err(too_deep) = depth::scan(file.text())
        {
            problems.push(Problem::at(&file, too_deep.offset, too_deep.message, None));
            refused_schema |= ext == "cedarschema";
            continue;
        }
        match ext.as_str() {
            "cedar" => files.policies.push(file),
            "cedarschema" => schemas.push(file),
            _ if name == ENTITIES_FILE => files.entities = Some(file),
            _ => files.links = Some(file),
        }
    }
    if files.policies.is_empty() && problems.is_empty() {
        problems.push(Problem::in_file(
            dir,
            "directory has no `.cedar` policy files".to_owned(),
        ));
    }
    match schemas.len() {
        0 if refused_schema => {}
        0 => problems.push(Problem::in_file(
            dir,
            "directory has no `.cedarschema` schema file".to_owned(),
        )),
        1 => files.schema = schemas.pop(),
        _ => {
            let names: Vec<String> = schemas
                .iter()
                .map(|f| format!("`{}`", f.path().display()))
                .collect();
            problems.push(Problem::in_file(
                dir,
                format!(
                    "directory has more than one schema file: {}",
                    names.join(", ")
                ),
            ));
        }
    }
    Ok(files)
}

/// Whether a load looks at `path`: it is named as a set file (a `.cedar` or `.cedarschema`
/// file, `entities.json` or `links.json`), in any case and whatever it is. A load reads it, or
/// refuses the set for it (a name in capitals, a symbolic link to nothing, a directory), so a
/// watcher must notice it too. Other files of the directory are ignored.
pub(crate) fn is_set_file(path: &Path) -> bool {
    set_name(path).is_some()
}

/// How a name relates to the set.
#[derive(Debug, PartialEq, Eq)]
enum SetName {
    /// A set file's name, as the loader reads it.
    Exact,
    /// A set file's name in other case (`A.Cedar`, `Entities.json`): what it should be.
    WrongCase(String),
}

fn set_name(path: &Path) -> Option<SetName> {
    let name = path.file_name().and_then(|n| n.to_str())?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    if matches!(ext, "cedar" | "cedarschema") || name == ENTITIES_FILE || name == LINKS_FILE {
        return Some(SetName::Exact);
    }
    let lower = name.to_ascii_lowercase();
    let lower_ext = ext.to_ascii_lowercase();
    let wrong_case = matches!(lower_ext.as_str(), "cedar" | "cedarschema")
        || lower == ENTITIES_FILE
        || lower == LINKS_FILE;
    wrong_case.then(|| {
        let stem = name.get(..name.len() - ext.len()).unwrap_or(name);
        match lower_ext.as_str() {
            "cedar" | "cedarschema" => SetName::WrongCase(format!("{stem}{lower_ext}")),
            _ => SetName::WrongCase(lower),
        }
    })
}
