//! The SPIFFE Workload API server on the agent's Unix socket.
//!
//! Every call must carry `workload.spiffe.io: true` (W-2, else InvalidArgument); the caller is
//! attested from SO_PEERCRED and `/proc` (W-3: no TLS, no client authentication); a caller that
//! matches no entry gets PermissionDenied `no identity issued`; while the agent has not synced
//! once, calls get Unavailable (W-5). The WIT-SVID profile is not implemented, so its methods
//! answer Unimplemented (W-15).

mod attesting;
mod jwt;
mod listener;
mod responses;
mod service;
mod streams;

pub use streams::{MAX_STREAMS, MAX_STREAMS_PER_UID};

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use warden_api::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;

pub use jwt::{JwtMinter, MintError, MintFuture, MintedJwt};

use crate::cache::CacheState;
use crate::metrics::Metrics;
use crate::workload_attestor::WorkloadAttestor;

/// Streams one connection may have open at once (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`):
/// a workload needs a few (SVIDs, bundles, JWT bundles); each open stream holds a task.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;
/// How long a stopping agent waits for its Workload API clients to let their connections end.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the Workload API could not be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkloadApiError {
    /// The socket could not be bound.
    #[error("cannot bind the workload api socket `{path}`: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("workload api server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The reflection service could not be built from the embedded descriptors.
    #[error("workload api reflection service: {0}")]
    Reflection(String),
}

/// The Workload API listener: bound by [`WorkloadApi::new`], served by [`WorkloadApi::run`].
#[derive(Debug)]
pub struct WorkloadApi {
    listener: UnixListener,
    path: PathBuf,
    service: service::Service,
    attestor: Arc<WorkloadAttestor>,
    closing: watch::Sender<bool>,
}

// === impl WorkloadApi ===

impl WorkloadApi {
    /// Binds the socket at `path`.
    pub fn new(
        path: &Path,
        state: watch::Receiver<Arc<CacheState>>,
        minter: Arc<dyn JwtMinter>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, WorkloadApiError> {
        let listener = listener::bind(path).map_err(|source| WorkloadApiError::Bind {
            path: path.to_owned(),
            source,
        })?;
        let attestor = Arc::new(WorkloadAttestor::new());
        let (closing, closing_rx) = watch::channel(false);
        let service = service::Service::new(service::Inner {
            state,
            attestor: Arc::clone(&attestor),
            attesting: attesting::Attesting::new(),
            jwt: jwt::JwtCache::new(minter),
            metrics,
            closing: closing_rx,
            failures: service::FailureLog::default(),
            streams: streams::StreamSlots::new(MAX_STREAMS, MAX_STREAMS_PER_UID),
        });
        Ok(Self {
            listener,
            path: path.to_owned(),
            service,
            attestor,
            closing,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bounds the open streams to `max` in all and `max_per_uid` per caller uid (instead of
    /// [`MAX_STREAMS`] and [`MAX_STREAMS_PER_UID`]).
    #[must_use]
    pub fn with_stream_limits(mut self, max: usize, max_per_uid: usize) -> Self {
        self.service.limit_streams(max, max_per_uid);
        self
    }

    /// Serves until `shutdown` completes, then removes the socket.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), WorkloadApiError> {
        let attestor = self.attestor;
        let closing = self.closing;
        let (stopping_tx, stopping) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            shutdown.await;
            // End open streams so the graceful shutdown does not wait for clients.
            closing.send_replace(true);
            let _ = stopping_tx.send(());
        };
        let incoming = UnixListenerStream::new(self.listener)
            .map(move |conn| conn.map(|s| listener::PeerStream::new(s, &attestor)));
        // gRPC server reflection (W-14, a SHOULD): tools such as grpcurl discover the service;
        // it describes `SpiffeWorkloadAPI` only and gives out no identity.
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(warden_api::WORKLOAD_FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| WorkloadApiError::Reflection(e.to_string()))?;
        let serve = tonic::transport::Server::builder()
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .add_service(SpiffeWorkloadApiServer::new(self.service))
            .add_service(reflection)
            .serve_with_incoming_shutdown(incoming, shutdown);
        // The graceful shutdown waits for every connection to end; a client that stops reading
        // (its flow-control window at 0) would keep its stream's last message, and the agent,
        // forever. Past the grace period the connections are dropped.
        let grace = async move {
            if stopping.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let result = tokio::select! {
            result = serve => result,
            () = grace => {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "workload api clients still connected after the grace period; closing them");
                Ok(())
            }
        };
        let _ = std::fs::remove_file(&self.path);
        Ok(result?)
    }
}
