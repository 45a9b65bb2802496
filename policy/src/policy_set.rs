//! A loaded, validated and indexed policy set, and the decision path the sidecar calls for every
//! request: parts in, [`Decision`] out.
//!
//! The hot path does no JSON and clones no entity store: action entities and each policy's
//! condition are prebuilt at load, each (caller, resource) pair gets its entity store and
//! per-action candidate lists built once and cached, and the context is built from values.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use cedar_policy as cedar;
use warden_identity::SpiffeId;

use crate::context::Needs;
use crate::decision::{Decision, Outcome};
use crate::error::LoadError;
use crate::eval::{self, CandidateList, Compiled, Evaluated};
use crate::index::{Scope, ScopeIndex};
use crate::loader::{Loaded, PolicyInfo, load};
use crate::model::{ACTION_TYPE, Types, UNAUTHENTICATED_ID};
use crate::request::{Caller, Operation, Request, RequestError};

/// Most cached (caller, resource) pairs; past it the cache starts over.
pub const MAX_CACHED_PEERS: usize = 4096;

/// How a decision selects the policies to evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evaluation {
    /// Only the policies the scope index says can apply (the default).
    Indexed,
    /// Every policy, as plain Cedar does; for comparison and benchmarks.
    Plain,
}

/// A validated, indexed policy set.
#[derive(Debug)]
pub struct PolicySet {
    loaded: Loaded,
    version: Arc<str>,
    index: ScopeIndex,
    authorizer: cedar::Authorizer,
    /// Every policy (static and linked) with its condition built once, by id.
    compiled: HashMap<cedar::PolicyId, Arc<Compiled>>,
    actions: HashMap<String, ActionInfo>,
    peers: RwLock<HashMap<String, HashMap<String, Arc<PeerEntry>>>>,
}

#[derive(Debug)]
struct ActionInfo {
    slot: usize,
    uid: cedar::EntityUid,
    ancestors: Vec<cedar::EntityUid>,
    /// Whether the schema accepts requests of each shape (caller kind × TLS present), checked
    /// with the first such request.
    ///
    /// INVARIANT (upheld by `Request::context`, the only context builder, and by `evaluate`,
    /// which refuses an HTTP method named as another operation's action, so that an action is
    /// always one kind of operation): two requests with the same action, caller kind and TLS
    /// presence have contexts with the same attributes and the
    /// same types (strings, an `ipaddr`, a `datetime`, a set of header records), and the same
    /// principal and resource entity types; so the schema accepts both or neither, and checking
    /// one validates the shape.
    shapes: [OnceLock<Result<(), String>>; 4],
}

/// The policies one (caller, resource, action) triple evaluates.
type Candidates = Arc<CandidateList>;

/// Everything about one (caller, resource) pair that does not change between requests.
#[derive(Debug)]
struct PeerEntry {
    principal: cedar::EntityUid,
    principal_ancestors: Vec<cedar::EntityUid>,
    resource: cedar::EntityUid,
    resource_ancestors: Vec<cedar::EntityUid>,
    entities: Arc<cedar::Entities>,
    /// Per action slot: the policies the index says may apply.
    candidates: Vec<OnceLock<Result<Candidates, String>>>,
}

// === impl PolicySet ===

