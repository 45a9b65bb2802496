//! Federated bundles kept fresh, as SPIRE's `federates_with` does: for each configured
//! relationship the CA fetches the peer's bundle from its SPIFFE bundle endpoint
//! ([`crate::bundle_endpoint::fetch`], `https_spiffe`) and stores it when it changed, as
//! `warden bundle set` would (audited, actor `federation`); agents take it at their next sync.
//!
//! The endpoint is authenticated with the bundle the CA already holds for the endpoint SPIFFE
//! ID's trust domain, so the first one comes out of band (`warden bundle set`, or `warden bundle
//! fetch --trust-bundle`), and each fetched bundle authenticates the next fetch: the peer's
//! rotations are followed as long as the CA fetches more often than the peer's CAs overlap.
//!
//! The next fetch is due after the bundle's `spiffe_refresh_hint`, bounded to
//! [`MIN_REFRESH`]..[`MAX_REFRESH`], else after [`DEFAULT_REFRESH`]; after a failure sooner,
//! [`RETRY_FIRST`] doubling up to [`DEFAULT_REFRESH`]. A failed or empty fetch never removes
//! the bundle held.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;
use warden_identity::{Bundle, SpiffeId, TrustDomain};

use crate::authority::Authority;
use crate::bundle_endpoint::{self, WebRoots};
use crate::datastore::Datastore;
use crate::http::Metrics;

/// When the next fetch is due if the bundle carries no refresh hint.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// The shortest wait a refresh hint may ask for.
pub const MIN_REFRESH: Duration = Duration::from_secs(30);
/// The longest wait a refresh hint may ask for.
pub const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// The first wait after a failed fetch.
pub const RETRY_FIRST: Duration = Duration::from_secs(10);
/// Who the audit log names for a bundle stored here.
const ACTOR: &str = "federation";

/// A federation relationship as written (`[[federation]]` in the config file, or
/// `--federation` inline tables).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRelationship {
    /// The federated trust domain.
    pub trust_domain: String,
    /// Its bundle endpoint, `https://host[:port][/path]`.
    pub url: String,
    /// How the endpoint authenticates itself: `https_spiffe` (the default) or `https_web`.
    #[serde(default)]
    pub profile: Option<String>,
    /// The SPIFFE ID the endpoint's server certificate carries (`https_spiffe` only).
    #[serde(default)]
    pub endpoint_spiffe_id: Option<String>,
}

/// How a bundle endpoint authenticates itself (SPIFFE Federation §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `https_spiffe`: an X.509-SVID for this SPIFFE ID, verified against the bundle held for
    /// its trust domain.
    Spiffe(SpiffeId),
    /// `https_web`: a WebPKI certificate for the URL's host, verified against the system's
    /// root certificates.
    Web,
}

/// A checked federation relationship.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relationship {
    /// The federated trust domain.
    pub trust_domain: TrustDomain,
    /// Its bundle endpoint.
    pub url: String,
    /// How the endpoint authenticates itself.
    pub endpoint: Endpoint,
}

impl RawRelationship {
    /// Checks every field; the error names the field and what is wrong.
    pub fn resolve(&self) -> Result<Relationship, String> {
        let trust_domain = TrustDomain::new(&self.trust_domain)
            .map_err(|e| format!("trust_domain `{}`: {e}", self.trust_domain))?;
        bundle_endpoint::check_url(&self.url).map_err(|e| e.to_string())?;
        let endpoint = match (self.profile.as_deref(), &self.endpoint_spiffe_id) {
            (None | Some("https_spiffe"), Some(id)) => {
                let id: SpiffeId = id
                    .parse()
                    .map_err(|e| format!("endpoint_spiffe_id `{id}`: {e}"))?;
                bundle_endpoint::check_endpoint_id(&id).map_err(|e| e.to_string())?;
                Endpoint::Spiffe(id)
            }
            (None | Some("https_spiffe"), None) => {
                return Err(
                    "endpoint_spiffe_id is missing: the https_spiffe profile needs the \
                            spiffe id the endpoint presents (or set profile = \"https_web\")"
                        .to_owned(),
                );
            }
            (Some("https_web"), None) => Endpoint::Web,
            (Some("https_web"), Some(_)) => {
                return Err(
                    "endpoint_spiffe_id is for the https_spiffe profile: an https_web \
                            endpoint presents a webpki certificate for the url's host"
                        .to_owned(),
                );
            }
            (Some(other), _) => {
                return Err(format!(
                    "profile `{other}` is not `https_spiffe` or `https_web`"
                ));
            }
        };
        Ok(Relationship {
            trust_domain,
            url: self.url.clone(),
            endpoint,
        })
    }
}

/// What a refresh did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    /// The bundle changed and was stored.
    Stored,
    /// The endpoint served the bundle held.
    Unchanged,
}

