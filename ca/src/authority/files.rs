//! Key and certificate files in the data dir: keys are written with mode 0600 (created that
//! way, never chmod-ed after the fact), directories 0700. Errors name the file, never the key.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rcgen::KeyPair;
use rustls_pki_types::CertificateDer;
use zeroize::Zeroizing;

use super::{AuthorityError, ROOT_CERT_FILE, ROOT_KEY_FILE};

/// Creates `dir` (and parents) with mode 0700, or tightens an existing one to 0700.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<(), AuthorityError> {
    let io = |source| AuthorityError::Io {
        action: "create",
        path: dir.to_path_buf(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)
}

/// Writes a secret file with mode 0600 (replacing any existing file).
pub(crate) fn write_secret(path: &Path, contents: &[u8]) -> Result<(), AuthorityError> {
    let io = |source| AuthorityError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    // The rename is durable only once the directory is.
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| AuthorityError::Io {
                action: "sync",
                path: dir.to_path_buf(),
                source,
            }),
        _ => Ok(()),
    }
}

/// Writes a public file (certificate) with mode 0644.
pub(crate) fn write_public(path: &Path, contents: &[u8]) -> Result<(), AuthorityError> {
    fs::write(path, contents).map_err(|source| AuthorityError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a file.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, AuthorityError> {
    fs::read(path).map_err(|source| AuthorityError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}

/// Parses a PEM file holding exactly one `CERTIFICATE` (the first one is used).
pub(crate) fn read_cert_pem(path: &Path) -> Result<CertificateDer<'static>, AuthorityError> {
    let bytes = read(path)?;
    let bad = |reason: String| AuthorityError::BadFile {
        what: "certificate",
        path: path.to_path_buf(),
        reason,
    };
    let blocks = pem::parse_many(&bytes).map_err(|e| bad(e.to_string()))?;
    let block = blocks
        .into_iter()
        .find(|b| b.tag() == "CERTIFICATE")
        .ok_or_else(|| bad("no `CERTIFICATE` pem block".into()))?;
    let der = CertificateDer::from(block.into_contents());
    x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| bad(format!("does not parse: {e}")))?;
    Ok(der)
}

/// Reads a secret file the CA keeps in its data dir, which it writes 0600. One that group or
/// others may read or write is refused ([`AuthorityError::KeyExposed`], naming the file and its
/// mode): someone changed the mode, and whoever else could read it may hold the key (OpenSSH
/// refuses such key files too). The mode is checked on the opened file (opened non-blocking,
/// so a FIFO planted at the path cannot hang the CA, and refused unless a regular file), so the
/// file cannot be swapped between check and read. A file owned by another user than this
/// process's (or root) is refused too ([`AuthorityError::KeyNotOwned`]): its owner can read and
/// replace it whatever its mode, as OpenSSH's `StrictModes` holds of the files it trusts. The
/// bytes are zeroed when dropped (read into a buffer sized for the file, so no copy is left
/// behind).
pub(crate) fn read_secret(
    path: &Path,
    what: &'static str,
) -> Result<Zeroizing<Vec<u8>>, AuthorityError> {
    let io = |source| AuthorityError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(AuthorityError::BadFile {
            what,
            path: path.to_path_buf(),
            reason: "not a regular file".into(),
        });
    }
    check_private(path, what, meta.permissions().mode())?;
    check_owner(path, what, meta.uid(), nix::unistd::geteuid().as_raw())?;
    let size = usize::try_from(meta.len()).unwrap_or(0).saturating_add(1);
    let mut bytes = Zeroizing::new(Vec::with_capacity(size));
    file.read_to_end(&mut bytes).map_err(io)?;
    Ok(bytes)
}

/// Refuses a secret file's `mode` if group or others have any access to it.
fn check_private(path: &Path, what: &'static str, mode: u32) -> Result<(), AuthorityError> {
    if mode & 0o077 == 0 {
        return Ok(());
    }
    Err(AuthorityError::KeyExposed {
        what,
        path: path.to_path_buf(),
        mode: mode & 0o7777,
    })
}

/// Refuses a secret file whose `owner` is neither `euid` (this process) nor root.
fn check_owner(
    path: &Path,
    what: &'static str,
    owner: u32,
    euid: u32,
) -> Result<(), AuthorityError> {
    if owner == euid || owner == 0 {
        return Ok(());
    }
    Err(AuthorityError::KeyNotOwned {
        what,
        path: path.to_path_buf(),
        owner,
        uid: euid,
    })
}

/// Parses a PEM private key file of the data dir (PKCS#8, or SEC1 EC keys), refused if group or
/// others may access it ([`read_secret`]). The key is never shown in errors.
pub(crate) fn read_key_pem(path: &Path) -> Result<KeyPair, AuthorityError> {
    parse_key_pem(path, read_secret(path, "private key")?)
}

