//! The Workload API's Unix socket: binding (stale socket removed, socket world-connectable
//! because authorization is by attestation, not by file mode) and an accepted-stream wrapper
//! that captures the peer's SO_PEERCRED and process start time at `accept()`.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::server::Connected;

use crate::workload_attestor::{PeerCredentials, WorkloadAttestor};

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
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerInfo(pub(crate) Option<PeerCredentials>);

// === impl PeerStream ===

impl PeerStream {
    pub(crate) fn new(inner: UnixStream, attestor: &Arc<WorkloadAttestor>) -> Self {
        let peer = inner.peer_cred().ok().and_then(|c| {
            let pid = c.pid()?;
            Some(PeerCredentials {
                pid,
                uid: c.uid(),
                gid: c.gid(),
                start_time: attestor.start_time(pid),
            })
        });
        Self {
            inner,
            peer: PeerInfo(peer),
        }
    }
}

impl Connected for PeerStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer
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
