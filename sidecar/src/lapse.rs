//! When an open connection's peer stops being authenticated: its X.509-SVID expires, or a new
//! trust bundle no longer verifies the chain it presented (its CA was removed). A handshake
//! verifies the peer once; this is what ends the inbound connections made under what no longer
//! holds ([`lapsed`]), and keeps the outbound from sending new requests on pooled upstream
//! connections whose upstream no longer verifies ([`Validity`]).
//!
//! A rotation that keeps trust (the old authority stays in the bundle beside the new one, as
//! SPIRE keeps it until its last SVID expires) does not end any connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, watch};
use warden_identity::tls::BundleSource;
use warden_identity::{Bundle, BundleSet, CertificateDer, TrustDomain};

use crate::identity_source::Current;

/// How often a pooled connection's chain is looked at again for a bundle change (its expiry is
/// checked at every use).
const RECHECK: Duration = Duration::from_millis(100);
/// How often an outbound TCP connection looks at its upstream's bundles.
const TCP_RECHECK: Duration = Duration::from_secs(1);

/// The verified peer's chain, trust domain and when the chain expires, kept for the
/// connection's life.
#[derive(Debug, Clone)]
pub(crate) struct Credentials {
    pub(crate) chain: Arc<[CertificateDer<'static>]>,
    trust_domain: TrustDomain,
    /// The end of the chain's validity (the earliest `notAfter` of the certificates it sent):
    /// the first instant it is no longer valid.
    pub(crate) not_after: SystemTime,
}

impl Credentials {
    /// A verified peer's chain (leaf first), its trust domain and the earliest `notAfter` in
    /// the chain; `None` if a certificate does not parse or the leaf is no SVID (which a
    /// verifier that accepted the chain rules out). An intermediate that expires before the
    /// leaf ends the chain's validity there: the verifier checks every certificate's.
    pub(crate) fn of(certs: &[CertificateDer<'_>]) -> Option<Self> {
        let mut earliest: Option<u64> = None;
        for cert in certs {
            let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
            let secs = u64::try_from(parsed.validity().not_after.timestamp()).ok()?;
            earliest = Some(earliest.map_or(secs, |e| e.min(secs)));
        }
        Some(Self {
            chain: certs.iter().map(|c| c.clone().into_owned()).collect(),
            trust_domain: warden_identity::peer_spiffe_id(certs)?.trust_domain(),
            // `notAfter` is inclusive (RFC 5280 §4.1.2.5), and the verifier compares whole
            // seconds: the certificate is valid through the end of that second.
            not_after: std::time::UNIX_EPOCH + Duration::from_secs(earliest?.saturating_add(1)),
        })
    }

    /// Whether the chain has expired (its earliest `notAfter` is past).
    pub(crate) fn expired(&self) -> bool {
        self.not_after <= SystemTime::now()
    }

    /// When the chain expires, on the monotonic clock.
    fn expires(&self) -> Instant {
        let left = self
            .not_after
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        Instant::now() + left
    }

    /// Whether the chain still verifies after the bundles went from `old` to `new`: at once
    /// when the peer's trust domain has the same X.509 authorities in both (an SVID rotation
    /// sends the bundles again unchanged), else by verifying it.
    fn verifies(&self, old: &BundleSet, new: &BundleSet) -> bool {
        let td = &self.trust_domain;
        if old.get(td).map(Bundle::x509_authorities) == new.get(td).map(Bundle::x509_authorities) {
            return true;
        }
        match warden_identity::verify_x509_svid(&self.chain, new, SystemTime::now()) {
            Ok(_) => true,
            Err(e) => {
                tracing::info!(error = %e, trust_domain = %self.trust_domain, "peer no longer verifies under the new bundles");
                false
            }
        }
    }
}

/// The bundles and their change notifications, taken before a handshake: a bundle that
/// changes while the handshake runs is noticed (the receiver has seen nothing newer than the
/// bundles kept).
#[derive(Debug)]
pub(crate) struct BundleWatch {
    changes: watch::Receiver<Option<Current>>,
    bundles: Arc<BundleSet>,
    source: Arc<dyn BundleSource>,
}

impl BundleWatch {
    /// What is in force now.
    pub(crate) fn now(
        identity: &watch::Receiver<Option<Current>>,
        source: &Arc<dyn BundleSource>,
    ) -> Self {
        let mut changes = identity.clone();
        changes.mark_unchanged();
        Self {
            changes,
            bundles: source.bundles(),
            source: Arc::clone(source),
        }
    }
}

/// Set once an inbound connection's caller has lapsed; shared by the parts of the connection
/// that act on it (the graceful close, the HTTP/2 streams opened after it, the hard close).
#[derive(Debug, Default)]
pub(crate) struct LapseSignal {
    lapsed: AtomicBool,
    notify: Notify,
}

impl LapseSignal {
    /// Whether the caller has lapsed.
    pub(crate) fn is_lapsed(&self) -> bool {
        self.lapsed.load(Ordering::Acquire)
    }

    fn fire(&self) {
        self.lapsed.store(true, Ordering::Release);
        // A permit when nobody waits yet: `wait` then returns at once.
        self.notify.notify_one();
    }

