//! x509pop node attestation: the agent presents a certificate chain that chains to one of the
//! configured node CAs, gets a 32-byte nonce (single use, valid 60 s, kept in memory) and signs
//! it with the leaf's key (ECDSA P-256 SHA-256, ASN.1 DER signature).
//!
//! Agent ID: `spiffe://<td>/agent/x509pop/<sha1 hex of the leaf DER>`; node selectors
//! `x509pop:subject:cn:<leaf CN>` and `x509pop:ca:fingerprint:<sha1 hex of the node CA DER>`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use ring::digest::{SHA1_FOR_LEGACY_USE_ONLY, digest};
use rustls_pki_types::{CertificateDer, UnixTime};
use tonic::Status;
use warden_identity::{Selector, SpiffeId, TrustDomain};

use crate::datastore::AGENT_PATH_PREFIX;

/// How long a challenge may be answered.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(60);
/// Most outstanding challenges kept (older ones are dropped first when full).
const MAX_CHALLENGES: usize = 10_000;
/// Most certificates in a presented chain.
const MAX_CHAIN: usize = 8;
/// Largest certificate accepted.
const MAX_CERT_LEN: usize = 16 * 1024;

/// Configured node CAs and outstanding challenges.
#[derive(Debug)]
pub(crate) struct X509Pop {
    node_cas: Vec<CertificateDer<'static>>,
    challenges: Mutex<HashMap<String, Challenge>>,
    /// Most outstanding challenges ([`MAX_CHALLENGES`]; fewer in tests).
    max_challenges: usize,
}

#[derive(Debug)]
struct Challenge {
    nonce: [u8; 32],
    leaf: CertificateDer<'static>,
    ca_fingerprint: String,
    expires: SystemTime,
}

/// A node that proved possession of its key.
#[derive(Debug)]
pub(crate) struct PopIdentity {
    pub(crate) agent_id: SpiffeId,
    pub(crate) selectors: Vec<Selector>,
}

fn sha1_hex(der: &[u8]) -> String {
    hex::encode(digest(&SHA1_FOR_LEGACY_USE_ONLY, der))
}

impl X509Pop {
    pub(crate) fn new(node_cas: Vec<CertificateDer<'static>>) -> Self {
        Self {
            node_cas,
            challenges: Mutex::new(HashMap::new()),
            max_challenges: MAX_CHALLENGES,
        }
    }

