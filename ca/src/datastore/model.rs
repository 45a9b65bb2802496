//! The records the datastore keeps, as typed values (IDs and selectors are parsed, never strings).

use std::fmt;
use std::str::FromStr;

use warden_identity::{Selector, SpiffeId, TrustDomain};

/// A registration entry to create: which SPIFFE ID a workload (or node alias) gets, under which
/// parent, when all of its selectors match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// The identity handed out.
    pub spiffe_id: SpiffeId,
    /// The agent that may mint it, a node alias, or the CA's own ID for a node alias entry.
    pub parent_id: SpiffeId,
    /// All must match; at least one.
    pub selectors: Vec<Selector>,
    /// Seconds; 0 means the CA default.
    pub x509_svid_ttl: u32,
    /// Seconds; 0 means the CA default.
    pub jwt_svid_ttl: u32,
    /// DNS SANs for the X.509-SVID.
    pub dns_names: Vec<String>,
    /// Trust domains whose bundles this entry's workloads also receive.
    pub federates_with: Vec<TrustDomain>,
    /// Workload API hint (W-7, W-13); empty for none.
    pub hint: String,
}

/// A stored registration entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Assigned by the datastore (32 hex characters).
    pub id: String,
    /// The identity handed out.
    pub spiffe_id: SpiffeId,
    /// The agent, node alias or CA ID it is parented to.
    pub parent_id: SpiffeId,
    /// Sorted, deduplicated; all must match.
    pub selectors: Vec<Selector>,
    /// Seconds; 0 means the CA default.
    pub x509_svid_ttl: u32,
    /// Seconds; 0 means the CA default.
    pub jwt_svid_ttl: u32,
    /// DNS SANs for the X.509-SVID.
    pub dns_names: Vec<String>,
    /// Trust domains whose bundles this entry's workloads also receive.
    pub federates_with: Vec<TrustDomain>,
    /// Workload API hint; empty for none.
    pub hint: String,
    /// Starts at 1, bumped on every update.
    pub revision: u64,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

/// Which entries [`Datastore::list_entries`](super::Datastore::list_entries) returns: all of
/// the set fields must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryFilter {
    /// Only entries with this parent.
    pub parent_id: Option<SpiffeId>,
    /// Only entries with this SPIFFE ID.
    pub spiffe_id: Option<SpiffeId>,
    /// Only entries having this selector (among others).
    pub selector: Option<Selector>,
}

/// An attested node agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    /// `spiffe://<td>/agent/<attestor>/<id>`.
    pub spiffe_id: SpiffeId,
    /// `join_token` or `x509pop`.
    pub attestor: String,
    /// Node selectors found at attestation (used for node alias resolution).
    pub selectors: Vec<Selector>,
    /// Serial (hex) of the agent's current SVID.
    pub serial: String,
    /// Serial (hex) of the SVID the agent renewed from, accepted besides `serial` until the agent
    /// first presents `serial`: a renewal whose reply was lost does not lock the agent out.
    /// `None` after an attestation and once the new SVID has been presented.
    pub previous_serial: Option<String>,
    /// NotAfter of the agent's current SVID, unix seconds.
    pub expires_at: i64,
    /// A banned agent is refused forever.
    pub banned: bool,
    /// Unix seconds.
    pub attested_at: i64,
    /// Unix seconds.
    pub renewed_at: i64,
}

/// A renewal of an attested agent's SVID, for [`Datastore::renew_agent`](super::Datastore::renew_agent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRenewal {
    /// The agent.
    pub spiffe_id: SpiffeId,
    /// Serial (hex) of the SVID the agent renewed with: its current or previous serial. It
    /// becomes the previous serial.
    pub presented_serial: String,
    /// Serial (hex) of the new SVID.
    pub serial: String,
    /// NotAfter of the new SVID, unix seconds.
    pub expires_at: i64,
    /// Unix seconds.
    pub renewed_at: i64,
}

/// What a CA journal record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaRecordKind {
    /// The root (or upstream-issued) CA certificate.
    Root,
    /// An intermediate X.509 signing CA.
    Intermediate,
    /// A JWT-SVID signing key.
    Jwt,
}

/// Where a CA key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaRecordState {
    /// Published in the bundle, not yet signing.
    Prepared,
    /// Signing.
    Active,
    /// No longer signing; published until its last SVID expires.
    Retired,
}

/// One CA key in the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaRecord {
    /// Root, intermediate or JWT key.
    pub kind: CaRecordKind,
    /// Serial (hex) for certificates, `kid` for JWT keys; unique.
    pub id: String,
    /// Certificate DER for root/intermediate; SubjectPublicKeyInfo DER for a JWT key.
    pub der: Vec<u8>,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// Prepared, active or retired.
    pub state: CaRecordState,
}

