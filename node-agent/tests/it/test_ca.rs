//! A small CA speaking Warden's agent API (`warden.v1.AgentApi`) over real TLS 1.3 with an
//! optional client certificate, signing real CSRs with the test CA. It lets the agent's
//! attestation, renewal, sync, rotation and outage handling be tested end to end before (and
//! independently of) the production CA; the same scenarios run against `warden ca serve` in
//! the root crate's end-to-end tests.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status};
use warden_api::v1::agent_api_server::{AgentApi, AgentApiServer};
use warden_api::v1::*;

use crate::support::{TD, TestCa, sign_jwt};

/// What the CA knows.
#[derive(Default)]
pub(crate) struct CaState {
    /// token -> (expires at, used)
    pub(crate) tokens: HashMap<String, (SystemTime, bool)>,
    pub(crate) banned: HashSet<String>,
    pub(crate) entries: Vec<Entry>,
    pub(crate) svid_ttl: Duration,
    pub(crate) agent_ttl: Duration,
    pub(crate) signed: usize,
    /// Trust anchors for x509pop node certificates.
    pub(crate) node_ca: Option<CertificateDer<'static>>,
    /// challenge id -> (leaf DER, nonce)
    pub(crate) challenges: HashMap<String, (Vec<u8>, Vec<u8>)>,
    pub(crate) renewals: usize,
    /// Entries listed but refused at signing (as if deleted in between).
    pub(crate) unsignable: HashSet<String>,
    /// Entries listed but that the CA cannot sign (InvalidArgument, as for a DNS name its
    /// signer refuses).
    pub(crate) invalid: HashSet<String>,
    /// Every signing refused as for the agent itself (PermissionDenied).
    pub(crate) refuse_signing: bool,
    /// The leaf certificate of the agent SVID last presented, and how many calls presented one.
    pub(crate) presented: Option<Vec<u8>>,
    pub(crate) calls: usize,
}

