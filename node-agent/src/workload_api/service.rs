//! The `SpiffeWorkloadAPI` gRPC service: attests each caller, answers from the cache, and keeps
//! streams open, sending a complete new message whenever the caller's view changes.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{debug, warn};
use warden_api::WORKLOAD_API_HEADER;
use warden_api::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use warden_api::workload::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svidRequest,
    X509svidResponse,
};
use warden_identity::{Selector, SpiffeId};

use super::attesting::Attesting;
use super::jwt::JwtCache;
use super::listener::PeerInfo;
use super::responses;
use super::streams::{StreamSlot, StreamSlots};
use crate::cache::CacheState;
use crate::metrics::{AttestationResult, Metrics};
use crate::workload_attestor::WorkloadAttestor;

/// The message SPIFFE client libraries recognise as "no identity for this caller" (W-5, W-7).
pub(crate) const NO_IDENTITY: &str = "no identity issued";

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Shared state of the service.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) state: watch::Receiver<Arc<CacheState>>,
    pub(crate) attestor: Arc<WorkloadAttestor>,
    /// Places for attestations (see [`super::attesting`]).
    pub(crate) attesting: Arc<Attesting>,
    pub(crate) jwt: JwtCache,
    pub(crate) metrics: Arc<Metrics>,
    /// Becomes `true` when the server shuts down; open streams then end.
    pub(crate) closing: watch::Receiver<bool>,
    /// When failed attestations were last logged, and how many failed since.
    pub(crate) failures: FailureLog,
    /// The open streams, bounded in all and per uid.
    pub(crate) streams: Arc<StreamSlots>,
}

/// Warnings about failed attestations: the first, then at most one per [`WARN_INTERVAL`],
/// with how many failed since. A local process can make thousands fail a second (connect and
/// exit); the metric counts each.
#[derive(Debug, Default)]
pub(crate) struct FailureLog(std::sync::Mutex<(Option<std::time::Instant>, u64)>);

/// Least time between two warnings about failed attestations.
const WARN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

impl FailureLog {
    /// Counts a failure at `now`; `Some(count)` when it is to be logged (with the failures
    /// since the last warning, this one included).
    fn note(&self, now: std::time::Instant) -> Option<u64> {
        let mut log = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        log.1 += 1;
        if log
            .0
            .is_some_and(|at| now.duration_since(at) < WARN_INTERVAL)
        {
            return None;
        }
        log.0 = Some(now);
        Some(std::mem::take(&mut log.1))
    }
}

/// The Workload API service.
#[derive(Debug, Clone)]
pub(crate) struct Service {
    inner: Arc<Inner>,
}

// === impl Service ===

