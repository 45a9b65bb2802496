//! The `warden.v1.AdminApi` handlers. Each one reads the caller checked by the peer interceptor,
//! parses its input (bad input is `InvalidArgument` and changes nothing) and calls the datastore,
//! which audits the change in the same transaction.

use rand::RngCore as _;
use tonic::{Request, Response, Status};
use warden_api::v1::{self, admin_api_server::AdminApi};
use warden_identity::Bundle;

use super::convert::{self, status_from_datastore as ds_status};
use super::peer::actor;
use super::{AdminService, DEFAULT_JOIN_TOKEN_TTL, MAX_JOIN_TOKEN_TTL};
use crate::datastore::{JOIN_TOKEN_AGENT_PREFIX, join_token_agent_id, join_token_hash, now_unix};

type Reply<T> = Result<Response<T>, Status>;

// === impl AdminService ===

impl AdminService {
    fn own_bundle(&self) -> Bundle {
        self.own_bundle.borrow().as_ref().clone()
    }

    /// Parses a bundle document: a SPIFFE bundle (JWKS JSON) or PEM certificates, by content.
    fn parse_bundle(
        &self,
        td: &warden_identity::TrustDomain,
        bytes: &[u8],
    ) -> Result<Bundle, Status> {
        let text = String::from_utf8_lossy(bytes);
        let trimmed = text.trim_start();
        let bundle = if trimmed.starts_with('{') {
            Bundle::from_jwks(td.clone(), bytes).map_err(|e| {
                Status::invalid_argument(format!("invalid spiffe bundle for `{td}`: {e}"))
            })?
        } else if trimmed.starts_with("-----BEGIN") {
            Bundle::from_pem(td.clone(), bytes).map_err(|e| {
                Status::invalid_argument(format!("invalid pem bundle for `{td}`: {e}"))
            })?
        } else {
            return Err(Status::invalid_argument(format!(
                "bundle for `{td}` is neither a spiffe bundle (jwks json) nor pem certificates"
            )));
        };
        if bundle.is_empty() {
            return Err(Status::invalid_argument(format!(
                "bundle for `{td}` has no usable authorities"
            )));
        }
        Ok(bundle)
    }
}

#[tonic::async_trait]
impl AdminApi for AdminService {
    async fn create_join_token(
        &self,
        request: Request<v1::CreateJoinTokenRequest>,
    ) -> Reply<v1::CreateJoinTokenResponse> {
        let actor = actor(&request)?;
        let ttl = match request.get_ref().ttl {
            0 => DEFAULT_JOIN_TOKEN_TTL,
            t if t <= MAX_JOIN_TOKEN_TTL => t,
            t => {
                return Err(Status::invalid_argument(format!(
                    "join token ttl `{t}` is too long; the limit is {MAX_JOIN_TOKEN_TTL} seconds"
                )));
            }
        };
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token = hex::encode(bytes);
        let expires_at = now_unix().saturating_add(i64::from(ttl));
        self.datastore
            .create_join_token(&join_token_hash(&token), expires_at, &actor)
            .await
            .map_err(ds_status)?;
        let agent_id = join_token_agent_id(&self.trust_domain, &token);
        tracing::info!(spiffe_id = %agent_id, actor = %actor, "join token created");
        Ok(Response::new(v1::CreateJoinTokenResponse {
            token,
            expires_at,
            agent_id: agent_id.to_string(),
        }))
    }

    async fn create_entry(&self, request: Request<v1::Entry>) -> Reply<v1::Entry> {
        let actor = actor(&request)?;
        let new = convert::new_entry(request.get_ref(), &self.trust_domain)?;
        let entry = self
            .datastore
            .create_entry(&new, &actor)
            .await
            .map_err(ds_status)?;
        Ok(Response::new(convert::entry_to_proto(&entry)))
    }

    async fn list_entries(&self, request: Request<v1::ListEntriesFilter>) -> Reply<v1::EntryList> {
        actor(&request)?;
        let filter = convert::filter(request.get_ref())?;
        let entries = self
            .datastore
            .list_entries(&filter)
            .await
            .map_err(ds_status)?;
        Ok(Response::new(v1::EntryList {
            entries: entries.iter().map(convert::entry_to_proto).collect(),
        }))
    }

    async fn get_entry(&self, request: Request<v1::EntryId>) -> Reply<v1::Entry> {
        actor(&request)?;
        let entry = self
            .datastore
            .get_entry(&request.get_ref().id)
            .await
            .map_err(ds_status)?;
        Ok(Response::new(convert::entry_to_proto(&entry)))
    }

    async fn update_entry(&self, request: Request<v1::Entry>) -> Reply<v1::Entry> {
        let actor = actor(&request)?;
        let entry = convert::entry_for_update(request.get_ref(), &self.trust_domain)?;
        let updated = self
            .datastore
            .update_entry(&entry, &actor)
            .await
            .map_err(ds_status)?;
        Ok(Response::new(convert::entry_to_proto(&updated)))
    }

