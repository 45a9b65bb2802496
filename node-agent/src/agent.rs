//! `run(config)`: attests the node (or reuses a stored, still valid agent SVID), then serves
//! the Workload API and health/metrics while the sync loop keeps the cache current.

mod sync;

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::ca_client::{CaClient, CaError};
use crate::cache::{Cache, Svid};
use crate::config::{Config, NodeAttestation};
use crate::http::HttpServer;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::trust::{BundleSet, certificates_from_pem};
use crate::workload_api::{WorkloadApi, WorkloadApiError};

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The trust bundle file is unusable.
    #[error("cannot read trust bundle `{0}`: {1}")]
    TrustBundle(String, String),
    /// The CA refused node attestation.
    #[error("node attestation refused: {0}")]
    AttestationRefused(String),
    /// The CA presented a certificate the trust bundle does not accept.
    #[error("node attestation failed: {0}")]
    BundleMismatch(String),
    /// Nothing to attest with.
    #[error("no valid agent svid in `{0}` and no join token or x509pop credentials given")]
    NoCredentials(String),
    /// An x509pop file is unusable.
    #[error("cannot use x509pop file `{0}`: {1}")]
    X509Pop(String, String),
    /// Data directory problem.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Workload API problem.
    #[error(transparent)]
    WorkloadApi(#[from] WorkloadApiError),
    /// Health listener problem.
    #[error("cannot bind the health listener `{0}`: {1}")]
    Http(String, std::io::Error),
    /// The agent SVID expired before it could be renewed (the CA was away), and the node's
    /// attestation cannot be repeated (a join token is used once; or none was configured).
    #[error(
        "the agent svid `{spiffe_id}` expired at {expired} before it could be renewed, and this agent cannot attest the node again by itself (a join token works once; only x509pop attests again): create a new join token (`warden token create`) and restart the agent with it"
    )]
    AgentSvidExpired {
        /// The agent's SPIFFE ID.
        spiffe_id: String,
        /// When it expired (RFC 3339).
        expired: String,
    },
}

/// Runs the agent until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let bundle_text = std::fs::read(&config.trust_bundle).map_err(|e| {
        AgentError::TrustBundle(config.trust_bundle.display().to_string(), e.to_string())
    })?;
    let roots = certificates_from_pem(&config.trust_bundle.display().to_string(), &bundle_text)
        .map_err(|e| {
            AgentError::TrustBundle(config.trust_bundle.display().to_string(), e.to_string())
        })?;
    let store = Store::open(&config.data_dir)?;

    let (agent_svid, bundles) = obtain_agent_svid(&config, &roots, &store).await?;
    let td = agent_svid.spiffe_id().trust_domain();
    info!(spiffe_id = %agent_svid.spiffe_id(), "agent svid ready");

    let metrics = Arc::new(Metrics::new());
    let (mut cache, state) = Cache::new(td.clone());
    if let Some(b) = bundles {
        cache.set_bundles(b);
    }
    cache.publish();

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let minter = Arc::new(sync::CaMinter::default());
    let api = WorkloadApi::new(
        &config.socket,
        state.clone(),
        minter.clone(),
        Arc::clone(&metrics),
    )?;
    info!(socket = %config.socket.display(), "workload api listening");
    let http = HttpServer::new(config.http_listen, state.clone(), Arc::clone(&metrics))
        .await
        .map_err(|e| AgentError::Http(config.http_listen.to_string(), e))?;
    info!(addr = %config.http_listen, "health and metrics listening");

    let api_task = tokio::spawn(api.run(stopped(stop_rx.clone())));
    let http_task = tokio::spawn(http.run(stopped(stop_rx.clone())));
    let syncer = sync::Syncer::new(
        config.clone(),
        roots,
        store,
        agent_svid,
        Arc::clone(&metrics),
        minter,
    );
    let mut sync_task = tokio::spawn(syncer.run(cache, stopped(stop_rx.clone())));

    // The sync loop ends by itself only when the agent can go on no longer.
    let fatal = tokio::select! {
        () = shutdown => None,
        ended = &mut sync_task => ended.ok().and_then(Result::err),
    };
    match &fatal {
        None => info!("shutting down"),
        Some(e) => tracing::error!(error = %e, "stopping the agent"),
    }
    stop_tx.send_replace(true);
    if fatal.is_none() {
        let _ = sync_task.await;
    }
    if let Ok(Err(e)) = api_task.await {
        warn!(error = %e, "workload api stopped with an error");
    }
    let _ = http_task.await;
    fatal.map_or(Ok(()), Err)
}