/// Fetches `rel`'s bundle once and stores it if it changed; `own` is this CA's bundle (for an
/// `https_spiffe` endpoint of its own trust domain), `web_roots` what authenticates an
/// `https_web` one. Returns what it did and when the next fetch is due.
pub async fn refresh(
    rel: &Relationship,
    datastore: &Datastore,
    own: &Bundle,
    web_roots: Option<&WebRoots>,
) -> Result<(Refreshed, Duration), String> {
    let fetched = match &rel.endpoint {
        Endpoint::Spiffe(endpoint_id) => {
            let endpoint_td = endpoint_id.trust_domain();
            let trust = if endpoint_td == *own.trust_domain() {
                own.clone()
            } else {
                datastore
                    .get_bundle(&endpoint_td)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| {
                        format!(
                            "no bundle of `{endpoint_td}` is held to authenticate the endpoint \
                             with: set one (`warden bundle set`, or `warden bundle fetch \
                             --trust-bundle`)"
                        )
                    })?
            };
            bundle_endpoint::fetch(&rel.url, endpoint_id, trust, &rel.trust_domain).await
        }
        Endpoint::Web => {
            let roots = web_roots
                .ok_or("no root certificates to authenticate an https_web endpoint with")?;
            bundle_endpoint::fetch_web(&rel.url, roots, &rel.trust_domain).await
        }
    };
    let (mut fetched, _) = fetched.map_err(|e| e.to_string())?;
    if fetched.is_empty() {
        return Err(format!(
            "the bundle served for `{}` has no usable authorities",
            rel.trust_domain
        ));
    }
    let next = fetched
        .refresh_hint()
        .map_or(DEFAULT_REFRESH, |hint| hint.clamp(MIN_REFRESH, MAX_REFRESH));
    let held = datastore
        .get_bundle(&rel.trust_domain)
        .await
        .map_err(|e| e.to_string())?;
    if held.as_ref().is_some_and(|held| same(held, &fetched)) {
        return Ok((Refreshed::Unchanged, next));
    }
    fetched.set_sequence(next_sequence(
        fetched.sequence(),
        held.as_ref().map(Bundle::sequence),
    ));
    datastore
        .set_bundle(&fetched, ACTOR)
        .await
        .map_err(|e| e.to_string())?;
    Ok((Refreshed::Stored, next))
}

/// Whether `fetched` holds the authorities `held` does (a bundle document carries no expiry
/// for its JWT keys, so both come from one: the comparison is exact).
fn same(held: &Bundle, fetched: &Bundle) -> bool {
    held.x509_authorities() == fetched.x509_authorities()
        && held.jwt_authorities() == fetched.jwt_authorities()
}

/// The sequence a changed bundle is stored under (rule B-2: it only grows): the one served
/// when it is above the one held, else the one held plus one (a peer that serves none, one that
/// restored an older bundle, one that changed its keys and not its sequence); 1 at first when
/// none is served.
pub fn next_sequence(served: u64, held: Option<u64>) -> u64 {
    match held {
        Some(held) if served <= held => held.saturating_add(1),
        _ => served.max(1),
    }
}

/// Refreshes `rel` until `stop` turns true.
pub(crate) async fn keep_fresh(
    rel: Relationship,
    web_roots: Option<WebRoots>,
    authority: Arc<Authority>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let td = rel.trust_domain.to_string();
    let stopped = async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    tokio::pin!(stopped);
    let mut retry = RETRY_FIRST;
    loop {
        let own = authority.bundle();
        // A stop does not wait for a slow peer (a fetch may take up to 30 s).
        let refreshed = tokio::select! {
            () = &mut stopped => return Ok(()),
            refreshed = refresh(&rel, authority.datastore(), &own, web_roots.as_ref()) => refreshed,
        };
        let wait = match refreshed {
            Ok((what, next)) => {
                retry = RETRY_FIRST;
                let result = match what {
                    Refreshed::Stored => "stored",
                    Refreshed::Unchanged => "unchanged",
                };
                metrics.federation_refresh(&td, result);
                match what {
                    Refreshed::Stored => tracing::info!(
                        trust_domain = %rel.trust_domain,
                        url = %rel.url,
                        "federated bundle updated from its endpoint"
                    ),
                    Refreshed::Unchanged => tracing::debug!(
                        trust_domain = %rel.trust_domain,
                        "federated bundle unchanged"
                    ),
                }
                next
            }
            Err(error) => {
                metrics.federation_refresh(&td, "error");
                tracing::warn!(
                    trust_domain = %rel.trust_domain,
                    url = %rel.url,
                    error = %error,
                    retry_in = ?retry,
                    "cannot refresh the federated bundle; the one held stays"
                );
                let wait = retry;
                retry = (retry * 2).min(DEFAULT_REFRESH);
                wait
            }
        };
        tokio::select! {
            () = &mut stopped => return Ok(()),
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_sequence_only_grows_b2() {
        assert_eq!(next_sequence(0, None), 1, "none served, none held");
        assert_eq!(next_sequence(7, None), 7, "the one served");
        assert_eq!(
            next_sequence(0, Some(5)),
            6,
            "none served: after the one held"
        );
        assert_eq!(next_sequence(2, Some(5)), 6, "an older one served");
        assert_eq!(next_sequence(5, Some(5)), 6, "new keys, same sequence");
        assert_eq!(next_sequence(9, Some(5)), 9, "a newer one served");
        assert_eq!(next_sequence(0, Some(u64::MAX)), u64::MAX);
    }
}