    async fn delete_entry(&self, request: Request<v1::EntryId>) -> Reply<v1::Empty> {
        let actor = actor(&request)?;
        self.datastore
            .delete_entry(&request.get_ref().id, &actor)
            .await
            .map_err(ds_status)?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn list_agents(&self, request: Request<v1::Empty>) -> Reply<v1::AgentList> {
        actor(&request)?;
        let agents = self.datastore.list_agents().await.map_err(ds_status)?;
        Ok(Response::new(v1::AgentList {
            agents: agents.iter().map(convert::agent_to_proto).collect(),
        }))
    }

    async fn revoke_join_token(&self, request: Request<v1::AgentId>) -> Reply<v1::Empty> {
        let actor = actor(&request)?;
        let agent_id = convert::agent_id(&request.get_ref().spiffe_id)?;
        let token_id = agent_id
            .path()
            .strip_prefix(JOIN_TOKEN_AGENT_PREFIX)
            .filter(|_| agent_id.trust_domain() == self.trust_domain)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "`{agent_id}` is not a join token's agent id (spiffe://{}{JOIN_TOKEN_AGENT_PREFIX}<token id>)",
                    self.trust_domain
                ))
            })?;
        self.datastore
            .revoke_join_token(token_id, &actor)
            .await
            .map_err(ds_status)?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn evict_agent(&self, request: Request<v1::AgentId>) -> Reply<v1::Empty> {
        let actor = actor(&request)?;
        let id = convert::agent_id(&request.get_ref().spiffe_id)?;
        self.datastore
            .evict_agent(&id, &actor)
            .await
            .map_err(ds_status)?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn ban_agent(&self, request: Request<v1::AgentId>) -> Reply<v1::Empty> {
        let actor = actor(&request)?;
        let id = convert::agent_id(&request.get_ref().spiffe_id)?;
        self.datastore
            .ban_agent(&id, &actor)
            .await
            .map_err(ds_status)?;
        Ok(Response::new(v1::Empty {}))
    }

    /// The own bundle first, then the federated ones.
    async fn list_bundles(&self, request: Request<v1::Empty>) -> Reply<v1::BundleList> {
        actor(&request)?;
        let mut bundles = vec![convert::bundle_to_proto(&self.own_bundle())];
        for b in self.datastore.list_bundles().await.map_err(ds_status)? {
            if *b.trust_domain() != self.trust_domain {
                bundles.push(convert::bundle_to_proto(&b));
            }
        }
        Ok(Response::new(v1::BundleList { bundles }))
    }

    /// An empty trust domain means the CA's own.
    async fn get_bundle(&self, request: Request<v1::TrustDomainName>) -> Reply<v1::Bundle> {
        actor(&request)?;
        let name = &request.get_ref().trust_domain;
        if name.is_empty() {
            return Ok(Response::new(convert::bundle_to_proto(&self.own_bundle())));
        }
        let td = convert::trust_domain(name)?;
        if td == self.trust_domain {
            return Ok(Response::new(convert::bundle_to_proto(&self.own_bundle())));
        }
        match self.datastore.get_bundle(&td).await.map_err(ds_status)? {
            Some(b) => Ok(Response::new(convert::bundle_to_proto(&b))),
            None => Err(Status::not_found(format!("bundle `{td}` not found"))),
        }
    }

    async fn set_bundle(&self, request: Request<v1::SetBundleRequest>) -> Reply<v1::Bundle> {
        let actor = actor(&request)?;
        let req = request.get_ref();
        let td = convert::trust_domain(&req.trust_domain)?;
        if td == self.trust_domain {
            return Err(Status::failed_precondition(format!(
                "`{td}` is this ca's own trust domain; its bundle is managed by the ca"
            )));
        }
        let mut bundle = self.parse_bundle(&td, &req.bundle)?;
        // PEM carries no sequence, and a document may carry one not above the stored one:
        // continue from the stored one so that consumers see a change (B-2).
        let previous = self.datastore.get_bundle(&td).await.map_err(ds_status)?;
        bundle.set_sequence(crate::federation::next_sequence(
            bundle.sequence(),
            previous.map(|p| p.sequence()),
        ));
        self.datastore
            .set_bundle(&bundle, &actor)
            .await
            .map_err(ds_status)?;
        Ok(Response::new(convert::bundle_to_proto(&bundle)))
    }

    async fn delete_bundle(&self, request: Request<v1::TrustDomainName>) -> Reply<v1::Empty> {
        let actor = actor(&request)?;
        let td = convert::trust_domain(&request.get_ref().trust_domain)?;
        if td == self.trust_domain {
            return Err(Status::failed_precondition(format!(
                "`{td}` is this ca's own trust domain; its bundle cannot be deleted"
            )));
        }
        self.datastore
            .delete_bundle(&td, &actor)
            .await
            .map_err(ds_status)?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn list_audit(&self, request: Request<v1::ListAuditRequest>) -> Reply<v1::AuditList> {
        actor(&request)?;
        let req = request.get_ref();
        let records = self
            .datastore
            .list_audit(req.after, req.limit)
            .await
            .map_err(ds_status)?;
        Ok(Response::new(v1::AuditList {
            records: records.into_iter().map(convert::audit_to_proto).collect(),
        }))
    }

    async fn verify_audit(&self, request: Request<v1::Empty>) -> Reply<v1::VerifyAuditResponse> {
        actor(&request)?;
        let v = self.datastore.verify_audit().await.map_err(ds_status)?;
        let (first_bad_seq, problem) = v
            .first_bad
            .as_ref()
            .map_or((0, String::new()), |b| (b.seq, b.problem.clone()));
        if let Some(bad) = &v.first_bad {
            tracing::warn!(seq = bad.seq, problem = %bad.problem, "audit chain does not verify");
        }
        Ok(Response::new(v1::VerifyAuditResponse {
            ok: v.is_ok(),
            records: v.records,
            first_bad_seq,
            problem,
        }))
    }
}
