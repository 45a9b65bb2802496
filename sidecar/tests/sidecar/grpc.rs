//! gRPC through the inbound listener: a tonic client over mTLS, a tonic app behind the
//! sidecar (the Workload API service used as an ordinary gRPC service), h2 end to end.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpListener;
use tokio_stream::Stream;
use tokio_stream::wrappers::TcpListenerStream;
use warden_api::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use warden_api::workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use warden_api::workload::*;

use crate::support::*;

#[derive(Clone, Default)]
struct EchoApp {
    calls: Arc<AtomicUsize>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl SpiffeWorkloadApi for EchoApp {
    type FetchX509SVIDStream = BoxStream<X509svidResponse>;
    type FetchX509BundlesStream = BoxStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = BoxStream<JwtBundlesResponse>;

    /// Server streaming: three messages, then OK in the trailers.
    async fn fetch_x509svid(
        &self,
        _: tonic::Request<X509svidRequest>,
    ) -> Result<tonic::Response<Self::FetchX509SVIDStream>, tonic::Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let items = (0..3).map(|i| {
            Ok(X509svidResponse {
                svids: vec![X509svid {
                    hint: format!("message {i}"),
                    ..X509svid::default()
                }],
                ..X509svidResponse::default()
            })
        });
        Ok(tonic::Response::new(Box::pin(tokio_stream::iter(items))))
    }

    /// An error status that must arrive in the trailers.
    async fn fetch_x509_bundles(
        &self,
        _: tonic::Request<X509BundlesRequest>,
    ) -> Result<tonic::Response<Self::FetchX509BundlesStream>, tonic::Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(tonic::Status::not_found("no bundles here"))
    }

    /// Unary: echoes the audience and the XFCC the sidecar set.
    async fn fetch_jwtsvid(
        &self,
        request: tonic::Request<JwtsvidRequest>,
    ) -> Result<tonic::Response<JwtsvidResponse>, tonic::Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let xfcc = request
            .metadata()
            .get("x-forwarded-client-cert")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok(tonic::Response::new(JwtsvidResponse {
            svids: vec![Jwtsvid {
                spiffe_id: xfcc,
                svid: request.into_inner().audience.join(","),
                hint: String::new(),
            }],
        }))
    }

    async fn fetch_jwt_bundles(
        &self,
        _: tonic::Request<JwtBundlesRequest>,
    ) -> Result<tonic::Response<Self::FetchJWTBundlesStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("no"))
    }

    /// Denied by the test policy: must never be called.
    async fn validate_jwtsvid(
        &self,
        _: tonic::Request<ValidateJwtsvidRequest>,
    ) -> Result<tonic::Response<ValidateJwtsvidResponse>, tonic::Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(tonic::Response::new(ValidateJwtsvidResponse::default()))
    }
}

async fn grpc_fixture() -> (Fixture, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = EchoApp::default();
    let calls = Arc::clone(&app.calls);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(app))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
    });
    let f = Fixture::start(Options {
        app_addr: Some(addr),
        ..Options::default()
    })
    .await;
    (f, calls)
}

async fn client(f: &Fixture, who: &str) -> SpiffeWorkloadApiClient<tonic::transport::Channel> {
    let c = f.client(who);
    let channel = warden_api::transport::connect_tls(&f.inbound.to_string(), c.config)
        .await
        .unwrap();
    SpiffeWorkloadApiClient::new(channel)
}

#[tokio::test]
async fn grpc_unary_call_passes_with_xfcc() {
    let (f, calls) = grpc_fixture().await;
    let mut c = client(&f, WEB_ID).await;
    let resp = c
        .fetch_jwtsvid(JwtsvidRequest {
            audience: vec!["a".into(), "b".into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.svids[0].svid, "a,b");
    assert!(
        resp.svids[0].spiffe_id.ends_with(&format!("URI={WEB_ID}")),
        "{:?}",
        resp.svids[0]
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let records = f.decisions(1).await;
    assert_eq!(records[0].action, "grpc");
    assert_eq!(records[0].path, "/SpiffeWorkloadAPI/FetchJWTSVID");
}

#[tokio::test]
async fn grpc_server_streaming_passes_and_trailers_arrive() {
    let (f, _) = grpc_fixture().await;
    let mut c = client(&f, WEB_ID).await;
    let mut stream = c
        .fetch_x509svid(X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut hints = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        hints.push(msg.svids[0].hint.clone());
    }
    assert_eq!(hints, ["message 0", "message 1", "message 2"]);
    // An error status travels in the trailers (or trailers-only) through the sidecar.
    let err = c
        .fetch_x509_bundles(X509BundlesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(err.message(), "no bundles here");
}

#[tokio::test]
async fn grpc_denied_call_gets_permission_denied_and_never_reaches_app() {
    let (f, calls) = grpc_fixture().await;
    let mut c = client(&f, WEB_ID).await;
    let err = c
        .validate_jwtsvid(ValidateJwtsvidRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let records = f.decisions(1).await;
    assert!(
        err.message().contains(&records[0].decision_id),
        "{}",
        err.message()
    );
    let mut other = client(&f, OTHER_ID).await;
    let err = other
        .fetch_jwtsvid(JwtsvidRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}
