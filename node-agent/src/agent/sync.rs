//! The sync loop: keeps the agent SVID renewed (half-life), the entries and bundles in step
//! with the CA, and every entry's X.509-SVID fetched in batches and rotated at half-life with
//! ±10% per-entry jitter. Failures leave the cache serving as it is and retry with
//! exponential backoff and jitter. An agent SVID that expired while the CA was away is
//! replaced by attesting the node again with x509pop; with a join token (used once) the loop
//! ends with [`AgentError::AgentSvidExpired`] and the agent stops.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use super::AgentError;
use crate::ca_client::{CaClient, CaError};
use crate::cache::{Cache, Entry, Svid};
use crate::config::Config;
use crate::config::NodeAttestation;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::workload_api::{JwtMinter, MintError, MintFuture, MintedJwt};

const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const MIN_WAIT: Duration = Duration::from_millis(100);

/// Exponential backoff with ±20% jitter.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

// === impl Backoff ===

impl Backoff {
    pub(crate) fn new() -> Self {
        Self {
            next: BACKOFF_START,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.next = BACKOFF_START;
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        base.mul_f64(rand::rng().random_range(0.8..1.2))
    }
}

/// Per-entry rotation jitter in `[-0.1, 0.1]`, stable for an entry id.
pub(crate) fn entry_jitter(id: &str) -> f64 {
    let digest = Sha256::digest(id.as_bytes());
    let byte = digest.first().copied().unwrap_or(128);
    f64::from(byte) / 255.0 * 0.2 - 0.1
}

/// Mints JWT-SVIDs through the CA connection of the sync loop.
#[derive(Debug, Default)]
pub(crate) struct CaMinter {
    client: Mutex<Option<CaClient>>,
}

impl CaMinter {
    fn set(&self, client: Option<CaClient>) {
        if let Ok(mut c) = self.client.lock() {
            *c = client;
        }
    }
}

impl JwtMinter for CaMinter {
    fn mint<'a>(&'a self, entry: &'a Entry, audience: &'a [String]) -> MintFuture<'a> {
        Box::pin(async move {
            let client = self.client.lock().ok().and_then(|c| c.clone());
            let client =
                client.ok_or_else(|| MintError::Unavailable("not connected to the ca".into()))?;
            let (token, exp) =
                client
                    .sign_jwt_svid(&entry.id, audience)
                    .await
                    .map_err(|e| match e {
                        CaError::Refused(m) | CaError::NotAssigned(m) | CaError::Invalid(m) => {
                            MintError::Refused(m)
                        }
                        other => MintError::Unavailable(other.to_string()),
                    })?;
            let expires_at = UNIX_EPOCH + Duration::from_secs(u64::try_from(exp).unwrap_or(0));
            Ok(MintedJwt {
                token,
                issued_at: SystemTime::now(),
                expires_at,
            })
        })
    }
}

/// Why an expired agent SVID was not replaced.
enum Expired {
    /// The node cannot attest again: the agent stops.
    Fatal(AgentError),
    /// Attesting again failed this time (the CA is away): retried with backoff.
    Retry(CaError),
}

/// The sync loop's state.
#[derive(Debug)]
pub(crate) struct Syncer {
    config: Config,
    roots: Vec<CertificateDer<'static>>,
    store: Store,
    agent: Svid,
    metrics: Arc<Metrics>,
    minter: Arc<CaMinter>,
    client: Option<CaClient>,
    last_bundle_pem: String,
    /// A renewed agent SVID not stored yet (the save failed): stored at the next syncs, and
    /// used only once stored; no renewal meanwhile.
    pending: Option<Svid>,
    /// The agent SVID in use is not stored: a pending renewal taken into use when the stored
    /// one expired. Stored at the next syncs.
    unstored: bool,
}

// === impl Syncer ===

impl Syncer {
    pub(crate) fn new(
        config: Config,
        roots: Vec<CertificateDer<'static>>,
        store: Store,
        agent: Svid,
        metrics: Arc<Metrics>,
        minter: Arc<CaMinter>,
    ) -> Self {
        Self {
            config,
            roots,
            store,
            agent,
            metrics,
            minter,
            client: None,
            last_bundle_pem: String::new(),
            pending: None,
            unstored: false,
        }
    }

