//! The agent API (`warden.v1.AgentApi`): node attestation (join token, x509pop), agent SVID
//! renewal, entry listing, batched X.509-SVID signing, JWT-SVID signing and bundle fetch.
//!
//! Served over TLS 1.3 (see [`crate::server`]); a client certificate is optional at the TLS
//! layer. Attestation RPCs need none; every other RPC authenticates the caller from the peer
//! certificates of its connection: a valid agent SVID of this trust domain (verified again here
//! against the current bundle) whose agent is in the datastore and not banned, and whose serial
//! is the agent's current one (or the previous one until the current one is first presented),
//! checked on every call (see `caller.rs`). Failed calls leave the datastore unchanged: signing
//! happens before any write, and a join token is consumed in the same transaction that records
//! its agent.
//!
//! `FetchBundles` returns the own bundle and **all** federated bundles the CA stores.

mod caller;
mod convert;
mod failures;
mod x509pop;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};
use warden_api::v1 as pb;
use warden_api::v1::agent_api_server::AgentApi;
use warden_identity::{Selector, SpiffeId};

use crate::authority::{Authority, SignedSvid};
use crate::datastore::{
    AgentRecord, AgentRenewal, Datastore, IssuedJwtSvid, IssuedSvid, TokenError,
    join_token_agent_id, join_token_hash,
};
use crate::http::Metrics;
use failures::{Attempt, src_addr};

pub use x509pop::CHALLENGE_TTL;

/// Most CSRs accepted in one `SignX509Svids` call.
pub const MAX_BATCH: usize = 500;
/// Longest join token accepted.
const MAX_TOKEN_LEN: usize = 1024;

/// The agent API service.
#[derive(Debug, Clone)]
pub struct AgentService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    authority: Arc<Authority>,
    ds: Datastore,
    agent_ttl: Duration,
    pop: x509pop::X509Pop,
    metrics: Arc<Metrics>,
    failure_audits: failures::FailureAudits,
}

// === impl AgentService ===

impl AgentService {
    /// A service issuing with `authority`, agent SVIDs living `agent_ttl`, accepting x509pop
    /// nodes whose certificates chain to one of `node_cas` (none: x509pop disabled).
    pub fn new(
        authority: Arc<Authority>,
        agent_ttl: Duration,
        node_cas: Vec<rustls_pki_types::CertificateDer<'static>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let ds = authority.datastore().clone();
        Self {
            inner: Arc::new(Inner {
                authority,
                ds,
                agent_ttl,
                pop: x509pop::X509Pop::new(node_cas),
                metrics,
                failure_audits: failures::FailureAudits::default(),
            }),
        }
    }

    fn now(&self) -> std::time::SystemTime {
        self.inner.authority.clock().now()
    }

    /// Signs the agent SVID for `id` with the agent TTL.
    fn sign_agent(
        &self,
        id: &SpiffeId,
        csr: &crate::authority::ParsedCsr,
    ) -> Result<SignedSvid, Status> {
        self.inner
            .authority
            .sign_parsed(csr, id, &[], self.inner.agent_ttl)
            .map_err(convert::sign_status)
    }

    /// Signs the agent SVID of a newly attested agent and records it (`agent.attested`).
    async fn attest_agent(
        &self,
        id: SpiffeId,
        attestor: &str,
        selectors: Vec<Selector>,
        csr: &crate::authority::ParsedCsr,
    ) -> Result<pb::AttestResponse, Status> {
        let signed = self.sign_agent(&id, csr)?;
        let bundles = self.bundles().await?;
        let record = new_agent_record(id, attestor, selectors, &signed);
        self.inner
            .ds
            .attest_agent(&record)
            .await
            .map_err(convert::ds_status)?;
        Ok(agent_svid_response(&signed, bundles))
    }

