//! The Workload API's Unix socket: binding (stale socket removed, socket world-connectable
//! because authorization is by attestation, not by file mode) and an accepted-stream wrapper
//! that captures the peer's SO_PEERCRED, a pidfd of it (SO_PEERPIDFD) and its process start
//! time at `accept()`.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::server::Connected;

use crate::workload_attestor::{PeerCredentials, ProcessPin, WorkloadAttestor};

/// Binds the Workload API socket at `path`: creates the parent directory, removes a stale
/// socket (refusing to remove anything that is not a socket) and makes the socket
/// connectable by every local user.
pub(crate) fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("`{}` exists and is not a socket", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))?;
    Ok(listener)
}

/// An accepted connection with the credentials captured at accept time.
#[derive(Debug)]
pub(crate) struct PeerStream {
    inner: UnixStream,
    peer: PeerInfo,
}

/// The connection info tonic puts into each request's extensions.
#[derive(Debug, Clone)]
pub(crate) struct PeerInfo(pub(crate) Option<PeerCredentials>);

// === impl PeerStream ===

impl PeerStream {
    pub(crate) fn new(inner: UnixStream, attestor: &Arc<WorkloadAttestor>) -> Self {
        let peer = peer_credentials(&inner, attestor);
        Self {
            inner,
            peer: PeerInfo(peer),
        }
    }
}

/// The credentials of the process that connected `stream`: SO_PEERCRED, a pidfd pinning it
/// (taken before its start time is read) and its start time.
fn peer_credentials(stream: &UnixStream, attestor: &WorkloadAttestor) -> Option<PeerCredentials> {
    let creds = stream.peer_cred().ok()?;
    let pid = creds.pid()?;
    let pin = match nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerPidfd) {
        Ok(pidfd) => ProcessPin::Pidfd(Arc::new(pidfd)),
        Err(nix::errno::Errno::ENOPROTOOPT) => ProcessPin::Unsupported,
        // ESRCH: reaped before the accept.
        Err(_) => ProcessPin::Gone,
    };
    Some(PeerCredentials {
        pid,
        uid: creds.uid(),
        gid: creds.gid(),
        start_time: attestor.start_time(pid),
        exe: attestor.exe_id(pid),
        pin,
    })
}

impl Connected for PeerStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run by the test below in a child process (`--ignored`): connects to the socket named in
    /// `WARDEN_TEST_CONNECT`, then exits.
    #[test]
    #[ignore = "run as a child process by the pid-reuse test"]
    fn connect_to_the_socket_named_in_the_environment() {
        if let Some(path) = std::env::var_os("WARDEN_TEST_CONNECT") {
            std::os::unix::net::UnixStream::connect(path).unwrap();
        }
    }

    /// A process connects and exits (it could hand the socket to a child first); it is reaped
    /// before the agent accepts, and its PID goes to another process of the same user. `/proc`
    /// then agrees with itself about that process, start time included: only the pidfd taken
    /// at accept tells that the process that connected is gone.
    #[tokio::test]
    async fn a_peer_reaped_before_accept_is_not_attested_when_its_pid_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = bind(&path).unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "workload_api::listener::tests::connect_to_the_socket_named_in_the_environment",
                "--ignored",
                "--quiet",
            ])
            .env("WARDEN_TEST_CONNECT", &path)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let (stream, _) = listener.accept().await.unwrap();
        let attestor = WorkloadAttestor::new();
        let peer = peer_credentials(&stream, &attestor).unwrap();
        if matches!(peer.pin, ProcessPin::Unsupported) {
            // Before Linux 6.5: nothing tells a reused PID from the process that connected
            // (the documented limit of the fallback), so there is nothing to check here.
            eprintln!("skipped: this kernel has no SO_PEERPIDFD");
            return;
        }
        // The PID reused by a live process of the same user: this one.
        let me = i32::try_from(std::process::id()).unwrap();
        let reused = PeerCredentials {
            pid: me,
            start_time: attestor.start_time(me),
            ..peer
        };
        assert_eq!(
            attestor.attest(&reused),
            Err(crate::AttestError::ProcessGone(me))
        );
    }

    /// The common case: a live process connects and is attested through its pidfd.
    #[tokio::test]
    async fn a_live_peer_is_pinned_and_attested() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = bind(&path).unwrap();
        let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let attestor = WorkloadAttestor::new();
        let peer = peer_credentials(&stream, &attestor).unwrap();
        // A pidfd wherever the kernel has SO_PEERPIDFD (Linux 6.5+).
        assert!(
            matches!(peer.pin, ProcessPin::Pidfd(_) | ProcessPin::Unsupported),
            "{:?}",
            peer.pin
        );
        assert!(attestor.attest(&peer).is_ok());
    }
}
