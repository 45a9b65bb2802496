//! Builds Workload API messages from a cache state and a caller's selectors. Every message is
//! complete state (W-6); `None` means the caller has no identity any more.

use std::collections::{BTreeSet, HashMap, HashSet};

use warden_api::workload::{JwtBundlesResponse, X509BundlesResponse, X509svid, X509svidResponse};
use warden_identity::{BundleSet, Selector, TrustDomain};

use crate::cache::{CacheState, Identity};

/// `spiffe://<td>`: the key of a bundle map (W-12).
fn bundle_key(td: &TrustDomain) -> String {
    format!("spiffe://{}", td.name())
}

/// The trust domains whose bundles the caller receives: its own and those its entries
/// federate with (when the agent holds a bundle for them).
fn trust_domains(state: &CacheState, matched: &[&Identity]) -> Vec<TrustDomain> {
    let mut tds = vec![state.trust_domain.clone()];
    for identity in matched {
        for td in &identity.entry.federates_with {
            if !tds.contains(td) && state.bundles.get(td).is_some() {
                tds.push(td.clone());
            }
        }
    }
    tds
}

/// The bundles a caller holds: its own trust domain's and those its entries federate with (what
/// `FetchX509Bundles` and `FetchJWTBundles` give it), to validate its JWT-SVIDs against.
pub(crate) fn caller_bundles(state: &CacheState, selectors: &BTreeSet<Selector>) -> BundleSet {
    let matched = state.matching(selectors);
    let mut set = BundleSet::new();
    for td in trust_domains(state, &matched) {
        if let Some(bundle) = state.bundles.get(&td) {
            set.insert(bundle.clone());
        }
    }
    set
}

/// `X509SVIDResponse` (W-7): one SVID per matching entry, default first, unique non-empty
/// hints, each with the bundle of its trust domain; federated bundles of the caller's entries.
pub(crate) fn x509_svids(
    state: &CacheState,
    selectors: &BTreeSet<Selector>,
) -> Option<X509svidResponse> {
    let matched = state.matching(selectors);
    let mut hints = HashSet::new();
    let mut svids = Vec::with_capacity(matched.len());
    for identity in &matched {
        let hint = &identity.entry.hint;
        if !hint.is_empty() && !hints.insert(hint.as_str()) {
            continue;
        }
        let td = identity.svid.spiffe_id().trust_domain();
        let Some(bundle) = state.bundles.get(&td) else {
            continue;
        };
        svids.push(X509svid {
            spiffe_id: identity.svid.spiffe_id().to_string(),
            x509_svid: identity.svid.chain_der(),
            x509_svid_key: identity.svid.key().secret_pkcs8_der().to_vec(),
            bundle: bundle.x509_authorities_der(),
            hint: hint.clone(),
        });
    }
    if svids.is_empty() {
        return None;
    }
    let federated_bundles = trust_domains(state, &matched)
        .into_iter()
        .filter(|td| *td != state.trust_domain)
        .filter_map(|td| {
            state
                .bundles
                .get(&td)
                .map(|b| (bundle_key(&td), b.x509_authorities_der()))
        })
        .collect();
    Some(X509svidResponse {
        svids,
        crl: Vec::new(),
        federated_bundles,
    })
}

/// `X509BundlesResponse` (W-8): own trust domain always, plus federated ones.
pub(crate) fn x509_bundles(
    state: &CacheState,
    selectors: &BTreeSet<Selector>,
) -> Option<X509BundlesResponse> {
    let matched = state.matching(selectors);
    if matched.is_empty() {
        return None;
    }
    let bundles: HashMap<String, Vec<u8>> = trust_domains(state, &matched)
        .into_iter()
        .filter_map(|td| {
            state
                .bundles
                .get(&td)
                .map(|b| (bundle_key(&td), b.x509_authorities_der()))
        })
        .collect();
    if !bundles.contains_key(&bundle_key(&state.trust_domain)) {
        return None;
    }
    Some(X509BundlesResponse {
        crl: Vec::new(),
        bundles,
    })
}

/// `JWTBundlesResponse` (W-10): JWKS with only `jwt-svid` keys, per trust domain.
pub(crate) fn jwt_bundles(
    state: &CacheState,
    selectors: &BTreeSet<Selector>,
) -> Option<JwtBundlesResponse> {
    let matched = state.matching(selectors);
    if matched.is_empty() {
        return None;
    }
    let bundles: HashMap<String, Vec<u8>> = trust_domains(state, &matched)
        .into_iter()
        .filter_map(|td| {
            state
                .bundles
                .get(&td)
                .map(|b| (bundle_key(&td), b.jwt_jwks().into_bytes()))
        })
        .collect();
    if !bundles.contains_key(&bundle_key(&state.trust_domain)) {
        return None;
    }
    Some(JwtBundlesResponse { bundles })
}

/// JSON claims as a protobuf `Struct`.
pub(crate) fn json_to_struct(
    map: &serde_json::Map<String, serde_json::Value>,
) -> prost_types::Struct {
    prost_types::Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    }
}

fn json_to_value(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(json_to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}