    /// Syncs until `stop` completes (`Ok`), or until the agent cannot go on: its SVID expired
    /// and the node cannot attest again.
    pub(crate) async fn run(
        mut self,
        mut cache: Cache,
        stop: impl Future<Output = ()>,
    ) -> Result<(), AgentError> {
        tokio::pin!(stop);
        let mut backoff = Backoff::new();
        loop {
            let synced = match self.replace_expired_agent_svid().await {
                Ok(()) => self.sync_once(&mut cache).await,
                Err(Expired::Fatal(e)) => return Err(e),
                Err(Expired::Retry(e)) => Err(e),
            };
            let delay = match synced {
                Ok(()) => {
                    backoff.reset();
                    let now = SystemTime::now();
                    self.metrics.synced(now);
                    // The agent's own refresh counts unless a renewed SVID waits to be stored
                    // (tried again at the next sync, not at once).
                    let agent_refresh = Some(if self.pending.is_none() {
                        crate::cache::refresh_at(
                            self.agent.not_before(),
                            self.agent.not_after(),
                            0.0,
                        )
                    } else {
                        // Its expiry still counts: a renewal waiting to be stored is taken
                        // into use then (`replace_expired_agent_svid`).
                        self.agent.not_after()
                    });
                    let until_rotation = cache
                        .next_rotation(entry_jitter)
                        .into_iter()
                        .chain(agent_refresh)
                        .min()
                        .and_then(|t| t.duration_since(now).ok())
                        .unwrap_or(Duration::ZERO);
                    self.config.sync_interval.min(until_rotation).max(MIN_WAIT)
                }
                Err(e) => {
                    self.metrics.sync_failed();
                    self.client = None;
                    self.minter.set(None);
                    let wait = backoff.next_delay();
                    warn!(error = %e, retry_in = ?wait, "sync with the ca failed; serving from cache");
                    wait
                }
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = &mut stop => return Ok(()),
            }
        }
    }

    /// Attests the node again when the agent SVID has expired (the CA refuses it for
    /// everything, renewal included): with x509pop; with a join token, which is used once, the
    /// agent cannot go on.
    async fn replace_expired_agent_svid(&mut self) -> Result<(), Expired> {
        let expired_at = self.agent.not_after();
        let now = SystemTime::now();
        if expired_at > now {
            return Ok(());
        }
        // A renewal still waiting to be stored is the usable SVID now: the CA holds its serial
        // as current. It is taken into use, and stored as soon as that works.
        if let Some(renewed) = self.pending.take_if(|p| p.not_after() > now) {
            warn!("agent svid expired while its renewal waited to be stored: using the renewal");
            self.agent = renewed;
            self.unstored = true;
            self.client = None;
            return Ok(());
        }
        // Any other renewal is stale once the node attests again.
        self.pending = None;
        let x509pop = matches!(
            self.config.attestation,
            Some(NodeAttestation::X509Pop { .. })
        );
        let Some(attestation) = self.config.attestation.as_ref().filter(|_| x509pop) else {
            return Err(Expired::Fatal(AgentError::AgentSvidExpired {
                spiffe_id: self.agent.spiffe_id().to_string(),
                expired: humantime::format_rfc3339_seconds(expired_at).to_string(),
            }));
        };
        warn!(expired = %humantime::format_rfc3339_seconds(expired_at), "agent svid expired; attesting the node again");
        let (svid, _) = super::attest(&self.config, &self.roots, attestation)
            .await
            .map_err(Expired::Retry)?;
        if let Err(e) = self.store.save_agent(&svid) {
            warn!(error = %e, "cannot store the new agent svid");
        }
        info!(spiffe_id = %svid.spiffe_id(), not_after = ?svid.not_after(), "node attested again");
        self.agent = svid;
        self.client = None;
        Ok(())
    }

