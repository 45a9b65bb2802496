//! The CA's signing authority: the root (self-signed, or an upstream CA certificate acting as
//! the trust anchor), rotating intermediate signing CAs, rotating JWT-SVID keys, X.509-SVID
//! issuance from CSRs and JWT-SVID issuance, and the trust bundle built from all of them.
//!
//! Rotation (see [`Authority::tick`]): the next intermediate (and JWT key) is prepared at half
//! of the active one's life and published in the bundle at once; it becomes active when a
//! sixth of the active one's life remains; the old one stays in the bundle until it expires
//! (every SVID it signed expires no later than it does). Time comes from a [`Clock`], so the
//! schedule is tested without sleeping.

mod audit_key;
mod clock;
pub(crate) mod files;
mod init;
mod keys;
mod rotation;
mod svid;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::{Issuer, KeyPair};
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use warden_identity::{Bundle, JwtSigner, TrustDomain};

use crate::datastore::{Datastore, DatastoreError};

pub use audit_key::AUDIT_KEY_FILE;
pub(crate) use audit_key::prepare as prepare_audit_key;
pub use clock::{Clock, ManualClock, SystemClock};
pub use files::read_trust_domain;
pub use init::default_datastore;
pub use init::{InitOptions, InitReport, KeyType, init_ca};
pub use svid::ParsedCsr;
pub(crate) use svid::parse_csr;
pub use svid::{MAX_CSR_LEN, SignError, SignedJwtSvid, SignedSvid};

/// File (in the data dir) holding the root or upstream CA certificate, PEM.
pub const ROOT_CERT_FILE: &str = "root.crt.pem";
/// File (in the data dir, mode 0600) holding the root or upstream CA key, PKCS#8 PEM.
pub const ROOT_KEY_FILE: &str = "root.key.pem";
/// File (in the data dir) naming the CA's trust domain.
pub const TRUST_DOMAIN_FILE: &str = "trust_domain";
/// Directory (in the data dir, mode 0700) holding intermediate and JWT keys.
pub const KEYS_DIR: &str = "keys";

/// Why the authority cannot start or rotate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityError {
    /// A file could not be read or written.
    #[error("cannot {action} `{path}`: {source}")]
    Io {
        /// `read`, `write`, `create`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A certificate or key file does not hold what it should (the key itself is never shown).
    #[error("invalid {what} in `{path}`: {reason}")]
    BadFile {
        /// `certificate`, `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A secret file group or others may access (the CA writes them 0600).
    #[error(
        "{what} `{path}` is open to group or others (mode {mode:04o}; it must be 0600 or \
         stricter): if no one else can have read it, `chmod 600` it, else replace the key"
    )]
    KeyExposed {
        /// `private key`, `audit key`, `jwt signing key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A secret file owned by another user than the CA's (or root): that user can read and
    /// replace it whatever its mode.
    #[error(
        "{what} `{path}` is owned by uid {owner}, not by this process (uid {uid}) or root: that \
         user can read and replace it; if no one else can have read it, `chown` it, else \
         replace the key"
    )]
    KeyNotOwned {
        /// `private key`, `audit key`, `jwt signing key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The file's owner.
        owner: u32,
        /// This process's effective uid.
        uid: u32,
    },
    /// `ca init` found an existing CA.
    #[error("a ca already exists in `{0}` (use --force to replace it)")]
    AlreadyInitialized(PathBuf),
    /// `ca serve` found no CA.
    #[error("no ca in `{0}`: run `warden ca init` first")]
    NotInitialized(PathBuf),
    /// Building or signing a CA certificate failed.
    #[error("cannot create a ca certificate: {0}")]
    Certificate(String),
    /// The datastore failed.
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
    /// Bad settings (TTLs, trust domain).
    #[error("{0}")]
    Config(String),
}

impl AuthorityError {
    /// Whether this is a secret file someone else may have read (its mode or its owner): the
    /// key in it is not used, and the one who may hold it is named in the message.
    pub fn is_key_exposure(&self) -> bool {
        matches!(self, Self::KeyExposed { .. } | Self::KeyNotOwned { .. })
    }
}

/// TTLs the authority works with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttls {
    /// Intermediate CA and JWT key lifetime.
    pub ca: Duration,
    /// Default X.509-SVID lifetime.
    pub x509_svid: Duration,
    /// Default JWT-SVID lifetime.
    pub jwt_svid: Duration,
}

/// A signing intermediate CA. `Debug` never shows the key.
pub(crate) struct Intermediate {
    pub(crate) serial: String,
    pub(crate) cert: CertificateDer<'static>,
    /// `None` for a retired intermediate loaded from the journal (its key is not needed).
    pub(crate) issuer: Option<Issuer<'static, KeyPair>>,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}

/// A JWT-SVID signing key.
pub(crate) struct JwtKey {
    pub(crate) kid: String,
    /// SubjectPublicKeyInfo DER.
    pub(crate) spki: Vec<u8>,
    /// `None` for a retired key loaded from the journal.
    pub(crate) signer: Option<JwtSigner>,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}

/// Where a signing key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Prepared,
    Active,
    Retired,
}

