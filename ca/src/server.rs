//! `warden ca serve`: wires the datastore, the authority, the agent API (gRPC over TLS 1.3),
//! the admin API (Unix socket), the HTTP listener and the rotation loop, and shuts them down together.
//!
//! [`start`] returns a [`Running`] handle with the bound addresses (listen on port 0 in tests);
//! [`run`] starts, logs a line per listener and runs until `shutdown` resolves.

mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use warden_api::transport::tls_incoming;
use warden_api::v1::agent_api_server::AgentApiServer;
use warden_identity::{BundleSet, SharedBundles, SvidCertResolver};

use crate::agent_api::AgentService;
use crate::authority::{Authority, AuthorityError, Clock, SystemClock, read_trust_domain};
use crate::bundle_endpoint::{FileCert, WebRoots};
use crate::config::Config;
use crate::datastore::{Datastore, DatastoreError};
use crate::federation::Endpoint;
use crate::http::Metrics;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The CA could not be loaded.
    #[error(transparent)]
    Authority(#[from] AuthorityError),
    /// The datastore could not be opened.
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
    /// A listener could not be bound.
    #[error("cannot listen on `{addr}` ({what}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// `agent api`, `http`, `bundle endpoint`.
        what: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A node CA file is unusable.
    #[error("invalid node ca file `{path}`: {reason}")]
    NodeCa {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// TLS setup failed.
    #[error("tls setup failed: {0}")]
    Tls(String),
    /// The admin socket could not be bound (another CA serves this data directory).
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    /// A federation relationship cannot be kept.
    #[error("invalid federation with `{0}`: it is this ca's own trust domain")]
    FederationWithSelf(String),
    /// An `https_web` federation relationship, and no root certificates to authenticate its
    /// endpoint with.
    #[error("{0}")]
    WebRoots(String),
    /// The bundle endpoint's certificate files (`https_web`) do not load.
    #[error("{0}")]
    BundleEndpointCert(String),
    /// A listener failed while serving.
    #[error("{what} server failed: {reason}")]
    Serve {
        /// `agent api`, `http`.
        what: &'static str,
        /// The error.
        reason: String,
    },
}

/// A started CA. Dropping it does not stop it: call [`Running::shutdown`].
#[derive(Debug)]
pub struct Running {
    /// Where the agent API listens.
    pub agent_addr: SocketAddr,
    /// Where the HTTP listener listens.
    pub http_addr: SocketAddr,
    /// Where the SPIFFE bundle endpoint (`https_spiffe`) listens, if it is served.
    pub bundle_endpoint_addr: Option<SocketAddr>,
    /// The authority (for inspection in tests and status output).
    pub authority: Arc<Authority>,
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<Result<(), String>>)>,
    /// Tasks that ended before the shutdown, with their results.
    ended: Vec<(&'static str, TaskResult)>,
}

type TaskResult = Result<Result<(), String>, tokio::task::JoinError>;

/// Reads what starting reads from the files `config` names, short of the datastore and the
/// keys: the data directory's trust domain and the node CA files. `--check-config` runs
/// this, so that a configuration it passes does not fail to start for one of them.
pub fn check(config: &Config) -> Result<(), ServerError> {
    let td = read_trust_domain(&config.data_dir)?;
    read_node_cas(&config.node_cas)?;
    check_federation(config, &td)?;
    web_roots(config)?;
    bundle_endpoint_cert(config).map(drop)
}

/// The bundle endpoint's own certificate, when it is served `https_web`.
fn bundle_endpoint_cert(config: &Config) -> Result<Option<Arc<FileCert>>, ServerError> {
    let Some(files) = &config.bundle_endpoint_web else {
        return Ok(None);
    };
    let cert = FileCert::load(files).map_err(ServerError::BundleEndpointCert)?;
    Ok(Some(Arc::new(cert)))
}

/// The system's root certificates, when an `https_web` relationship needs them.
fn web_roots(config: &Config) -> Result<Option<WebRoots>, ServerError> {
    let needed = config
        .federation
        .iter()
        .any(|rel| rel.endpoint == Endpoint::Web);
    match needed {
        true => WebRoots::system().map(Some).map_err(ServerError::WebRoots),
        false => Ok(None),
    }
}

/// Refuses a federation relationship with the CA's own trust domain.
fn check_federation(config: &Config, td: &warden_identity::TrustDomain) -> Result<(), ServerError> {
    match config.federation.iter().find(|r| r.trust_domain == *td) {
        Some(own) => Err(ServerError::FederationWithSelf(
            own.trust_domain.to_string(),
        )),
        None => Ok(()),
    }
}

/// Starts the CA with the system clock.
pub async fn start(config: &Config) -> Result<Running, ServerError> {
    start_with_clock(config, Arc::new(SystemClock)).await
}

/// Starts the CA with `clock` (tests use a manual clock).
pub async fn start_with_clock(
    config: &Config,
    clock: Arc<dyn Clock>,
) -> Result<Running, ServerError> {
    let td = read_trust_domain(&config.data_dir)?;
    let node_cas = read_node_cas(&config.node_cas)?;
    check_federation(config, &td)?;
    let web_roots = web_roots(config)?;
    let endpoint_cert = bundle_endpoint_cert(config)?;
    // First: a second CA on this data directory stops here, before it touches the datastore.
    let admin_listener = crate::admin::bind(&config.admin_socket).await?;
    let ds = Datastore::open(&config.datastore).await?;
    let audit_key = crate::authority::prepare_audit_key(&config.data_dir, &ds).await?;
    let ds = ds.with_audit_key(audit_key);
    let authority = Authority::load(&config.data_dir, td, ds, clock, config.ttls).await?;
    let metrics = Arc::new(Metrics::new());

    let bundles = Arc::new(SharedBundles::new(bundle_set(&authority)));
    let svid = tls::issue_server_svid(&authority, config.agent_ttl).map_err(ServerError::Tls)?;
    let resolver =
        Arc::new(SvidCertResolver::from_svid(&svid).map_err(|e| ServerError::Tls(e.to_string()))?);
    let tls_config = tls::server_config(&authority, Arc::clone(&resolver), bundles.clone())
        .map_err(|e| ServerError::Tls(e.to_string()))?;

    let agent_listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.listen,
                what: "agent api",
                source,
            })?;
    let agent_addr = local_addr(&agent_listener, config.listen, "agent api")?;
    let http_listener = TcpListener::bind(config.http_listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.http_listen,
            what: "http",
            source,
        })?;
    let http_addr = local_addr(&http_listener, config.http_listen, "http")?;
    let bundle_endpoint_listener = match config.bundle_endpoint_listen {
        None => None,
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind {
                    addr,
                    what: "bundle endpoint",
                    source,
                })?;
            let bound = local_addr(&listener, addr, "bundle endpoint")?;
            Some((listener, bound))
        }
    };

    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    let service = AgentService::new(
        Arc::clone(&authority),
        config.agent_ttl,
        node_cas,
        Arc::clone(&metrics),
    );
    let incoming = tls_incoming(agent_listener, tls_config);
    let grpc = tonic::transport::Server::builder()
        .add_service(AgentApiServer::new(service))
        .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));
    tasks.push((
        "agent api",
        tokio::spawn(async move { grpc.await.map_err(|e| e.to_string()) }),
    ));

    let router = crate::http::router(Arc::clone(&authority), Arc::clone(&metrics));
    let http = axum::serve(http_listener, router).with_graceful_shutdown(stopped(stop_rx.clone()));
    tasks.push((
        "http",
        tokio::spawn(async move { http.await.map_err(|e| e.to_string()) }),
    ));

    let bundle_endpoint_addr = bundle_endpoint_listener.as_ref().map(|(_, addr)| *addr);
    if let Some((listener, _)) = bundle_endpoint_listener {
        // `https_web`: the configured certificate, read again when its files change; else
        // `https_spiffe`: the CA's own SVID, as on the agent API (the rotation loop reissues it).
        let cert: Arc<dyn rustls::server::ResolvesServerCert> = match endpoint_cert {
            Some(cert) => {
                tasks.push((
                    "bundle endpoint certificate",
                    tokio::spawn(Arc::clone(&cert).keep_loaded(stop_rx.clone())),
                ));
                cert
            }
            None => Arc::clone(&resolver) as Arc<dyn rustls::server::ResolvesServerCert>,
        };
        let tls = crate::bundle_endpoint::server_config(cert)
            .map_err(|e| ServerError::Tls(e.to_string()))?;
        tasks.push((
            "bundle endpoint",
            tokio::spawn(crate::bundle_endpoint::serve(
                listener,
                tls,
                Arc::clone(&authority),
                stop_rx.clone(),
            )),
        ));
    }

    for rel in &config.federation {
        tasks.push((
            "federation",
            tokio::spawn(crate::federation::keep_fresh(
                rel.clone(),
                web_roots.clone(),
                Arc::clone(&authority),
                Arc::clone(&metrics),
                stop_rx.clone(),
            )),
        ));
    }

    let admin = crate::admin::AdminService::new(
        authority.datastore().clone(),
        authority.trust_domain().clone(),
        authority.subscribe(),
    );
    let admin_socket = config.admin_socket.clone();
    let admin_stop = stopped(stop_rx.clone());
    tasks.push((
        "admin api",
        tokio::spawn(async move {
            crate::admin::serve_bound(admin_listener, &admin_socket, admin, admin_stop)
                .await
                .map_err(|e| e.to_string())
        }),
    ));

    tasks.push((
        "rotation",
        tokio::spawn(rotation_loop(
            Arc::clone(&authority),
            bundles,
            resolver,
            svid.not_after(),
            config.agent_ttl,
            stop_rx,
        )),
    ));

    Ok(Running {
        agent_addr,
        http_addr,
        bundle_endpoint_addr,
        authority,
        stop,
        tasks,
        ended: Vec::new(),
    })
}

