//! `links.json`: template-linked policies, each with its own id.

use std::collections::HashMap;
use std::str::FromStr;

use cedar_policy as cedar;

use super::{PolicyInfo, PolicyKind, line_col_offset};
use crate::error::Problem;
use crate::source::{Location, SourceFile};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    id: String,
    template: String,
    values: HashMap<String, String>,
}

pub(super) fn link(
    file: &SourceFile,
    set: &mut cedar::PolicySet,
    info: &mut HashMap<cedar::PolicyId, PolicyInfo>,
    first_seen: &mut HashMap<String, Location>,
    problems: &mut Vec<Problem>,
) {
    let raw: Vec<RawLink> = match serde_json::from_str(file.text()) {
        Ok(raw) => raw,
        Err(e) => {
            let offset = line_col_offset(file.text(), e.line(), e.column());
            problems.push(Problem::at(
                file,
                offset,
                format!("invalid links file: {e}"),
                None,
            ));
            return;
        }
    };
    for l in raw {
        let offset = file.text().find(&format!("\"{}\"", l.id)).unwrap_or(0);
        if let Some(first) = first_seen.get(&l.id) {
            problems.push(Problem::at(
                file,
                offset,
                format!("duplicate policy id `{}`: also defined at {first}", l.id),
                None,
            ));
            continue;
        }
        let template_id = cedar::PolicyId::new(&l.template);
        let Some(template_info) = info
            .get(&template_id)
            .filter(|i| i.kind == PolicyKind::Template)
            .cloned()
        else {
            problems.push(Problem::at(
                file,
                offset,
                format!(
                    "link `{}` names `{}`, which is not a template",
                    l.id, l.template
                ),
                None,
            ));
            continue;
        };
        let mut values = HashMap::new();
        let mut broken = false;
        for (slot, value) in &l.values {
            let slot_id = match slot.as_str() {
                "?principal" => cedar::SlotId::principal(),
                "?resource" => cedar::SlotId::resource(),
                other => {
                    problems.push(Problem::at(file, offset, format!("link `{}` has unknown slot `{other}` (expected `?principal` or `?resource`)", l.id), None));
                    continue;
                }
            };
            match cedar::EntityUid::from_str(value) {
                Ok(uid)
                    if let Err(e) = super::workload_ids::check(
                        &uid.type_name().to_string(),
                        uid.id().unescaped(),
                    ) =>
                {
                    broken = true;
                    problems.push(Problem::at(
                        file,
                        offset,
                        format!("link `{}`: {e}", l.id),
                        None,
                    ));
                }
                Ok(uid) => {
                    values.insert(slot_id, uid);
                }
                Err(e) => {
                    broken = true;
                    problems.push(Problem::at(
                        file,
                        offset,
                        format!("link `{}`: `{value}` is not an entity uid: {e}", l.id),
                        None,
                    ));
                }
            }
        }
        if broken {
            continue;
        }
        let id = cedar::PolicyId::new(&l.id);
        match set.link(template_id, id.clone(), values) {
            Ok(()) => {
                first_seen.insert(l.id.clone(), file.location(offset));
                info.insert(
                    id.clone(),
                    PolicyInfo {
                        id: l.id.clone(),
                        location: template_info.location.clone(),
                        effect: template_info.effect,
                        kind: PolicyKind::Linked {
                            template: l.template.clone(),
                        },
                    },
                );
            }
            Err(e) => problems.push(Problem::at(
                file,
                offset,
                format!("link `{}`: {e}", l.id),
                None,
            )),
        }
    }
}