/// One issued X.509-SVID, for the issuance log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedSvid {
    /// Certificate serial, hex; unique.
    pub serial: String,
    /// The SVID's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// The entry it was issued for.
    pub entry_id: String,
    /// Unix seconds.
    pub issued_at: i64,
    /// NotAfter, unix seconds.
    pub expires_at: i64,
}

/// One issued JWT-SVID, for the audit log (the token itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedJwtSvid {
    /// Its subject.
    pub spiffe_id: SpiffeId,
    /// The entry it was issued for.
    pub entry_id: String,
    /// Its `aud`.
    pub audience: Vec<String>,
    /// `kid` of the key that signed it.
    pub kid: String,
    /// Its `exp`, unix seconds.
    pub expires_at: i64,
}

/// An audit event to append.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// Dotted kind: `entry.created`, `token.used`, `svid.issued`, `jwt_svid.issued`,
    /// `ca.rotated`, ...
    pub kind: String,
    /// Who did it: `admin:uid=1000`, an agent SPIFFE ID, or `ca`.
    pub actor: String,
    /// What it was done to.
    pub subject: String,
    /// Details; never a secret.
    pub detail: serde_json::Value,
}

/// A stored audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// 1, 2, 3, ... without gaps.
    pub seq: u64,
    /// Unix seconds.
    pub at: i64,
    /// Dotted kind.
    pub kind: String,
    /// Who did it.
    pub actor: String,
    /// What it was done to.
    pub subject: String,
    /// JSON text, exactly as hashed.
    pub detail: String,
    /// Hex SHA-256 chaining this record to the previous one.
    pub hash: String,
}

/// The result of recomputing the audit chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditVerification {
    /// Records checked.
    pub records: u64,
    /// The first record that does not verify, if any.
    pub first_bad: Option<BadAuditRecord>,
}

/// A record that breaks the audit chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadAuditRecord {
    /// Its sequence number (for a deleted record, the missing number).
    pub seq: u64,
    /// What is wrong, e.g. `record 7 was edited (its hash does not match its contents)`.
    pub problem: String,
}

// === impl Entry ===

impl Entry {
    /// The fields that an update may change, as a [`NewEntry`].
    pub fn to_new(&self) -> NewEntry {
        NewEntry {
            spiffe_id: self.spiffe_id.clone(),
            parent_id: self.parent_id.clone(),
            selectors: self.selectors.clone(),
            x509_svid_ttl: self.x509_svid_ttl,
            jwt_svid_ttl: self.jwt_svid_ttl,
            dns_names: self.dns_names.clone(),
            federates_with: self.federates_with.clone(),
            hint: self.hint.clone(),
        }
    }
}

// === impl EntryFilter ===

impl EntryFilter {
    pub(crate) fn matches(&self, e: &Entry) -> bool {
        self.parent_id.as_ref().is_none_or(|p| *p == e.parent_id)
            && self.spiffe_id.as_ref().is_none_or(|s| *s == e.spiffe_id)
            && self
                .selector
                .as_ref()
                .is_none_or(|s| e.selectors.contains(s))
    }
}

// === impl AuditVerification ===

impl AuditVerification {
    /// True when every record verifies and none is missing.
    pub fn is_ok(&self) -> bool {
        self.first_bad.is_none()
    }
}

// === impl CaRecordKind ===

impl CaRecordKind {
    /// `root`, `intermediate` or `jwt`.
    pub fn as_str(self) -> &'static str {
        match self {
            CaRecordKind::Root => "root",
            CaRecordKind::Intermediate => "intermediate",
            CaRecordKind::Jwt => "jwt",
        }
    }
}

impl fmt::Display for CaRecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CaRecordKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "root" => Ok(CaRecordKind::Root),
            "intermediate" => Ok(CaRecordKind::Intermediate),
            "jwt" => Ok(CaRecordKind::Jwt),
            other => Err(format!("unknown ca record kind `{other}`")),
        }
    }
}

// === impl CaRecordState ===

impl CaRecordState {
    /// `prepared`, `active` or `retired`.
    pub fn as_str(self) -> &'static str {
        match self {
            CaRecordState::Prepared => "prepared",
            CaRecordState::Active => "active",
            CaRecordState::Retired => "retired",
        }
    }
}

impl fmt::Display for CaRecordState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CaRecordState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "prepared" => Ok(CaRecordState::Prepared),
            "active" => Ok(CaRecordState::Active),
            "retired" => Ok(CaRecordState::Retired),
            other => Err(format!("unknown ca record state `{other}`")),
        }
    }
}