    async fn bundles(&self) -> Result<pb::Bundles, Status> {
        let own = self.inner.authority.bundle();
        let federated = self
            .inner
            .ds
            .list_bundles()
            .await
            .map_err(convert::ds_status)?
            .into_iter()
            .filter(|b| b.trust_domain() != own.trust_domain())
            .map(|b| convert::bundle(&b))
            .collect();
        Ok(pb::Bundles {
            own: Some(convert::bundle(&own)),
            federated,
        })
    }
}

/// The record of an agent attested just now with the SVID `signed`.
fn new_agent_record(
    id: SpiffeId,
    attestor: &str,
    selectors: Vec<Selector>,
    signed: &SignedSvid,
) -> AgentRecord {
    let now = convert::unix(signed.issued_at);
    AgentRecord {
        spiffe_id: id,
        attestor: attestor.to_owned(),
        selectors,
        serial: signed.serial.clone(),
        previous_serial: None,
        expires_at: convert::unix(signed.not_after),
        banned: false,
        attested_at: now,
        renewed_at: now,
    }
}

/// The reply to an attestation or renewal. The bundles are read before the agent is recorded,
/// so that no read after the write can fail the call once the write committed.
fn agent_svid_response(signed: &SignedSvid, bundles: pb::Bundles) -> pb::AttestResponse {
    pb::AttestResponse {
        svid: Some(convert::svid(signed)),
        bundles: Some(bundles),
    }
}

fn parse_csr(der: &[u8]) -> Result<crate::authority::ParsedCsr, Status> {
    crate::authority::parse_csr(der).map_err(convert::sign_status)
}

#[tonic::async_trait]
impl AgentApi for AgentService {
    async fn attest_join_token(
        &self,
        request: Request<pb::AttestJoinTokenRequest>,
    ) -> Result<Response<pb::AttestResponse>, Status> {
        let req = request.get_ref();
        let valid_len = !req.token.is_empty() && req.token.len() <= MAX_TOKEN_LEN;
        let agent_id =
            valid_len.then(|| join_token_agent_id(self.inner.authority.trust_domain(), &req.token));
        let mut known_token_refused = false;
        let result = async {
            if req.token.is_empty() {
                return Err(Status::invalid_argument("join token is empty"));
            }
            if req.token.len() > MAX_TOKEN_LEN {
                return Err(Status::invalid_argument(format!(
                    "join token is longer than {MAX_TOKEN_LEN} bytes"
                )));
            }
            let csr = parse_csr(&req.csr)?;
            // Some for every token that passed the checks above.
            let id = agent_id
                .clone()
                .ok_or_else(|| Status::invalid_argument("join token is empty"))?;
            let hash = join_token_hash(&req.token);
            let now = convert::unix(self.now());
            // A first look, read-only: an unknown token (anyone can send one) costs no
            // signature and no write lock.
            self.inner
                .ds
                .check_join_token(&hash, now)
                .await
                .map_err(|e| token_refused(e, &mut known_token_refused))?;
            // Sign first: a CSR the CA refuses leaves the token unused. The token is then
            // consumed and the agent recorded in one transaction, which checks it again.
            let signed = self.sign_agent(&id, &csr)?;
            let bundles = self.bundles().await?;
            let record = new_agent_record(id, "join_token", Vec::new(), &signed);
            self.inner
                .ds
                .attest_agent_with_join_token(&hash, now, &record)
                .await
                .map_err(|e| token_refused(e, &mut known_token_refused))?;
            tracing::info!(agent = %record.spiffe_id, "agent attested with a join token");
            Ok(agent_svid_response(&signed, bundles))
        }
        .await;
        let attempt = Attempt {
            attestor: "join_token",
            agent: agent_id.as_ref(),
            src: src_addr(&request),
            audit: known_token_refused,
        };
        self.attestation_done(attempt, &result).await;
        result.map(Response::new)
    }

