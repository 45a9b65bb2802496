//! The agent's side of the CA's agent API (`warden.v1.AgentApi`) over TLS: node attestation
//! (join token, x509pop), agent SVID renewal, entry sync, batched X.509-SVID signing, JWT-SVID
//! signing and bundle fetch. Keys for SVIDs are generated here (ECDSA P-256) and only CSRs
//! leave the agent.

mod verifier;

use std::sync::Arc;
use tracing::warn;

use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair, PublicKeyData, SanType};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};
use warden_api::v1::agent_api_client::AgentApiClient;
use warden_api::v1::{
    AttestJoinTokenRequest, AttestResponse, AttestX509PopRequest, FetchBundlesRequest,
    ListEntriesRequest, RenewAgentRequest, SignJwtSvidRequest, SignX509SvidsRequest, SvidCsr,
    X509PopChallengeRequest,
};
use warden_identity::{SpiffeId, TrustDomain};

use crate::cache::{Entry, Svid, SvidError};
use crate::trust::{BundleSet, TrustError, bundles_from_proto};

/// Most CSRs sent in one `SignX509Svids` call.
pub const SIGN_BATCH: usize = 500;

/// Why a call to the CA failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// The CA could not be reached (retry with backoff).
    #[error("cannot reach the ca at `{addr}`: {reason}")]
    Unreachable {
        /// The address.
        addr: String,
        /// What happened.
        reason: String,
    },
    /// The CA's certificate does not chain to the trust bundle.
    #[error(
        "the ca at `{0}` presented a certificate that does not chain to the trust bundle (bundle mismatch)"
    )]
    BundleMismatch(String),
    /// The CA refused the request.
    #[error("the ca refused: {0}")]
    Refused(String),
    /// An entry asked about is not (or no longer) the agent's: deleted or reassigned since the
    /// agent listed it (NotFound).
    #[error("the ca refused: {0}")]
    NotAssigned(String),
    /// The CA found the request invalid (InvalidArgument): when signing, an entry it cannot
    /// sign (a DNS name or ID its signer refuses), not a refusal of the agent.
    #[error("the ca refused: {0}")]
    Invalid(String),
    /// The CA's answer was unusable.
    #[error("the ca sent an invalid answer: {0}")]
    BadAnswer(String),
}

impl From<SvidError> for CaError {
    fn from(e: SvidError) -> Self {
        Self::BadAnswer(e.to_string())
    }
}

impl From<TrustError> for CaError {
    fn from(e: TrustError) -> Self {
        Self::BadAnswer(e.to_string())
    }
}

/// A connection to the CA.
#[derive(Debug, Clone)]
pub struct CaClient {
    addr: String,
    client: AgentApiClient<Channel>,
}

/// A fresh ECDSA P-256 key and a CSR for `id` (no SAN when `id` is `None`).
pub(crate) fn key_and_csr(id: Option<&SpiffeId>) -> Result<(KeyPair, Vec<u8>), CaError> {
    let key =
        KeyPair::generate().map_err(|e| CaError::BadAnswer(format!("key generation: {e}")))?;
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| CaError::BadAnswer(e.to_string()))?;
    if let Some(id) = id {
        let uri = id
            .to_string()
            .try_into()
            .map_err(|_| CaError::BadAnswer(format!("id `{id}`")))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
    }
    let csr = params
        .serialize_request(&key)
        .map_err(|e| CaError::BadAnswer(e.to_string()))?;
    Ok((key, csr.der().to_vec()))
}

/// Builds an [`Svid`] from the CA's wire form and the key whose CSR was signed.
pub(crate) fn svid_from_proto(
    svid: Option<&warden_api::v1::X509Svid>,
    key: &KeyPair,
    expected: Option<&SpiffeId>,
) -> Result<Svid, CaError> {
    let svid = svid.ok_or_else(|| CaError::BadAnswer("no svid in the answer".into()))?;
    let chain = svid
        .cert_chain
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    let pkcs8 = PrivatePkcs8KeyDer::from(key.serialize_der());
    let out = Svid::new(chain, pkcs8, &key.subject_public_key_info())?;
    if let Some(expected) = expected
        && out.spiffe_id() != expected
    {
        return Err(SvidError::WrongId {
            got: out.spiffe_id().to_string(),
            expected: expected.to_string(),
        }
        .into());
    }
    Ok(out)
}

fn status_error(addr: &str, s: tonic::Status) -> CaError {
    match s.code() {
        tonic::Code::Unavailable
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Cancelled
        | tonic::Code::Unknown => {
            let text = format!("{s}");
            if text.contains("invalid peer certificate")
                || text.contains("UnknownIssuer")
                || text.contains("NotValidForName")
            {
                CaError::BundleMismatch(addr.to_owned())
            } else {
                CaError::Unreachable {
                    addr: addr.to_owned(),
                    reason: s.message().to_owned(),
                }
            }
        }
        tonic::Code::NotFound => CaError::NotAssigned(s.message().to_owned()),
        tonic::Code::InvalidArgument => CaError::Invalid(s.message().to_owned()),
        _ => CaError::Refused(s.message().to_owned()),
    }
}

