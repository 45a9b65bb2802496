//! Loading a policy directory: every `.cedar` file, the one `.cedarschema`, the optional
//! `entities.json` and `links.json`. Files are parsed one by one so that every error names its
//! file, line and column; policies are renamed from their `@id("…")` annotations; the whole set
//! is validated in strict mode.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy as cedar;
use cedar_policy_core::ast;
use sha2::{Digest, Sha256};

use crate::error::{LoadError, Problem, from_diagnostic};
use crate::model::{Types, WORKLOAD_TYPE};
use crate::source::{Location, SourceFile, statement_starts};

pub(crate) mod depth;
mod entities;
mod files;
mod links;
mod workload_ids;

use entities::{parse_entities, unauthenticated, with_actions};
pub(crate) use files::is_set_file;
use files::{Files, read_files};
use links::link;

/// Name of the optional entities file.
pub const ENTITIES_FILE: &str = "entities.json";
/// Name of the optional template-links file.
pub const LINKS_FILE: &str = "links.json";

/// What the loader knows about one policy, template or template-linked policy.
#[derive(Debug, Clone)]
pub struct PolicyInfo {
    id: String,
    location: Option<Location>,
    effect: cedar::Effect,
    kind: PolicyKind,
}

/// Whether a policy is static, a template, or linked from a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyKind {
    /// A policy with no slots.
    Static,
    /// A template with `?principal` and/or `?resource` slots.
    Template,
    /// A policy linked from the named template by `links.json`.
    Linked {
        /// The template's id.
        template: String,
    },
}

/// A parsed and validated directory, before indexing.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) dir: PathBuf,
    pub(crate) version: String,
    pub(crate) schema: cedar::Schema,
    pub(crate) policies: cedar::PolicySet,
    pub(crate) info: HashMap<cedar::PolicyId, PolicyInfo>,
    pub(crate) entities: cedar::Entities,
    pub(crate) types: Types,
}

// === impl PolicyInfo ===

impl PolicyInfo {
    /// The id from `@id("…")` (or from `links.json` for a linked policy).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where the policy (or, for a linked policy, its template) starts.
    pub fn location(&self) -> Option<&Location> {
        self.location.as_ref()
    }

    /// `permit` or `forbid`.
    pub fn effect(&self) -> cedar::Effect {
        self.effect
    }

    /// Static, template or linked.
    pub fn kind(&self) -> &PolicyKind {
        &self.kind
    }
}

// === impl Loaded ===

/// Reads, parses and validates a policy directory.
pub(crate) fn load(dir: &Path) -> Result<Loaded, LoadError> {
    let mut problems = Vec::new();
    let files = read_files(dir, &mut problems)?;
    let version = digest(&files);
    let types = Types::new().map_err(|e| LoadError::new(vec![Problem::in_file(dir, e)]))?;

    let schema = files
        .schema
        .as_ref()
        .and_then(|f| parse_schema(f, &mut problems));
    let mut policies = cedar::PolicySet::new();
    let mut info = HashMap::new();
    let mut first_seen: HashMap<String, Location> = HashMap::new();
    for file in &files.policies {
        parse_policy_file(
            file,
            &mut policies,
            &mut info,
            &mut first_seen,
            &mut problems,
        );
    }
    if let Some(file) = &files.links {
        link(
            file,
            &mut policies,
            &mut info,
            &mut first_seen,
            &mut problems,
        );
    }
    let entities = schema.as_ref().and_then(|schema| match &files.entities {
        Some(file) => parse_entities(file, schema, &types, &mut problems),
        None => cedar::Entities::empty()
            .add_entities([unauthenticated(&types)], Some(schema))
            .ok()
            .and_then(|e| with_actions(e, schema, dir, &mut problems)),
    });
    if let Some(schema) = &schema {
        validate(schema, &policies, &info, &files.policies, &mut problems);
    }
    match (schema, entities) {
        (Some(schema), Some(entities)) if problems.is_empty() => Ok(Loaded {
            dir: dir.to_owned(),
            version,
            schema,
            policies,
            info,
            entities,
            types,
        }),
        _ => {
            if problems.is_empty() {
                problems.push(Problem::in_file(dir, "policy set is invalid".to_owned()));
            }
            Err(LoadError::new(problems))
        }
    }
}

