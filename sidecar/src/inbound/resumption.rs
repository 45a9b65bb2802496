//! TLS session resumption for inbound connections, bounded so that a resumed session never
//! stands for more than a full handshake would accept now.
//!
//! A resumed handshake does not verify the caller's chain again: rustls restores the chain it
//! verified when the session was made. So a ticket is only honoured while what that
//! verification relied on still holds:
//! - **the X.509 authorities are those it was verified against.** Every ticket carries the
//!   *trust epoch* it was issued in; the epoch moves on whenever the X.509 authorities of any
//!   trust domain change, and a ticket of another epoch is refused (the caller does a full
//!   handshake). A rotation that only changes JWT keys, or repeats the same bundle, keeps it.
//! - **the chain is still valid:** the connection's credentials carry the chain's earliest
//!   `notAfter`, which is checked at accept and bounds the connection (see [`crate::lapse`]).
//! - **it is recent:** a ticket is honoured for at most `inbound.session_resumption` after
//!   the handshake that issued it (5 minutes by default; rustls's key lives 6 to 12 hours).
//!
//! The epoch is kept by [`TrustEpochs`], the bundle source the verifier itself reads, so every
//! set a chain is verified against is seen (a change undone before any ticket was issued still
//! moves the epoch twice). One race is closed by not issuing tickets for a while: a handshake
//! verified against the old authorities may issue its ticket just after they change, and would
//! tag it with the new epoch. A handshake lasts at most the handshake timeout, so no ticket is
//! issued for that long after a change.
//!
//! A resumed handshake is issued new tickets (by rustls, as by BoringSSL and OpenSSL), so a
//! caller that reconnects within the lifetime keeps resuming until the authorities change or
//! its chain expires: the lifetime bounds each ticket, not the chain of them. Neither bound is
//! weaker than a full handshake's own checks, which are the same two (the chain verifies
//! against the authorities in force and has not expired); the caller's possession of its key
//! was proven in the full handshake, and the PSK binder proves it holds that session's secret.
//!
//! Tickets are encrypted and authenticated by rustls's own ticketer (ChaCha20-Poly1305 with a
//! random key made at start, rolled every 6 hours); the epoch and issue time sit inside the
//! encryption. Nothing is stored per session on the server. TLS 1.3 only: the config turns
//! resumption off with `tls12` (a resumed TLS 1.2 session has no fresh key exchange).

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;
use rustls::server::ProducesTickets;
use warden_identity::tls::BundleSource;
use warden_identity::{BundleSet, TrustDomain};

/// The bytes put before the session inside a ticket: epoch, then issue time (Unix seconds).
const HEADER: usize = 16;

/// The bundles the inbound verifier reads, watched: every set handed out is noted, so a change of
/// X.509 authorities is seen even when it is undone before any ticket is issued or presented
/// (a chain verified under authorities that came and went must not resume under the ones that
/// returned).
pub(crate) struct TrustEpochs {
    source: Arc<dyn BundleSource>,
    epoch: Mutex<Epoch>,
}

/// The trust epoch in force, and the authorities it stands for.
struct Epoch {
    number: u64,
    bundles: Arc<BundleSet>,
    /// When the authorities last changed from a set that had some (`None`: never), the start
    /// of the settle window.
    changed: Option<Instant>,
}

impl fmt::Debug for TrustEpochs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustEpochs").finish_non_exhaustive()
    }
}

impl BundleSource for TrustEpochs {
    fn bundles(&self) -> Arc<BundleSet> {
        self.current(Instant::now()).0
    }
}

impl TrustEpochs {
    /// Watches `source`, whose bundles now are the first epoch's.
    pub(crate) fn new(source: Arc<dyn BundleSource>) -> Self {
        let bundles = source.bundles();
        Self {
            source,
            epoch: Mutex::new(Epoch {
                number: 0,
                bundles,
                changed: None,
            }),
        }
    }

    /// The set in force at `now`, noted; the epoch number and when the last change of
    /// authorities was.
    fn current(&self, now: Instant) -> (Arc<BundleSet>, u64, Option<Instant>) {
        let current = self.source.bundles();
        let (number, changed) = self.note(&current, now);
        (current, number, changed)
    }

