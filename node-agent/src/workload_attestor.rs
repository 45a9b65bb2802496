//! Workload attestation: turns the kernel-reported credentials of a Unix-socket peer
//! (SO_PEERCRED) and what `/proc` says about that process into selectors
//! (`unix:uid`, `unix:gid`, `unix:user`, `unix:group`, `unix:path`, `unix:sha256`,
//! `docker:id`, `k8s:pod-uid`).
//!
//! PID reuse: the connecting process is pinned by a pidfd taken at accept (`SO_PEERPIDFD`,
//! Linux 6.5+). While that process has not been reaped (a zombie included) no other process can
//! hold its PID, so when the pidfd still names the PID after the selectors are collected, every
//! `/proc` file read described the process that connected. Without it (older kernels) the
//! process start time read at accept is compared with readings before and after, which misses
//! a PID reused between `connect()` and `accept()`. Either way, if the connecting process is
//! gone, its PID was reused, or `/proc` reports another owner than the socket credentials,
//! attestation fails and no identity is handed out.

mod cgroup;
mod process;

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use nix::unistd::{Gid, Group, Uid, User};
use warden_identity::Selector;

use process::ProcReader;

/// The credentials of a Unix-socket peer, captured when the connection was accepted.
#[derive(Debug, Clone)]
pub struct PeerCredentials {
    /// Process id of the connecting process.
    pub pid: i32,
    /// Effective uid at `connect()` time.
    pub uid: u32,
    /// Effective gid at `connect()` time.
    pub gid: u32,
    /// The process start time (ticks since boot) read right after `accept()`, if it could be.
    pub start_time: Option<u64>,
    /// The device and inode of the program the process ran right after `accept()`, if they
    /// could be read: a process that `exec`s another program afterwards (or a child it left the
    /// connection to, after the parent's `exec`) is not the one that connected.
    pub exe: Option<(u64, u64)>,
    /// What pins the process that connected.
    pub pin: ProcessPin,
}

/// What pins the process that connected (`SO_PEERPIDFD`).
#[derive(Debug, Clone)]
pub enum ProcessPin {
    /// A pidfd of the process that connected: until it is reaped, its PID is not reused.
    Pidfd(Arc<OwnedFd>),
    /// The process that connected had been reaped by the time the connection was accepted.
    Gone,
    /// The kernel has no `SO_PEERPIDFD` (before Linux 6.5): the start time read at accept is
    /// all there is.
    Unsupported,
}

/// Why a workload could not be attested.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The process exited before attestation finished.
    #[error("process {0} exited before it could be attested")]
    ProcessGone(i32),
    /// The PID now belongs to another process.
    #[error("process {0} was replaced during attestation (pid reuse)")]
    PidReused(i32),
    /// The process runs another program than when it connected (it called `exec`).
    #[error("process {0} runs another program than when it connected (exec since)")]
    ExecChanged(i32),
    /// `/proc` reports another owner than the socket credentials.
    #[error("process {pid} is owned by uid {proc_uid}, but connected as uid {peer_uid}")]
    OwnerMismatch {
        /// The process.
        pid: i32,
        /// Uid from `/proc/PID/status`.
        proc_uid: u32,
        /// Uid from SO_PEERCRED.
        peer_uid: u32,
    },
    /// A `/proc` file could not be parsed.
    #[error("cannot parse /proc/{pid}/{file}")]
    BadProcFile {
        /// The process.
        pid: i32,
        /// The file under `/proc/PID/`.
        file: &'static str,
    },
    /// The connection carried no peer credentials.
    #[error("the connection carries no peer credentials")]
    NoCredentials,
}

/// Attests workloads on this host.
#[derive(Debug)]
pub struct WorkloadAttestor {
    proc: ProcReader,
}

// === impl WorkloadAttestor ===

impl Default for WorkloadAttestor {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkloadAttestor {
    /// An attestor reading the real `/proc`.
    pub fn new() -> Self {
        Self {
            proc: ProcReader::new("/proc"),
        }
    }

