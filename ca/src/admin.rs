//! The CA's admin API (`warden.v1.AdminApi`) over a Unix socket: join tokens, registration
//! entries, agents, bundles and the audit log, for `warden token|entry|node|bundle|audit`.
//!
//! Access control is the socket itself: its directory is created 0700, the socket file is 0600,
//! and every call's peer credentials (SO_PEERCRED) are checked — only the CA process's own uid
//! and root may call. The caller is audited as `admin:uid=<uid>`.

mod convert;
mod peer;
mod service;

use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use warden_api::v1::admin_api_server::AdminApiServer;
use warden_identity::{Bundle, TrustDomain};

use crate::datastore::Datastore;

pub use convert::status_from_datastore;
pub use peer::{Actor, PeerCheck, check_peer_uid};

/// Default join token lifetime, seconds (SPIRE's default, 10 minutes).
pub const DEFAULT_JOIN_TOKEN_TTL: u32 = 600;
/// Longest join token lifetime, seconds (7 days).
pub const MAX_JOIN_TOKEN_TTL: u32 = 7 * 24 * 3600;

/// The admin API over a [`Datastore`]. Serve it with [`serve`].
#[derive(Clone)]
pub struct AdminService {
    datastore: Datastore,
    trust_domain: TrustDomain,
    own_bundle: watch::Receiver<Arc<Bundle>>,
}

/// Why the admin socket could not be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The socket's directory could not be created.
    #[error("cannot create the admin socket directory `{path}`: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Something that is not a socket is in the way.
    #[error("admin socket path `{0}` exists and is not a socket; refusing to remove it")]
    NotASocket(PathBuf),
    /// Another process is serving the socket.
    #[error(
        "admin socket `{0}` is in use by another process (is another `warden ca serve` running?)"
    )]
    InUse(PathBuf),
    /// Binding or securing the socket failed.
    #[error("cannot bind the admin socket `{path}`: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The gRPC server failed.
    #[error("admin api server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

// === impl AdminService ===

impl AdminService {
    /// An admin service for `trust_domain`; `own_bundle` is the CA's current bundle (the own trust
    /// domain's bundle is managed by the CA and cannot be set through this API).
    pub fn new(
        datastore: Datastore,
        trust_domain: TrustDomain,
        own_bundle: watch::Receiver<Arc<Bundle>>,
    ) -> Self {
        Self {
            datastore,
            trust_domain,
            own_bundle,
        }
    }
}

impl std::fmt::Debug for AdminService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminService")
            .field("datastore", &self.datastore)
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// Serves `service` on the Unix socket `socket` until `shutdown` resolves, then removes the socket.
///
/// Creates the parent directory (0700) if missing, removes a stale socket left by a dead process
/// (but refuses to touch a live one or a non-socket file), binds, makes the socket 0600, and checks
/// every caller's uid: the CA's own effective uid and root are allowed, anyone else gets
/// `PermissionDenied` naming their uid.
pub async fn serve(
    socket: &Path,
    service: AdminService,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AdminError> {
    let listener = bind(socket).await?;
    serve_bound(listener, socket, service, shutdown).await
}

/// [`serve`] on a socket already bound by [`bind`] (`warden ca serve` binds it before anything
/// else, so that a second CA on the same data directory stops at once).
pub(crate) async fn serve_bound(
    listener: UnixListener,
    socket: &Path,
    service: AdminService,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AdminError> {
    let check = PeerCheck::new(nix::unistd::Uid::effective().as_raw());
    tracing::info!(socket = %socket.display(), "admin api listening");
    let result = tonic::transport::Server::builder()
        .add_service(AdminApiServer::with_interceptor(service, check))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    if let Err(err) = std::fs::remove_file(socket) {
        tracing::debug!(error = %err, "admin socket already removed");
    }
    result.map_err(AdminError::from)
}

/// Binds the admin socket (see [`serve`]): refuses one in use by a live process.
pub(crate) async fn bind(socket: &Path) -> Result<UnixListener, AdminError> {
    if let Some(dir) = socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| AdminError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
    }
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(socket).await.is_ok() {
                return Err(AdminError::InUse(socket.to_owned()));
            }
            std::fs::remove_file(socket).map_err(|source| AdminError::Bind {
                path: socket.to_owned(),
                source,
            })?;
            tracing::debug!(socket = %socket.display(), "removed a stale admin socket");
        }
        Ok(_) => return Err(AdminError::NotASocket(socket.to_owned())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(AdminError::Bind {
                path: socket.to_owned(),
                source,
            });
        }
    }
    let listener = UnixListener::bind(socket).map_err(|source| AdminError::Bind {
        path: socket.to_owned(),
        source,
    })?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        AdminError::Bind {
            path: socket.to_owned(),
            source,
        }
    })?;
    Ok(listener)
}
