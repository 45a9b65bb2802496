//! The SPIFFE bundle map: the bundles of several trust domains in one document,
//! `{"trust_domains": {"<trust domain>": <bundle>, ...}}` (rule B-7).

use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

use super::{BundleError, BundleSet, jwks};
use crate::TrustDomain;

/// The members of an object in document order, duplicates kept (serde_json's map would keep
/// only the last of two equal keys, hiding a duplicate trust domain).
struct Entries(Vec<(String, Value)>);

/// The top level of a bundle map; other members are ignored.
#[derive(serde::Deserialize)]
struct Document {
    trust_domains: Option<Entries>,
}

pub(super) fn encode(set: &BundleSet) -> String {
    let mut members = Map::new();
    for bundle in set.iter() {
        // Member bundles SHOULD omit the refresh hint (rule B-7).
        let value = jwks::encode_value(bundle, true, true, false);
        members.insert(bundle.trust_domain().name().to_owned(), value);
    }
    let mut doc = Map::new();
    doc.insert("trust_domains".into(), Value::Object(members));
    Value::Object(doc).to_string()
}

pub(super) fn decode(json: &[u8]) -> Result<BundleSet, BundleError> {
    let doc: Document =
        serde_json::from_slice(json).map_err(|e| BundleError::Json(e.to_string()))?;
    let Entries(entries) = doc.trust_domains.ok_or(BundleError::MissingTrustDomains)?;
    let mut set = BundleSet::new();
    for (name, value) in entries {
        let trust_domain = TrustDomain::new(&name).map_err(|e| BundleError::BadTrustDomain {
            name: name.clone(),
            reason: e.to_string(),
        })?;
        if set.get(&trust_domain).is_some() {
            return Err(BundleError::DuplicateTrustDomain(trust_domain.to_string()));
        }
        let member = value.to_string();
        let bundle = jwks::decode(trust_domain.clone(), member.as_bytes()).map_err(|e| {
            BundleError::MemberBundle {
                trust_domain: trust_domain.to_string(),
                reason: e.to_string(),
            }
        })?;
        set.insert(bundle);
    }
    Ok(set)
}

// === impl Entries ===

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(EntriesVisitor)
    }
}

struct EntriesVisitor;

impl<'de> Visitor<'de> for EntriesVisitor {
    type Value = Entries;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object mapping trust domains to bundles")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<String, Value>()? {
            entries.push(entry);
        }
        Ok(Entries(entries))
    }
}
