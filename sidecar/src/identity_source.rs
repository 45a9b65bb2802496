//! The sidecar's identity: a `FetchX509SVID` stream from the local agent's Workload API. Each
//! message replaces the presented SVID (in the shared [`SvidCertResolver`]) and the trust
//! bundles (own and federated, in the shared [`SharedBundles`]), so new handshakes use them
//! while established connections carry on. The stream is reopened with backoff when it fails.
//!
//! Fail-closed: until the first usable SVID arrives nothing is published, and the caller binds
//! no listener.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tonic::transport::Endpoint;
use warden_api::WORKLOAD_API_HEADER;
use warden_api::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use warden_api::workload::{X509svid, X509svidRequest, X509svidResponse};
use warden_identity::tls::{SharedBundles, SvidCertResolver};
use warden_identity::{
    Bundle, BundleSet, CertificateDer, PrivatePkcs8KeyDer, SpiffeId, TrustDomain, X509Svid,
};

/// First delay before reopening a failed stream.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Connect timeout to the agent socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 keep-alive on the stream to the agent: an agent that accepted the stream but no
/// longer answers (hung) is noticed, and the stream reopened. A little over every 5 minutes:
/// gRPC-Go servers (SPIRE's agent among them) by default refuse pings more often than every
/// 5 minutes (their keep-alive enforcement's `MinTime`), closing the connection.
const KEEP_ALIVE: KeepAlive = KeepAlive {
    interval: Duration::from_secs(310),
    timeout: Duration::from_secs(20),
};

/// How often to ping the agent, and how long to wait for its answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeepAlive {
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
}

/// What the sidecar presents now; published on every change.
#[derive(Debug, Clone)]
pub(crate) struct Current {
    /// Our SPIFFE ID.
    pub(crate) spiffe_id: SpiffeId,
    /// When the leaf expires.
    pub(crate) not_after: SystemTime,
}

/// Why a Workload API message could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UpdateError {
    #[error("the workload api returned no svids")]
    NoSvids,
    #[error("the workload api returned no svid for `{0}`")]
    NotEntitled(SpiffeId),
    #[error("svid for `{id}` is unusable: {reason}")]
    BadSvid { id: String, reason: String },
    #[error("bundle for `{td}` is unusable: {reason}")]
    BadBundle { td: String, reason: String },
}

/// Why the stream stopped for good.
#[derive(Debug, thiserror::Error)]
#[error("the workload api at `{socket}` refused the request: {message}")]
pub(crate) struct FatalError {
    socket: String,
    message: String,
}

/// The identity source: owns the resolver and bundles the TLS configs read.
#[derive(Debug)]
pub(crate) struct IdentitySource {
    socket: PathBuf,
    want: Option<SpiffeId>,
    resolver: Arc<SvidCertResolver>,
    bundles: Arc<SharedBundles>,
    current: watch::Sender<Option<Current>>,
    keep_alive: KeepAlive,
}

// === impl IdentitySource ===

impl IdentitySource {
    pub(crate) fn new(socket: &Path, want: Option<SpiffeId>) -> Self {
        let (current, _) = watch::channel(None);
        Self {
            socket: socket.to_owned(),
            want,
            resolver: Arc::new(SvidCertResolver::new()),
            bundles: Arc::new(SharedBundles::default()),
            current,
            keep_alive: KEEP_ALIVE,
        }
    }

    /// With another keep-alive than [`KEEP_ALIVE`] (tests).
    #[cfg(test)]
    pub(crate) fn with_keep_alive(mut self, keep_alive: KeepAlive) -> Self {
        self.keep_alive = keep_alive;
        self
    }

    pub(crate) fn resolver(&self) -> Arc<SvidCertResolver> {
        Arc::clone(&self.resolver)
    }

    pub(crate) fn bundles(&self) -> Arc<SharedBundles> {
        Arc::clone(&self.bundles)
    }

