//! Facts about one process read from `/proc`: its start time (to detect PID reuse), its
//! owner, its executable's path and the SHA-256 digest of the executable (cached by device,
//! inode, size, mtime and ctime so a busy workload does not make the agent hash its binary per
//! call).

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::AttestError;

/// The largest executable the agent hashes; larger ones get no `unix:sha256` selector.
const MAX_DIGEST_BYTES: u64 = 1 << 30;

/// Reads `/proc`-like trees (the root is injectable for tests).
#[derive(Debug)]
pub(crate) struct ProcReader {
    root: PathBuf,
    digests: Mutex<HashMap<FileKey, String>>,
}

/// Identifies one version of a file. The mtime is the owner's to set (`touch -r`), so the
/// ctime is part of it too: any write or metadata change sets it to the current time, which no
/// one but the clock's owner chooses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
    ctime: i64,
    ctime_nsec: i64,
}

impl FileKey {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
        }
    }
}

// === impl ProcReader ===

impl ProcReader {
    pub(crate) fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            digests: Mutex::new(HashMap::new()),
        }
    }

    fn pid_dir(&self, pid: i32) -> PathBuf {
        self.root.join(pid.to_string())
    }

    /// The process start time in clock ticks since boot (field 22 of `/proc/PID/stat`).
    pub(crate) fn start_time(&self, pid: i32) -> Result<u64, AttestError> {
        let stat = std::fs::read_to_string(self.pid_dir(pid).join("stat"))
            .map_err(|_| AttestError::ProcessGone(pid))?;
        parse_start_time(&stat).ok_or(AttestError::BadProcFile { pid, file: "stat" })
    }

    /// The real uid and gid from `/proc/PID/status`.
    pub(crate) fn owner(&self, pid: i32) -> Result<(u32, u32), AttestError> {
        let status = std::fs::read_to_string(self.pid_dir(pid).join("status"))
            .map_err(|_| AttestError::ProcessGone(pid))?;
        parse_owner(&status).ok_or(AttestError::BadProcFile {
            pid,
            file: "status",
        })
    }

    /// The text of `/proc/PID/cgroup` (empty when the kernel has no cgroups).
    pub(crate) fn cgroup(&self, pid: i32) -> Result<String, AttestError> {
        match std::fs::read_to_string(self.pid_dir(pid).join("cgroup")) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.pid_dir(pid).exists() => {
                Ok(String::new())
            }
            Err(_) => Err(AttestError::ProcessGone(pid)),
        }
    }

    /// The executable's path, or `None` when it cannot be read (a kernel thread, or a process
    /// of another user without the agent having the rights).
    /// The device and inode of the program `pid` runs (`stat` through `/proc/PID/exe`).
    pub(crate) fn exe_id(&self, pid: i32) -> Option<(u64, u64)> {
        std::fs::metadata(self.pid_dir(pid).join("exe"))
            .ok()
            .map(|m| (m.dev(), m.ino()))
    }

    pub(crate) fn exe_path(&self, pid: i32) -> Option<PathBuf> {
        std::fs::read_link(self.pid_dir(pid).join("exe")).ok()
    }

    /// The SHA-256 of the executable, hex, read through `/proc/PID/exe` (so a binary replaced
    /// on disk after start is still the one hashed). Cached per file version; `None` when the
    /// file changed while it was being hashed (no digest is better than one of a mixture).
    pub(crate) fn exe_sha256(&self, pid: i32) -> Option<String> {
        let exe = self.pid_dir(pid).join("exe");
        let mut file = std::fs::File::open(&exe).ok()?;
        let meta = file.metadata().ok()?;
        if meta.len() > MAX_DIGEST_BYTES {
            return None;
        }
        let key = FileKey::of(&meta);
        if let Ok(cache) = self.digests.lock()
            && let Some(hit) = cache.get(&key)
        {
            return Some(hit.clone());
        }
        let digest = sha256_reader(&mut file).ok()?;
        if FileKey::of(&file.metadata().ok()?) != key {
            return None;
        }
        if let Ok(mut cache) = self.digests.lock() {
            if cache.len() > 4096 {
                cache.clear();
            }
            cache.insert(key, digest.clone());
        }
        Some(digest)
    }

    /// How many digests are cached (for tests of the cache).
    #[cfg(test)]
    pub(crate) fn cached_digests(&self) -> usize {
        self.digests.lock().map(|c| c.len()).unwrap_or(0)
    }
}

