//! `warden ca init`: creates the root (or adopts an upstream CA), the data dir and the
//! datastore, and journals the root.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384};
use warden_identity::TrustDomain;
use zeroize::Zeroizing;

use super::{AuthorityError, KEYS_DIR, ROOT_CERT_FILE, ROOT_KEY_FILE, files, keys};
use crate::datastore::{CaRecord, CaRecordKind, CaRecordState, Datastore};

/// The root key algorithm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyType {
    /// ECDSA P-256 with SHA-256 (the default).
    #[default]
    EcP256,
    /// ECDSA P-384 with SHA-384.
    EcP384,
}

/// What `ca init` does.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The trust domain.
    pub trust_domain: TrustDomain,
    /// Where the CA keeps its keys (and by default its datastore).
    pub data_dir: PathBuf,
    /// Datastore URL; default `DATA_DIR/datastore.sqlite3`.
    pub datastore: Option<String>,
    /// Upstream CA certificate and key (PEM files): the CA signs its intermediates with them
    /// and the upstream certificate becomes the trust anchor.
    pub upstream: Option<(PathBuf, PathBuf)>,
    /// Root key algorithm (ignored with an upstream CA).
    pub key_type: KeyType,
    /// Root lifetime (ignored with an upstream CA).
    pub root_ttl: Duration,
    /// Replace an existing CA.
    pub force: bool,
}

/// What `ca init` created.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// Serial (hex) of the trust anchor.
    pub root_serial: String,
    /// The trust anchor's certificate file.
    pub root_cert_path: PathBuf,
    /// Where the datastore is.
    pub datastore: String,
    /// Whether the anchor is an upstream CA.
    pub upstream: bool,
}

impl FromStr for KeyType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ec-p256" => Ok(Self::EcP256),
            "ec-p384" => Ok(Self::EcP384),
            other => Err(format!(
                "unknown key type `{other}` (expected `ec-p256` or `ec-p384`)"
            )),
        }
    }
}

/// The default datastore of a data dir.
pub fn default_datastore(data_dir: &Path) -> String {
    data_dir.join("datastore.sqlite3").display().to_string()
}

/// Creates a CA in `opts.data_dir`. Refuses to replace an existing one unless `force`.
pub async fn init_ca(opts: &InitOptions) -> Result<InitReport, AuthorityError> {
    let cert_path = opts.data_dir.join(ROOT_CERT_FILE);
    let key_path = opts.data_dir.join(ROOT_KEY_FILE);
    if (cert_path.exists() || key_path.exists()) && !opts.force {
        return Err(AuthorityError::AlreadyInitialized(opts.data_dir.clone()));
    }
    if opts.root_ttl < Duration::from_secs(60) {
        return Err(AuthorityError::Config(format!(
            "root ttl `{}` is too short (at least 1m)",
            humantime::format_duration(opts.root_ttl)
        )));
    }
    files::ensure_private_dir(&opts.data_dir)?;
    // The datastore and its audit key first: a missing or foreign key stops `--force` before it
    // has removed anything (as does a bad upstream certificate or key, read below).
    let url = opts
        .datastore
        .clone()
        .unwrap_or_else(|| default_datastore(&opts.data_dir));
    let ds = Datastore::open(&url).await?;
    let audit_key = super::audit_key::prepare(&opts.data_dir, &ds).await?;
    let ds = ds.with_audit_key(audit_key);

    let (cert, key_pem, serial) = match &opts.upstream {
        Some((up_cert, up_key)) => {
            let cert = files::read_cert_pem(up_cert)?;
            let key = files::read_upstream_key_pem(up_key)?;
            keys::check_key_matches(&cert, &key).map_err(|reason| AuthorityError::BadFile {
                what: "upstream ca",
                path: up_key.clone(),
                reason,
            })?;
            let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| {
                AuthorityError::BadFile {
                    what: "certificate",
                    path: up_cert.clone(),
                    reason: e.to_string(),
                }
            })?;
            let serial = hex::encode(parsed.raw_serial());
            (cert, Zeroizing::new(key.serialize_pem()), serial)
        }
        None => {
            let alg = match opts.key_type {
                KeyType::EcP256 => &PKCS_ECDSA_P256_SHA256,
                KeyType::EcP384 => &PKCS_ECDSA_P384_SHA384,
            };
            let key = KeyPair::generate_for(alg)
                .map_err(|e| AuthorityError::Certificate(e.to_string()))?;
            let now = SystemTime::now();
            let (cert, serial) = keys::self_signed_root(
                &opts.trust_domain,
                &key,
                now - keys::BACKDATE,
                now + opts.root_ttl,
            )
            .map_err(AuthorityError::Certificate)?;
            (cert, Zeroizing::new(key.serialize_pem()), serial)
        }
    };

    let (not_before, not_after) =
        keys::cert_validity(cert.as_ref()).map_err(AuthorityError::Certificate)?;
    // Only now, with the new root read, checked and made, is anything of the old CA removed.
    let keys_dir = opts.data_dir.join(KEYS_DIR);
    if opts.force && keys_dir.exists() {
        std::fs::remove_dir_all(&keys_dir).map_err(|source| AuthorityError::Io {
            action: "remove",
            path: keys_dir.clone(),
            source,
        })?;
    }
    files::ensure_private_dir(&keys_dir)?;
    let record = CaRecord {
        kind: CaRecordKind::Root,
        id: serial.clone(),
        der: cert.to_vec(),
        not_before: keys::unix(not_before),
        not_after: keys::unix(not_after),
        state: CaRecordState::Active,
    };
    if opts.force {
        // Older intermediates were signed by the replaced root: retire them.
        for old in ds.list_ca_records().await? {
            if old.state != CaRecordState::Retired && old.id != record.id {
                ds.set_ca_record_state(&old.id, CaRecordState::Retired)
                    .await?;
            }
        }
    }
    match ds.append_ca_record(&record).await {
        Ok(()) | Err(crate::datastore::DatastoreError::AlreadyExists { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    files::write_secret(&key_path, key_pem.as_bytes())?;
    let cert_pem = pem::encode(&pem::Pem::new("CERTIFICATE", cert.to_vec()));
    files::write_public(&cert_path, cert_pem.as_bytes())?;
    files::write_public(
        &opts.data_dir.join(super::TRUST_DOMAIN_FILE),
        format!("{}\n", opts.trust_domain).as_bytes(),
    )?;
    let location = ds.location().to_owned();
    ds.close().await;
    tracing::info!(
        trust_domain = %opts.trust_domain,
        root_serial = %serial,
        upstream = opts.upstream.is_some(),
        "ca initialised"
    );
    Ok(InitReport {
        root_serial: serial,
        root_cert_path: cert_path,
        datastore: location,
        upstream: opts.upstream.is_some(),
    })
}