/// Runs the CA until `shutdown` resolves (e.g. SIGINT/SIGTERM), then stops every listener.
pub async fn run(config: &Config, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    let running = start(config).await?;
    tracing::info!(
        addr = %running.agent_addr,
        trust_domain = %running.authority.trust_domain(),
        "agent api listening (grpc, tls 1.3)"
    );
    tracing::info!(addr = %running.http_addr, "http listening (/healthz /readyz /metrics /bundle)");
    match (running.bundle_endpoint_addr, &config.bundle_endpoint_web) {
        (Some(addr), None) => tracing::info!(
            addr = %addr,
            endpoint_spiffe_id = %crate::datastore::ca_spiffe_id(running.authority.trust_domain()),
            "spiffe bundle endpoint listening (https_spiffe, GET /)"
        ),
        (Some(addr), Some(files)) => tracing::info!(
            addr = %addr,
            cert = %files.cert_file.display(),
            "spiffe bundle endpoint listening (https_web, GET /)"
        ),
        (None, _) => {}
    }
    tracing::info!(socket = %config.admin_socket.display(), "admin api listening (unix socket)");
    tracing::info!(
        datastore = %running.authority.datastore().location(),
        "datastore open"
    );
    let mut running = running;
    tokio::select! {
        () = shutdown => tracing::info!("shutting down"),
        what = running.first_to_end() => tracing::error!(listener = what, "stopped early; shutting down"),
    }
    running.shutdown().await
}