    async fn connect(&mut self) -> Result<CaClient, CaError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let mut roots = self.roots.clone();
        if let Ok(pem) = std::fs::read(self.config.data_dir.join("bundle.pem"))
            && let Ok(extra) = crate::trust::certificates_from_pem("bundle.pem", &pem)
        {
            roots.extend(extra);
        }
        let td = self.agent.spiffe_id().trust_domain();
        let client =
            CaClient::connect(&self.config.server, &roots, Some(td), Some(&self.agent)).await?;
        self.client = Some(client.clone());
        self.minter.set(Some(client.clone()));
        Ok(client)
    }

    async fn sync_once(&mut self, cache: &mut Cache) -> Result<(), CaError> {
        let mut client = self.connect().await?;
        if self.unstored {
            match self.store.save_agent(&self.agent) {
                Ok(()) => self.unstored = false,
                Err(e) => {
                    warn!(error = %e, "cannot store the agent svid in use: trying again at the next sync")
                }
            }
        }
        // An SVID in use that is not stored is still renewed: with the disk failing for long,
        // the agent goes from renewal to renewal as each one expires (a restart then finds only
        // what was stored, which the CA no longer accepts).
        if self.pending.is_none() && self.agent.needs_rotation(SystemTime::now(), 0.0) {
            let (svid, _) = client.renew(self.agent.spiffe_id()).await?;
            self.pending = Some(svid);
        }
        if let Some(svid) = self.pending.take() {
            match self.store.save_agent(&svid) {
                Ok(()) => {
                    info!(not_after = ?svid.not_after(), "agent svid renewed");
                    self.agent = svid;
                    self.client = None;
                    client = self.connect().await?;
                }
                // Not used unstored: once the agent presents it, the CA accepts the one
                // renewed from no more, and a restart loads what is stored. Kept, and stored
                // at the next sync; no renewal meanwhile.
                Err(e) => {
                    warn!(
                        error = %e,
                        "cannot store the renewed agent svid: going on with the stored one and trying again at the next sync"
                    );
                    self.pending = Some(svid);
                }
            }
        }
        let entries = client.list_entries().await?;
        let bundles = client.fetch_bundles().await?;
        let own = bundles
            .get(&self.agent.spiffe_id().trust_domain())
            .map(|b| b.to_pem());
        if let Some(pem) = own
            && pem != self.last_bundle_pem
        {
            if let Err(e) = self.store.save_bundle(&pem) {
                warn!(error = %e, "cannot store the bundle");
            }
            self.last_bundle_pem = pem;
        }
        cache.set_entries(entries);
        cache.set_bundles(bundles);

        let due_ids = cache.due(SystemTime::now(), entry_jitter);
        let rotations = due_ids.iter().filter(|id| cache.has_svid(id)).count();
        let due: Vec<Arc<Entry>> = due_ids
            .iter()
            .filter_map(|id| cache.entry(id).cloned())
            .collect();
        if !due.is_empty() {
            debug!(count = due.len(), "fetching x509-svids");
            for (id, svid) in client.sign_x509_svids(&due).await? {
                cache.set_svid(&id, svid);
            }
            self.metrics.rotated(u64::try_from(rotations).unwrap_or(0));
        }
        cache.set_ready();
        cache.publish();
        self.metrics
            .set_cache_size(cache.entries().count(), cache.svid_count());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_is_capped() {
        let mut b = Backoff::new();
        let first = b.next_delay();
        assert!(first >= BACKOFF_START.mul_f64(0.8) && first <= BACKOFF_START.mul_f64(1.2));
        let second = b.next_delay();
        assert!(second >= (BACKOFF_START * 2).mul_f64(0.8));
        for _ in 0..20 {
            assert!(b.next_delay() <= BACKOFF_MAX.mul_f64(1.2));
        }
        b.reset();
        assert!(b.next_delay() <= BACKOFF_START.mul_f64(1.2));
    }

    #[test]
    fn entry_jitter_is_stable_and_within_ten_percent() {
        for id in ["a", "b", "entry-1", "0b6ab7c2"] {
            let j = entry_jitter(id);
            assert!((-0.1..=0.1).contains(&j));
            assert_eq!(j, entry_jitter(id));
        }
    }
}