impl Service {
    pub(crate) fn new(inner: Inner) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Bounds the open streams to `max` in all and `max_per_uid` per uid; before serving.
    pub(crate) fn limit_streams(&mut self, max: usize, max_per_uid: usize) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.streams = StreamSlots::new(max, max_per_uid);
        }
    }

    /// Checks the security header (W-2), attests the caller and returns its selectors.
    async fn attest<T>(&self, req: &Request<T>) -> Result<BTreeSet<Selector>, Status> {
        check_header(req)?;
        let peer = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.0.clone())
            .ok_or_else(|| {
                self.inner.metrics.attestation(AttestationResult::Error);
                Status::permission_denied("caller could not be attested: no peer credentials")
            })?;
        let place = self.inner.attesting.enter(peer.uid).await?;
        let attestor = Arc::clone(&self.inner.attestor);
        // The program's digest only when some entry asks for one.
        let digest = self.inner.state.borrow().identities.iter().any(|identity| {
            identity
                .entry
                .selectors
                .iter()
                .any(|s| s.kind() == "unix" && s.key() == "sha256")
        });
        let (peer, attested) = tokio::task::spawn_blocking(move || {
            let _place = place;
            let attested = attestor.attest_with(&peer, digest);
            (peer, attested)
        })
        .await
        .map_err(|_| Status::internal("workload attestation failed"))?;
        match attested {
            Ok(selectors) => {
                debug!(pid = peer.pid, uid = peer.uid, selectors = ?selectors, "workload attested");
                Ok(selectors.into_iter().collect())
            }
            Err(err) => {
                self.inner.metrics.attestation(AttestationResult::Error);
                match self.inner.failures.note(std::time::Instant::now()) {
                    Some(failed) => {
                        warn!(pid = peer.pid, error = %err, failed, "workload attestation failed");
                    }
                    None => debug!(pid = peer.pid, error = %err, "workload attestation failed"),
                }
                Err(Status::permission_denied(format!(
                    "caller could not be attested: {err}"
                )))
            }
        }
    }

    /// A place for one more stream of the caller's uid (ResourceExhausted past the bounds).
    fn stream_slot<T>(&self, req: &Request<T>) -> Result<StreamSlot, Status> {
        let uid = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.0.as_ref())
            .map(|peer| peer.uid)
            .ok_or_else(|| Status::permission_denied("no peer credentials"))?;
        self.inner.streams.enter(uid)
    }

    /// The current state, or Unavailable while the agent is initializing (W-5).
    fn ready_state(&self) -> Result<Arc<CacheState>, Status> {
        let state = Arc::clone(&self.inner.state.borrow());
        if !state.ready {
            return Err(Status::unavailable("agent is initializing"));
        }
        Ok(state)
    }

    /// Counts the attestation and fails with PermissionDenied when nothing matched.
    fn require_identity(
        &self,
        state: &CacheState,
        selectors: &BTreeSet<Selector>,
    ) -> Result<(), Status> {
        if state.matching(selectors).is_empty() {
            self.inner
                .metrics
                .attestation(AttestationResult::NoIdentity);
            return Err(Status::permission_denied(NO_IDENTITY));
        }
        self.inner.metrics.attestation(AttestationResult::Success);
        Ok(())
    }

    /// Streams `first` now, then a new message after every cache change that changes it;
    /// ends with PermissionDenied when the caller no longer has any identity (W-6).
    fn stream<T, F>(
        &self,
        slot: StreamSlot,
        selectors: BTreeSet<Selector>,
        first: T,
        build: F,
    ) -> BoxStream<T>
    where
        T: PartialEq + Clone + Send + Sync + 'static,
        F: Fn(&CacheState, &BTreeSet<Selector>) -> Option<T> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(4);
        let mut state_rx = self.inner.state.clone();
        let mut closing = self.inner.closing.clone();
        tokio::spawn(async move {
            // Held for as long as the stream is open.
            let _slot = slot;
            if tx.send(Ok(first.clone())).await.is_err() {
                return;
            }
            let mut last = first;
            // `first` was built from the state as it was; a change published since (before this
            // receiver was cloned, or after) is looked at now rather than at the next one.
            let mut look_now = true;
            loop {
                // The first time, the state as it is now, without waiting.
                if !std::mem::take(&mut look_now) {
                    tokio::select! {
                        changed = state_rx.changed() => if changed.is_err() {
                            let _ = tx.send(Err(Status::unavailable("agent is shutting down"))).await;
                            return;
                        },
                        () = tx.closed() => return,
                        _ = closing.changed() => {
                            let _ = tx.send(Err(Status::unavailable("agent is shutting down"))).await;
                            return;
                        }
                    }
                }
                let state = Arc::clone(&state_rx.borrow_and_update());
                match build(&state, &selectors) {
                    Some(msg) if msg == last => {}
                    Some(msg) => {
                        last = msg.clone();
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                    None => {
                        let _ = tx.send(Err(Status::permission_denied(NO_IDENTITY))).await;
                        return;
                    }
                }
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

fn check_header<T>(req: &Request<T>) -> Result<(), Status> {
    match req.metadata().get(WORKLOAD_API_HEADER).map(|v| v.to_str()) {
        Some(Ok("true")) => Ok(()),
        _ => Err(Status::invalid_argument(format!(
            "security header missing from request: `{WORKLOAD_API_HEADER}: true` is required"
        ))),
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Service {
    type FetchX509SVIDStream = BoxStream<X509svidResponse>;
    type FetchX509BundlesStream = BoxStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = BoxStream<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let selectors = self.attest(&req).await?;
        let slot = self.stream_slot(&req)?;
        let state = self.ready_state()?;
        self.require_identity(&state, &selectors)?;
        let first = responses::x509_svids(&state, &selectors)
            .ok_or_else(|| Status::permission_denied(NO_IDENTITY))?;
        Ok(Response::new(self.stream(
            slot,
            selectors,
            first,
            responses::x509_svids,
        )))
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let selectors = self.attest(&req).await?;
        let slot = self.stream_slot(&req)?;
        let state = self.ready_state()?;
        self.require_identity(&state, &selectors)?;
        let first = responses::x509_bundles(&state, &selectors)
            .ok_or_else(|| Status::permission_denied(NO_IDENTITY))?;
        Ok(Response::new(self.stream(
            slot,
            selectors,
            first,
            responses::x509_bundles,
        )))
    }

    async fn fetch_jwt_bundles(
        &self,
        req: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let selectors = self.attest(&req).await?;
        let slot = self.stream_slot(&req)?;
        let state = self.ready_state()?;
        self.require_identity(&state, &selectors)?;
        let first = responses::jwt_bundles(&state, &selectors)
            .ok_or_else(|| Status::permission_denied(NO_IDENTITY))?;
        Ok(Response::new(self.stream(
            slot,
            selectors,
            first,
            responses::jwt_bundles,
        )))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        let selectors = self.attest(&req).await?;
        let body = req.get_ref();
        if body.audience.is_empty() || body.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        warden_identity::check_audience(&body.audience)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let filter: Option<SpiffeId> = if body.spiffe_id.is_empty() {
            None
        } else {
            Some(body.spiffe_id.parse().map_err(|e| {
                Status::invalid_argument(format!("invalid spiffe_id `{}`: {e}", body.spiffe_id))
            })?)
        };
        let state = self.ready_state()?;
        self.require_identity(&state, &selectors)?;
        let now = SystemTime::now();
        let mut svids = Vec::new();
        let mut seen_hints = std::collections::HashSet::new();
        for identity in state.matching(&selectors) {
            let entry = &identity.entry;
            if filter.as_ref().is_some_and(|f| *f != entry.spiffe_id) {
                continue;
            }
            if !entry.hint.is_empty() && !seen_hints.insert(entry.hint.clone()) {
                continue;
            }
            let minted = self
                .inner
                .jwt
                .get(entry, &body.audience, now)
                .await
                .map_err(|e| {
                    Status::unavailable(format!(
                        "cannot mint a jwt-svid for `{}`: {e}",
                        entry.spiffe_id
                    ))
                })?;
            svids.push(warden_api::workload::Jwtsvid {
                spiffe_id: entry.spiffe_id.to_string(),
                svid: minted.token,
                hint: entry.hint.clone(),
            });
        }
        if svids.is_empty() {
            return Err(Status::permission_denied(NO_IDENTITY));
        }
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        check_header(&req)?;
        let body = req.get_ref();
        if body.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if body.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        // As SPIRE's agent does: the caller is attested, and the token is checked against the
        // bundles that caller holds: the agent's own trust domain, and those its entries
        // federate with; not every bundle the agent keeps for its other workloads (J-8, W-11).
        // A caller with no entry (a service that only checks tokens) gets the own one.
        let selectors = self.attest(&req).await?;
        let state = self.ready_state()?;
        let bundles = responses::caller_bundles(&state, &selectors);
        let valid = warden_identity::validate_jwt_svid(
            &body.svid,
            &body.audience,
            &bundles,
            SystemTime::now(),
        )
        .map_err(|e| Status::invalid_argument(format!("invalid jwt-svid: {e}")))?;
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: valid.spiffe_id().to_string(),
            claims: Some(responses::json_to_struct(valid.claims())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::workload_api::jwt::{JwtMinter, MintError, MintFuture};
    use crate::workload_attestor::{PeerCredentials, ProcessPin};

    #[derive(Debug)]
    struct NoMinter;

    impl JwtMinter for NoMinter {
        fn mint<'a>(&'a self, _: &'a crate::cache::Entry, _: &'a [String]) -> MintFuture<'a> {
            Box::pin(async { Err(MintError::Unavailable("no ca in this test".into())) })
        }
    }

    /// A `/proc`-like tree in which this process's `stat` is a FIFO nobody writes yet: an
    /// attestation blocks on it (as one would, for real, hashing a large executable or reading
    /// from a filesystem that does not answer) until the test writes to it.
    struct Blocking {
        dir: tempfile::TempDir,
        pid: i32,
    }

    impl Drop for Blocking {
        /// Whatever the test did, no blocking thread is left waiting (the runtime would wait
        /// for it when it shuts down).
        fn drop(&mut self) {
            self.try_release();
        }
    }

    impl Blocking {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let pid = i32::try_from(std::process::id()).unwrap();
            std::fs::create_dir(dir.path().join(pid.to_string())).unwrap();
            let this = Self { dir, pid };
            nix::unistd::mkfifo(&this.stat(), nix::sys::stat::Mode::S_IRWXU).unwrap();
            this
        }

        fn stat(&self) -> std::path::PathBuf {
            self.dir.path().join(self.pid.to_string()).join("stat")
        }

        /// Lets every attestation blocked on the FIFO go on (each then fails on what it reads).
        /// Opening it for writing wakes every reader waiting to open it.
        fn release(&self) {
            assert!(self.try_release(), "no attestation was waiting");
        }

        fn try_release(&self) -> bool {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let opened = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
                .open(self.stat());
            opened.is_ok_and(|mut fifo| fifo.write_all(b"not a stat line").is_ok())
        }

        fn service(&self, attesting: Arc<Attesting>) -> Service {
            let (_cache, state) = crate::cache::Cache::new("example.org".parse().unwrap());
            let (_closing_tx, closing) = watch::channel(false);
            Service::new(Inner {
                state,
                attestor: Arc::new(WorkloadAttestor::with_proc_root(self.dir.path())),
                attesting,
                jwt: JwtCache::new(Arc::new(NoMinter)),
                metrics: Arc::new(Metrics::new()),
                closing,
                failures: FailureLog::default(),
                streams: StreamSlots::new(8, 8),
            })
        }

        /// A Workload API request from this process as a caller of `uid`.
        fn request(&self, uid: u32) -> Request<()> {
            let mut req = Request::new(());
            req.metadata_mut()
                .insert(WORKLOAD_API_HEADER, "true".parse().unwrap());
            req.extensions_mut().insert(PeerInfo(Some(PeerCredentials {
                pid: self.pid,
                uid,
                gid: 0,
                start_time: Some(1),
                exe: None,
                pin: ProcessPin::Unsupported,
            })));
            req
        }
    }

    /// An attestation that blocks does not hold the runtime's thread: on a single-threaded
    /// runtime, other work goes on while it waits.
    #[tokio::test(flavor = "current_thread")]
    async fn a_blocked_attestation_does_not_hold_the_async_runtime() {
        let blocking = Blocking::new();
        let service = blocking.service(Attesting::new());
        let req = blocking.request(0);
        // If the attestation ran on this thread, only this would end its wait (after 10 s).
        let released = Arc::new(AtomicBool::new(false));
        let fallback = {
            let (stat, released) = (blocking.stat(), Arc::clone(&released));
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(10));
                released.store(true, Ordering::SeqCst);
                let _ = std::fs::OpenOptions::new().write(true).open(&stat);
            })
        };
        let attesting = tokio::spawn(async move { service.attest(&req).await });
        // The attestation has started and blocks on the FIFO; this thread goes on.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !released.load(Ordering::SeqCst),
            "the runtime was held until the fallback released the attestation"
        );
        // Release it: a stat line that is not one fails the attestation, as it should.
        blocking.release();
        let attested = attesting.await.unwrap();
        assert_eq!(attested.unwrap_err().code(), tonic::Code::PermissionDenied);
        drop(fallback);
    }

    /// One uid cannot take every place: past its share it gets Unavailable at once (retried by
    /// SPIFFE clients, W-5), and a caller that finds no place within the wait gets Unavailable
    /// too, rather than waiting for ever behind attestations that do not end.
    #[tokio::test]
    async fn attestation_places_are_shared_between_uids_and_waited_for_a_bounded_time() {
        let blocking = Blocking::new();
        let service = blocking.service(Attesting::with_limits(2, 1, Duration::from_millis(300)));
        let first = {
            let (service, req) = (service.clone(), blocking.request(1000));
            tokio::spawn(async move { service.attest(&req).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        // (A regression would block here instead: bounded, so that it fails.)
        let refused = |uid| {
            let (service, req) = (service.clone(), blocking.request(uid));
            async move {
                tokio::time::timeout(Duration::from_secs(5), service.attest(&req))
                    .await
                    .expect("refused at once, not blocked")
                    .unwrap_err()
            }
        };
        let err = refused(1000).await;
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(err.message().contains("uid 1000"), "{}", err.message());
        // Another uid takes the second place, blocking too; a third uid finds none in time.
        let second = {
            let (service, req) = (service.clone(), blocking.request(2000));
            tokio::spawn(async move { service.attest(&req).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let err = refused(3000).await;
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(err.message().contains("busy"), "{}", err.message());
        // Both blocked attestations end; their places come back.
        blocking.release();
        for done in [first, second] {
            let err = done.await.unwrap().unwrap_err();
            assert_eq!(err.code(), tonic::Code::PermissionDenied);
        }
        std::fs::remove_file(blocking.stat()).unwrap();
        std::fs::write(blocking.stat(), "not a stat line").unwrap();
        let err = service.attest(&blocking.request(1000)).await.unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::PermissionDenied,
            "{}",
            err.message()
        );
    }

    #[test]
    fn failed_attestations_are_warned_about_at_most_once_per_interval_with_a_count() {
        let log = FailureLog::default();
        let t0 = std::time::Instant::now();
        assert_eq!(log.note(t0), Some(1), "the first");
        for n in 1..=5 {
            assert_eq!(log.note(t0 + std::time::Duration::from_secs(n)), None);
        }
        assert_eq!(
            log.note(t0 + WARN_INTERVAL),
            Some(6),
            "five held back, and this one"
        );
        assert_eq!(log.note(t0 + WARN_INTERVAL), None);
    }
}