/// A stored, unexpired agent SVID; else a fresh attestation.
async fn obtain_agent_svid(
    config: &Config,
    roots: &[rustls_pki_types::CertificateDer<'static>],
    store: &Store,
) -> Result<(Svid, Option<BundleSet>), AgentError> {
    match store.load_agent() {
        Ok(Some(svid)) if svid.not_after() > SystemTime::now() => {
            info!(spiffe_id = %svid.spiffe_id(), "reusing stored agent svid");
            return Ok((svid, None));
        }
        Ok(Some(_)) => info!("stored agent svid has expired; attesting again"),
        Ok(None) => {}
        Err(e) => warn!(error = %e, "ignoring stored agent svid"),
    }
    let Some(attestation) = &config.attestation else {
        return Err(AgentError::NoCredentials(
            config.data_dir.display().to_string(),
        ));
    };
    let mut backoff = sync::Backoff::new();
    loop {
        match attest(config, roots, attestation).await {
            Ok((svid, bundles)) => {
                store.save_agent(&svid)?;
                if let Some(own) = bundles.get(&svid.spiffe_id().trust_domain()) {
                    store.save_bundle(&own.to_pem())?;
                }
                info!(spiffe_id = %svid.spiffe_id(), "node attested");
                return Ok((svid, Some(bundles)));
            }
            Err(CaError::Refused(why) | CaError::NotAssigned(why) | CaError::Invalid(why)) => {
                return Err(AgentError::AttestationRefused(why));
            }
            Err(CaError::BundleMismatch(addr)) => {
                return Err(AgentError::BundleMismatch(format!(
                    "the ca at `{addr}` presented a certificate that does not chain to the trust bundle `{}` (bundle mismatch)",
                    config.trust_bundle.display()
                )));
            }
            Err(CaError::BadAnswer(why)) => return Err(AgentError::AttestationRefused(why)),
            Err(e) => {
                let wait = backoff.next_delay();
                warn!(error = %e, retry_in = ?wait, "cannot attest yet");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Attests the node to the CA at `config.server` (trusting `roots`) with `attestation`.
async fn attest(
    config: &Config,
    roots: &[rustls_pki_types::CertificateDer<'static>],
    attestation: &NodeAttestation,
) -> Result<(Svid, BundleSet), CaError> {
    let client = CaClient::connect(&config.server, roots, None, None).await?;
    match attestation {
        NodeAttestation::JoinToken(token) => client.attest_join_token(token).await,
        NodeAttestation::X509Pop { cert, key } => {
            let cert_pem = std::fs::read(cert)
                .map_err(|e| CaError::Refused(format!("cannot read `{}`: {e}", cert.display())))?;
            let chain = certificates_from_pem(&cert.display().to_string(), &cert_pem)
                .map_err(|e| CaError::Refused(e.to_string()))?;
            let key_pem = std::fs::read(key)
                .map_err(|e| CaError::Refused(format!("cannot read `{}`: {e}", key.display())))?;
            let key_der = pem::parse(&key_pem)
                .map_err(|_| CaError::Refused(format!("`{}` is not a pem key", key.display())))?;
            client.attest_x509pop(&chain, key_der.contents()).await
        }
    }
}