/// What is published now: keys in their phases and the bundle built from them.
#[derive(Clone)]
pub(crate) struct Published {
    pub(crate) x509: Vec<(Arc<Intermediate>, Phase)>,
    pub(crate) jwt: Vec<(Arc<JwtKey>, Phase)>,
    pub(crate) bundle: Arc<Bundle>,
}

/// The signing authority. Cheap to share (`Arc`); signing never waits for rotation I/O.
pub struct Authority {
    td: TrustDomain,
    data_dir: PathBuf,
    ds: Datastore,
    clock: Arc<dyn Clock>,
    ttls: Ttls,
    root_cert: CertificateDer<'static>,
    root_issuer: Issuer<'static, KeyPair>,
    root_not_after: SystemTime,
    published: RwLock<Published>,
    rotate_lock: tokio::sync::Mutex<()>,
    bundle_tx: watch::Sender<Arc<Bundle>>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.td)
            .field("data_dir", &self.data_dir)
            .field("ttls", &self.ttls)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Intermediate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intermediate")
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

// === impl Authority ===

impl Authority {
    /// Loads the CA from `data_dir` (root from files, intermediates and JWT keys from the
    /// datastore journal and their key files), then runs one [`tick`](Self::tick) so that an
    /// active intermediate and JWT key exist.
    pub async fn load(
        data_dir: &Path,
        td: TrustDomain,
        ds: Datastore,
        clock: Arc<dyn Clock>,
        ttls: Ttls,
    ) -> Result<Arc<Self>, AuthorityError> {
        if ttls.ca < Duration::from_secs(6) {
            return Err(AuthorityError::Config(format!(
                "ca ttl `{}` is too short (at least 6s)",
                humantime::format_duration(ttls.ca)
            )));
        }
        let (root_cert, root_key) = files::read_root(data_dir)?;
        let root_not_after =
            keys::cert_not_after(&root_cert).map_err(|reason| AuthorityError::BadFile {
                what: "certificate",
                path: data_dir.join(ROOT_CERT_FILE),
                reason,
            })?;
        let root_issuer = Issuer::from_ca_cert_der(&root_cert, root_key).map_err(|e| {
            AuthorityError::BadFile {
                what: "certificate",
                path: data_dir.join(ROOT_CERT_FILE),
                reason: e.to_string(),
            }
        })?;
        let (x509, jwt) = rotation::load_journal(data_dir, &ds, &root_cert, clock.now()).await?;
        let sequence = ds.get_bundle(&td).await?.map_or(0, |b| b.sequence());
        let mut bundle = Bundle::new(td.clone());
        bundle.set_sequence(sequence);
        let bundle = Arc::new(bundle);
        let (bundle_tx, _) = watch::channel(Arc::clone(&bundle));
        let authority = Arc::new(Self {
            td,
            data_dir: data_dir.to_path_buf(),
            ds,
            clock,
            ttls,
            root_cert,
            root_issuer,
            root_not_after,
            published: RwLock::new(Published { x509, jwt, bundle }),
            rotate_lock: tokio::sync::Mutex::new(()),
            bundle_tx,
        });
        authority.tick_inner(true).await?;
        Ok(authority)
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.td
    }

    /// The CA data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The TTLs in force.
    pub fn ttls(&self) -> Ttls {
        self.ttls
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The datastore.
    pub fn datastore(&self) -> &Datastore {
        &self.ds
    }

    /// The root (or upstream) CA certificate: the trust anchor.
    pub fn root_cert(&self) -> &CertificateDer<'static> {
        &self.root_cert
    }

    /// The current own bundle.
    pub fn bundle(&self) -> Arc<Bundle> {
        Arc::clone(&self.read().bundle)
    }

    /// Follows the own bundle as it changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Bundle>> {
        self.bundle_tx.subscribe()
    }

    /// NotAfter of the active intermediate (the CA's own expiry for metrics), if any.
    pub fn active_ca_not_after(&self) -> Option<SystemTime> {
        self.read()
            .x509
            .iter()
            .find(|(_, p)| *p == Phase::Active)
            .map(|(i, _)| i.not_after)
    }

    /// Serials of the journaled intermediates with their phase (`prepared`, `active`,
    /// `retired`), oldest first; for status output and tests.
    pub fn intermediates(&self) -> Vec<(String, &'static str)> {
        self.read()
            .x509
            .iter()
            .map(|(i, p)| (i.serial.clone(), p.as_str()))
            .collect()
    }

    /// Runs the rotation schedule at the clock's current time: creates, prepares, activates
    /// and retires intermediates and JWT keys as due, journals every change in the datastore,
    /// and publishes a new bundle (sequence + 1) when it changed. Returns whether it changed.
    pub async fn tick(&self) -> Result<bool, AuthorityError> {
        self.tick_inner(false).await
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Published> {
        self.published
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn publish(&self, p: Published) {
        let bundle = Arc::clone(&p.bundle);
        *self
            .published
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = p;
        self.bundle_tx.send_replace(bundle);
    }
}

// === impl Phase ===

impl Phase {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Phase::Prepared => "prepared",
            Phase::Active => "active",
            Phase::Retired => "retired",
        }
    }
}