    /// Completes once the caller has lapsed (for one waiter).
    pub(crate) async fn wait(&self) {
        if !self.is_lapsed() {
            self.notify.notified().await;
        }
    }
}

/// Completes when `credentials` lapse, and fires `signal`: at the chain's earliest `notAfter`,
/// or at the first bundle change after which the chain no longer verifies (once the identity
/// source is gone, at the expiry alone). Never without credentials (a plaintext connection).
pub(crate) async fn lapsed(
    credentials: Option<Credentials>,
    watch: BundleWatch,
    signal: Arc<LapseSignal>,
) {
    let Some(credentials) = credentials else {
        return std::future::pending().await;
    };
    let BundleWatch {
        mut changes,
        mut bundles,
        source,
    } = watch;
    let expiry = tokio::time::sleep_until(credentials.expires().into());
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            () = &mut expiry => {
                tracing::debug!("caller's svid expired");
                break;
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    // No more bundles will come: only the expiry is left.
                    (&mut expiry).await;
                    break;
                }
                let current = source.bundles();
                if Arc::ptr_eq(&current, &bundles) {
                    continue;
                }
                let verifies = credentials.verifies(&bundles, &current);
                bundles = current;
                if !verifies {
                    break;
                }
            }
        }
    }
    signal.fire();
}

/// A pooled connection's peer credentials, checked when the connection is about to be used: a
/// comparison with the time the caller read, an uncontended lock, and at most every
/// [`RECHECK`] the bundle handle, with one verification per change of the peer's trust
/// domain's authorities.
#[derive(Debug)]
pub(crate) struct Validity {
    credentials: Credentials,
    /// The chain's `notAfter` on the monotonic clock.
    expires: Instant,
    source: Arc<dyn BundleSource>,
    checked: Mutex<Checked>,
}

/// The bundles last checked against, whether the chain verified under them, and when to look
/// at the bundles again.
#[derive(Debug)]
struct Checked {
    bundles: Arc<BundleSet>,
    verified: bool,
    next: Instant,
}

impl Validity {
    /// `credentials` as verified by a handshake that started under `bundles` (from `source`).
    pub(crate) fn new(
        credentials: Credentials,
        source: &Arc<dyn BundleSource>,
        bundles: Arc<BundleSet>,
    ) -> Self {
        Self {
            expires: credentials.expires(),
            credentials,
            source: Arc::clone(source),
            checked: Mutex::new(Checked {
                bundles,
                verified: true,
                next: Instant::now() + RECHECK,
            }),
        }
    }

    /// Whether, at `now`, no certificate of the peer's chain has expired and the chain verifies
    /// under the bundles in force (as of at most [`RECHECK`] ago).
    pub(crate) fn holds_at(&self, now: Instant) -> bool {
        if now >= self.expires {
            return false;
        }
        let mut checked = self.checked.lock().unwrap_or_else(PoisonError::into_inner);
        if now < checked.next {
            return checked.verified;
        }
        checked.next = now + RECHECK;
        let current = self.source.bundles();
        if !Arc::ptr_eq(&checked.bundles, &current) {
            if checked.verified {
                checked.verified = self.credentials.verifies(&checked.bundles, &current);
            }
            checked.bundles = current;
        }
        checked.verified
    }
}

/// Completes once `validity` no longer holds: at the chain's expiry, or within [`TCP_RECHECK`]
/// of a bundle change that fails it; never for `None`. For a connection that is not checked
/// out per request (an outbound TCP route's, an upgraded one).
pub(crate) async fn no_longer_holds(validity: Option<Arc<Validity>>) {
    let Some(validity) = validity else {
        return std::future::pending().await;
    };
    lapse_of(&validity, || false).await;
}

/// Completes when `validity` no longer holds (`true`), or at the first [`TCP_RECHECK`] tick
/// at which `gone` says nobody needs the answer any more (`false`).
async fn lapse_of(validity: &Validity, gone: impl Fn() -> bool) -> bool {
    let expiry = tokio::time::sleep_until(validity.expires.into());
    tokio::pin!(expiry);
    let mut tick = tokio::time::interval(TCP_RECHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut expiry => return true,
            _ = tick.tick() => {
                if gone() {
                    return false;
                }
                if !validity.holds_at(Instant::now()) {
                    return true;
                }
            }
        }
    }
}

/// Watches a pooled upstream connection whose driver runs as the task behind `driver`: `grace`
/// after its upstream's `validity` stopped holding (at the chain's expiry, or within
/// [`TCP_RECHECK`] of a bundle change that fails it), the task is aborted, which drops the
/// connection with whatever is still in flight on it, and `closed` runs. So a stream that never
/// ends does not keep an upstream that no longer verifies. The watch is a task of its own, so
/// that the driver's polls carry nothing extra; it ends (within [`TCP_RECHECK`]) once the
/// driver has. Nothing is watched for `None` (plaintext, the local app).
pub(crate) fn end_when_lapsed(
    driver: tokio::task::AbortHandle,
    validity: Option<Arc<Validity>>,
    grace: Duration,
    closed: impl FnOnce() + Send + 'static,
) {
    let Some(validity) = validity else {
        return;
    };
    tokio::spawn(async move {
        if !lapse_of(&validity, || driver.is_finished()).await {
            return;
        }
        tokio::time::sleep(grace).await;
        if !driver.is_finished() {
            tracing::info!(
                ?grace,
                "upstream's credentials lapsed: its connection is closed"
            );
            driver.abort();
            closed();
        }
    });
}

/// A connection whose peer a handshake verified, or not (plaintext).
pub(crate) trait Verified {
    /// The peer's [`Validity`]; `None` when nothing was verified.
    fn validity(&self) -> Option<Arc<Validity>> {
        None
    }
}

impl Verified for tokio::net::TcpStream {}
impl Verified for tokio::io::DuplexStream {}
