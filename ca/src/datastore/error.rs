//! The datastore's errors: what failed, named, without secrets.

/// Why a datastore call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatastoreError {
    /// The datastore URL or path is unusable.
    #[error("invalid datastore location `{location}`: {reason}")]
    Location {
        /// The URL with any password removed, or the path.
        location: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The SQLite file or its directory could not be created or opened.
    #[error("cannot create the datastore file `{path}`: {source}")]
    CreateFile {
        /// The file or directory.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Connecting to the database failed.
    #[error("cannot open the datastore `{location}`: {source}")]
    Connect {
        /// The URL with any password removed, or the path.
        location: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// Applying the schema migrations failed.
    #[error("cannot migrate the datastore schema: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("datastore query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// A registration entry is invalid; nothing was written.
    #[error(transparent)]
    InvalidEntry(#[from] EntryError),
    /// A value given to the datastore is invalid; nothing was written.
    #[error("{0}")]
    Invalid(String),
    /// The named thing does not exist.
    #[error("{what} `{id}` not found")]
    NotFound {
        /// `entry`, `agent`, `bundle`, `ca record`.
        what: &'static str,
        /// Its identifier.
        id: String,
    },
    /// The thing already exists.
    #[error("{what} `{id}` already exists")]
    AlreadyExists {
        /// `entry`, `ca record`, `issued svid`.
        what: &'static str,
        /// Its identifier.
        id: String,
    },
    /// The agent is banned: it may not attest or renew again.
    #[error("agent `{0}` is banned")]
    AgentBanned(String),
    /// A renewal presented a serial that is no longer the agent's current or previous one (another
    /// renewal or an attestation came first).
    #[error("agent `{id}` svid serial `{serial}` is no longer current (svid serial mismatch)")]
    AgentSerialMismatch {
        /// The agent.
        id: String,
        /// The serial presented.
        serial: String,
    },
    /// The entry was changed concurrently (its revision moved on).
    #[error("entry `{id}` was changed concurrently (revision {expected} is no longer current)")]
    Conflict {
        /// The entry ID.
        id: String,
        /// The revision the caller started from.
        expected: u64,
    },
    /// A stored row does not parse: the database was edited or is corrupt.
    #[error("stored {what} `{id}` is corrupt: {detail}")]
    Corrupt {
        /// `entry`, `agent`, `bundle`, `ca record`, `audit head`.
        what: &'static str,
        /// Its identifier.
        id: String,
        /// What does not parse.
        detail: String,
    },
}

/// Why a registration entry is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// An entry needs at least one selector.
    #[error("entry for `{0}` has no selectors; at least one is required")]
    NoSelectors(String),
    /// The SPIFFE ID has no path (X-2: a workload ID names a workload, not a trust domain).
    #[error("entry spiffe id `{0}` has no path")]
    RootId(String),
    /// The SPIFFE ID is reserved: the CA's own ID, or an agent ID (under `/agent/`). A workload
    /// holding one would pass for the CA, or for that agent on the agent API.
    #[error("entry spiffe id `{id}` is reserved: {reason}")]
    ReservedId {
        /// The ID given.
        id: String,
        /// Which reserved path it is.
        reason: &'static str,
    },
    /// An entry may not be its own parent.
    #[error("entry spiffe id `{0}` is also its parent id")]
    OwnParent(String),
    /// A TTL outside the accepted range.
    #[error("{field} `{value}` is out of range (0 for the default, or {min}..={max} seconds)")]
    TtlOutOfRange {
        /// `x509_svid_ttl` or `jwt_svid_ttl`.
        field: &'static str,
        /// The value given.
        value: u32,
        /// Smallest non-default value.
        min: u32,
        /// Largest value.
        max: u32,
    },
    /// A DNS name that is not a valid host name.
    #[error("dns name `{name}` is invalid: {reason}")]
    BadDnsName {
        /// The name given.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The hint is longer than 1024 bytes (W-13).
    #[error("hint is {0} bytes long; the limit is 1024")]
    HintTooLong(usize),
}

/// Why a join token was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No such token was ever created.
    #[error("join token is unknown")]
    Unknown,
    /// The token expired before it was used.
    #[error("join token expired")]
    Expired,
    /// The token was already used (tokens are single-use).
    #[error("join token was already used")]
    AlreadyUsed,
    /// The datastore failed.
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
}

impl From<sqlx::Error> for TokenError {
    fn from(e: sqlx::Error) -> Self {
        TokenError::Datastore(DatastoreError::Query(e))
    }
}
