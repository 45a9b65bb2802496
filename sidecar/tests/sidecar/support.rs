//! Test fixtures with real sockets: a Workload API server on a temp Unix socket (the generated
//! tonic service, pushing SVIDs from a watch channel), an HTTP app that counts what it sees, a
//! gRPC app (the Workload API service again, as an ordinary gRPC service), policy directories,
//! mTLS clients, and a sidecar started in-process.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpStream, UnixListener};
use tokio::sync::watch;
use tokio_stream::wrappers::{UnixListenerStream, WatchStream};
use tokio_stream::{Stream, StreamExt};
use warden_api::workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use warden_api::workload::*;
use warden_identity::test_util::TestCa;
use warden_identity::tls::{Authorize, SvidCertResolver};
use warden_identity::{BundleSet, SpiffeId, X509Svid};
use warden_sidecar::{Config, Overrides, Sidecar};

#[path = "app.rs"]
mod app;
pub(crate) use app::App;

pub(crate) const TD: &str = "example.org";
pub(crate) const SIDECAR_ID: &str = "spiffe://example.org/api";
pub(crate) const WEB_ID: &str = "spiffe://example.org/web";
pub(crate) const OTHER_ID: &str = "spiffe://example.org/other";
/// Bounded waits: nothing in these tests should take longer.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// The test policy set: `web` may GET and call gRPC (except `ValidateJWTSVID`) and connect;
/// partner.org may GET; plaintext callers may GET `/public…`; nothing else.
pub(crate) const POLICIES: &str = r#"
@id("web-reads-api")
permit (
  principal == Mesh::Workload::"spiffe://example.org/web",
  action == Mesh::Action::"GET",
  resource == Mesh::Service::"api"
);

@id("web-calls-grpc")
permit (
  principal == Mesh::Workload::"spiffe://example.org/web",
  action == Mesh::Action::"grpc",
  resource == Mesh::Service::"api"
)
when { context.grpc.method != "ValidateJWTSVID" };

@id("web-connects")
permit (
  principal == Mesh::Workload::"spiffe://example.org/web",
  action == Mesh::Action::"connect",
  resource == Mesh::Service::"api"
);

@id("partner-reads")
permit (
  principal in Mesh::TrustDomain::"partner.org",
  action == Mesh::Action::"GET",
  resource == Mesh::Service::"api"
);

@id("anonymous-reads-public")
permit (
  principal is Mesh::Unauthenticated,
  action == Mesh::Action::"GET",
  resource == Mesh::Service::"api"
)
when { context.path like "/public*" };
"#;

pub(crate) fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

// === Workload API ===

/// A Workload API server on a Unix socket whose `FetchX509SVID` stream sends the current
/// value of a watch channel, and a new message on every change.
pub(crate) struct WorkloadApi {
    pub(crate) socket: PathBuf,
    tx: watch::Sender<State>,
}

/// The generation (bumped by [`WorkloadApi::break_streams`]) and the current message.
type State = (u64, Option<X509svidResponse>);

#[derive(Clone)]
struct WorkloadService {
    rx: watch::Receiver<State>,
    /// Answer every call with this code instead (e.g. InvalidArgument).
    refuse: Option<tonic::Code>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadService {
    type FetchX509SVIDStream = BoxStream<X509svidResponse>;
    type FetchX509BundlesStream = BoxStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = BoxStream<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: tonic::Request<X509svidRequest>,
    ) -> Result<tonic::Response<Self::FetchX509SVIDStream>, tonic::Status> {
        if let Some(code) = self.refuse {
            return Err(tonic::Status::new(code, "refused by the test"));
        }
        if request
            .metadata()
            .get("workload.spiffe.io")
            .map(|v| v.as_bytes())
            != Some(b"true")
        {
            return Err(tonic::Status::invalid_argument(
                "missing workload.spiffe.io",
            ));
        }
        // A stream lives for one generation: when it changes, the stream fails (UNAVAILABLE)
        // and ends, as when an agent restarts.
        let generation = self.rx.borrow().0;
        let stream = WatchStream::new(self.rx.clone())
            .map(move |(g, msg)| match g == generation {
                true => msg.map(Ok),
                false => Some(Err(tonic::Status::unavailable("agent restarting"))),
            })
            .take_while(|item| !matches!(item, Some(Err(_))))
            .filter_map(|m| m);
        Ok(tonic::Response::new(Box::pin(stream)))
    }