fn sha256_reader(r: &mut impl Read) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(buf.get(..n).unwrap_or_default());
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The PID the process behind `pidfd` has in the agent's PID namespace, from the real
/// `/proc/self/fdinfo` (`Pid:`, -1 once the process has been reaped); `None` if unreadable.
pub(crate) fn pidfd_pid(pidfd: &std::os::fd::OwnedFd) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))?
        .trim()
        .parse()
        .ok()
}

/// Field 22 of a `/proc/PID/stat` line. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the last `)`.
pub(crate) fn parse_start_time(stat: &str) -> Option<u64> {
    let after_comm = stat.get(stat.rfind(')')? + 1..)?;
    // After `)`: field 3 (state) is the first; starttime is field 22.
    after_comm.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The real uid and gid from the `Uid:` and `Gid:` lines of `/proc/PID/status`.
pub(crate) fn parse_owner(status: &str) -> Option<(u32, u32)> {
    let field = |name: &str| -> Option<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Some((field("Uid:")?, field("Gid:")?))
}

/// Whether `path` exists (helper for tests with a fake `/proc`).
#[cfg(test)]
pub(crate) fn exists(path: &std::path::Path) -> bool {
    path.exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_start_time_when_command_name_has_spaces_and_parens() {
        let stat = "4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 12345 67 18446744073709551615";
        assert_eq!(parse_start_time(stat), Some(987_654));
    }

    #[test]
    fn rejects_truncated_stat_lines() {
        assert_eq!(parse_start_time("4242 (prog) S 1 2 3"), None);
        assert_eq!(parse_start_time("no parens at all"), None);
    }

    #[test]
    fn parses_real_uid_and_gid_from_status() {
        let status = "Name:\tapp\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\n";
        assert_eq!(parse_owner(status), Some((1000, 100)));
        assert_eq!(parse_owner("Name:\tapp\n"), None);
    }

    #[test]
    fn reads_facts_of_the_running_test_process() {
        let reader = ProcReader::new("/proc");
        let pid = i32::try_from(std::process::id()).unwrap();
        assert!(reader.start_time(pid).unwrap() > 0);
        let (uid, gid) = reader.owner(pid).unwrap();
        assert_eq!(uid, nix::unistd::getuid().as_raw());
        assert_eq!(gid, nix::unistd::getgid().as_raw());
        let exe = reader.exe_path(pid).unwrap();
        assert_eq!(exe, std::env::current_exe().unwrap());
        assert!(exists(&exe));
    }

    #[test]
    fn executable_digest_matches_file_and_is_cached_by_inode_and_mtime() {
        let reader = ProcReader::new("/proc");
        let pid = i32::try_from(std::process::id()).unwrap();
        let digest = reader.exe_sha256(pid).unwrap();
        let mut file = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(digest, sha256_reader(&mut file).unwrap());
        assert_eq!(reader.cached_digests(), 1);
        assert_eq!(reader.exe_sha256(pid).unwrap(), digest);
        assert_eq!(reader.cached_digests(), 1, "second call must hit the cache");
    }

    /// The owner of a binary can rewrite it and set its mtime back (`touch -r`): the digest
    /// is of what the file holds now, not what the cache had for that mtime.
    #[test]
    fn a_rewritten_executable_with_its_mtime_restored_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("app");
        std::fs::write(&exe, b"the legitimate binary").unwrap();
        std::fs::create_dir(dir.path().join("77")).unwrap();
        std::os::unix::fs::symlink(&exe, dir.path().join("77/exe")).unwrap();
        let reader = ProcReader::new(dir.path());
        let first = reader.exe_sha256(77).unwrap();
        let mtime = std::fs::metadata(&exe).unwrap().modified().unwrap();
        // A filesystem with coarse timestamps gives the rewrite a later ctime only after a tick.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&exe, b"the malicious  binary").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&exe)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(std::fs::metadata(&exe).unwrap().modified().unwrap(), mtime);
        let second = reader.exe_sha256(77).unwrap();
        assert_ne!(second, first);
        let mut file = std::fs::File::open(&exe).unwrap();
        assert_eq!(second, sha256_reader(&mut file).unwrap());
    }

    #[test]
    fn vanished_process_is_reported_as_gone() {
        let reader = ProcReader::new("/proc");
        // PIDs above pid_max never exist.
        assert!(matches!(
            reader.start_time(i32::MAX),
            Err(AttestError::ProcessGone(_))
        ));
        assert!(matches!(
            reader.owner(i32::MAX),
            Err(AttestError::ProcessGone(_))
        ));
    }
}
