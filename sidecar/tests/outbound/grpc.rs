//! gRPC from a local tonic client (h2c) through an outbound route: unary, server streaming,
//! error statuses carried in trailers, and an unreachable upstream.

use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use warden_api::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use warden_api::workload::{JwtsvidRequest, X509svidRequest};

use crate::support::*;

async fn grpc_client(proxy: &Proxy) -> SpiffeWorkloadApiClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{}", proxy.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    SpiffeWorkloadApiClient::new(channel)
}

#[tokio::test]
async fn grpc_unary_call_passes_with_the_caller_spiffe_id() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let proxy = Proxy::http(&pki, &upstream).await;
    let mut client = grpc_client(&proxy).await;

    for audience in ["a", "b", "c"] {
        let response = client
            .fetch_jwtsvid(JwtsvidRequest {
                audience: vec![audience.to_owned()],
                spiffe_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.svids.len(), 1);
        assert_eq!(response.svids[0].spiffe_id, CLIENT_ID);
        assert_eq!(response.svids[0].hint, audience);
    }
    assert_eq!(upstream.requests(), 3);
    assert_eq!(upstream.connections(), 1);
    assert_eq!(proxy.hooks.statuses(), [Some(200); 3]);
    proxy.stop().await;
}

#[tokio::test]
async fn grpc_error_status_in_trailers_reaches_the_client() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let proxy = Proxy::http(&pki, &upstream).await;
    let mut client = grpc_client(&proxy).await;

    let status = client
        .fetch_jwtsvid(JwtsvidRequest {
            audience: vec!["deny".to_owned()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "denied by the test app");
    proxy.stop().await;
}

#[tokio::test]
async fn grpc_server_streaming_passes_every_message_and_the_final_status() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let proxy = Proxy::http(&pki, &upstream).await;
    let mut client = grpc_client(&proxy).await;

    let mut stream = client
        .fetch_x509svid(X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut hints = Vec::new();
    while let Some(message) = tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
    {
        assert_eq!(message.svids[0].spiffe_id, CLIENT_ID);
        hints.push(message.svids[0].hint.clone());
    }
    assert_eq!(hints, ["0", "1", "2"]);
    // The stream ended with the OK status the app put in the trailers.
    let trailers = stream.trailers().await.unwrap().unwrap();
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    proxy.stop().await;
}

#[tokio::test]
async fn grpc_client_gets_unavailable_naming_the_unreachable_upstream() {
    let pki = Pki::new();
    let port = closed_port().await;
    let proxy = Proxy::start(ProxyOptions {
        upstream: port.to_string(),
        ..ProxyOptions::http(&pki, &Upstream::http(&pki).await)
    })
    .await;
    let mut client = grpc_client(&proxy).await;

    let status = client
        .fetch_jwtsvid(JwtsvidRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status
            .message()
            .starts_with(&format!("upstream `{port}` is unreachable: ")),
        "{}",
        status.message()
    );
    assert_eq!(proxy.hooks.statuses(), [Some(502)]);
    proxy.stop().await;
}