impl PolicySet {
    /// Loads, validates and indexes a policy directory.
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        // On a thread with a known, large stack: see `loader::depth`.
        crate::loader::depth::on_load_stack(|| Ok(Self::from_loaded(load(dir)?)))
    }

    fn from_loaded(loaded: Loaded) -> Self {
        let index = ScopeIndex::new(&loaded.policies);
        let compiled = loaded
            .policies
            .policies()
            .map(|p| (p.id().clone(), Arc::new(Compiled::new(p))))
            .collect();
        let mut actions = HashMap::new();
        // Requests name `Mesh::Action`s by id: an action of another namespace with the same id
        // (`Other::Action::"GET"`) must not stand for one.
        for uid in loaded
            .schema
            .actions()
            .filter(|uid| uid.type_name().to_string() == ACTION_TYPE)
        {
            let ancestors = loaded
                .entities
                .ancestors(uid)
                .map(|a| a.cloned().collect())
                .unwrap_or_default();
            let slot = actions.len();
            let shapes = std::array::from_fn(|_| OnceLock::new());
            actions.insert(
                uid.id().unescaped().to_owned(),
                ActionInfo {
                    slot,
                    uid: uid.clone(),
                    ancestors,
                    shapes,
                },
            );
        }
        let version = Arc::from(loaded.version.as_str());
        tracing::debug!(
            policy.version = %version,
            policies = index.len(),
            dir = %loaded.dir.display(),
            "policy set loaded"
        );
        Self {
            loaded,
            version,
            index,
            authorizer: cedar::Authorizer::new(),
            compiled,
            actions,
            peers: RwLock::default(),
        }
    }

    /// The content digest of the set (`sha256:<hex>`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The directory the set was loaded from.
    pub fn dir(&self) -> &Path {
        &self.loaded.dir
    }

    /// What the loader knows about a policy id: location, effect, kind.
    pub fn policy(&self, id: &str) -> Option<&PolicyInfo> {
        self.loaded.info.get(&cedar::PolicyId::new(id))
    }

    /// Every policy, template and linked policy, sorted by id.
    pub fn policies(&self) -> Vec<&PolicyInfo> {
        let mut all: Vec<&PolicyInfo> = self.loaded.info.values().collect();
        all.sort_by(|a, b| a.id().cmp(b.id()));
        all
    }

    /// Decides a request using the scope index.
    pub fn decide(&self, request: &Request<'_>) -> Decision {
        self.decide_with(request, Evaluation::Indexed)
    }

    /// Decides a request, selecting policies as `evaluation` says. Both ways give the same
    /// decision; [`Evaluation::Plain`] exists to prove that and to measure the difference.
    pub fn decide_with(&self, request: &Request<'_>, evaluation: Evaluation) -> Decision {
        let start = Instant::now();
        let (outcome, ids, errors) = match self.evaluate(request, evaluation) {
            Ok(result) => result,
            Err(e) => {
                let version = Arc::clone(&self.version);
                return Decision::malformed(e.to_string(), start.elapsed(), version);
            }
        };
        Decision::new(
            outcome,
            ids,
            errors,
            start.elapsed(),
            Arc::clone(&self.version),
        )
    }

    fn evaluate(
        &self,
        request: &Request<'_>,
        evaluation: Evaluation,
    ) -> Result<(Outcome, Vec<String>, Vec<String>), RequestError> {
        let action_name = request.operation.action_name();
        // One action, one kind of request (the `shapes` invariant): an HTTP method spelled
        // `grpc` is not a gRPC call.
        if let Operation::Http(method) = request.operation
            && !matches!(Operation::from_name(method), Operation::Http(_))
        {
            return Err(RequestError::NotHttpMethod(method.to_owned()));
        }
        let action = self
            .actions
            .get(action_name)
            .ok_or_else(|| RequestError::UnknownAction(action_name.to_owned()))?;
        let peer = self.peer(request.caller, request.resource)?;
        let shape = usize::from(request.caller == Caller::Unauthenticated) * 2
            + usize::from(request.tls.is_some());
        let new_request = |context, schema| {
            cedar::Request::new(
                peer.principal.clone(),
                action.uid.clone(),
                peer.resource.clone(),
                context,
                schema,
            )
            .map_err(|e| schema_rejection(&e))
        };
        let checked = action
            .shapes
            .get(shape)
            .ok_or_else(|| RequestError::Rejected("bad request shape".to_owned()))?;
        let candidates = match evaluation {
            Evaluation::Plain => None,
            Evaluation::Indexed => Some(
                peer.candidates
                    .get(action.slot)
                    .ok_or_else(|| RequestError::UnknownAction(action_name.to_owned()))?
                    .get_or_init(|| self.candidate_list(&peer, action).map(Arc::new))
                    .as_ref()
                    .map_err(|e| RequestError::Rejected(e.clone()))?,
            ),
        };
        // Only what the candidates read, once this request's shape has passed the schema (the
        // first request of a shape is checked whole).
        let needs = match (checked.get(), candidates) {
            (Some(_), Some(candidates)) => candidates.needs,
            _ => Needs::ALL,
        };
        let context = request.context_for(needs)?;
        let cedar_request = match checked.get() {
            // This shape passed the schema: the request needs no second check (see `shapes`).
            Some(Ok(())) => new_request(context, None).map_err(RequestError::Rejected)?,
            Some(Err(e)) => return Err(RequestError::Rejected(e.clone())),
            None => match new_request(context, Some(&self.loaded.schema)) {
                Ok(r) => {
                    let _ = checked.set(Ok(()));
                    r
                }
                Err(e) => {
                    let _ = checked.set(Err(e.clone()));
                    return Err(RequestError::Rejected(e));
                }
            },
        };
        let evaluated = match candidates {
            None => self.plain(&cedar_request, &peer.entities),
            Some(candidates) => eval::authorize(&cedar_request, &peer.entities, &candidates.list),
        };
        Ok(outcome(evaluated))
    }

    /// Plain Cedar over the whole set.
    fn plain(&self, request: &cedar::Request, entities: &cedar::Entities) -> Evaluated {
        let response = self
            .authorizer
            .is_authorized(request, &self.loaded.policies, entities);
        let errors = response
            .diagnostics()
            .errors()
            .map(|cedar::AuthorizationError::PolicyEvaluationError(e)| {
                let is_forbid = self
                    .loaded
                    .info
                    .get(e.policy_id())
                    .is_none_or(|i| i.effect() == cedar::Effect::Forbid);
                (e.policy_id().to_string(), is_forbid, e.to_string())
            })
            .collect();
        Evaluated {
            allowed: response.decision() == cedar::Decision::Allow,
            reason: response
                .diagnostics()
                .reason()
                .map(|id| AsRef::<str>::as_ref(id).to_owned())
                .collect(),
            errors,
        }
    }

    /// The cached entry of a (caller, resource) pair, built on first use.
    fn peer(&self, caller: Caller<'_>, resource: &str) -> Result<Arc<PeerEntry>, RequestError> {
        let key = match caller {
            // INVARIANT: `""` keys the unauthenticated caller only; an empty ID never reaches the cache.
            Caller::Spiffe("") => {
                return Err(RequestError::BadSpiffeId {
                    id: String::new(),
                    reason: warden_identity::SpiffeIdError::Empty.to_string(),
                });
            }
            Caller::Spiffe(id) => id,
            Caller::Unauthenticated => "",
        };
        if let Ok(peers) = self.peers.read()
            && let Some(entry) = peers.get(resource).and_then(|m| m.get(key))
        {
            return Ok(Arc::clone(entry));
        }
        let entry = Arc::new(self.build_peer(caller, resource)?);
        if let Ok(mut peers) = self.peers.write() {
            if peers.values().map(HashMap::len).sum::<usize>() >= MAX_CACHED_PEERS {
                peers.clear();
            }
            peers
                .entry(resource.to_owned())
                .or_default()
                .insert(key.to_owned(), Arc::clone(&entry));
        }
        Ok(entry)
    }

    fn build_peer(&self, caller: Caller<'_>, resource: &str) -> Result<PeerEntry, RequestError> {
        if resource.is_empty() {
            return Err(RequestError::EmptyResource);
        }
        let types = &self.loaded.types;
        let base = &self.loaded.entities;
        let mut extra = Vec::new();
        let principal = match caller {
            Caller::Unauthenticated => Types::uid(&types.unauthenticated, UNAUTHENTICATED_ID),
            Caller::Spiffe(raw) => {
                let id: SpiffeId = raw.parse().map_err(|e: warden_identity::SpiffeIdError| {
                    RequestError::BadSpiffeId {
                        id: raw.to_owned(),
                        reason: e.to_string(),
                    }
                })?;
                let uid = types.workload_uid(&id);
                if base.get(&uid).is_none() {
                    extra.push(
                        types
                            .workload_entity(&id, [])
                            .map_err(|e| RequestError::Rejected(e.to_string()))?,
                    );
                }
                uid
            }
        };
        let resource_uid = Types::uid(&types.service, resource);
        if base.get(&resource_uid).is_none() {
            extra.push(cedar::Entity::with_uid(resource_uid.clone()));
        }
        let entities = if extra.is_empty() {
            base.clone()
        } else {
            base.clone()
                .add_entities(extra, Some(&self.loaded.schema))
                .map_err(|e| RequestError::Rejected(e.to_string()))?
        };
        let ancestors = |uid: &cedar::EntityUid| -> Vec<cedar::EntityUid> {
            entities
                .ancestors(uid)
                .map(|a| a.cloned().collect())
                .unwrap_or_default()
        };
        Ok(PeerEntry {
            principal_ancestors: ancestors(&principal),
            resource_ancestors: ancestors(&resource_uid),
            principal,
            resource: resource_uid,
            candidates: (0..self.actions.len()).map(|_| OnceLock::new()).collect(),
            entities: Arc::new(entities),
        })
    }

    /// The policies that may apply to this peer and action.
    fn candidate_list(
        &self,
        peer: &PeerEntry,
        action: &ActionInfo,
    ) -> Result<CandidateList, String> {
        let scope = Scope {
            principal: &peer.principal,
            principal_ancestors: peer.principal_ancestors.iter().collect(),
            action: &action.uid,
            action_ancestors: action.ancestors.iter().collect(),
            resource: &peer.resource,
            resource_ancestors: peer.resource_ancestors.iter().collect(),
        };
        let policies = self
            .index
            .candidates(&scope)
            .into_iter()
            .map(|id| {
                self.compiled
                    .get(id)
                    .cloned()
                    .ok_or_else(|| format!("policy `{id}` is missing"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Scopes read no context: an empty one stands in for every request's.
        let request = cedar::Request::new(
            peer.principal.clone(),
            action.uid.clone(),
            peer.resource.clone(),
            cedar::Context::empty(),
            None,
        )
        .map_err(|e| e.to_string())?;
        Ok(eval::candidates(&request, &peer.entities, policies))
    }

    /// How many policies a request evaluates with the index (for tests and benchmarks).
    pub fn candidate_count(&self, request: &Request<'_>) -> Option<usize> {
        let action = self.actions.get(request.operation.action_name())?;
        let peer = self.peer(request.caller, request.resource).ok()?;
        self.candidate_list(&peer, action)
            .ok()
            .map(|l| l.list.len())
    }
}

/// The decision of an evaluation, failing closed on an error in a `forbid`: such a policy might
/// have applied, so the request is denied and the failed forbids named.
fn outcome(evaluated: Evaluated) -> (Outcome, Vec<String>, Vec<String>) {
    let mut forbid_failed = Vec::new();
    let mut errors = Vec::with_capacity(evaluated.errors.len());
    for (id, is_forbid, message) in evaluated.errors {
        if is_forbid {
            forbid_failed.push(id);
        }
        errors.push(message);
    }
    errors.sort();
    if !forbid_failed.is_empty() {
        // The forbids that errored deny, beside any that held (the reason of a deny is only
        // ever satisfied forbids; satisfied permits lose to the errored forbid and are not).
        if !evaluated.allowed {
            forbid_failed.extend(evaluated.reason);
        }
        forbid_failed.sort();
        forbid_failed.dedup();
        return (Outcome::Deny, forbid_failed, errors);
    }
    let mut ids = evaluated.reason;
    ids.sort();
    let outcome = match evaluated.allowed {
        true => Outcome::Allow,
        false => Outcome::Deny,
    };
    (outcome, ids, errors)
}

/// Why the schema rejected a request, without the request's values. Cedar's own message for a
/// context that does not fit prints the whole context (header values, the query string), and
/// this text is cached for every later request of the same shape and written to the decision
/// log: neither may carry one caller's secrets.
fn schema_rejection(err: &cedar::RequestValidationError) -> String {
    match err {
        cedar::RequestValidationError::InvalidContext(e) => format!(
            "the context of `{}` does not have the type the schema declares for it",
            e.action()
        ),
        cedar::RequestValidationError::TypeOfContext(_) => {
            "the type of the context could not be computed".to_owned()
        }
        other => other.to_string(),
    }
}
