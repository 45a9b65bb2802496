//! `entities.json`: teams, environments, services and workload memberships; plus the action
//! entities of the schema and the one unauthenticated principal.

use std::collections::HashSet;
use std::path::Path;

use cedar_policy as cedar;

use super::line_col_offset;
use crate::error::{Problem, from_diagnostic};
use crate::model::{Types, UNAUTHENTICATED_ID, WORKLOAD_TYPE};
use crate::source::SourceFile;

pub(super) fn unauthenticated(types: &Types) -> cedar::Entity {
    cedar::Entity::with_uid(Types::uid(&types.unauthenticated, UNAUTHENTICATED_ID))
}

pub(super) fn with_actions(
    entities: cedar::Entities,
    schema: &cedar::Schema,
    path: &Path,
    problems: &mut Vec<Problem>,
) -> Option<cedar::Entities> {
    let actions = match schema.action_entities() {
        Ok(a) => a,
        Err(e) => {
            problems.push(Problem::in_file(
                path,
                format!("cannot build action entities: {e}"),
            ));
            return None;
        }
    };
    let actions: Vec<cedar::Entity> = actions
        .iter()
        .filter(|a| entities.get(&a.uid()).is_none())
        .cloned()
        .collect();
    entities
        .add_entities(actions, None)
        .map_err(|e| {
            problems.push(Problem::in_file(
                path,
                format!("cannot add action entities: {e}"),
            ))
        })
        .ok()
}

/// Parses `entities.json`. Workload entries get their derived parents and attributes first.
pub(super) fn parse_entities(
    file: &SourceFile,
    schema: &cedar::Schema,
    types: &Types,
    problems: &mut Vec<Problem>,
) -> Option<cedar::Entities> {
    let mut value: serde_json::Value = match serde_json::from_str(file.text()) {
        Ok(v) => v,
        Err(e) => {
            let offset = line_col_offset(file.text(), e.line(), e.column());
            problems.push(Problem::at(
                file,
                offset,
                format!("invalid entities file: {e}"),
                None,
            ));
            return None;
        }
    };
    let Some(list) = value.as_array_mut() else {
        problems.push(Problem::at(
            file,
            0,
            "entities file must be a json array of entities".to_owned(),
            None,
        ));
        return None;
    };
    let found_before = problems.len();
    // Namespaces and trust domains, as uids or parents (workloads are checked below).
    let named = list
        .iter()
        .flat_map(|entry| super::workload_ids::problems_in(entry, true));
    for message in named.collect::<Vec<_>>() {
        let offset = message
            .split('`')
            .nth(1)
            .and_then(|id| file.text().find(id))
            .unwrap_or(0);
        problems.push(Problem::at(file, offset, message, None));
    }
    // The workloads given their derived parents and attributes below, by id (or reported).
    let mut workloads = HashSet::new();
    for entry in list.iter_mut() {
        // Cedar also reads a uid written `{"__entity": {"type": …, "id": …}}`: one form here.
        if let Some(inner) = entry
            .get_mut("uid")
            .and_then(|uid| uid.get_mut("__entity"))
            .map(serde_json::Value::take)
            && let Some(obj) = entry.as_object_mut()
        {
            obj.insert("uid".to_owned(), inner);
        }
        let Some(uid) = entry.get("uid") else {
            continue;
        };
        if uid.get("type").and_then(|t| t.as_str()) != Some(WORKLOAD_TYPE) {
            continue;
        }
        let raw_id = uid
            .get("id")
            .and_then(|i| i.as_str())
            .unwrap_or_default()
            .to_owned();
        let offset = file.text().find(&format!("\"{raw_id}\"")).unwrap_or(0);
        let id = match super::workload_ids::canonical(&raw_id) {
            Ok(id) => id,
            Err(e) => {
                problems.push(Problem::at(file, offset, e, None));
                workloads.insert(raw_id);
                continue;
            }
        };
        workloads.insert(raw_id);
        if let Some(obj) = entry.as_object_mut() {
            obj.insert(
                "attrs".to_owned(),
                serde_json::json!({"trust_domain": id.trust_domain_name(), "path": id.path()}),
            );
            let mut parents = obj
                .get("parents")
                .and_then(|p| p.as_array())
                .cloned()
                .unwrap_or_default();
            for p in types.derived_parents(&id) {
                parents.push(serde_json::json!({"type": p.type_name().to_string(), "id": p.id().unescaped()}));
            }
            obj.insert("parents".to_owned(), serde_json::Value::Array(parents));
        }
    }
    // What Cedar would say of entries refused above (a workload left without its attributes)
    // would only repeat them.
    if problems.len() > found_before {
        return None;
    }
    // Parents named only implicitly (trust domains, namespaces) need no entries of their own.
    let entities = match cedar::Entities::from_json_value(value, Some(schema)) {
        Ok(e) => e,
        Err(e) => {
            problems.push(from_diagnostic(&e, file, 0, "invalid entities file: "));
            return None;
        }
    };
    // A workload Cedar read in a form the loop above did not see would lack its derived parents
    // (its trust domain and namespaces) and keep whatever attributes it was written with.
    let unseen: Vec<String> = entities
        .iter()
        .map(cedar::Entity::uid)
        .filter(|uid| uid.type_name().to_string() == WORKLOAD_TYPE)
        .map(|uid| uid.id().unescaped().to_owned())
        .filter(|id| !workloads.contains(id))
        .collect();
    for id in unseen {
        let offset = file.text().find(&id).unwrap_or(0);
        problems.push(Problem::at(
            file,
            offset,
            format!(
                "workload `{id}` is written in a form Warden does not read: write its uid as \
                 {{\"type\": \"{WORKLOAD_TYPE}\", \"id\": \"spiffe://…\"}}"
            ),
            None,
        ));
    }

    let entities = if entities.get(&unauthenticated(types).uid()).is_none() {
        match entities.add_entities([unauthenticated(types)], Some(schema)) {
            Ok(e) => e,
            Err(e) => {
                problems.push(Problem::in_file(
                    file.path(),
                    format!("invalid entities file: {e}"),
                ));
                return None;
            }
        }
    } else {
        entities
    };
    with_actions(entities, schema, file.path(), problems)
}