/// The set's version: SHA-256 over every file's name and content, in name order.
fn digest(files: &Files) -> String {
    let all = files
        .schema
        .iter()
        .chain(&files.policies)
        .chain(&files.entities)
        .chain(&files.links);
    version_of(all.map(|f| {
        let name = f
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        (name, f.text().as_bytes())
    }))
}

/// SHA-256 over `(file name, content)` pairs, in name order: the version of a set loaded from
/// exactly these files.
pub(crate) fn version_of<'a>(files: impl IntoIterator<Item = (String, &'a [u8])>) -> String {
    let mut all: Vec<(String, &[u8])> = files.into_iter().collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let mut hasher = Sha256::new();
    for (name, content) in all {
        hasher.update((name.len() as u64).to_be_bytes());
        hasher.update(name.as_bytes());
        hasher.update((content.len() as u64).to_be_bytes());
        hasher.update(content);
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

fn parse_schema(file: &SourceFile, problems: &mut Vec<Problem>) -> Option<cedar::Schema> {
    match cedar::Schema::from_cedarschema_str(file.text()) {
        Ok((schema, warnings)) => {
            for w in warnings {
                tracing::warn!(file = %file.path().display(), warning = %w, "schema warning");
            }
            for ty in [
                WORKLOAD_TYPE,
                crate::model::UNAUTHENTICATED_TYPE,
                crate::model::SERVICE_TYPE,
            ] {
                if !schema.entity_types().any(|t| t.to_string() == ty) {
                    problems.push(Problem::in_file(
                        file.path(),
                        format!("schema has no `{ty}` entity type, which the mesh needs"),
                    ));
                }
            }
            Some(schema)
        }
        Err(e) => {
            problems.push(from_diagnostic(&e, file, 0, "schema error: "));
            None
        }
    }
}

fn parse_policy_file(
    file: &SourceFile,
    set: &mut cedar::PolicySet,
    info: &mut HashMap<cedar::PolicyId, PolicyInfo>,
    first_seen: &mut HashMap<String, Location>,
    problems: &mut Vec<Problem>,
) {
    let parsed = match cedar::PolicySet::from_str(file.text()) {
        Ok(parsed) => parsed,
        Err(errors) => {
            for e in errors.iter() {
                problems.push(from_diagnostic(e, file, 0, ""));
            }
            return;
        }
    };
    let starts = statement_starts(file.text());
    let statement_start = |cedar_id: &cedar::PolicyId| -> usize {
        // Cedar names the nth statement of a file `policy<n>`.
        cedar_id
            .to_string()
            .strip_prefix("policy")
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| starts.get(n).copied())
            .unwrap_or(0)
    };
    // Nothing recursive may read a policy before its depth is known (see `depth`).
    let bodies = parsed
        .policies()
        .map(|p| {
            (
                p.id(),
                AsRef::<ast::Policy>::as_ref(p)
                    .template()
                    .non_scope_constraints(),
            )
        })
        .chain(parsed.templates().map(|t| {
            (
                t.id(),
                AsRef::<ast::Template>::as_ref(t).non_scope_constraints(),
            )
        }));
    let mut too_deep = false;
    for (id, body) in bodies {
        let levels = body.map_or(0, depth::expr_depth);
        if levels > depth::MAX_EXPR_DEPTH {
            too_deep = true;
            problems.push(Problem::at(
                file,
                statement_start(id),
                format!(
                    "the condition of this policy is {levels} levels deep; the limit is {}",
                    depth::MAX_EXPR_DEPTH
                ),
                Some("split a long chain of `&&` or `||` into several policies, or test a set with `.contains(…)`".to_owned()),
            ));
        }
    }
    if too_deep {
        return;
    }
    let mut claim = |annotation: Option<&str>,
                     offset: usize,
                     problems: &mut Vec<Problem>|
     -> Option<cedar::PolicyId> {
        let location = file.location(offset);
        let Some(id) = annotation else {
            problems.push(Problem::at(
                file,
                offset,
                "policy has no `@id(\"…\")` annotation".to_owned(),
                Some(
                    "every policy needs a unique `@id(\"…\")` so decisions can name it".to_owned(),
                ),
            ));
            return None;
        };
        if id.trim().is_empty() {
            problems.push(Problem::at(
                file,
                offset,
                "policy id `` is empty".to_owned(),
                None,
            ));
            return None;
        }
        if let Some(first) = first_seen.get(id) {
            problems.push(Problem::at(
                file,
                offset,
                format!("duplicate policy id `{id}`: also defined at {first}"),
                None,
            ));
            return None;
        }
        first_seen.insert(id.to_owned(), location);
        Some(cedar::PolicyId::new(id))
    };
    let mut policies: Vec<&cedar::Policy> = parsed.policies().collect();
    policies.sort_by_key(|p| statement_start(p.id()));
    for p in policies {
        let offset = statement_start(p.id());
        let Some(id) = claim(p.annotation("id"), offset, problems) else {
            continue;
        };
        report_workload_ids(p.to_json(), file, offset, problems);
        let kind = PolicyKind::Static;
        info.insert(
            id.clone(),
            PolicyInfo {
                id: id.to_string(),
                location: Some(file.location(offset)),
                effect: p.effect(),
                kind,
            },
        );
        if let Err(e) = set.add(p.new_id(id)) {
            problems.push(Problem::at(file, offset, e.to_string(), None));
        }
    }
    let mut templates: Vec<&cedar::Template> = parsed.templates().collect();
    templates.sort_by_key(|t| statement_start(t.id()));
    for t in templates {
        let offset = statement_start(t.id());
        let Some(id) = claim(t.annotation("id"), offset, problems) else {
            continue;
        };
        report_workload_ids(t.to_json(), file, offset, problems);
        info.insert(
            id.clone(),
            PolicyInfo {
                id: id.to_string(),
                location: Some(file.location(offset)),
                effect: t.effect(),
                kind: PolicyKind::Template,
            },
        );
        if let Err(e) = set.add_template(t.new_id(id)) {
            problems.push(Problem::at(file, offset, e.to_string(), None));
        }
    }
}

/// Reports the workloads, namespaces and trust domains a policy or template (in Cedar's JSON
/// form) names that are not in canonical form ([`workload_ids`]).
fn report_workload_ids<E: std::fmt::Display>(
    json: Result<serde_json::Value, E>,
    file: &SourceFile,
    offset: usize,
    problems: &mut Vec<Problem>,
) {
    match json {
        Ok(json) => {
            for message in workload_ids::problems_in(&json, false) {
                problems.push(Problem::at(file, offset, message, None));
            }
        }
        Err(e) => problems.push(Problem::at(
            file,
            offset,
            format!("cannot read the policy's entities: {e}"),
            None,
        )),
    }
}

pub(super) fn line_col_offset(text: &str, line: usize, column: usize) -> usize {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    line_start + column.saturating_sub(1)
}

fn validate(
    schema: &cedar::Schema,
    policies: &cedar::PolicySet,
    info: &HashMap<cedar::PolicyId, PolicyInfo>,
    files: &[SourceFile],
    problems: &mut Vec<Problem>,
) {
    let validator = cedar::Validator::new(schema.clone());
    let result = validator.validate(policies, cedar::ValidationMode::Strict);
    for e in result.validation_errors() {
        let info = info.get(e.policy_id());
        let location = info.and_then(PolicyInfo::location);
        let file = location.and_then(|l| files.iter().find(|f| f.path() == l.file()));
        let prefix = format!("policy `{}`: ", e.policy_id());
        match (file, location) {
            (Some(file), Some(loc)) => {
                let fallback = offset_of(file, loc);
                problems.push(from_diagnostic(e, file, fallback, &prefix));
            }
            _ => problems.push(Problem::in_file(Path::new("."), format!("{prefix}{e}"))),
        }
    }
    for w in result.validation_warnings() {
        tracing::warn!(policy.id = %w.policy_id(), warning = %w, "policy warning");
    }
}

fn offset_of(file: &SourceFile, loc: &Location) -> usize {
    line_col_offset(file.text(), loc.line(), loc.column())
}