    async fn fetch_x509_bundles(
        &self,
        _: tonic::Request<X509BundlesRequest>,
    ) -> Result<tonic::Response<Self::FetchX509BundlesStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }

    async fn fetch_jwtsvid(
        &self,
        _: tonic::Request<JwtsvidRequest>,
    ) -> Result<tonic::Response<JwtsvidResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }

    async fn fetch_jwt_bundles(
        &self,
        _: tonic::Request<JwtBundlesRequest>,
    ) -> Result<tonic::Response<Self::FetchJWTBundlesStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }

    async fn validate_jwtsvid(
        &self,
        _: tonic::Request<ValidateJwtsvidRequest>,
    ) -> Result<tonic::Response<ValidateJwtsvidResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }
}

impl WorkloadApi {
    /// Serves on `dir/agent.sock`; sends nothing until [`WorkloadApi::set`].
    pub(crate) async fn start(dir: &Path) -> Self {
        Self::start_with(dir, None).await
    }

    /// Serves on `dir/agent.sock`, answering every call with `refuse` when it is set.
    pub(crate) async fn start_with(dir: &Path, refuse: Option<tonic::Code>) -> Self {
        let socket = dir.join("agent.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let (tx, rx) = watch::channel((0, None));
        let service = SpiffeWorkloadApiServer::new(WorkloadService { rx, refuse });
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await;
        });
        Self { socket, tx }
    }

    /// Publishes `svid` with `ca`'s bundle and the given federated bundles.
    pub(crate) fn set(&self, svid: &X509Svid, ca: &TestCa, federated: &[&TestCa]) {
        self.set_with_bundle(svid, &ca.bundle(), federated);
    }

    /// [`Self::set`] with the SVID's trust domain bundle given whole (several roots, say).
    pub(crate) fn set_with_bundle(
        &self,
        svid: &X509Svid,
        bundle: &warden_identity::Bundle,
        federated: &[&TestCa],
    ) {
        let mut fed = HashMap::new();
        for f in federated {
            fed.insert(
                format!("spiffe://{}", f.trust_domain()),
                f.bundle().x509_authorities_der(),
            );
        }
        let msg = X509svidResponse {
            svids: vec![X509svid {
                spiffe_id: svid.spiffe_id().to_string(),
                x509_svid: svid.cert_chain_der(),
                x509_svid_key: svid.private_key().secret_pkcs8_der().to_vec(),
                bundle: bundle.x509_authorities_der(),
                hint: String::new(),
            }],
            crl: vec![],
            federated_bundles: fed,
        };
        self.tx.send_modify(|(_, m)| *m = Some(msg));
    }

    /// Ends every open stream with UNAVAILABLE (clients must reconnect).
    pub(crate) fn break_streams(&self) {
        self.tx.send_modify(|(g, _)| *g += 1);
    }
}

// === policies ===

/// A policy directory with the shipped schema and `policies`.
pub(crate) fn policy_dir(root: &Path, policies: &str) -> PathBuf {
    let dir = root.join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/mesh.cedarschema");
    std::fs::copy(schema, dir.join("mesh.cedarschema")).unwrap();
    std::fs::write(dir.join("test.cedar"), policies).unwrap();
    dir
}

// === the sidecar ===

/// A CA, a Workload API with the sidecar's SVID, an app, a policy dir and a started sidecar.
pub(crate) struct Fixture {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) ca: TestCa,
    pub(crate) api: WorkloadApi,
    pub(crate) app: App,
    /// Running until [`Fixture::shutdown`] (or the end of the test).
    sidecar: Option<Sidecar>,
    pub(crate) inbound: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) policies: PathBuf,
    pub(crate) log: PathBuf,
}

