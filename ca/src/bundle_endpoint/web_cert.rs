//! The certificate an `https_web` bundle endpoint presents: a WebPKI certificate chain and its
//! key, read from PEM files (as an ACME client writes them) and read again when they change
//! (checked every minute; SPIRE's `serving_cert_file` does the same, its interval
//! configurable). A pair that does not load (unreadable, not PEM, a key that is not the
//! certificate's, a key file others may read) is refused at start; later, the pair in use stays
//! and the problem is logged.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use warden_identity::crypto_provider;

use crate::authority::files::read_secret;
use crate::config::WebCertFiles;

/// The certificate in use, and what its files looked like when it was read.
#[derive(Debug)]
pub(crate) struct FileCert {
    files: WebCertFiles,
    current: RwLock<(Stamp, Arc<CertifiedKey>)>,
}

/// What a file pair looked like: a change of either file means read them again. The status
/// change time is in it, so a `chmod` that fixes a refused key file counts, and so does a copy
/// that keeps the old modification time and size (`cp -p` of a renewed key of the same size).
type Stamp = [Option<FileStamp>; 2];

/// One file's modification and status change times, size, device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    changed: (i64, i64),
    len: u64,
    inode: (u64, u64),
}

impl FileCert {
    /// Reads the pair; the error names the file and what is wrong with it.
    pub(crate) fn load(files: &WebCertFiles) -> Result<Self, String> {
        let stamp = stamp(files);
        let key = read_pair(files)?;
        Ok(Self {
            files: files.clone(),
            current: RwLock::new((stamp, Arc::new(key))),
        })
    }

    /// Reads the pair again if either file changed since it was last read. Returns whether a
    /// new certificate is in use; a pair that does not load leaves the old one and is logged.
    pub(crate) fn reload(&self) -> bool {
        let now = stamp(&self.files);
        let seen = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        if now == seen {
            return false;
        }
        match read_pair(&self.files) {
            Ok(key) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) =
                    (now, Arc::new(key));
                tracing::info!(cert = %self.files.cert_file.display(), "bundle endpoint certificate reloaded");
                true
            }
            Err(error) => {
                // Not again until the files change once more.
                self.current
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .0 = now;
                tracing::warn!(%error, "bundle endpoint certificate not reloaded; the one in use stays");
                false
            }
        }
    }

    /// Checks the files every `sync_interval` until `stop` turns true.
    pub(crate) async fn keep_loaded(
        self: Arc<Self>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let mut tick = tokio::time::interval(self.files.sync_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => return Ok(()),
                _ = tick.tick() => {}
            }
            let this = Arc::clone(&self);
            // File reads off the runtime's threads.
            let _ = tokio::task::spawn_blocking(move || this.reload()).await;
        }
    }
}

impl ResolvesServerCert for FileCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        Some(Arc::clone(&current.1))
    }
}

fn stamp(files: &WebCertFiles) -> Stamp {
    let of = |path: &Path| {
        std::fs::metadata(path).ok().map(|m| FileStamp {
            modified: m.modified().ok(),
            changed: (m.ctime(), m.ctime_nsec()),
            len: m.len(),
            inode: (m.dev(), m.ino()),
        })
    };
    [of(&files.cert_file), of(&files.key_file)]
}

/// The chain and key of `files`, checked to belong together.
fn read_pair(files: &WebCertFiles) -> Result<CertifiedKey, String> {
    let cert_file = files.cert_file.display();
    let chain_pem = std::fs::read(&files.cert_file)
        .map_err(|e| format!("cannot read the bundle endpoint certificate `{cert_file}`: {e}"))?;
    let chain = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the bundle endpoint certificate `{cert_file}` is not pem: {e}"))?;
    if chain.is_empty() {
        return Err(format!(
            "the bundle endpoint certificate `{cert_file}` holds no certificate"
        ));
    }
    // The mode and owner are checked as for the CA's own keys; the key is never shown.
    let key_file = files.key_file.display();
    let key_pem =
        read_secret(&files.key_file, "bundle endpoint private key").map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
        format!("the bundle endpoint private key `{key_file}` is not a pem private key")
    })?;
    CertifiedKey::from_der(chain, key, &crypto_provider()).map_err(|e| {
        format!(
            "the bundle endpoint private key `{key_file}` does not go with the certificate \
             `{cert_file}`: {e}"
        )
    })
}
