//! Conversions between the CA's types and the agent API's wire messages, and error mapping to
//! gRPC statuses (messages name the problem; datastore internals are logged, not sent).

use std::time::{SystemTime, UNIX_EPOCH};

use tonic::Status;
use warden_api::v1 as pb;
use warden_identity::Bundle;

use crate::authority::{SignError, SignedSvid};
use crate::datastore::{DatastoreError, Entry, TokenError};

pub(crate) fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(crate) fn entry(e: &Entry) -> pb::Entry {
    pb::Entry {
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

pub(crate) fn bundle(b: &Bundle) -> pb::Bundle {
    pb::Bundle {
        trust_domain: b.trust_domain().to_string(),
        x509_authorities: b.x509_authorities().iter().map(|c| c.to_vec()).collect(),
        jwt_authorities: b
            .jwt_authorities()
            .iter()
            .map(|k| pb::JwtKey {
                kid: k.kid().to_owned(),
                public_key: k.public_key().to_vec(),
                expires_at: k.expires_at().map_or(0, unix),
            })
            .collect(),
        sequence: b.sequence(),
        refresh_hint: b
            .refresh_hint()
            .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
    }
}

pub(crate) fn svid(s: &SignedSvid) -> pb::X509Svid {
    pb::X509Svid {
        spiffe_id: s.spiffe_id.to_string(),
        cert_chain: s.cert_chain.iter().map(|c| c.to_vec()).collect(),
        expires_at: unix(s.not_after),
    }
}

pub(crate) fn sign_status(e: SignError) -> Status {
    match e {
        SignError::NoActiveKey(_) | SignError::Signing(_) => {
            tracing::error!(error = %e, "signing failed");
            Status::internal(e.to_string())
        }
        other => Status::invalid_argument(other.to_string()),
    }
}

pub(crate) fn ds_status(e: DatastoreError) -> Status {
    match e {
        DatastoreError::AgentBanned(id) => {
            Status::permission_denied(format!("agent `{id}` is banned"))
        }
        DatastoreError::NotFound { what, id } => {
            Status::not_found(format!("{what} `{id}` not found"))
        }
        DatastoreError::Invalid(m) => Status::invalid_argument(m),
        other => {
            tracing::error!(error = %other, "datastore error");
            Status::unavailable("the ca datastore is unavailable")
        }
    }
}

/// The status for a failed renewal: the agent was evicted, banned or superseded meanwhile.
pub(crate) fn renew_status(e: DatastoreError) -> Status {
    match e {
        DatastoreError::NotFound { id, .. } => {
            Status::permission_denied(format!("unknown agent `{id}` (never attested, or evicted)"))
        }
        DatastoreError::AgentSerialMismatch { .. } => Status::permission_denied(e.to_string()),
        other => ds_status(other),
    }
}

pub(crate) fn token_status(e: TokenError) -> Status {
    match e {
        TokenError::Unknown => Status::permission_denied("join token is unknown"),
        TokenError::Expired => Status::permission_denied("join token expired"),
        TokenError::AlreadyUsed => {
            Status::permission_denied("join token was already used (reused token)")
        }
        TokenError::Datastore(e) => ds_status(e),
    }
}