/// Extra TOML appended to the generated config (`[inbound]` keys go in `inbound_extra`).
#[derive(Default)]
pub(crate) struct Options {
    pub(crate) inbound_extra: &'static str,
    pub(crate) top_extra: &'static str,
    pub(crate) policy_extra: &'static str,
    pub(crate) limits: &'static str,
    pub(crate) federated: Vec<TestCa>,
    pub(crate) app_addr: Option<SocketAddr>,
    /// The inbound's `listen` [default: `127.0.0.1:0`].
    pub(crate) listen: Option<&'static str>,
}

impl Fixture {
    pub(crate) async fn start(options: Options) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(TD);
        let api = WorkloadApi::start(dir.path()).await;
        let svid = ca.issue_svid(&id(SIDECAR_ID), Duration::from_secs(3600));
        let federated: Vec<&TestCa> = options.federated.iter().collect();
        api.set(&svid, &ca, &federated);
        let app = App::start().await;
        let policies = policy_dir(dir.path(), POLICIES);
        let log = dir.path().join("decisions.log");
        let text = format!(
            r#"
workload_api_socket = "unix://{socket}"
{top}
[inbound]
listen = "{listen}"
app = "{app}"
service = "api"
{inbound_extra}

[policy]
dir = "{policies}"
{policy_extra}

[admin]
listen = "127.0.0.1:0"

[decision_log]
path = "{log}"

[limits]
{limits}
"#,
            socket = api.socket.display(),
            top = options.top_extra,
            app = options.app_addr.unwrap_or(app.addr),
            inbound_extra = options.inbound_extra,
            policies = policies.display(),
            policy_extra = options.policy_extra,
            limits = options.limits,
            listen = options.listen.unwrap_or("127.0.0.1:0"),
            log = log.display(),
        );
        let config = Config::from_toml(
            &text,
            "test.toml",
            &Overrides::default(),
            &HashMap::<String, String>::new(),
        )
        .unwrap();
        let sidecar = Sidecar::start(config).await.unwrap();
        let admin = sidecar.admin_addr();
        let bound = tokio::time::timeout(WAIT, sidecar.bound())
            .await
            .unwrap()
            .unwrap();
        Self {
            dir,
            ca,
            api,
            app,
            sidecar: Some(sidecar),
            inbound: bound.inbound.unwrap(),
            admin,
            policies,
            log,
        }
    }

    /// Stops the sidecar and waits until it has.
    pub(crate) async fn shutdown(&mut self) {
        if let Some(s) = self.sidecar.take() {
            s.shutdown().await.unwrap();
        }
    }

    /// A fixture with these `[limits]` lines.
    pub(crate) async fn start_with_limits(limits: &'static str) -> Self {
        Self::start(Options {
            limits,
            ..Options::default()
        })
        .await
    }

    /// A fixture whose app address has nothing listening (a port reserved, then freed).
    pub(crate) async fn start_with_app_down() -> Self {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = l.local_addr().unwrap();
        drop(l);
        Self::start(Options {
            app_addr: Some(dead),
            ..Options::default()
        })
        .await
    }

    /// A client identity issued by the fixture's CA.
    pub(crate) fn client(&self, spiffe_id: &str) -> Client {
        Client::new(
            Some(self.ca.issue_svid(&id(spiffe_id), Duration::from_secs(600))),
            TestCa::bundle_set(&[&self.ca]),
        )
    }

    /// `/metrics` text.
    pub(crate) async fn metrics(&self) -> String {
        admin_get(self.admin, "/metrics").await.1
    }

    /// The decision-log records written so far (polls until at least `n`).
    pub(crate) async fn decisions(&self, n: usize) -> Vec<warden_policy::DecisionRecord> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let records: Vec<warden_policy::DecisionRecord> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            if records.len() >= n || tokio::time::Instant::now() > deadline {
                return records;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Exactly `n` decision-log records: polls until there are `n`, then fails the test if more
    /// arrive within 10 of the writer's 10 ms batches (every line of a request the test has seen
    /// answered was pushed before its answer went out).
    pub(crate) async fn decisions_exactly(&self, n: usize) -> Vec<warden_policy::DecisionRecord> {
        let first = self.decisions(n).await;
        assert!(
            first.len() >= n,
            "{} decision lines, not {n}: {first:?}",
            first.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let records = self.decisions(n).await;
        assert_eq!(records.len(), n, "{records:?}");
        records
    }
}

/// A plain HTTP/1.0 GET against the admin listener: (status, body).
pub(crate) async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Polls `metrics` until `needle` appears, and returns them; fails the test if it does not
/// within [`WAIT`].
pub(crate) async fn wait_for_metric(f: &Fixture, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = f.metrics().await;
        if text.contains(needle) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `{needle}` in /metrics within {WAIT:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// === clients ===

/// An mTLS client presenting `svid` (or nothing) and trusting `bundles`.
pub(crate) struct Client {
    pub(crate) config: Arc<rustls::ClientConfig>,
}

impl Client {
    pub(crate) fn new(svid: Option<X509Svid>, bundles: BundleSet) -> Self {
        let resolver = Arc::new(match &svid {
            Some(s) => SvidCertResolver::from_svid(s).unwrap(),
            None => SvidCertResolver::new(),
        });
        let mut config = warden_identity::tls::client_config(
            resolver,
            Arc::new(Arc::new(bundles)),
            Authorize::Exactly(id(SIDECAR_ID)),
        )
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self {
            config: Arc::new(config),
        }
    }

    /// The same client offering only ALPN `http/1.1`.
    pub(crate) fn http1(&self) -> Self {
        let mut config = (*self.config).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            config: Arc::new(config),
        }
    }

    /// A client whose chain and key are given raw (for bad certificates).
    pub(crate) fn raw(
        chain: Vec<rustls_pki_types::CertificateDer<'static>>,
        key: rustls_pki_types::PrivatePkcs8KeyDer<'static>,
        bundles: BundleSet,
    ) -> Self {
        let verifier = Arc::new(warden_identity::SpiffeServerCertVerifier::new(
            Arc::new(Arc::new(bundles)),
            Authorize::AnyTrusted,
        ));
        let mut config =
            rustls::ClientConfig::builder_with_provider(warden_identity::tls::crypto_provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_client_auth_cert(chain, rustls_pki_types::PrivateKeyDer::Pkcs8(key))
                .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            config: Arc::new(config),
        }
    }

    /// Connects and completes the handshake; the server's verdict on our certificate arrives
    /// with the first read in TLS 1.3, so callers should send a request to see a refusal.
    pub(crate) async fn connect(
        &self,
        addr: SocketAddr,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        // As curl and gRPC clients do: no Nagle delay between a request and the next.
        tcp.set_nodelay(true)?;
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(Arc::clone(&self.config))
            .connect(name, tcp)
            .await
    }

    /// A new HTTP/1.1 connection to `addr` (its connection task spawned), ready for requests.
    pub(crate) async fn http1_sender(
        &self,
        addr: SocketAddr,
    ) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
        let tls = self.connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender
    }

    /// One request over a new connection; HTTP/2 when `h2` (ALPN), else HTTP/1.1.
    pub(crate) async fn request(
        &self,
        addr: SocketAddr,
        req: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, http::HeaderMap, String), String> {
        let tls = self.connect(addr).await.map_err(|e| e.to_string())?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        send(TokioIo::new(tls), h2, req).await
    }
}

/// Sends one request over `io`.
pub(crate) async fn send<I>(
    io: I,
    h2: bool,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, http::HeaderMap, String), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let resp = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        sender.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        sender.send_request(req).await.map_err(|e| e.to_string())?
    };
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, headers, String::from_utf8_lossy(&body).to_string()))
}

pub(crate) fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "api.local")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

pub(crate) fn get_h2(path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("https://api.local{path}"))
        .version(http::Version::HTTP_2)
        .body(Full::new(Bytes::new()))
        .unwrap()
}