    async fn x509_pop_challenge(
        &self,
        request: Request<pb::X509PopChallengeRequest>,
    ) -> Result<Response<pb::X509PopChallengeResponse>, Status> {
        let (challenge_id, nonce) = self
            .inner
            .pop
            .challenge(&request.get_ref().cert_chain, self.now())?;
        Ok(Response::new(pb::X509PopChallengeResponse {
            challenge_id,
            nonce: nonce.to_vec(),
        }))
    }

    async fn attest_x509_pop(
        &self,
        request: Request<pb::AttestX509PopRequest>,
    ) -> Result<Response<pb::AttestResponse>, Status> {
        let result = async {
            let req = request.get_ref();
            let csr = parse_csr(&req.csr)?;
            let node = self.inner.pop.answer(
                self.inner.authority.trust_domain(),
                &req.challenge_id,
                &req.signature,
                self.now(),
            )?;
            tracing::info!(agent = %node.agent_id, "agent attested with x509pop");
            self.attest_agent(node.agent_id, "x509pop", node.selectors, &csr)
                .await
        }
        .await;
        let attempt = Attempt {
            attestor: "x509pop",
            agent: None,
            src: src_addr(&request),
            audit: false,
        };
        self.attestation_done(attempt, &result).await;
        result.map(Response::new)
    }

    async fn renew_agent(
        &self,
        request: Request<pb::RenewAgentRequest>,
    ) -> Result<Response<pb::AttestResponse>, Status> {
        let caller = self.authenticate(&request).await?;
        let csr = parse_csr(&request.get_ref().csr)?;
        let signed = self.sign_agent(&caller.agent.spiffe_id, &csr)?;
        let bundles = self.bundles().await?;
        // Update-only: an eviction, ban or other renewal since `authenticate` is not undone.
        self.inner
            .ds
            .renew_agent(&AgentRenewal {
                spiffe_id: caller.agent.spiffe_id.clone(),
                presented_serial: caller.serial.clone(),
                serial: signed.serial.clone(),
                expires_at: convert::unix(signed.not_after),
                renewed_at: convert::unix(signed.issued_at),
            })
            .await
            .map_err(convert::renew_status)?;
        Ok(Response::new(agent_svid_response(&signed, bundles)))
    }

    async fn list_entries(
        &self,
        request: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let agent = self.caller(&request).await?;
        let entries = self
            .inner
            .ds
            .entries_for_agent(&agent.spiffe_id, &agent.selectors)
            .await
            .map_err(convert::ds_status)?;
        Ok(Response::new(pb::ListEntriesResponse {
            entries: entries.iter().map(convert::entry).collect(),
        }))
    }