    /// Published on every applied update; `None` until the first one.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<Current>> {
        self.current.subscribe()
    }

    /// Streams updates until a fatal refusal (InvalidArgument: the request itself is wrong;
    /// Unimplemented: the endpoint does not serve the RPC; neither is retried, rule W-5). Every
    /// other failure is retried with backoff.
    #[tracing::instrument(name = "workload_api", skip_all, fields(socket = %self.socket.display()))]
    pub(crate) async fn run(self: Arc<Self>) -> Result<(), FatalError> {
        let mut backoff = MIN_BACKOFF;
        loop {
            match self.stream_once().await {
                Ok(progressed) => {
                    if progressed {
                        backoff = MIN_BACKOFF;
                    }
                    tracing::warn!("workload api stream ended; reopening");
                }
                Err(Failure::Fatal(message)) => {
                    return Err(FatalError {
                        socket: self.socket.display().to_string(),
                        message,
                    });
                }
                Err(Failure::Retry {
                    message,
                    progressed,
                }) => {
                    if progressed {
                        backoff = MIN_BACKOFF;
                    }
                    tracing::warn!(error = %message, retry_in = ?backoff, "workload api unavailable");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Opens the stream and applies its messages until it ends: `Ok(true)` when it ended
    /// cleanly after at least one update was applied.
    async fn stream_once(&self) -> Result<bool, Failure> {
        let addr = format!("unix://{}", self.socket.display());
        let retry = |message: String| Failure::Retry {
            message,
            progressed: false,
        };
        let channel = Endpoint::from_shared(addr)
            .map_err(|e| Failure::Fatal(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(self.keep_alive.interval)
            .keep_alive_timeout(self.keep_alive.timeout)
            .connect()
            .await
            .map_err(|e| retry(format!("cannot connect: {e}")))?;
        let mut client = SpiffeWorkloadApiClient::new(channel);
        let mut request = tonic::Request::new(X509svidRequest {});
        request.metadata_mut().insert(
            WORKLOAD_API_HEADER,
            tonic::metadata::MetadataValue::from_static("true"),
        );
        let mut stream = client
            .fetch_x509svid(request)
            .await
            .map_err(status_failure)?
            .into_inner();
        let mut progressed = false;
        loop {
            match stream.message().await {
                Ok(Some(msg)) => match self.apply(&msg) {
                    Ok(id) => {
                        progressed = true;
                        tracing::info!(spiffe_id = %id, "svid and bundles updated");
                    }
                    // The agent sent something unusable: keep what we have and wait for the
                    // next message (every message is complete state, rule W-6).
                    Err(e) => tracing::error!(error = %e, "workload api update ignored"),
                },
                Ok(None) => return Ok(progressed),
                Err(status) => {
                    return Err(match status_failure(status) {
                        Failure::Retry { message, .. } => Failure::Retry {
                            message,
                            progressed,
                        },
                        fatal => fatal,
                    });
                }
            }
        }
    }

    /// Applies one message: picks our SVID, rebuilds the bundle set, then swaps both.
    pub(crate) fn apply(&self, msg: &X509svidResponse) -> Result<SpiffeId, UpdateError> {
        let (svid, bundles) = parse_update(msg, self.want.as_ref())?;
        let bad_svid = |e: warden_identity::SvidError| UpdateError::BadSvid {
            id: svid.spiffe_id().to_string(),
            reason: e.to_string(),
        };
        // All or nothing: an update whose key cannot be used changes neither the bundles nor
        // the SVID (checked before anything is set).
        svid.certified_key().map_err(bad_svid)?;
        // Bundles first, so that a peer issued by a new authority is trusted by the time the
        // new SVID (which may chain to it) is presented.
        self.bundles.set(bundles);
        self.resolver.set(&svid).map_err(bad_svid)?;
        let id = svid.spiffe_id().clone();
        self.current.send_replace(Some(Current {
            spiffe_id: id.clone(),
            not_after: svid.not_after(),
        }));
        Ok(id)
    }
}

enum Failure {
    Fatal(String),
    Retry { message: String, progressed: bool },
}

fn status_failure(status: tonic::Status) -> Failure {
    let message = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        // W-5: the request is wrong, or the endpoint does not serve this RPC: retrying cannot
        // help.
        tonic::Code::InvalidArgument | tonic::Code::Unimplemented => Failure::Fatal(message),
        _ => Failure::Retry {
            message,
            progressed: false,
        },
    }
}

/// Our SVID (the wanted one, or the first = default, rule W-7) and the bundle set (its own
/// trust domain's bundle plus every federated one; bundles are never merged, rule B-8).
pub(crate) fn parse_update(
    msg: &X509svidResponse,
    want: Option<&SpiffeId>,
) -> Result<(X509Svid, BundleSet), UpdateError> {
    let chosen: &X509svid = match want {
        Some(id) => msg
            .svids
            .iter()
            .find(|s| s.spiffe_id == id.as_str())
            .ok_or_else(|| UpdateError::NotEntitled(id.clone()))?,
        None => msg.svids.first().ok_or(UpdateError::NoSvids)?,
    };
    let bad_svid = |reason: String| UpdateError::BadSvid {
        id: chosen.spiffe_id.clone(),
        reason,
    };
    let chain = split_der(&chosen.x509_svid).map_err(bad_svid)?;
    let key = PrivatePkcs8KeyDer::from(chosen.x509_svid_key.clone());
    let svid = X509Svid::new(chain, key).map_err(|e| bad_svid(e.to_string()))?;
    if svid.spiffe_id().as_str() != chosen.spiffe_id {
        return Err(bad_svid(format!(
            "the certificate is for `{}`",
            svid.spiffe_id()
        )));
    }
    // An SVID no peer would accept never replaces one they do.
    if let Some(leaf) = svid.cert_chain().first() {
        usable_now(leaf.as_ref(), SystemTime::now()).map_err(bad_svid)?;
    }
    let own_td = svid.spiffe_id().trust_domain().clone();
    let mut set = BundleSet::new();
    set.insert(bundle_from_der(own_td, &chosen.bundle)?);
    let mut seen = std::collections::BTreeSet::new();
    for (key, der) in &msg.federated_bundles {
        // Keys are the trust domain's SPIFFE ID (`spiffe://td`, rule W-12); accept a bare name.
        let name = key.strip_prefix("spiffe://").unwrap_or(key);
        let td = TrustDomain::new(name).map_err(|e| UpdateError::BadBundle {
            td: key.clone(),
            reason: e.to_string(),
        })?;
        // Two keys for one trust domain (`spiffe://td` and `td`, or another case): which
        // would win depends on the map's order, so the message is refused (B-7).
        if !seen.insert(td.clone()) {
            return Err(UpdateError::BadBundle {
                td: td.to_string(),
                reason: "given more than once".to_owned(),
            });
        }
        // A federated trust domain without X.509 authorities (its bundle has only JWT keys,
        // say) is trusted for no X.509-SVID: left out of the set, not a reason to refuse the
        // whole update (B-1, W-6).
        if td == svid.spiffe_id().trust_domain() || der.is_empty() {
            continue;
        }
        set.insert(bundle_from_der(td, der)?);
    }
    Ok((svid, set))
}

fn bundle_from_der(td: TrustDomain, der: &[u8]) -> Result<Bundle, UpdateError> {
    let certs = split_der(der).map_err(|reason| UpdateError::BadBundle {
        td: td.to_string(),
        reason,
    })?;
    let mut bundle = Bundle::new(td.clone());
    for (index, cert) in certs.into_iter().enumerate() {
        bundle
            .add_checked_x509_authority(cert, index)
            .map_err(|e| UpdateError::BadBundle {
                td: td.to_string(),
                reason: e.to_string(),
            })?;
    }
    Ok(bundle)
}

/// How far in the future an SVID's `notBefore` may be (clock skew between agent and sidecar)
/// before the SVID is refused as not valid yet.
const NOT_BEFORE_SKEW: Duration = Duration::from_secs(300);

/// Refuses a leaf that has expired at `now`, or that becomes valid only more than
/// [`NOT_BEFORE_SKEW`] later.
fn usable_now(leaf: &[u8], now: SystemTime) -> Result<(), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|_| "the leaf is not der x.509".to_owned())?;
    let secs = |t: x509_parser::time::ASN1Time| t.timestamp();
    let now_secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let validity = cert.validity();
    if secs(validity.not_after) < now_secs {
        return Err(format!("it expired at {}", validity.not_after));
    }
    let skew = i64::try_from(NOT_BEFORE_SKEW.as_secs()).unwrap_or(i64::MAX);
    if secs(validity.not_before) > now_secs.saturating_add(skew) {
        return Err(format!("it is not valid before {}", validity.not_before));
    }
    Ok(())
}

/// Splits concatenated DER certificates (the Workload API's encoding).
fn split_der(mut der: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut out = Vec::new();
    while !der.is_empty() {
        let (rest, _) = x509_parser::parse_x509_certificate(der)
            .map_err(|_| format!("certificate {} is not der x.509", out.len()))?;
        let used = der.len() - rest.len();
        let cert = der
            .get(..used)
            .ok_or_else(|| "truncated certificate".to_owned())?;
        out.push(CertificateDer::from(cert.to_vec()));
        der = rest;
    }
    if out.is_empty() {
        return Err("no certificates".to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
