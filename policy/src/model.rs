//! The mesh model: Cedar entity type and action names of `mesh.cedarschema`, and the workload
//! entity derived from a SPIFFE ID (its trust domain and every path prefix become parents).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy as cedar;
use warden_identity::SpiffeId;

/// Entity type of workloads (principals), by SPIFFE ID.
pub const WORKLOAD_TYPE: &str = "Mesh::Workload";
/// Entity type of the plaintext caller in permissive mode.
pub const UNAUTHENTICATED_TYPE: &str = "Mesh::Unauthenticated";
/// The id of the one unauthenticated principal.
pub const UNAUTHENTICATED_ID: &str = "anonymous";
/// Entity type of services (resources).
pub const SERVICE_TYPE: &str = "Mesh::Service";
/// Entity type of trust domains, by name.
pub const TRUST_DOMAIN_TYPE: &str = "Mesh::TrustDomain";
/// Entity type of SPIFFE ID path prefixes.
pub const NAMESPACE_TYPE: &str = "Mesh::Namespace";
/// Entity type of actions.
pub const ACTION_TYPE: &str = "Mesh::Action";
/// The action of a gRPC call.
pub const GRPC_ACTION: &str = "grpc";
/// The action of an opaque TCP connection.
pub const CONNECT_ACTION: &str = "connect";

/// Entity type names parsed once.
#[derive(Debug, Clone)]
pub(crate) struct Types {
    pub(crate) workload: cedar::EntityTypeName,
    pub(crate) unauthenticated: cedar::EntityTypeName,
    pub(crate) service: cedar::EntityTypeName,
    pub(crate) trust_domain: cedar::EntityTypeName,
    pub(crate) namespace: cedar::EntityTypeName,
}

// === impl Types ===

impl Types {
    pub(crate) fn new() -> Result<Self, String> {
        let parse = |name: &str| cedar::EntityTypeName::from_str(name).map_err(|e| e.to_string());
        Ok(Self {
            workload: parse(WORKLOAD_TYPE)?,
            unauthenticated: parse(UNAUTHENTICATED_TYPE)?,
            service: parse(SERVICE_TYPE)?,
            trust_domain: parse(TRUST_DOMAIN_TYPE)?,
            namespace: parse(NAMESPACE_TYPE)?,
        })
    }

    pub(crate) fn uid(ty: &cedar::EntityTypeName, id: &str) -> cedar::EntityUid {
        cedar::EntityUid::from_type_name_and_id(ty.clone(), cedar::EntityId::new(id))
    }

    /// The workload's own uid.
    pub(crate) fn workload_uid(&self, id: &SpiffeId) -> cedar::EntityUid {
        Self::uid(&self.workload, id.as_str())
    }

    /// The parents a workload gets from its SPIFFE ID: trust domain and each path prefix.
    pub(crate) fn derived_parents(&self, id: &SpiffeId) -> Vec<cedar::EntityUid> {
        let mut parents = vec![Self::uid(&self.trust_domain, id.trust_domain_name())];
        // The first prefix is the trust domain's own ID (`spiffe://td`), covered above.
        parents.extend(
            id.prefixes()
                .iter()
                .skip(1)
                .map(|p| Self::uid(&self.namespace, p.as_str())),
        );
        parents
    }

    /// A workload entity: derived parents plus `extra` (teams, environments), and its
    /// `trust_domain` and `path` attributes.
    pub(crate) fn workload_entity(
        &self,
        id: &SpiffeId,
        extra: impl IntoIterator<Item = cedar::EntityUid>,
    ) -> Result<cedar::Entity, String> {
        let parents: HashSet<_> = self.derived_parents(id).into_iter().chain(extra).collect();
        let attrs = HashMap::from([
            (
                "trust_domain".to_owned(),
                cedar::RestrictedExpression::new_string(id.trust_domain_name().to_owned()),
            ),
            (
                "path".to_owned(),
                cedar::RestrictedExpression::new_string(id.path().to_owned()),
            ),
        ]);
        cedar::Entity::new(self.workload_uid(id), attrs, parents).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_parents_are_trust_domain_and_each_path_prefix() {
        let types = Types::new().unwrap();
        let id: SpiffeId = "spiffe://example.org/ns/prod/sa/api".parse().unwrap();
        let parents: Vec<String> = types
            .derived_parents(&id)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            parents,
            [
                r#"Mesh::TrustDomain::"example.org""#,
                r#"Mesh::Namespace::"spiffe://example.org/ns""#,
                r#"Mesh::Namespace::"spiffe://example.org/ns/prod""#,
                r#"Mesh::Namespace::"spiffe://example.org/ns/prod/sa""#,
            ]
        );
    }
}