    async fn sign_x509_svids(
        &self,
        request: Request<pb::SignX509SvidsRequest>,
    ) -> Result<Response<pb::SignX509SvidsResponse>, Status> {
        let agent = self.caller(&request).await?;
        let csrs = request.into_inner().csrs;
        if csrs.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "{} csrs in one call; at most {MAX_BATCH}",
                csrs.len()
            )));
        }
        let entries = self
            .inner
            .ds
            .entries_for_agent(&agent.spiffe_id, &agent.selectors)
            .await
            .map_err(convert::ds_status)?;
        let by_id: HashMap<String, crate::datastore::Entry> =
            entries.into_iter().map(|e| (e.id.clone(), e)).collect();
        let mut jobs = Vec::with_capacity(csrs.len());
        for c in csrs {
            let entry = by_id.get(&c.entry_id).cloned().ok_or_else(|| {
                // NotFound, not PermissionDenied: the agent then knows that this entry (deleted
                // or reassigned since it listed it) is gone, and that it is not itself refused.
                Status::not_found(format!(
                    "entry `{}` is not assigned to agent `{}`",
                    c.entry_id.chars().take(128).collect::<String>(),
                    agent.spiffe_id
                ))
            })?;
            jobs.push((entry, c.csr));
        }
        let authority = Arc::clone(&self.inner.authority);
        let metrics = Arc::clone(&self.inner.metrics);
        let signed = tokio::task::spawn_blocking(move || {
            jobs.into_iter()
                .map(|(entry, csr)| {
                    let started = Instant::now();
                    let s = authority
                        .sign_x509_svid(
                            &csr,
                            &entry.spiffe_id,
                            &entry.dns_names,
                            Duration::from_secs(u64::from(entry.x509_svid_ttl)),
                        )
                        .map_err(|e| {
                            let status = convert::sign_status(e);
                            Status::new(
                                status.code(),
                                format!("entry `{}`: {}", entry.id, status.message()),
                            )
                        })?;
                    metrics.svid_signed(started.elapsed());
                    Ok((entry.id, s))
                })
                .collect::<Result<Vec<_>, Status>>()
        })
        .await
        .map_err(|_| Status::internal("signing task failed"))??;
        let log: Vec<IssuedSvid> = signed
            .iter()
            .map(|(entry_id, s)| IssuedSvid {
                serial: s.serial.clone(),
                spiffe_id: s.spiffe_id.clone(),
                entry_id: entry_id.clone(),
                issued_at: convert::unix(s.issued_at),
                expires_at: convert::unix(s.not_after),
            })
            .collect();
        self.inner
            .ds
            .record_issued_svids(&log, &agent.spiffe_id)
            .await
            .map_err(convert::ds_status)?;
        Ok(Response::new(pb::SignX509SvidsResponse {
            svids: signed.iter().map(|(_, s)| convert::svid(s)).collect(),
        }))
    }

    async fn sign_jwt_svid(
        &self,
        request: Request<pb::SignJwtSvidRequest>,
    ) -> Result<Response<pb::SignJwtSvidResponse>, Status> {
        let agent = self.caller(&request).await?;
        let req = request.into_inner();
        let entries = self
            .inner
            .ds
            .entries_for_agent(&agent.spiffe_id, &agent.selectors)
            .await
            .map_err(convert::ds_status)?;
        let entry = entries
            .into_iter()
            .find(|e| e.id == req.entry_id)
            .ok_or_else(|| {
                // NotFound, not PermissionDenied: the agent then knows that this entry (deleted
                // or reassigned since it listed it) is gone, and that it is not itself refused.
                Status::not_found(format!(
                    "entry `{}` is not assigned to agent `{}`",
                    req.entry_id.chars().take(128).collect::<String>(),
                    agent.spiffe_id
                ))
            })?;
        let jwt = self
            .inner
            .authority
            .sign_jwt_svid(
                &entry.spiffe_id,
                &req.audience,
                Duration::from_secs(u64::from(entry.jwt_svid_ttl)),
            )
            .map_err(convert::sign_status)?;
        // Audited before it is handed out: a token the audit log cannot show is not issued.
        self.inner
            .ds
            .record_jwt_svid_issued(
                &IssuedJwtSvid {
                    spiffe_id: jwt.spiffe_id.clone(),
                    entry_id: entry.id.clone(),
                    audience: req.audience.clone(),
                    kid: jwt.kid.clone(),
                    expires_at: convert::unix(jwt.expires_at),
                },
                &agent.spiffe_id,
            )
            .await
            .map_err(convert::ds_status)?;
        Ok(Response::new(pb::SignJwtSvidResponse {
            spiffe_id: jwt.spiffe_id.to_string(),
            token: jwt.token,
            expires_at: convert::unix(jwt.expires_at),
        }))
    }

    async fn fetch_bundles(
        &self,
        request: Request<pb::FetchBundlesRequest>,
    ) -> Result<Response<pb::Bundles>, Status> {
        self.caller(&request).await?;
        Ok(Response::new(self.bundles().await?))
    }
}

/// The answer to a join token refused for `e`; sets `known` when the token exists (expired or
/// used), which makes the attempt worth an audit record.
fn token_refused(e: TokenError, known: &mut bool) -> Status {
    *known = matches!(e, TokenError::Expired | TokenError::AlreadyUsed);
    convert::token_status(e)
}