impl Running {
    /// Completes when a listener or the rotation loop ends by itself (each runs until the
    /// shutdown otherwise), with its name. Its result is kept for [`Running::shutdown`].
    async fn first_to_end(&mut self) -> &'static str {
        let (index, what, result) = std::future::poll_fn(|cx| {
            for (index, (what, task)) in self.tasks.iter_mut().enumerate() {
                if let Poll::Ready(result) = Pin::new(task).poll(cx) {
                    return Poll::Ready((index, *what, result));
                }
            }
            Poll::Pending
        })
        .await;
        self.tasks.remove(index);
        self.ended.push((what, result));
        what
    }

    /// Stops every listener and the rotation loop, waits for them, closes the datastore. One
    /// that had ended by itself before is an error even if it ended cleanly: the CA stopped
    /// unasked, and its exit status must say so (a supervisor restarts it on failure).
    pub async fn shutdown(self) -> Result<(), ServerError> {
        let _ = self.stop.send(true);
        let mut first_err = None;
        let mut results: Vec<_> = self
            .ended
            .into_iter()
            .map(|(what, result)| match result {
                Ok(Ok(())) => (what, Ok(Err("stopped by itself".to_owned()))),
                other => (what, other),
            })
            .collect();
        for (what, task) in self.tasks {
            results.push((what, task.await));
        }
        for (what, result) in results {
            match result {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => {
                    first_err.get_or_insert(ServerError::Serve { what, reason });
                }
                Err(e) => {
                    first_err.get_or_insert(ServerError::Serve {
                        what,
                        reason: e.to_string(),
                    });
                }
            }
        }
        self.authority.datastore().close().await;
        first_err.map_or(Ok(()), Err)
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn local_addr(
    l: &TcpListener,
    addr: SocketAddr,
    what: &'static str,
) -> Result<SocketAddr, ServerError> {
    l.local_addr()
        .map_err(|source| ServerError::Bind { addr, what, source })
}

fn bundle_set(authority: &Authority) -> BundleSet {
    let mut set = BundleSet::new();
    set.insert((*authority.bundle()).clone());
    set
}

fn read_node_cas(
    paths: &[std::path::PathBuf],
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, ServerError> {
    let mut out = Vec::new();
    for path in paths {
        let bad = |reason: String| ServerError::NodeCa {
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(Path::new(path)).map_err(|e| bad(e.to_string()))?;
        let blocks = pem::parse_many(&bytes).map_err(|e| bad(e.to_string()))?;
        let before = out.len();
        for (i, b) in blocks
            .into_iter()
            .filter(|b| b.tag() == "CERTIFICATE")
            .enumerate()
        {
            let der = rustls_pki_types::CertificateDer::from(b.into_contents());
            // Refused here, not skipped at attestation, where it would match nothing.
            webpki::anchor_from_trusted_cert(&der).map_err(|e| {
                bad(format!(
                    "certificate {} is not usable as a trust anchor: {e:?}",
                    i + 1
                ))
            })?;
            out.push(der);
        }
        if out.len() == before {
            return Err(bad("no `CERTIFICATE` pem block".into()));
        }
    }
    Ok(out)
}

/// Ticks the rotation schedule, republishes bundles to the TLS verifier and reissues the
/// CA's own SVID at half its life or when the signing intermediate changed.
async fn rotation_loop(
    authority: Arc<Authority>,
    bundles: Arc<SharedBundles>,
    resolver: Arc<SvidCertResolver>,
    mut svid_not_after: SystemTime,
    svid_ttl: Duration,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    // Often enough for the CA's rotation and for the server SVID's half-life (the agent TTL,
    // which may be shorter than the period the CA's TTL asks for).
    let period = (authority.ttls().ca / 24)
        .min(svid_ttl / 4)
        .clamp(Duration::from_millis(200), Duration::from_secs(30));
    let mut issued_at = authority.clock().now();
    let mut active = authority.active_ca_not_after();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(()),
            () = tokio::time::sleep(period) => {}
        }
        match authority.tick().await {
            Ok(true) => bundles.set(bundle_set(&authority)),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "ca rotation failed; will retry"),
        }
        let now = authority.clock().now();
        let half = svid_not_after.duration_since(issued_at).unwrap_or_default() / 2;
        let current = authority.active_ca_not_after();
        if now >= issued_at + half || current != active {
            match tls::issue_server_svid(&authority, svid_ttl) {
                Ok(svid) => match resolver.set(&svid) {
                    Ok(()) => {
                        issued_at = now;
                        svid_not_after = svid.not_after();
                        active = current;
                        tracing::info!("ca server svid reissued");
                    }
                    Err(e) => tracing::error!(error = %e, "ca server svid unusable"),
                },
                Err(e) => tracing::error!(error = %e, "cannot reissue the ca server svid"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::authority::{InitOptions, KeyType, Ttls, init_ca};

    /// A CA started on a fresh data dir.
    async fn started() -> (tempfile::TempDir, Running) {
        let dir = tempfile::tempdir().unwrap();
        init_ca(&InitOptions {
            trust_domain: "example.org".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            datastore: None,
            upstream: None,
            key_type: KeyType::EcP256,
            root_ttl: Duration::from_secs(86_400),
            force: false,
        })
        .await
        .unwrap();
        let config = Config {
            data_dir: dir.path().to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            bundle_endpoint_listen: None,
            bundle_endpoint_web: None,
            admin_socket: dir.path().join("admin.sock"),
            datastore: crate::authority::default_datastore(dir.path()),
            ttls: Ttls {
                ca: Duration::from_secs(86_400),
                x509_svid: Duration::from_secs(3600),
                jwt_svid: Duration::from_secs(300),
            },
            agent_ttl: Duration::from_secs(3600),
            node_cas: Vec::new(),
            federation: Vec::new(),
        };
        let running = start(&config).await.unwrap();
        (dir, running)
    }

    /// A listener that ends by itself is what `run` stops the CA for: `first_to_end` names it,
    /// and the shutdown reports why it ended and stops the others.
    #[tokio::test]
    async fn a_listener_that_ends_by_itself_is_named_and_the_ca_stops() {
        let (_dir, mut running) = started().await;
        let agent_addr = running.agent_addr;
        let http = running
            .tasks
            .iter()
            .find(|(what, _)| *what == "http")
            .map(|(_, task)| task.abort_handle())
            .unwrap();
        http.abort();
        let ended = tokio::time::timeout(Duration::from_secs(10), running.first_to_end())
            .await
            .unwrap();
        assert_eq!(ended, "http");
        let err = running.shutdown().await.unwrap_err();
        assert!(
            matches!(&err, ServerError::Serve { what: "http", .. }),
            "{err}"
        );
        assert!(tokio::net::TcpStream::connect(agent_addr).await.is_err());
    }

    /// One that ends cleanly but unasked is an error too: the CA's exit status says it failed.
    #[tokio::test]
    async fn a_listener_that_ends_cleanly_but_unasked_is_an_error() {
        let (_dir, mut running) = started().await;
        running
            .tasks
            .push(("test listener", tokio::spawn(async { Ok(()) })));
        let ended = tokio::time::timeout(Duration::from_secs(10), running.first_to_end())
            .await
            .unwrap();
        assert_eq!(ended, "test listener");
        let err = running.shutdown().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "test listener server failed: stopped by itself"
        );
    }
}