/// Parses the upstream CA's key that `warden ca init --upstream-key` copies into the data dir
/// (0600 there). It is the operator's own file, often a mounted secret (0644 by default in
/// Kubernetes), so a group- or world-readable one is only warned about.
pub(crate) fn read_upstream_key_pem(path: &Path) -> Result<KeyPair, AuthorityError> {
    let bytes = Zeroizing::new(read(path)?);
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:04o}", meta.permissions().mode() & 0o7777),
            "the upstream key is open to group or others; its copy in the data dir is 0600"
        );
    }
    parse_key_pem(path, bytes)
}

fn parse_key_pem(path: &Path, bytes: Zeroizing<Vec<u8>>) -> Result<KeyPair, AuthorityError> {
    let text = std::str::from_utf8(&bytes).map_err(|_| AuthorityError::BadFile {
        what: "private key",
        path: path.to_path_buf(),
        reason: "not pem text".into(),
    })?;
    KeyPair::from_pem(text).map_err(|e| AuthorityError::BadFile {
        what: "private key",
        path: path.to_path_buf(),
        reason: format!("not a supported pkcs#8 private key ({e})"),
    })
}

/// The root (or upstream) certificate and key from the data dir.
pub(crate) fn read_root(
    data_dir: &Path,
) -> Result<(CertificateDer<'static>, KeyPair), AuthorityError> {
    let cert_path = data_dir.join(ROOT_CERT_FILE);
    if !cert_path.exists() {
        return Err(AuthorityError::NotInitialized(data_dir.to_path_buf()));
    }
    let cert = read_cert_pem(&cert_path)?;
    let key = read_key_pem(&data_dir.join(ROOT_KEY_FILE))?;
    super::keys::check_key_matches(&cert, &key).map_err(|reason| AuthorityError::BadFile {
        what: "private key",
        path: data_dir.join(ROOT_KEY_FILE),
        reason,
    })?;
    Ok((cert, key))
}

/// The trust domain the CA in `data_dir` was initialised for.
pub fn read_trust_domain(data_dir: &Path) -> Result<warden_identity::TrustDomain, AuthorityError> {
    let path = data_dir.join(super::TRUST_DOMAIN_FILE);
    if !path.exists() {
        return Err(AuthorityError::NotInitialized(data_dir.to_path_buf()));
    }
    let text = String::from_utf8_lossy(&read(&path)?).trim().to_owned();
    text.parse().map_err(|e| AuthorityError::BadFile {
        what: "trust domain",
        path,
        reason: format!("{e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_read_only_from_a_private_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        write_secret(&key, b"secret bytes").unwrap();
        assert_eq!(*read_secret(&key, "audit key").unwrap(), b"secret bytes");
        for mode in [0o400, 0o700] {
            fs::set_permissions(&key, fs::Permissions::from_mode(mode)).unwrap();
            assert!(read_secret(&key, "audit key").is_ok(), "{mode:o}");
        }
        for mode in [0o640, 0o604, 0o620, 0o602, 0o610, 0o601] {
            fs::set_permissions(&key, fs::Permissions::from_mode(mode)).unwrap();
            let err = read_secret(&key, "audit key").unwrap_err().to_string();
            assert!(err.contains(&format!("mode {mode:04o}")), "{err}");
            assert!(!err.contains("secret bytes"), "{err}");
        }
        // A FIFO planted at the path is refused at once (a blocking open would wait for a
        // writer forever), and so is a directory.
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = read_secret(&fifo, "audit key").unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        let err = read_secret(dir.path(), "audit key")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn a_secret_owned_by_another_user_is_refused() {
        let path = Path::new("/data/root.key.pem");
        assert!(check_owner(path, "private key", 1000, 1000).is_ok());
        assert!(
            check_owner(path, "private key", 0, 1000).is_ok(),
            "root's own"
        );
        let err = check_owner(path, "private key", 1001, 1000).unwrap_err();
        assert!(matches!(err, AuthorityError::KeyNotOwned { .. }));
        assert!(err.is_key_exposure());
        let err = err.to_string();
        assert!(err.contains("owned by uid 1001"), "{err}");
        assert!(err.contains("uid 1000"), "{err}");
        assert!(err.contains("/data/root.key.pem"), "{err}");
        assert!(
            check_owner(path, "private key", 1000, 0).is_err(),
            "another's, read by root"
        );
    }

    /// The real thing, where this test may change a file's owner (as root, as in CI).
    #[test]
    fn a_secret_file_chowned_to_another_user_is_not_read() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: changing a file's owner needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("audit.key");
        write_secret(&key, b"secret bytes").unwrap();
        assert!(read_secret(&key, "audit key").is_ok());
        std::os::unix::fs::chown(&key, Some(4242), None).unwrap();
        let err = read_secret(&key, "audit key").unwrap_err().to_string();
        assert!(err.contains("owned by uid 4242"), "{err}");
        assert!(!err.contains("secret bytes"), "{err}");
        std::os::unix::fs::chown(&key, Some(0), None).unwrap();
        assert!(read_secret(&key, "audit key").is_ok());
    }
}
