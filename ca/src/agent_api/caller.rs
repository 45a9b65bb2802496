//! Who is calling: the agent behind a mutual-TLS connection, checked on every call.
//!
//! A caller is accepted only if its certificate chain is a valid X.509-SVID of this trust domain
//! (verified again against the current bundle), its ID is an agent ID, its agent is in the
//! datastore and not banned, and the leaf's serial is the agent's current serial, or its
//! previous one until the current one is first presented (SPIRE's "SVID serial mismatch"). So a
//! copy of an agent's key and SVID stops working once either copy renews and the other
//! presents the new SVID, and SVIDs from before an eviction and re-attestation stay refused.

use rustls_pki_types::CertificateDer;
use tonic::{Request, Status};
use warden_api::transport::TlsConnectInfo;
use warden_identity::BundleSet;

use super::{AgentService, convert};
use crate::datastore::{AGENT_PATH_PREFIX, AgentRecord};

/// An authenticated agent: its record, and the serial (lowercase hex) of the SVID it presented.
#[derive(Debug)]
pub(super) struct Caller {
    pub(super) agent: AgentRecord,
    pub(super) serial: String,
}

// === impl AgentService ===

impl AgentService {
    /// The verified, attested, unbanned agent calling over mutual TLS with its current SVID.
    pub(super) async fn caller<T>(&self, req: &Request<T>) -> Result<AgentRecord, Status> {
        self.authenticate(req).await.map(|c| c.agent)
    }

    /// Like [`caller`](Self::caller), also returning the serial the caller presented.
    pub(super) async fn authenticate<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let certs = req
            .extensions()
            .get::<TlsConnectInfo>()
            .and_then(|i| i.peer_certificates.clone())
            .ok_or_else(|| {
                Status::unauthenticated("this call requires mutual tls with an agent svid")
            })?;
        let mut bundles = BundleSet::new();
        bundles.insert((*self.inner.authority.bundle()).clone());
        let id = warden_identity::verify_x509_svid(&certs, &bundles, self.now())
            .map_err(|e| Status::unauthenticated(format!("agent svid rejected: {e}")))?;
        if !id.path().starts_with(AGENT_PATH_PREFIX) {
            return Err(Status::permission_denied(format!(
                "`{id}` is not an agent id"
            )));
        }
        let serial = leaf_serial(&certs)?;
        let agent = self
            .inner
            .ds
            .get_agent(&id)
            .await
            .map_err(convert::ds_status)?
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "unknown agent `{id}` (never attested, or evicted)"
                ))
            })?;
        if agent.banned {
            return Err(Status::permission_denied(format!("agent `{id}` is banned")));
        }
        if serial == agent.serial {
            if agent.previous_serial.is_some() {
                self.inner
                    .ds
                    .confirm_agent_serial(&id, &serial)
                    .await
                    .map_err(convert::ds_status)?;
            }
        } else if agent.previous_serial.as_deref() != Some(serial.as_str()) {
            tracing::warn!(
                agent = %id,
                serial = %serial,
                current = %agent.serial,
                "agent svid serial mismatch: a superseded svid, or a copy of the agent"
            );
            return Err(Status::permission_denied(format!(
                "agent `{id}` presented svid serial `{serial}`, which is not its current one \
                 (svid serial mismatch: the svid was superseded by a renewal or a new \
                 attestation, or the agent's data was copied)"
            )));
        }
        Ok(Caller { agent, serial })
    }
}

/// The leaf's serial, lowercase hex of its DER integer bytes (as the CA records it).
fn leaf_serial(certs: &[CertificateDer<'static>]) -> Result<String, Status> {
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("agent svid rejected: no certificate"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|_| Status::unauthenticated("agent svid rejected: the leaf does not parse"))?;
    Ok(hex::encode(cert.raw_serial()))
}