    /// Verifies `chain` against the node CAs and issues a challenge: `(id, nonce)`.
    pub(crate) fn challenge(
        &self,
        chain: &[Vec<u8>],
        now: SystemTime,
    ) -> Result<(String, [u8; 32]), Status> {
        if self.node_cas.is_empty() {
            return Err(Status::failed_precondition(
                "x509pop attestation is not enabled on this ca (no node ca configured)",
            ));
        }
        if chain.is_empty() || chain.len() > MAX_CHAIN {
            return Err(Status::invalid_argument(format!(
                "x509pop certificate chain has {} certificates (1 to {MAX_CHAIN} allowed)",
                chain.len()
            )));
        }
        if chain.iter().any(|c| c.len() > MAX_CERT_LEN) {
            return Err(Status::invalid_argument(
                "x509pop certificate larger than 16 KiB",
            ));
        }
        let certs: Vec<CertificateDer<'static>> = chain
            .iter()
            .map(|c| CertificateDer::from(c.clone()))
            .collect();
        let (leaf, intermediates) = certs
            .split_first()
            .ok_or_else(|| Status::invalid_argument("empty x509pop chain"))?;
        let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| {
            Status::invalid_argument(format!("x509pop leaf certificate does not parse: {e:?}"))
        })?;
        // Each node CA with its anchor, kept together: the CA of a verified path is found by
        // its anchor's subject and key, never by position or by subject alone (two CAs may
        // share a name, at a rollover or between tenants).
        let node_cas: Vec<(&CertificateDer<'static>, rustls_pki_types::TrustAnchor<'_>)> = self
            .node_cas
            .iter()
            .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok().map(|a| (c, a)))
            .collect();
        let anchors: Vec<_> = node_cas.iter().map(|(_, a)| a.clone()).collect();
        let secs = now
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let path = ee
            .verify_for_usage(
                warden_identity::crypto_provider()
                    .signature_verification_algorithms
                    .all,
                &anchors,
                intermediates,
                UnixTime::since_unix_epoch(Duration::from_secs(secs)),
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map_err(|e| {
                Status::permission_denied(format!(
                    "x509pop certificate does not chain to a configured node ca: {e:?}"
                ))
            })?;
        let anchor = path.anchor();
        let ca = node_cas
            .iter()
            .find(|(_, a)| {
                a.subject.as_ref() == anchor.subject.as_ref()
                    && a.subject_public_key_info.as_ref() == anchor.subject_public_key_info.as_ref()
            })
            .map(|(c, _)| sha1_hex(c))
            .ok_or_else(|| Status::internal("node ca of the verified path not found"))?;
        let nonce: [u8; 32] = rand::random();
        let id = hex::encode(rand::random::<[u8; 16]>());
        let mut map = self
            .challenges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.retain(|_, c| c.expires > now);
        if map.len() >= self.max_challenges {
            // Full: the oldest goes, so that no one node can hold every slot for a minute.
            let oldest = map
                .iter()
                .min_by_key(|(_, c)| c.expires)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                map.remove(&oldest);
            }
        }
        map.insert(
            id.clone(),
            Challenge {
                nonce,
                leaf: leaf.clone(),
                ca_fingerprint: ca,
                expires: now + CHALLENGE_TTL,
            },
        );
        Ok((id, nonce))
    }

    /// Consumes challenge `id` (single use) and checks `signature` over its nonce.
    pub(crate) fn answer(
        &self,
        td: &TrustDomain,
        id: &str,
        signature: &[u8],
        now: SystemTime,
    ) -> Result<PopIdentity, Status> {
        let challenge = self
            .challenges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id)
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "x509pop challenge `{}` is unknown or was already used",
                    id.chars().take(64).collect::<String>()
                ))
            })?;
        if challenge.expires <= now {
            return Err(Status::permission_denied("x509pop challenge expired"));
        }
        let (_, cert) = x509_parser::parse_x509_certificate(challenge.leaf.as_ref())
            .map_err(|_| Status::invalid_argument("x509pop leaf certificate does not parse"))?;
        let point = cert.public_key().subject_public_key.data.as_ref();
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, point)
            .verify(&challenge.nonce, signature)
            .map_err(|_| {
                Status::permission_denied(
                    "x509pop signature over the nonce does not verify with the certificate's key",
                )
            })?;
        let fp = sha1_hex(challenge.leaf.as_ref());
        let agent_id = td
            .id(&format!("{AGENT_PATH_PREFIX}x509pop/{fp}"))
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut selectors = Vec::new();
        if let Some(cn) = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            && let Ok(sel) = format!("x509pop:subject:cn:{cn}").parse::<Selector>()
        {
            selectors.push(sel);
        }
        if let Ok(sel) = format!("x509pop:ca:fingerprint:{}", challenge.ca_fingerprint).parse() {
            selectors.push(sel);
        }
        Ok(PopIdentity {
            agent_id,
            selectors,
        })
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    use super::*;

    /// A node CA named `name`: its certificate and what signs node certificates.
    fn node_ca(name: &str) -> (CertificateDer<'static>, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.self_signed(&key).unwrap().der().clone();
        (cert, Issuer::new(p, key))
    }

    /// A node certificate (`CN=node`) from `issuer`, and the signature of `nonce` by its key.
    fn node(issuer: &Issuer<'static, KeyPair>) -> (Vec<u8>, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["node.example.org".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "node");
        (p.signed_by(&key, issuer).unwrap().der().to_vec(), key)
    }

    fn sign(key: &KeyPair, nonce: &[u8]) -> Vec<u8> {
        let rng = ring::rand::SystemRandom::new();
        let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &key.serialize_der(),
            &rng,
        )
        .unwrap();
        signer.sign(&rng, nonce).unwrap().as_ref().to_vec()
    }

    /// Two node CAs with one name (a rollover, or two tenants' "Node CA"): a node of the second
    /// gets the second's fingerprint, so entries keyed on one CA are not granted to the other's
    /// nodes.
    #[test]
    fn the_fingerprint_selector_names_the_ca_that_signed_the_node() {
        let (first, _) = node_ca("Node CA");
        let (second, issuer) = node_ca("Node CA");
        let pop = X509Pop::new(vec![first.clone(), second.clone()]);
        let (cert, key) = node(&issuer);
        let now = SystemTime::now();
        let (id, nonce) = pop.challenge(&[cert], now).unwrap();
        let td: TrustDomain = "example.org".parse().unwrap();
        let identity = pop.answer(&td, &id, &sign(&key, &nonce), now).unwrap();
        let selectors: Vec<String> = identity.selectors.iter().map(ToString::to_string).collect();
        assert!(
            selectors.contains(&format!("x509pop:ca:fingerprint:{}", sha1_hex(&second))),
            "{selectors:?}"
        );
        assert!(
            !selectors.contains(&format!("x509pop:ca:fingerprint:{}", sha1_hex(&first))),
            "{selectors:?}"
        );
    }

    /// When the outstanding challenges are at their limit, the oldest makes way: one node
    /// asking over and over cannot keep others from attesting.
    #[test]
    fn a_full_challenge_table_drops_the_oldest() {
        let (ca, issuer) = node_ca("Node CA");
        let mut pop = X509Pop::new(vec![ca]);
        pop.max_challenges = 2;
        let (cert, key) = node(&issuer);
        let now = SystemTime::now();
        let td: TrustDomain = "example.org".parse().unwrap();
        let mut issued = Vec::new();
        for i in 0..3 {
            let at = now + Duration::from_millis(i);
            issued.push(pop.challenge(std::slice::from_ref(&cert), at).unwrap());
        }
        let (oldest, nonce) = &issued[0];
        let err = pop
            .answer(&td, oldest, &sign(&key, nonce), now)
            .unwrap_err();
        assert!(
            err.message().contains("unknown or was already used"),
            "{err}"
        );
        let (newest, nonce) = &issued[2];
        assert!(pop.answer(&td, newest, &sign(&key, nonce), now).is_ok());
    }
}
