//! Conversions between the admin API's messages and the datastore's typed records, and from
//! datastore errors to gRPC statuses. Every string from the wire is parsed here, and a bad one is
//! refused with `InvalidArgument` naming the field and the value.

use std::str::FromStr;
use std::time::UNIX_EPOCH;

use tonic::Status;
use warden_api::v1;
use warden_identity::{Bundle, Selector, SpiffeId, TrustDomain};

use crate::datastore::{AgentRecord, AuditRecord, DatastoreError, Entry, EntryFilter, NewEntry};

/// The gRPC status for a datastore error: bad input is `InvalidArgument`, a missing thing
/// `NotFound`, a duplicate `AlreadyExists`, a stale revision or banned agent `FailedPrecondition`,
/// a corrupt row `DataLoss`, anything else `Internal`. The message is the error's own.
pub fn status_from_datastore(err: DatastoreError) -> Status {
    let msg = err.to_string();
    match err {
        DatastoreError::InvalidEntry(_) | DatastoreError::Invalid(_) => {
            Status::invalid_argument(msg)
        }
        DatastoreError::NotFound { .. } => Status::not_found(msg),
        DatastoreError::AlreadyExists { .. } => Status::already_exists(msg),
        DatastoreError::Conflict { .. }
        | DatastoreError::AgentBanned(_)
        | DatastoreError::AgentSerialMismatch { .. } => Status::failed_precondition(msg),
        DatastoreError::Corrupt { .. } => Status::data_loss(msg),
        _ => {
            tracing::error!(error = %msg, "admin api: datastore failure");
            Status::internal(msg)
        }
    }
}

fn parse<T>(field: &str, value: &str) -> Result<T, Status>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    value
        .parse()
        .map_err(|e| Status::invalid_argument(format!("invalid {field} `{value}`: {e}")))
}

fn parse_opt<T>(field: &str, value: &str) -> Result<Option<T>, Status>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    if value.is_empty() {
        Ok(None)
    } else {
        parse(field, value).map(Some)
    }
}

/// A SPIFFE ID from the wire that must belong to `td`.
pub(crate) fn member_id(field: &str, value: &str, td: &TrustDomain) -> Result<SpiffeId, Status> {
    let id: SpiffeId = parse(field, value)?;
    if !id.is_member_of(td) {
        return Err(Status::invalid_argument(format!(
            "{field} `{value}` is not in the trust domain `{td}` of this ca"
        )));
    }
    Ok(id)
}

/// An entry message to a [`NewEntry`] (its `id`, `revision` and times are ignored).
pub(crate) fn new_entry(e: &v1::Entry, td: &TrustDomain) -> Result<NewEntry, Status> {
    let selectors = e
        .selectors
        .iter()
        .map(|s| parse::<Selector>("selector", s))
        .collect::<Result<Vec<_>, _>>()?;
    let federates_with = e
        .federates_with
        .iter()
        .map(|s| parse::<TrustDomain>("federates_with trust domain", s))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(own) = federates_with.iter().find(|f| *f == td) {
        return Err(Status::invalid_argument(format!(
            "federates_with `{own}` is this ca's own trust domain"
        )));
    }
    Ok(NewEntry {
        spiffe_id: member_id("spiffe_id", &e.spiffe_id, td)?,
        parent_id: member_id("parent_id", &e.parent_id, td)?,
        selectors,
        x509_svid_ttl: e.x509_svid_ttl,
        jwt_svid_ttl: e.jwt_svid_ttl,
        dns_names: e.dns_names.clone(),
        federates_with,
        hint: e.hint.clone(),
    })
}

/// An entry message with its `id` and `revision` to a full [`Entry`] for an update.
pub(crate) fn entry_for_update(e: &v1::Entry, td: &TrustDomain) -> Result<Entry, Status> {
    if e.id.is_empty() {
        return Err(Status::invalid_argument(
            "entry id is required for an update",
        ));
    }
    let n = new_entry(e, td)?;
    Ok(Entry {
        id: e.id.clone(),
        spiffe_id: n.spiffe_id,
        parent_id: n.parent_id,
        selectors: n.selectors,
        x509_svid_ttl: n.x509_svid_ttl,
        jwt_svid_ttl: n.jwt_svid_ttl,
        dns_names: n.dns_names,
        federates_with: n.federates_with,
        hint: n.hint,
        revision: e.revision,
        created_at: 0,
        updated_at: 0,
    })
}

pub(crate) fn entry_to_proto(e: &Entry) -> v1::Entry {
    v1::Entry {
        id: e.id.clone(),
        spiffe_id: e.spiffe_id.to_string(),
        parent_id: e.parent_id.to_string(),
        selectors: e.selectors.iter().map(ToString::to_string).collect(),
        x509_svid_ttl: e.x509_svid_ttl,
        jwt_svid_ttl: e.jwt_svid_ttl,
        dns_names: e.dns_names.clone(),
        federates_with: e.federates_with.iter().map(ToString::to_string).collect(),
        hint: e.hint.clone(),
        revision: e.revision,
        created_at: e.created_at,
        updated_at: e.updated_at,
    }
}

pub(crate) fn filter(f: &v1::ListEntriesFilter) -> Result<EntryFilter, Status> {
    Ok(EntryFilter {
        parent_id: parse_opt("parent_id", &f.parent_id)?,
        spiffe_id: parse_opt("spiffe_id", &f.spiffe_id)?,
        selector: parse_opt("selector", &f.selector)?,
    })
}

pub(crate) fn agent_to_proto(a: &AgentRecord) -> v1::Agent {
    v1::Agent {
        spiffe_id: a.spiffe_id.to_string(),
        attestor: a.attestor.clone(),
        selectors: a.selectors.iter().map(ToString::to_string).collect(),
        serial: a.serial.clone(),
        expires_at: a.expires_at,
        banned: a.banned,
        attested_at: a.attested_at,
        renewed_at: a.renewed_at,
    }
}

pub(crate) fn agent_id(value: &str) -> Result<SpiffeId, Status> {
    parse("agent spiffe_id", value)
}

pub(crate) fn trust_domain(value: &str) -> Result<TrustDomain, Status> {
    parse("trust_domain", value)
}

pub(crate) fn bundle_to_proto(b: &Bundle) -> v1::Bundle {
    v1::Bundle {
        trust_domain: b.trust_domain().to_string(),
        x509_authorities: b
            .x509_authorities()
            .iter()
            .map(|c| c.as_ref().to_vec())
            .collect(),
        jwt_authorities: b
            .jwt_authorities()
            .iter()
            .map(|k| v1::JwtKey {
                kid: k.kid().to_owned(),
                public_key: k.public_key().to_vec(),
                expires_at: k
                    .expires_at()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            })
            .collect(),
        sequence: b.sequence(),
        refresh_hint: b
            .refresh_hint()
            .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
    }
}

pub(crate) fn audit_to_proto(r: AuditRecord) -> v1::AuditRecord {
    v1::AuditRecord {
        seq: r.seq,
        at: r.at,
        kind: r.kind,
        actor: r.actor,
        subject: r.subject,
        detail: r.detail,
        hash: r.hash,
    }
}
