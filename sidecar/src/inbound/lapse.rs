//! When an open connection's caller stops being authenticated: its X.509-SVID expires, or a new
//! trust bundle no longer verifies the chain it presented (its CA was removed). The handshake
//! verifies a caller once; this is what ends the connections made under what no longer holds.
//!
//! A rotation that keeps trust (the old authority stays in the bundle beside the new one, as
//! SPIRE keeps it until its last SVID expires) does not end any connection.

use std::future::Future;
use std::sync::Arc;
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
    pub(crate) not_after: SystemTime,
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