    /// An attestor reading another `/proc`-like tree (tests).
    pub fn with_proc_root(root: impl Into<PathBuf>) -> Self {
        Self {
            proc: ProcReader::new(root),
        }
    }

    /// The device and inode of the program `pid` runs, read as soon as a connection is
    /// accepted.
    pub fn exe_id(&self, pid: i32) -> Option<(u64, u64)> {
        self.proc.exe_id(pid)
    }

    /// The start time of `pid`, read as soon as a connection is accepted.
    pub fn start_time(&self, pid: i32) -> Option<u64> {
        self.proc.start_time(pid).ok()
    }

    /// The selectors of the peer, or an error if the peer cannot be attested safely.
    pub fn attest(&self, peer: &PeerCredentials) -> Result<Vec<Selector>, AttestError> {
        self.attest_with(peer, true)
    }

    /// [`Self::attest`], with the program's digest (`unix:sha256`) only when `digest`: no entry
    /// needs it otherwise, and hashing a large program, or one on a filesystem that does not
    /// answer, holds one of the few places for attestation.
    pub fn attest_with(
        &self,
        peer: &PeerCredentials,
        digest: bool,
    ) -> Result<Vec<Selector>, AttestError> {
        let pid = peer.pid;
        if pid <= 0 {
            return Err(AttestError::NoCredentials);
        }
        self.still_connected(peer)?;
        // Without a pidfd, a start time that could not be read at accept leaves nothing to
        // tell the process that connected from one that took its PID since: fail closed.
        let at_accept = match (&peer.pin, peer.start_time) {
            (ProcessPin::Unsupported, None) => return Err(AttestError::ProcessGone(pid)),
            (_, at_accept) => at_accept,
        };
        let before = self.proc.start_time(pid)?;
        if at_accept.is_some_and(|at_accept| at_accept != before) {
            return Err(AttestError::PidReused(pid));
        }
        let (proc_uid, _proc_gid) = self.proc.owner(pid)?;
        if proc_uid != peer.uid {
            return Err(AttestError::OwnerMismatch {
                pid,
                proc_uid,
                peer_uid: peer.uid,
            });
        }

        let mut selectors = Vec::with_capacity(8);
        let mut push = |kind: &str, key: &str, value: &str| {
            if let Ok(s) = Selector::new(kind, key, value) {
                selectors.push(s);
            }
        };
        push("unix", "uid", &peer.uid.to_string());
        push("unix", "gid", &peer.gid.to_string());
        if let Ok(Some(user)) = User::from_uid(Uid::from_raw(peer.uid)) {
            push("unix", "user", &user.name);
        }
        if let Ok(Some(group)) = Group::from_gid(Gid::from_raw(peer.gid)) {
            push("unix", "group", &group.name);
        }
        // The program's path and digest describe the process that connected only if it runs
        // the program it ran then: checked before and after they are read. Without that
        // reading at accept they are left out (the process may have `exec`d since).
        if let Some(at_accept) = peer.exe {
            let same_program = || match self.proc.exe_id(pid) {
                Some(now) if now == at_accept => Ok(()),
                Some(_) => Err(AttestError::ExecChanged(pid)),
                None => Err(AttestError::ProcessGone(pid)),
            };
            same_program()?;
            if let Some(path) = self.proc.exe_path(pid) {
                push("unix", "path", &path.to_string_lossy());
            }
            if let Some(digest) = digest.then(|| self.proc.exe_sha256(pid)).flatten() {
                push("unix", "sha256", &digest);
            }
            same_program()?;
        }
        let container = cgroup::parse_cgroup_file(&self.proc.cgroup(pid)?);
        if let Some(id) = &container.container_id {
            push("docker", "id", id);
        }
        if let Some(uid) = &container.pod_uid {
            push("k8s", "pod-uid", uid);
        }

        // INVARIANT: every selector above describes the process whose start time is `before`;
        // upheld by this second reading (upheld here, checked by the caller's error path).
        let after = self
            .proc
            .start_time(pid)
            .map_err(|_| AttestError::ProcessGone(pid))?;
        if after != before {
            return Err(AttestError::PidReused(pid));
        }
        // The process that connected still holds the PID: it is the one described.
        self.still_connected(peer)?;
        selectors.sort();
        selectors.dedup();
        Ok(selectors)
    }
}

impl WorkloadAttestor {
    /// Whether the process that connected still holds `peer.pid` (not reaped), as far as its
    /// pin tells.
    fn still_connected(&self, peer: &PeerCredentials) -> Result<(), AttestError> {
        match &peer.pin {
            ProcessPin::Pidfd(pidfd) if process::pidfd_pid(pidfd) == Some(peer.pid) => Ok(()),
            ProcessPin::Pidfd(_) | ProcessPin::Gone => Err(AttestError::ProcessGone(peer.pid)),
            ProcessPin::Unsupported => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process, as the listener would have seen it connect: pinned by a pidfd (the
    /// creator of a socket pair is its peer) and with its start time.
    fn me() -> PeerCredentials {
        let pid = i32::try_from(std::process::id()).unwrap();
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        // Before Linux 6.5 there is no pidfd to pin with: the start time is all there is.
        let pin = match nix::sys::socket::getsockopt(&ours, nix::sys::socket::sockopt::PeerPidfd) {
            Ok(pidfd) => ProcessPin::Pidfd(Arc::new(pidfd)),
            Err(nix::errno::Errno::ENOPROTOOPT) => ProcessPin::Unsupported,
            Err(e) => panic!("SO_PEERPIDFD: {e}"),
        };
        PeerCredentials {
            pid,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            start_time: WorkloadAttestor::new().start_time(pid),
            exe: WorkloadAttestor::new().exe_id(pid),
            pin,
        }
    }

    #[test]
    fn attests_own_process_with_unix_selectors() {
        let attestor = WorkloadAttestor::new();
        let peer = me();
        let selectors = attestor.attest(&peer).unwrap();
        let has = |s: String| selectors.contains(&s.parse().unwrap());
        assert!(has(format!("unix:uid:{}", peer.uid)));
        assert!(has(format!("unix:gid:{}", peer.gid)));
        let exe = std::env::current_exe().unwrap();
        assert!(has(format!("unix:path:{}", exe.display())));
        assert!(
            selectors
                .iter()
                .any(|s| s.key() == "sha256" && s.value().len() == 64)
        );
        if let Ok(Some(user)) = User::from_uid(Uid::from_raw(peer.uid)) {
            assert!(has(format!("unix:user:{}", user.name)));
        }
    }

    #[test]
    fn refuses_when_start_time_changed_since_accept() {
        let attestor = WorkloadAttestor::new();
        let real = attestor.start_time(me().pid).unwrap();
        let peer = PeerCredentials {
            start_time: Some(real + 1),
            ..me()
        };
        assert_eq!(
            attestor.attest(&peer),
            Err(AttestError::PidReused(peer.pid))
        );
    }

    /// A process that runs another program than when it connected (`exec`, or a child left
    /// with the connection after its parent's `exec`) is not attested: the program's path and
    /// digest would describe a process that never connected.
    #[test]
    fn refuses_a_process_that_ran_another_program_since_it_connected() {
        use std::io::Write as _;
        let attestor = WorkloadAttestor::new();
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read _; exec sleep 30"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        // As it connected: the shell.
        let peer = PeerCredentials {
            pid,
            start_time: attestor.start_time(pid),
            exe: attestor.exe_id(pid),
            pin: ProcessPin::Unsupported,
            ..me()
        };
        let selectors = attestor.attest(&peer).unwrap();
        assert!(selectors.iter().any(|s| s.key() == "path"), "{selectors:?}");
        // Then it runs `sleep`.
        child.stdin.take().unwrap().write_all(b"\n").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while attestor.exe_id(pid) == peer.exe {
            assert!(std::time::Instant::now() < deadline, "no exec");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let refused = attestor.attest(&peer);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(refused, Err(AttestError::ExecChanged(pid)));
    }

    /// No entry uses the digest: it is not computed (hashing may be slow), the path still is.
    #[test]
    fn leaves_out_the_digest_when_no_entry_needs_it() {
        let selectors = WorkloadAttestor::new().attest_with(&me(), false).unwrap();
        assert!(selectors.iter().any(|s| s.key() == "path"), "{selectors:?}");
        assert!(
            !selectors.iter().any(|s| s.key() == "sha256"),
            "{selectors:?}"
        );
    }

    /// Without the program read at accept, nothing vouches that the process still runs it:
    /// no path or digest selector.
    #[test]
    fn leaves_out_the_program_when_it_was_not_read_at_accept() {
        let peer = PeerCredentials { exe: None, ..me() };
        let selectors = WorkloadAttestor::new().attest(&peer).unwrap();
        assert!(
            !selectors
                .iter()
                .any(|s| s.key() == "path" || s.key() == "sha256"),
            "{selectors:?}"
        );
        assert!(selectors.iter().any(|s| s.key() == "uid"), "{selectors:?}");
    }

    #[test]
    fn refuses_when_process_exited() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        child.wait().unwrap();
        let peer = PeerCredentials { pid, ..me() };
        let err = WorkloadAttestor::new().attest(&peer).unwrap_err();
        assert!(
            matches!(err, AttestError::ProcessGone(p) if p == pid),
            "{err}"
        );
    }

    #[test]
    fn refuses_when_proc_owner_differs_from_socket_credentials() {
        let peer = PeerCredentials {
            uid: me().uid.wrapping_add(4242),
            ..me()
        };
        let err = WorkloadAttestor::new().attest(&peer).unwrap_err();
        assert!(matches!(err, AttestError::OwnerMismatch { .. }), "{err}");
    }

    /// On a kernel without `SO_PEERPIDFD`, a peer whose start time could not be read at accept
    /// (it was gone) cannot be told from a process that took its PID since.
    #[test]
    fn refuses_an_unpinned_peer_without_a_start_time_at_accept() {
        let peer = PeerCredentials {
            start_time: None,
            pin: ProcessPin::Unsupported,
            ..me()
        };
        let pid = peer.pid;
        assert_eq!(
            WorkloadAttestor::new().attest(&peer),
            Err(AttestError::ProcessGone(pid))
        );
        // The same with a start time: the fallback check.
        let peer = PeerCredentials {
            pin: ProcessPin::Unsupported,
            ..me()
        };
        assert!(WorkloadAttestor::new().attest(&peer).is_ok());
    }

    #[test]
    fn refuses_missing_credentials() {
        let peer = PeerCredentials { pid: 0, ..me() };
        assert_eq!(
            WorkloadAttestor::new().attest(&peer),
            Err(AttestError::NoCredentials)
        );
    }

    #[test]
    fn reads_container_selectors_from_a_proc_tree() {
        let dir = tempfile::tempdir().unwrap();
        let pid_dir = dir.path().join("77");
        std::fs::create_dir(&pid_dir).unwrap();
        let stat = "77 (app) S 1 77 77 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5555 1 1";
        std::fs::write(pid_dir.join("stat"), stat).unwrap();
        std::fs::write(
            pid_dir.join("status"),
            "Uid:\t1234\t1234\t1234\t1234\nGid:\t99\t99\t99\t99\n",
        )
        .unwrap();
        let id = "a".repeat(64);
        let pod = "0b6ab7c2-4cd1-4f47-9b3a-0c8d4a8e2f11";
        std::fs::write(
            pid_dir.join("cgroup"),
            format!("0::/kubepods/pod{pod}/{id}\n"),
        )
        .unwrap();
        let peer = PeerCredentials {
            pid: 77,
            uid: 1234,
            gid: 99,
            start_time: Some(5555),
            exe: None,
            pin: ProcessPin::Unsupported,
        };
        let selectors = WorkloadAttestor::with_proc_root(dir.path())
            .attest(&peer)
            .unwrap();
        assert!(selectors.contains(&format!("docker:id:{id}").parse().unwrap()));
        assert!(selectors.contains(&format!("k8s:pod-uid:{pod}").parse().unwrap()));
        assert!(selectors.contains(&"unix:uid:1234".parse().unwrap()));
    }
}