    /// Notes `current` as the set in force at `now`; the epoch number and when the last change
    /// of authorities was.
    fn note(&self, current: &Arc<BundleSet>, now: Instant) -> (u64, Option<Instant>) {
        let mut epoch = self.epoch.lock().unwrap_or_else(PoisonError::into_inner);
        if !Arc::ptr_eq(current, &epoch.bundles) {
            if !same_authorities(&epoch.bundles, current) {
                epoch.number += 1;
                // Under a set without X.509 authorities no chain verified: nothing to wait for.
                if has_authorities(&epoch.bundles) {
                    epoch.changed = Some(now);
                }
            }
            epoch.bundles = Arc::clone(current);
        }
        (epoch.number, epoch.changed)
    }
}

/// Issues and honours tickets by the rules of this module.
pub(crate) struct Tickets {
    inner: Arc<dyn ProducesTickets>,
    epochs: Arc<TrustEpochs>,
    /// How long after issue a ticket is honoured.
    lifetime: Duration,
    /// How long after a change of authorities no ticket is issued (the handshake timeout).
    settle: Duration,
}

impl fmt::Debug for Tickets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tickets")
            .field("lifetime", &self.lifetime)
            .field("settle", &self.settle)
            .finish_non_exhaustive()
    }
}

impl Tickets {
    /// Tickets honoured for `lifetime`, with a new random key, in the epochs of `epochs` (the
    /// source the verifier reads); none issued for `settle` after the authorities change.
    pub(crate) fn new(
        epochs: Arc<TrustEpochs>,
        lifetime: Duration,
        settle: Duration,
    ) -> Result<Self, rustls::Error> {
        Ok(Self {
            inner: rustls::crypto::ring::Ticketer::new()?,
            epochs,
            lifetime,
            settle,
        })
    }

    /// The epoch in force now, and whether tickets may be issued in it.
    fn epoch(&self) -> (u64, bool) {
        let now = Instant::now();
        let (_, number, changed) = self.epochs.current(now);
        let settled =
            changed.is_none_or(|changed| now.saturating_duration_since(changed) >= self.settle);
        (number, settled)
    }
}

impl ProducesTickets for Tickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(self.lifetime.as_secs()).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let (epoch, settled) = self.epoch();
        if !settled {
            return None;
        }
        let mut tagged = Vec::with_capacity(HEADER + plain.len());
        tagged.extend_from_slice(&epoch.to_le_bytes());
        tagged.extend_from_slice(&unix_secs(SystemTime::now()).to_le_bytes());
        tagged.extend_from_slice(plain);
        self.inner.encrypt(&tagged)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let mut tagged = self.inner.decrypt(cipher)?;
        let epoch = u64::from_le_bytes(tagged.get(..8)?.try_into().ok()?);
        let issued = u64::from_le_bytes(tagged.get(8..HEADER)?.try_into().ok()?);
        if epoch != self.epoch().0 {
            return None;
        }
        let now = unix_secs(SystemTime::now());
        // Issued in the future (the clock went back) or too long ago: not honoured.
        if issued > now || now - issued >= self.lifetime.as_secs() {
            return None;
        }
        tagged.drain(..HEADER);
        Some(tagged)
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Whether two sets hold the same X.509 authorities for the same trust domains (sets are
/// ordered by trust domain).
fn same_authorities(a: &BundleSet, b: &BundleSet) -> bool {
    authorities(a).eq(authorities(b))
}

fn authorities(
    set: &BundleSet,
) -> impl Iterator<Item = (&TrustDomain, &[CertificateDer<'static>])> {
    set.iter()
        .filter(|bundle| !bundle.x509_authorities().is_empty())
        .map(|bundle| (bundle.trust_domain(), bundle.x509_authorities()))
}

fn has_authorities(set: &BundleSet) -> bool {
    set.iter()
        .any(|bundle| !bundle.x509_authorities().is_empty())
}

#[cfg(test)]
mod tests;
