//! When an open connection's peer stops being authenticated: its X.509-SVID expires, or a new
//! trust bundle no longer verifies the chain it presented (its CA was removed). A handshake
//! verifies the peer once; this is what ends the inbound connections made under what no longer
//! holds ([`lapsed`]), and keeps the outbound from sending new requests on pooled upstream
//! connections whose upstream no longer verifies ([`Validity`]).
//!
//! A rotation that keeps trust (the old authority stays in the bundle beside the new one, as
//! SPIRE keeps it until its last SVID expires) does not end any connection.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;
use warden_identity::tls::BundleSource;
use warden_identity::{BundleSet, CertificateDer};

use crate::identity_source::Current;

/// The verified caller's chain and when its leaf expires, kept for the connection's life.
#[derive(Debug, Clone)]
pub(crate) struct Credentials {
    pub(crate) chain: Arc<[CertificateDer<'static>]>,
    /// The end of the leaf's validity: the first instant it is no longer valid.
    pub(crate) not_after: SystemTime,
}

impl Credentials {
    /// A verified peer's chain (leaf first) and its leaf's `notAfter`; `None` if the leaf does
    /// not parse (which a verifier that accepted it rules out).
    pub(crate) fn of(certs: &[CertificateDer<'_>]) -> Option<Self> {
        let (_, leaf) = x509_parser::parse_x509_certificate(certs.first()?.as_ref()).ok()?;
        let secs = u64::try_from(leaf.validity().not_after.timestamp()).ok()?;
        Some(Self {
            chain: certs.iter().map(|c| c.clone().into_owned()).collect(),
            // `notAfter` is inclusive (RFC 5280 §4.1.2.5), and the verifier compares whole
            // seconds: the certificate is valid through the end of that second.
            not_after: std::time::UNIX_EPOCH + Duration::from_secs(secs.saturating_add(1)),
        })
    }
}

/// The bundles and their change notifications, taken before a handshake: a bundle that
/// changes while the handshake runs is noticed (the receiver has seen nothing newer than the
/// bundles kept).
#[derive(Debug, Clone)]
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

/// Completes when `credentials` lapse: at the leaf's `notAfter`, or at the first bundle change
/// after which the chain no longer verifies (once the identity source is gone, at the expiry
/// alone). Never without credentials (a plaintext connection).
pub(crate) async fn lapsed(credentials: Option<Credentials>, watch: BundleWatch) {
    let Some(credentials) = credentials else {
        return std::future::pending().await;
    };
    let BundleWatch {
        mut changes,
        mut bundles,
        source,
    } = watch;
    let left = credentials
        .not_after
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    let expiry = tokio::time::sleep_until(Instant::now() + left);
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            () = &mut expiry => {
                tracing::debug!("caller's svid expired; closing its connection");
                return;
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    // No more bundles will come: only the expiry is left.
                    (&mut expiry).await;
                    return;
                }
                let current = source.bundles();
                if Arc::ptr_eq(&current, &bundles) {
                    continue;
                }
                bundles = current;
                let verified = warden_identity::verify_x509_svid(
                    &credentials.chain,
                    &bundles,
                    SystemTime::now(),
                );
                if let Err(e) = verified {
                    tracing::info!(error = %e, "caller no longer verifies under the new bundles; closing its connection");
                    return;
                }
            }
        }
    }
}

/// [`lapsed`], then `grace` more: when a connection whose caller lapsed is dropped if what it
/// had in flight has not finished.
pub(crate) fn lapsed_with_grace(
    credentials: Option<Credentials>,
    watch: BundleWatch,
    grace: Duration,
) -> impl Future<Output = ()> + Send + 'static {
    let lapsed = lapsed(credentials, watch);
    async move {
        lapsed.await;
        tokio::time::sleep(grace).await;
    }
}

/// How often a pooled connection's chain is looked at again for a bundle change (the expiry is
/// checked at every use).
const RECHECK: Duration = Duration::from_millis(100);

/// A pooled connection's peer credentials, checked when the connection is about to be used: a
/// clock comparison, then at most every [`RECHECK`] the bundle handle, and one verification
/// per bundle change.
#[derive(Debug)]
pub(crate) struct Validity {
    credentials: Credentials,
    /// The leaf's `notAfter` on the monotonic clock.
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
        let now = Instant::now();
        let left = credentials
            .not_after
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        Self {
            credentials,
            expires: now + left,
            source: Arc::clone(source),
            checked: Mutex::new(Checked {
                bundles,
                verified: true,
                next: now + RECHECK,
            }),
        }
    }

    /// Whether the peer's leaf has not expired and its chain verifies under the bundles in
    /// force (as of at most [`RECHECK`] ago).
    pub(crate) fn holds(&self) -> bool {
        let now = Instant::now();
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
            let verified = warden_identity::verify_x509_svid(
                &self.credentials.chain,
                &current,
                SystemTime::now(),
            );
            if let Err(e) = &verified {
                tracing::info!(error = %e, "upstream no longer verifies under the new bundles; its connection takes no new request");
            }
            checked.verified = verified.is_ok();
            checked.bundles = current;
        }
        checked.verified
    }
}

/// Completes once `validity` no longer holds, looked at every [`RECHECK`]; never for `None`.
/// For a connection that is not checked out per request (an outbound TCP route's).
pub(crate) async fn no_longer_holds(validity: Option<Arc<Validity>>) {
    let Some(validity) = validity else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(RECHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !validity.holds() {
            return;
        }
    }
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