// === impl CaClient ===

impl CaClient {
    /// Connects to `addr` (`host:port`), verifying the CA's SVID against `roots`, with the
    /// agent SVID as client certificate when given.
    pub async fn connect(
        addr: &str,
        roots: &[CertificateDer<'static>],
        trust_domain: Option<TrustDomain>,
        client_svid: Option<&Svid>,
    ) -> Result<Self, CaError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = verifier::CaServerVerifier::new(roots, trust_domain, Arc::clone(&provider));
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| CaError::BadAnswer(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut config = match client_svid {
            Some(svid) => builder
                .with_client_auth_cert(svid.chain().to_vec(), svid.key().clone_key().into())
                .map_err(|e| CaError::BadAnswer(format!("agent svid unusable for tls: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
        let target = addr.to_owned();
        let unreachable = |reason: String| CaError::Unreachable {
            addr: addr.to_owned(),
            reason,
        };
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| unreachable(e.to_string()))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(30));
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_uri: http::Uri| {
                let tls = tls.clone();
                let target = target.clone();
                async move {
                    let tcp = TcpStream::connect(&target).await?;
                    let name = ServerName::try_from("warden-ca").map_err(std::io::Error::other)?;
                    let stream = tls.connect(name, tcp).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|e| {
                let text = format!("{e:?}");
                if text.contains("UnknownIssuer")
                    || text.contains("NotValidForName")
                    || text.contains("BadEncoding")
                {
                    CaError::BundleMismatch(addr.to_owned())
                } else {
                    unreachable(source_chain(&e))
                }
            })?;
        Ok(Self {
            addr: addr.to_owned(),
            client: AgentApiClient::new(channel),
        })
    }

    fn err(&self, s: tonic::Status) -> CaError {
        status_error(&self.addr, s)
    }

    /// Attests with a join token; returns the agent SVID and the bundles.
    pub async fn attest_join_token(&self, token: &str) -> Result<(Svid, BundleSet), CaError> {
        let (key, csr) = key_and_csr(None)?;
        let resp = self
            .client
            .clone()
            .attest_join_token(AttestJoinTokenRequest {
                token: token.to_owned(),
                csr,
            })
            .await
            .map_err(|s| self.err(s))?
            .into_inner();
        attest_answer(&resp, &key)
    }

    /// Attests with x509pop: proves possession of `key_pkcs8`'s private key for `chain`.
    pub async fn attest_x509pop(
        &self,
        chain: &[CertificateDer<'static>],
        key_pkcs8: &[u8],
    ) -> Result<(Svid, BundleSet), CaError> {
        let mut client = self.client.clone();
        let challenge = client
            .x509_pop_challenge(X509PopChallengeRequest {
                cert_chain: chain.iter().map(|c| c.to_vec()).collect(),
            })
            .await
            .map_err(|s| self.err(s))?
            .into_inner();
        let rng = ring::rand::SystemRandom::new();
        let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            key_pkcs8,
            &rng,
        )
        .map_err(|_| CaError::Refused("the x509pop key is not an ecdsa p-256 pkcs#8 key".into()))?;
        let signature = signer
            .sign(&rng, &challenge.nonce)
            .map_err(|_| CaError::BadAnswer("cannot sign the x509pop nonce".into()))?;
        let (key, csr) = key_and_csr(None)?;
        let resp = client
            .attest_x509_pop(AttestX509PopRequest {
                challenge_id: challenge.challenge_id,
                signature: signature.as_ref().to_vec(),
                csr,
            })
            .await
            .map_err(|s| self.err(s))?
            .into_inner();
        attest_answer(&resp, &key)
    }

    /// Renews the agent SVID (mTLS).
    pub async fn renew(&self, id: &SpiffeId) -> Result<(Svid, BundleSet), CaError> {
        let (key, csr) = key_and_csr(None)?;
        let resp = self
            .client
            .clone()
            .renew_agent(RenewAgentRequest { csr })
            .await
            .map_err(|s| self.err(s))?
            .into_inner();
        let svid = svid_from_proto(resp.svid.as_ref(), &key, Some(id))?;
        let bundles = bundles_from_proto(&resp.bundles.unwrap_or_default())?;
        Ok((svid, bundles))
    }

    /// The entries the agent may mint for. Entries that do not parse are skipped and logged.
    pub async fn list_entries(&self) -> Result<Vec<Entry>, CaError> {
        let resp = self
            .client
            .clone()
            .list_entries(ListEntriesRequest {})
            .await
            .map_err(|s| self.err(s))?
            .into_inner();
        Ok(resp
            .entries
            .iter()
            .filter_map(|e| match Entry::try_from(e) {
                Ok(e) => Some(e),
                Err(err) => {
                    tracing::warn!(error = %err, "skipping entry from the ca");
                    None
                }
            })
            .collect())
    }

    /// Own and federated bundles.
    pub async fn fetch_bundles(&self) -> Result<BundleSet, CaError> {
        let resp = self
            .client
            .clone()
            .fetch_bundles(FetchBundlesRequest {})
            .await
            .map_err(|s| self.err(s))?
            .into_inner();
        Ok(bundles_from_proto(&resp)?)
    }

    /// Signs X.509-SVIDs for `entries` in batches of [`SIGN_BATCH`]; returns `(entry id, svid)`.
    /// The CA refuses a whole batch for one entry that is no longer the agent's (deleted or
    /// reassigned since the entries were listed, [`CaError::NotAssigned`]) or that it cannot
    /// sign ([`CaError::Invalid`]): that batch is then signed entry by entry, and those entries
    /// are left out (logged), so that one of them costs the others nothing, and the sync goes on
    /// (an entry deleted meanwhile is still withdrawn). Any other refusal (of the agent itself,
    /// say) is an error.
    pub async fn sign_x509_svids(
        &self,
        entries: &[Arc<Entry>],
    ) -> Result<Vec<(String, Svid)>, CaError> {
        let mut out = Vec::with_capacity(entries.len());
        for batch in entries.chunks(SIGN_BATCH) {
            match self.sign_batch(batch).await {
                Ok(signed) => out.extend(signed),
                Err(CaError::NotAssigned(_) | CaError::Invalid(_)) if batch.len() > 1 => {
                    for entry in batch {
                        out.extend(self.sign_or_skip(entry).await?);
                    }
                }
                Err(CaError::NotAssigned(why) | CaError::Invalid(why)) => {
                    warn!(entry = %batch.first().map_or("", |e| e.id.as_str()), reason = %why, "the ca refused to sign this entry; it is left without an svid");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Signs `entry` alone; `None` (logged) when the CA refuses it.
    async fn sign_or_skip(&self, entry: &Arc<Entry>) -> Result<Option<(String, Svid)>, CaError> {
        match self.sign_batch(std::slice::from_ref(entry)).await {
            Ok(mut signed) => Ok(signed.pop()),
            Err(CaError::NotAssigned(why) | CaError::Invalid(why)) => {
                warn!(entry = %entry.id, spiffe_id = %entry.spiffe_id, reason = %why, "the ca refused to sign this entry; it is left without an svid");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// One `SignX509Svids` call for `batch`.
    async fn sign_batch(&self, batch: &[Arc<Entry>]) -> Result<Vec<(String, Svid)>, CaError> {
        let mut keys = Vec::with_capacity(batch.len());
        let mut csrs = Vec::with_capacity(batch.len());
        for e in batch {
            let (key, csr) = key_and_csr(Some(&e.spiffe_id))?;
            keys.push(key);
            csrs.push(SvidCsr {
                entry_id: e.id.clone(),
                csr,
            });
        }
        let resp = self
            .client
            .clone()
            .sign_x509_svids(SignX509SvidsRequest { csrs })
            .await
            .map_err(|s| self.err(s))?
            .into_inner();
        if resp.svids.len() != batch.len() {
            return Err(CaError::BadAnswer(format!(
                "asked for {} svids, got {}",
                batch.len(),
                resp.svids.len()
            )));
        }
        batch
            .iter()
            .zip(&keys)
            .zip(&resp.svids)
            .map(|((e, key), svid)| {
                Ok((
                    e.id.clone(),
                    svid_from_proto(Some(svid), key, Some(&e.spiffe_id))?,
                ))
            })
            .collect()
    }

    /// Signs a JWT-SVID; returns the token and its expiry (unix seconds).
    pub async fn sign_jwt_svid(
        &self,
        entry_id: &str,
        audience: &[String],
    ) -> Result<(String, i64), CaError> {
        let resp = self
            .client
            .clone()
            .sign_jwt_svid(SignJwtSvidRequest {
                entry_id: entry_id.to_owned(),
                audience: audience.to_vec(),
            })
            .await
            .map_err(|s| self.err(s))?
            .into_inner();
        Ok((resp.token, resp.expires_at))
    }
}

fn attest_answer(resp: &AttestResponse, key: &KeyPair) -> Result<(Svid, BundleSet), CaError> {
    let svid = svid_from_proto(resp.svid.as_ref(), key, None)?;
    let bundles = bundles_from_proto(&resp.bundles.clone().unwrap_or_default())?;
    if bundles.get(&svid.spiffe_id().trust_domain()).is_none() {
        return Err(CaError::BadAnswer(
            "no bundle for the agent's trust domain".into(),
        ));
    }
    Ok((svid, bundles))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text.push_str(": ");
        text.push_str(&s.to_string());
        cur = s.source();
    }
    text
}
