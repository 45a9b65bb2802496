//! A certificate resolver that presents the current SVID and can be swapped on rotation.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::{SvidError, X509Svid};

/// Presents the current X.509-SVID as the server certificate (any SNI) and as the client
/// certificate. Starts empty, and then fails closed: with no SVID set, servers abort the
/// handshake and clients send no certificate. [`SvidCertResolver::set`] swaps the SVID for
/// every later handshake.
#[derive(Default)]
pub struct SvidCertResolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

// === impl SvidCertResolver ===

impl SvidCertResolver {
    /// An empty resolver (fails closed until [`SvidCertResolver::set`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// A resolver presenting `svid`.
    pub fn from_svid(svid: &X509Svid) -> Result<Self, SvidError> {
        let resolver = Self::new();
        resolver.set(svid)?;
        Ok(resolver)
    }

    /// Presents `svid` from the next handshake on.
    pub fn set(&self, svid: &X509Svid) -> Result<(), SvidError> {
        let key = svid.certified_key()?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(key);
        Ok(())
    }

    /// Stops presenting any certificate.
    pub fn clear(&self) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The key presented now.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl fmt::Debug for SvidCertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let peer = self.current().and_then(|k| {
            k.cert
                .first()
                .and_then(|c| crate::spiffe_id_from_cert(c).ok())
        });
        f.debug_struct("SvidCertResolver")
            .field("spiffe_id", &peer)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for SvidCertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for SvidCertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let key = self.current()?;
        key.key.choose_scheme(sigschemes).map(|_| key)
    }

    fn has_certs(&self) -> bool {
        self.current().is_some()
    }
}
