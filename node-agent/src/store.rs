//! The agent's data directory: its SVID (`agent.pem`), key (`agent.key`, mode 0600) and the
//! last trust bundle (`bundle.pem`). The directory gets mode 0711: other users cannot list it,
//! but can reach the default Workload API socket inside it (`DATA_DIR/agent.sock`); the key
//! stays readable by the agent's user only.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{KeyPair, PublicKeyData};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use crate::cache::Svid;
use crate::trust::certificates_from_pem;

/// A data-directory problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// I/O on a file failed.
    #[error("cannot write `{0}`: {1}")]
    Write(PathBuf, std::io::Error),
    /// A stored file is unusable.
    #[error("stored agent svid in `{0}` is unusable: {1}")]
    Corrupt(PathBuf, String),
}

/// Files in the data directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

// === impl Store ===

impl Store {
    /// Opens (creating, 0711) the data directory.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Write(dir.to_owned(), e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| StoreError::Write(dir.to_owned(), e))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `name` atomically (temp file + rename) with `mode`.
    fn write(&self, name: &str, data: &[u8], mode: u32) -> Result<(), StoreError> {
        let target = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        let err = |e| StoreError::Write(target.clone(), e);
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(data).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &target).map_err(err)
    }

    /// Stores the agent SVID and key (0600).
    pub fn save_agent(&self, svid: &Svid) -> Result<(), StoreError> {
        self.write("agent.key", svid.key_pem().as_bytes(), 0o600)?;
        self.write("agent.pem", svid.chain_pem().as_bytes(), 0o644)
    }

    /// Stores the trust bundle PEM.
    pub fn save_bundle(&self, pem: &str) -> Result<(), StoreError> {
        self.write("bundle.pem", pem.as_bytes(), 0o644)
    }

    /// The stored agent SVID, if there is one.
    pub fn load_agent(&self) -> Result<Option<Svid>, StoreError> {
        let (cert_path, key_path) = (self.path("agent.pem"), self.path("agent.key"));
        let (Ok(cert_pem), Ok(key_pem)) = (std::fs::read(&cert_path), std::fs::read(&key_path))
        else {
            return Ok(None);
        };
        let corrupt = |m: String| StoreError::Corrupt(self.dir.clone(), m);
        let chain: Vec<CertificateDer<'static>> =
            certificates_from_pem("agent.pem", &cert_pem).map_err(|e| corrupt(e.to_string()))?;
        let key = pem::parse(&key_pem).map_err(|_| corrupt("agent.key is not pem".into()))?;
        let pair = KeyPair::try_from(key.contents())
            .map_err(|_| corrupt("agent.key is not a pkcs#8 key".into()))?;
        let svid = Svid::new(
            chain,
            PrivatePkcs8KeyDer::from(key.contents().to_vec()),
            &pair.subject_public_key_info(),
        )
        .map_err(|e| corrupt(e.to_string()))?;
        Ok(Some(svid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_mean_no_stored_svid_and_garbage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("data")).unwrap();
        assert!(store.load_agent().unwrap().is_none());
        let mode = std::fs::metadata(dir.path().join("data"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o711);
        std::fs::write(dir.path().join("data/agent.pem"), "garbage").unwrap();
        std::fs::write(dir.path().join("data/agent.key"), "garbage").unwrap();
        let err = store.load_agent().unwrap_err();
        assert!(err.to_string().contains("unusable"), "{err}");
    }
}