pub(crate) struct TestCaServer {
    pub(crate) addr: SocketAddr,
    pub(crate) state: Arc<Mutex<CaState>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

struct Service {
    ca: Arc<TestCa>,
    state: Arc<Mutex<CaState>>,
}

#[derive(Clone)]
struct PeerCerts(Option<Vec<CertificateDer<'static>>>);

struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerCerts;
    fn connect_info(&self) -> PeerCerts {
        PeerCerts(
            self.inner
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| c.to_vec()),
        )
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl TestCaServer {
    /// Serves on `addr` (use port 0 for a fresh one).
    pub(crate) async fn start(
        ca: Arc<TestCa>,
        state: Arc<Mutex<CaState>>,
        addr: SocketAddr,
    ) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.root().clone()).unwrap();
        let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&provider),
        )
        .allow_unauthenticated()
        .build()
        .unwrap();
        let (cert, key) = ca.server_cert(
            &format!("spiffe://{TD}/warden/ca"),
            Duration::from_secs(3600),
        );
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(vec![cert], key.into())
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = TcpListenerStream::new(listener).then(move |conn| {
            let acceptor = acceptor.clone();
            async move {
                match conn {
                    Ok(tcp) => acceptor.accept(tcp).await.map(|inner| TlsConn { inner }),
                    Err(e) => Err(e),
                }
            }
        });
        // Failed handshakes must not end the server: drop them.
        let incoming = incoming.filter(|c| c.is_ok());
        let svc = Service {
            ca,
            state: Arc::clone(&state),
        };
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(AgentApiServer::new(svc))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await;
        });
        Self {
            addr,
            state,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub(crate) async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

pub(crate) fn new_state(svid_ttl: Duration, agent_ttl: Duration) -> Arc<Mutex<CaState>> {
    Arc::new(Mutex::new(CaState {
        svid_ttl,
        agent_ttl,
        ..Default::default()
    }))
}

fn bundles(ca: &TestCa) -> Bundles {
    let b = ca.bundle();
    Bundles {
        own: Some(Bundle {
            trust_domain: TD.into(),
            x509_authorities: vec![ca.root().to_vec()],
            jwt_authorities: b
                .jwt_authorities()
                .iter()
                .map(|k| JwtKey {
                    kid: k.kid().to_owned(),
                    public_key: k.public_key().to_vec(),
                    expires_at: 0,
                })
                .collect(),
            sequence: 1,
            refresh_hint: 0,
        }),
        federated: vec![],
    }
}

fn svid(id: &str, der: Vec<u8>, ttl: Duration) -> X509Svid {
    let exp = SystemTime::now() + ttl;
    X509Svid {
        spiffe_id: id.into(),
        cert_chain: vec![der],
        expires_at: i64::try_from(exp.duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap(),
    }
}

impl Service {
    fn caller<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let certs = req
            .extensions()
            .get::<PeerCerts>()
            .and_then(|p| p.0.clone());
        let leaf = certs
            .and_then(|c| c.into_iter().next())
            .ok_or_else(|| Status::unauthenticated("agent svid required"))?;
        let id = warden_node_agent::cache::spiffe_id_of(leaf.as_ref())
            .map_err(|_| Status::unauthenticated("bad agent svid"))?;
        let mut st = self.state.lock().unwrap();
        if st.banned.contains(&id.to_string()) {
            return Err(Status::permission_denied(format!("agent `{id}` is banned")));
        }
        st.presented = Some(leaf.to_vec());
        st.calls += 1;
        Ok(id.to_string())
    }
}

#[tonic::async_trait]
impl AgentApi for Service {
    async fn attest_join_token(
        &self,
        req: Request<AttestJoinTokenRequest>,
    ) -> Result<Response<AttestResponse>, Status> {
        let body = req.into_inner();
        let id = format!("spiffe://{TD}/agent/join_token/{}", &body.token);
        let ttl = {
            let mut st = self.state.lock().unwrap();
            let ttl = st.agent_ttl;
            let banned = st.banned.contains(&id);
            let Some((exp, used)) = st.tokens.get_mut(&body.token) else {
                return Err(Status::permission_denied("join token is unknown"));
            };
            if *used {
                return Err(Status::permission_denied("join token was already used"));
            }
            if *exp < SystemTime::now() {
                return Err(Status::permission_denied("join token has expired"));
            }
            if banned {
                return Err(Status::permission_denied(format!("agent `{id}` is banned")));
            }
            *used = true;
            ttl
        };
        let der = self
            .ca
            .sign_csr(&body.csr, &id, ttl)
            .map_err(Status::invalid_argument)?;
        Ok(Response::new(AttestResponse {
            svid: Some(svid(&id, der, ttl)),
            bundles: Some(bundles(&self.ca)),
        }))
    }

    async fn x509_pop_challenge(
        &self,
        req: Request<X509PopChallengeRequest>,
    ) -> Result<Response<X509PopChallengeResponse>, Status> {
        let chain = req.into_inner().cert_chain;
        let leaf = chain
            .first()
            .cloned()
            .ok_or_else(|| Status::invalid_argument("empty chain"))?;
        let anchor = self
            .state
            .lock()
            .unwrap()
            .node_ca
            .clone()
            .ok_or_else(|| Status::failed_precondition("no node ca"))?;
        let anchors = vec![
            webpki::anchor_from_trusted_cert(&anchor)
                .unwrap()
                .to_owned(),
        ];
        let leaf_der = CertificateDer::from(leaf.clone());
        let cert = webpki::EndEntityCert::try_from(&leaf_der)
            .map_err(|_| Status::invalid_argument("bad certificate"))?;
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &[],
            rustls_pki_types::UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|_| Status::permission_denied("node certificate does not chain to a node ca"))?;
        let nonce: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
        let id = format!("{:x}", rand::random::<u64>());
        self.state
            .lock()
            .unwrap()
            .challenges
            .insert(id.clone(), (leaf, nonce.clone()));
        Ok(Response::new(X509PopChallengeResponse {
            challenge_id: id,
            nonce,
        }))
    }

    async fn attest_x509_pop(
        &self,
        req: Request<AttestX509PopRequest>,
    ) -> Result<Response<AttestResponse>, Status> {
        let body = req.into_inner();
        let (leaf, nonce, ttl) = {
            let mut st = self.state.lock().unwrap();
            let (leaf, nonce) = st
                .challenges
                .remove(&body.challenge_id)
                .ok_or_else(|| Status::permission_denied("unknown challenge"))?;
            (leaf, nonce, st.agent_ttl)
        };
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        let spki = cert.public_key().subject_public_key.data.to_vec();
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, spki)
            .verify(&nonce, &body.signature)
            .map_err(|_| Status::permission_denied("x509pop signature does not verify"))?;
        let fp = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &leaf);
        let id = format!("spiffe://{TD}/agent/x509pop/{}", hex::encode(fp.as_ref()));
        let der = self
            .ca
            .sign_csr(&body.csr, &id, ttl)
            .map_err(Status::invalid_argument)?;
        Ok(Response::new(AttestResponse {
            svid: Some(svid(&id, der, ttl)),
            bundles: Some(bundles(&self.ca)),
        }))
    }

    async fn renew_agent(
        &self,
        req: Request<RenewAgentRequest>,
    ) -> Result<Response<AttestResponse>, Status> {
        let id = self.caller(&req)?;
        let ttl = {
            let mut st = self.state.lock().unwrap();
            st.renewals += 1;
            st.agent_ttl
        };
        let der = self
            .ca
            .sign_csr(&req.get_ref().csr, &id, ttl)
            .map_err(Status::invalid_argument)?;
        Ok(Response::new(AttestResponse {
            svid: Some(svid(&id, der, ttl)),
            bundles: Some(bundles(&self.ca)),
        }))
    }

    async fn list_entries(
        &self,
        req: Request<ListEntriesRequest>,
    ) -> Result<Response<ListEntriesResponse>, Status> {
        self.caller(&req)?;
        Ok(Response::new(ListEntriesResponse {
            entries: self.state.lock().unwrap().entries.clone(),
        }))
    }

    async fn sign_x509_svids(
        &self,
        req: Request<SignX509SvidsRequest>,
    ) -> Result<Response<SignX509SvidsResponse>, Status> {
        self.caller(&req)?;
        let (entries, ttl) = {
            let st = self.state.lock().unwrap();
            (st.entries.clone(), st.svid_ttl)
        };
        let mut out = Vec::new();
        let (unsignable, invalid, refuse) = {
            let st = self.state.lock().unwrap();
            (st.unsignable.clone(), st.invalid.clone(), st.refuse_signing)
        };
        if refuse {
            return Err(Status::permission_denied("this agent may sign nothing"));
        }
        for csr in &req.get_ref().csrs {
            let e = entries
                .iter()
                .find(|e| e.id == csr.entry_id && !unsignable.contains(&e.id))
                .ok_or_else(|| {
                    Status::not_found(format!("entry `{}` is not yours", csr.entry_id))
                })?;
            if invalid.contains(&e.id) {
                return Err(Status::invalid_argument(format!(
                    "entry `{}`: invalid dns name `-bad-`",
                    e.id
                )));
            }
            let der = self
                .ca
                .sign_csr(&csr.csr, &e.spiffe_id, ttl)
                .map_err(Status::invalid_argument)?;
            out.push(svid(&e.spiffe_id, der, ttl));
        }
        self.state.lock().unwrap().signed += out.len();
        Ok(Response::new(SignX509SvidsResponse { svids: out }))
    }

    async fn sign_jwt_svid(
        &self,
        req: Request<SignJwtSvidRequest>,
    ) -> Result<Response<SignJwtSvidResponse>, Status> {
        self.caller(&req)?;
        let body = req.into_inner();
        let entry = self
            .state
            .lock()
            .unwrap()
            .entries
            .iter()
            .find(|e| e.id == body.entry_id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("entry `{}` is not yours", body.entry_id)))?;
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 300;
        let header = serde_json::json!({"alg": "ES256", "kid": self.ca.kid, "typ": "JWT"});
        let claims = serde_json::json!({"sub": entry.spiffe_id, "aud": body.audience, "exp": exp});
        let token = sign_jwt(&self.ca.jwt_signer(), &header, &claims);
        Ok(Response::new(SignJwtSvidResponse {
            spiffe_id: entry.spiffe_id,
            token,
            expires_at: i64::try_from(exp).unwrap(),
        }))
    }

    async fn fetch_bundles(
        &self,
        req: Request<FetchBundlesRequest>,
    ) -> Result<Response<Bundles>, Status> {
        self.caller(&req)?;
        Ok(Response::new(bundles(&self.ca)))
    }
}

pub(crate) fn entry_proto(id: &str, path: &str, selector: &str) -> Entry {
    Entry {
        id: id.into(),
        spiffe_id: format!("spiffe://{TD}/{path}"),
        parent_id: format!("spiffe://{TD}/agent/test"),
        selectors: vec![selector.into()],
        created_at: 1,
        revision: 1,
        ..Default::default()
    }
}
