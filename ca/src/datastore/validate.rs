//! Checks on registration entries beyond what their types already guarantee: an ID that is not
//! reserved, selectors present, TTLs in range, DNS names well formed, hint short enough. Returns
//! the entry normalised (selectors sorted and deduplicated, DNS names lowercased).
//!
//! Parent IDs are not restricted beyond "not the entry's own ID": a parent is an agent ID (the
//! entry goes to that agent), the CA's ID (the entry is a node alias) or a node alias's ID (the
//! entry goes to every agent with the alias's selectors). Since no entry may have an agent ID or
//! the CA's ID, an entry parented to `/agent/<x>` reaches only agent `<x>`, and an alias can
//! neither stand in for an agent nor for the CA.

use warden_identity::SpiffeId;

use super::error::EntryError;
use super::model::NewEntry;
use super::{AGENT_PATH_PREFIX, ca_spiffe_id};

/// Smallest non-default SVID TTL, seconds.
pub const MIN_SVID_TTL: u32 = 5;
/// Largest X.509-SVID TTL, seconds (30 days).
pub const MAX_X509_SVID_TTL: u32 = 30 * 24 * 3600;
/// Largest JWT-SVID TTL, seconds (1 day).
pub const MAX_JWT_SVID_TTL: u32 = 24 * 3600;
/// Longest hint, bytes (W-13).
pub const MAX_HINT_LEN: usize = 1024;

const MAX_DNS_NAME_LEN: usize = 253;
const MAX_DNS_LABEL_LEN: usize = 63;

/// Validates and normalises an entry.
pub(crate) fn validate_entry(e: &NewEntry) -> Result<NewEntry, EntryError> {
    let mut e = e.clone();
    if e.spiffe_id.path().is_empty() {
        return Err(EntryError::RootId(e.spiffe_id.to_string()));
    }
    check_not_reserved(&e.spiffe_id)?;
    if e.spiffe_id == e.parent_id {
        return Err(EntryError::OwnParent(e.spiffe_id.to_string()));
    }
    e.selectors.sort();
    e.selectors.dedup();
    if e.selectors.is_empty() {
        return Err(EntryError::NoSelectors(e.spiffe_id.to_string()));
    }
    check_ttl("x509_svid_ttl", e.x509_svid_ttl, MAX_X509_SVID_TTL)?;
    check_ttl("jwt_svid_ttl", e.jwt_svid_ttl, MAX_JWT_SVID_TTL)?;
    let mut dns: Vec<String> = Vec::with_capacity(e.dns_names.len());
    for name in &e.dns_names {
        let name = check_dns_name(name)?;
        if !dns.contains(&name) {
            dns.push(name);
        }
    }
    e.dns_names = dns;
    e.federates_with.sort();
    e.federates_with.dedup();
    if e.hint.len() > MAX_HINT_LEN {
        return Err(EntryError::HintTooLong(e.hint.len()));
    }
    Ok(e)
}

/// Refuses the CA's own ID, any other ID under the CA's `/warden/` namespace (kept for the
/// CA's own identities, as SPIRE keeps `/spire/`) and any ID under the agent prefix (or the bare
/// `/agent`).
pub(crate) fn check_not_reserved(id: &SpiffeId) -> Result<(), EntryError> {
    let reserved = |reason| EntryError::ReservedId {
        id: id.to_string(),
        reason,
    };
    if *id == ca_spiffe_id(&id.trust_domain()) {
        return Err(reserved("it is the ca's own id (`/warden/ca`)"));
    }
    if id.path() == "/warden" || id.path().starts_with("/warden/") {
        return Err(reserved("ids under `/warden/` are kept for the ca"));
    }
    let agent_root = AGENT_PATH_PREFIX.trim_end_matches('/');
    if id.path() == agent_root || id.path().starts_with(AGENT_PATH_PREFIX) {
        return Err(reserved("ids under `/agent/` are agent ids"));
    }
    Ok(())
}

fn check_ttl(field: &'static str, value: u32, max: u32) -> Result<(), EntryError> {
    if value == 0 || (MIN_SVID_TTL..=max).contains(&value) {
        Ok(())
    } else {
        Err(EntryError::TtlOutOfRange {
            field,
            value,
            min: MIN_SVID_TTL,
            max,
        })
    }
}

