//! The agent's data directory: its SVID (`agent.pem`), key (`agent.key`, mode 0600) and the
//! last trust bundle (`bundle.pem`). The directory gets mode 0711: other users cannot list it,
//! but can reach the default Workload API socket inside it (`DATA_DIR/agent.sock`); the key
//! stays readable by the agent's user only.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{KeyPair, PublicKeyData};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use zeroize::Zeroizing;

use crate::cache::Svid;
use crate::trust::certificates_from_pem;

const KEY: &str = "agent.key";
const CERT: &str = "agent.pem";
const NEXT_KEY: &str = "agent.key.next";
const NEXT_CERT: &str = "agent.pem.next";

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
        let tmp = format!(".{name}.tmp");
        self.write_new(&tmp, data, mode)?;
        self.rename(&tmp, name)?;
        self.sync_dir()
    }

    /// Writes `name` afresh (replacing a leftover) with `mode`, and syncs it.
    fn write_new(&self, name: &str, data: &[u8], mode: u32) -> Result<(), StoreError> {
        let path = self.path(name);
        write_new(&path, data, mode).map_err(|e| StoreError::Write(path, e))
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), StoreError> {
        std::fs::rename(self.path(from), self.path(to))
            .map_err(|e| StoreError::Write(self.path(to), e))
    }

    /// Makes the renames in the directory durable.
    fn sync_dir(&self) -> Result<(), StoreError> {
        sync_dir(&self.dir).map_err(|e| StoreError::Write(self.dir.clone(), e))
    }

    /// Stores the agent SVID and key (0600). Both are written in full first (`agent.key.next`,
    /// `agent.pem.next`), then renamed into place one after the other: a crash between the
    /// two renames leaves the new key beside the old certificate, and [`Store::load_agent`]
    /// then finds the new certificate in `agent.pem.next`. A crash before them leaves the old
    /// pair, which the CA still accepts (it keeps the previous serial until the new one is
    /// used).
    pub fn save_agent(&self, svid: &Svid) -> Result<(), StoreError> {
        self.write_new(NEXT_KEY, svid.key_pem().as_bytes(), 0o600)?;
        self.write_new(NEXT_CERT, svid.chain_pem().as_bytes(), 0o644)?;
        self.sync_dir()?;
        self.rename(NEXT_KEY, KEY)?;
        self.rename(NEXT_CERT, CERT)?;
        self.sync_dir()
    }

    /// Stores the trust bundle PEM.
    pub fn save_bundle(&self, pem: &str) -> Result<(), StoreError> {
        self.write("bundle.pem", pem.as_bytes(), 0o644)
    }

    /// The stored agent SVID, if there is one: `agent.key` with `agent.pem`, or with
    /// `agent.pem.next` when a save was cut between its two renames (the save is then
    /// completed).
    /// A key that group or others may access (the agent writes it 0600), or that another user
    /// than the agent's (or root) owns, is not used: whoever else could read it may hold it.
    /// Anything but a regular file is refused (opened
    /// non-blocking: a FIFO there cannot hang the start), and the key's bytes are zeroed when
    /// dropped.
    pub fn load_agent(&self) -> Result<Option<Svid>, StoreError> {
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(self.path(KEY));
        let Ok(mut key_file) = opened else {
            return Ok(None);
        };
        let corrupt = |m: String| StoreError::Corrupt(self.dir.clone(), m);
        let meta = key_file
            .metadata()
            .map_err(|e| corrupt(format!("agent.key: {e}")))?;
        if !meta.is_file() {
            return Err(corrupt("agent.key is not a regular file".into()));
        }
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(corrupt(format!(
                "agent.key is open to group or others (mode {:04o}; the agent writes it 0600)",
                mode & 0o7777
            )));
        }
        let owner = meta.uid();
        let euid = nix::unistd::geteuid().as_raw();
        if owner != euid && owner != 0 {
            return Err(corrupt(format!(
                "agent.key is owned by uid {owner}, not by the agent (uid {euid}) or root"
            )));
        }
        let size = usize::try_from(meta.len()).unwrap_or(0).saturating_add(1);
        let mut key_pem = Zeroizing::new(Vec::with_capacity(size));
        std::io::Read::read_to_end(&mut key_file, &mut key_pem)
            .map_err(|e| corrupt(format!("agent.key: {e}")))?;
        if let Ok(cert_pem) = std::fs::read(self.path(NEXT_CERT))
            && let Ok(svid) = self.pair(&cert_pem, &key_pem)
        {
            self.rename(NEXT_CERT, CERT)?;
            self.sync_dir()?;
            return Ok(Some(svid));
        }
        let Ok(cert_pem) = std::fs::read(self.path(CERT)) else {
            return Ok(None);
        };
        self.pair(&cert_pem, &key_pem).map(Some)
    }

    /// The SVID of a certificate chain and a key, both PEM, if they belong together.
    fn pair(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<Svid, StoreError> {
        let corrupt = |m: String| StoreError::Corrupt(self.dir.clone(), m);
        let chain: Vec<CertificateDer<'static>> =
            certificates_from_pem(CERT, cert_pem).map_err(|e| corrupt(e.to_string()))?;
        let key = pem::parse(key_pem).map_err(|_| corrupt("agent.key is not pem".into()))?;
        let pair = KeyPair::try_from(key.contents())
            .map_err(|_| corrupt("agent.key is not a pkcs#8 key".into()))?;
        let svid = Svid::new(
            chain,
            PrivatePkcs8KeyDer::from(key.contents().to_vec()),
            &pair.subject_public_key_info(),
        )
        .map_err(|e| corrupt(e.to_string()))?;
        Ok(svid)
    }
}

