//! Live, swappable sources of trust bundles for the verifiers.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use crate::BundleSet;

/// Where a verifier reads the current bundles from on every handshake, so that a bundle
/// update takes effect without rebuilding TLS configs.
pub trait BundleSource: Send + Sync + fmt::Debug {
    /// The bundles in force now.
    fn bundles(&self) -> Arc<BundleSet>;
}

/// A [`BundleSource`] that holds a replaceable `Arc<BundleSet>`.
#[derive(Debug, Default)]
pub struct SharedBundles {
    current: RwLock<Arc<BundleSet>>,
}

// === impl SharedBundles ===

impl SharedBundles {
    /// A source holding `bundles`.
    pub fn new(bundles: BundleSet) -> Self {
        Self {
            current: RwLock::new(Arc::new(bundles)),
        }
    }

    /// Replaces the bundles; handshakes from now on use the new ones.
    pub fn set(&self, bundles: BundleSet) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(bundles);
    }
}

impl BundleSource for SharedBundles {
    fn bundles(&self) -> Arc<BundleSet> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl BundleSource for Arc<BundleSet> {
    fn bundles(&self) -> Arc<BundleSet> {
        self.clone()
    }
}

impl BundleSource for tokio::sync::watch::Receiver<Arc<BundleSet>> {
    fn bundles(&self) -> Arc<BundleSet> {
        self.borrow().clone()
    }
}