/// A DNS host name (RFC 1123), optionally with a leading `*.` wildcard label; lowercased.
fn check_dns_name(name: &str) -> Result<String, EntryError> {
    let bad = |reason| EntryError::BadDnsName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > MAX_DNS_NAME_LEN {
        return Err(bad("it is longer than 253 bytes"));
    }
    let lower = name.to_ascii_lowercase();
    let rest = lower.strip_prefix("*.").unwrap_or(&lower);
    for label in rest.split('.') {
        if label.is_empty() {
            return Err(bad("it has an empty label"));
        }
        if label.len() > MAX_DNS_LABEL_LEN {
            return Err(bad("a label is longer than 63 bytes"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad(
                "only letters, digits, `-` and `.` are allowed (and a leading `*.`)",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("a label starts or ends with `-`"));
        }
    }
    Ok(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> NewEntry {
        NewEntry {
            spiffe_id: "spiffe://example.org/web".parse().unwrap(),
            parent_id: "spiffe://example.org/agent/join_token/abc".parse().unwrap(),
            selectors: vec![
                "unix:uid:1000".parse().unwrap(),
                "unix:uid:1000".parse().unwrap(),
            ],
            x509_svid_ttl: 0,
            jwt_svid_ttl: 300,
            dns_names: vec![
                "Web.Example.org".into(),
                "*.svc.local".into(),
                "web.example.org".into(),
            ],
            federates_with: vec![],
            hint: String::new(),
        }
    }

    #[test]
    fn normalises_selectors_and_dns_names() {
        let e = validate_entry(&entry()).unwrap();
        assert_eq!(e.selectors.len(), 1);
        assert_eq!(
            e.dns_names,
            vec!["web.example.org".to_owned(), "*.svc.local".to_owned()]
        );
    }

    #[test]
    fn rejects_ttl_below_minimum_and_above_maximum() {
        let mut e = entry();
        e.x509_svid_ttl = 1;
        assert!(matches!(
            validate_entry(&e),
            Err(EntryError::TtlOutOfRange {
                field: "x509_svid_ttl",
                ..
            })
        ));
        e.x509_svid_ttl = 0;
        e.jwt_svid_ttl = MAX_JWT_SVID_TTL + 1;
        let err = validate_entry(&e).unwrap_err();
        assert!(
            err.to_string()
                .contains("jwt_svid_ttl `86401` is out of range"),
            "{err}"
        );
    }

    #[test]
    fn rejects_bad_dns_names() {
        for name in ["", "a..b", "-a.b", "a_b.c", "a.*.b", &"x".repeat(64), "a b"] {
            let mut e = entry();
            e.dns_names = vec![name.to_owned()];
            assert!(
                matches!(validate_entry(&e), Err(EntryError::BadDnsName { .. })),
                "{name:?}"
            );
        }
    }

    #[test]
    fn rejects_no_selectors_root_id_reserved_id_own_parent_and_long_hint() {
        let mut e = entry();
        e.selectors.clear();
        assert!(matches!(
            validate_entry(&e),
            Err(EntryError::NoSelectors(_))
        ));
        let mut e = entry();
        e.spiffe_id = "spiffe://example.org".parse().unwrap();
        assert!(matches!(validate_entry(&e), Err(EntryError::RootId(_))));
        let mut e = entry();
        e.parent_id = e.spiffe_id.clone();
        assert!(matches!(validate_entry(&e), Err(EntryError::OwnParent(_))));
        for reserved in [
            "/warden/ca",
            "/warden",
            "/warden/ca2",
            "/warden/cax/y",
            "/warden/server",
            "/agent",
            "/agent/join_token/abc",
            "/agent/x509pop/aa/b",
        ] {
            let mut e = entry();
            e.spiffe_id = format!("spiffe://example.org{reserved}").parse().unwrap();
            assert!(
                matches!(validate_entry(&e), Err(EntryError::ReservedId { .. })),
                "{reserved}"
            );
        }
        for fine in [
            "/agents/x",
            "/agentx",
            "/wardens/x",
            "/wardenx",
            "/x/warden/ca",
        ] {
            let mut e = entry();
            e.spiffe_id = format!("spiffe://example.org{fine}").parse().unwrap();
            assert!(validate_entry(&e).is_ok(), "{fine}");
        }
        let mut e = entry();
        e.hint = "h".repeat(MAX_HINT_LEN + 1);
        assert!(matches!(
            validate_entry(&e),
            Err(EntryError::HintTooLong(1025))
        ));
    }
}