/// Writes `path` afresh (replacing a leftover) with `mode`, and syncs it: the first half of an
/// atomic replacement, whose rename follows.
pub(crate) fn write_new(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Makes the renames in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all())
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

    #[test]
    fn a_key_group_or_others_may_access_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        saved(&store, "spiffe://example.org/agent");
        let chmod = |mode: u32| {
            let perms = std::fs::Permissions::from_mode(mode);
            std::fs::set_permissions(dir.path().join(KEY), perms).unwrap();
        };
        for mode in [0o640, 0o604, 0o610] {
            chmod(mode);
            let err = store.load_agent().unwrap_err().to_string();
            assert!(
                err.contains("agent.key") && err.contains(&format!("mode {mode:04o}")),
                "{err}"
            );
        }
        chmod(0o600);
        assert!(store.load_agent().unwrap().is_some());
        // A FIFO in its place is refused at once (a blocking open would wait for a writer).
        std::fs::remove_file(dir.path().join(KEY)).unwrap();
        let fifo_mode = nix::sys::stat::Mode::from_bits_truncate(0o600);
        nix::unistd::mkfifo(&dir.path().join(KEY), fifo_mode).unwrap();
        let err = store.load_agent().unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn a_key_another_user_owns_is_not_used() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: changing a file's owner needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        saved(&store, "spiffe://example.org/agent");
        std::os::unix::fs::chown(dir.path().join(KEY), Some(4242), None).unwrap();
        let err = store.load_agent().unwrap_err().to_string();
        assert!(err.contains("agent.key is owned by uid 4242"), "{err}");
        std::os::unix::fs::chown(dir.path().join(KEY), Some(0), None).unwrap();
        assert!(store.load_agent().unwrap().is_some());
    }

    fn saved(store: &Store, id: &str) -> Svid {
        let svid = crate::cache::tests::svid(id, std::time::Duration::from_secs(3600));
        store.save_agent(&svid).unwrap();
        svid
    }

    fn chain_of(svid: &Svid) -> String {
        svid.chain_pem()
    }

    #[test]
    fn a_saved_svid_loads_back_with_its_key_0600() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let svid = saved(&store, "spiffe://example.org/agent/a");
        let loaded = store.load_agent().unwrap().unwrap();
        assert_eq!(chain_of(&loaded), chain_of(&svid));
        let mode = |name: &str| {
            std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(KEY), 0o600);
        assert!(!dir.path().join(NEXT_KEY).exists() && !dir.path().join(NEXT_CERT).exists());
    }

    /// A crash between the two renames of a save: the new key is in place, the new
    /// certificate still in `agent.pem.next`. The new pair loads, and the save is completed.
    #[test]
    fn a_save_cut_between_its_renames_loads_the_new_pair() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let old = saved(&store, "spiffe://example.org/agent/a");
        let new = crate::cache::tests::svid(
            "spiffe://example.org/agent/a",
            std::time::Duration::from_secs(3600),
        );
        store
            .write_new(NEXT_KEY, new.key_pem().as_bytes(), 0o600)
            .unwrap();
        store
            .write_new(NEXT_CERT, new.chain_pem().as_bytes(), 0o644)
            .unwrap();
        store.rename(NEXT_KEY, KEY).unwrap();
        let loaded = store.load_agent().unwrap().unwrap();
        assert_eq!(chain_of(&loaded), chain_of(&new));
        assert_ne!(chain_of(&loaded), chain_of(&old));
        assert_eq!(
            std::fs::read_to_string(dir.path().join(CERT)).unwrap(),
            new.chain_pem()
        );
        assert!(!dir.path().join(NEXT_CERT).exists());
        // A later save cut before its renames: the pair in place is whole and loads.
        store
            .write_new(NEXT_KEY, old.key_pem().as_bytes(), 0o600)
            .unwrap();
        store
            .write_new(NEXT_CERT, old.chain_pem().as_bytes(), 0o644)
            .unwrap();
        assert_eq!(
            chain_of(&store.load_agent().unwrap().unwrap()),
            chain_of(&new)
        );
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_named_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        saved(&store, "spiffe://example.org/agent/a");
        let other = crate::cache::tests::svid(
            "spiffe://example.org/agent/a",
            std::time::Duration::from_secs(3600),
        );
        std::fs::write(dir.path().join(KEY), other.key_pem()).unwrap();
        let err = store.load_agent().unwrap_err();
        assert!(err.to_string().contains("unusable"), "{err}");
    }
}
