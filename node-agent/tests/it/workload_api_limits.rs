//! What one workload can ask of the Workload API is bounded: streams per connection, and the
//! audiences of a JWT-SVID.

use std::time::Duration;

use tonic::Code;
use warden_api::WORKLOAD_API_HEADER;
use warden_api::workload::JwtsvidRequest;
use warden_api::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

use crate::support::{TD, TestAgent, TestCa, entry, uid_selector};

const WAIT: Duration = Duration::from_secs(10);

/// An agent serving one entry for this test's uid.
async fn serving_one_entry(ca: &TestCa) -> TestAgent {
    let id = format!("spiffe://{TD}/web");
    TestAgent::start(
        ca,
        vec![entry("e", &id, &uid_selector(), 1, "")],
        Duration::from_secs(3600),
        vec![],
    )
    .await
}

/// A connection may hold at most `MAX_STREAMS_PER_CONNECTION` streams at once: the server's
/// HTTP/2 SETTINGS say so, and hyper refuses a stream beyond them. Each open stream holds a
/// task in the agent, so a local process cannot open them without bound on one connection.
#[tokio::test]
async fn a_connection_may_hold_a_bounded_number_of_streams() {
    let ca = TestCa::new(TD);
    let agent = serving_one_entry(&ca).await;
    let io = tokio::net::UnixStream::connect(&agent.socket)
        .await
        .unwrap();
    let (mut send, connection) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(connection);
    // One exchange: the server's SETTINGS come before its answer.
    let request = http::Request::post("http://localhost/no.such/Method")
        .body(())
        .unwrap();
    send = send.ready().await.unwrap();
    let (response, _) = send.send_request(request, true).unwrap();
    tokio::time::timeout(WAIT, response).await.unwrap().unwrap();
    assert_eq!(
        send.current_max_send_streams(),
        warden_node_agent::workload_api::MAX_STREAMS_PER_CONNECTION as usize
    );
}

/// A JWT-SVID carries at most `MAX_AUDIENCES` audiences of at most `MAX_AUDIENCE_LEN` bytes:
/// more is InvalidArgument, before anything is minted (what a workload asks for reaches the
/// CA's audit log).
#[tokio::test]
async fn jwt_svid_audiences_are_bounded_w9() {
    let ca = TestCa::new(TD);
    let agent = serving_one_entry(&ca).await;
    let mut raw = SpiffeWorkloadApiClient::new(agent.raw_channel().await);
    let many = (0..=warden_identity::MAX_AUDIENCES)
        .map(|i| format!("aud-{i}"))
        .collect();
    let long = vec!["a".repeat(warden_identity::MAX_AUDIENCE_LEN + 1)];
    for audience in [many, long] {
        let mut req = tonic::Request::new(JwtsvidRequest {
            audience,
            spiffe_id: String::new(),
        });
        req.metadata_mut()
            .insert(WORKLOAD_API_HEADER, "true".parse().unwrap());
        let err = raw.fetch_jwtsvid(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        assert!(err.message().contains("at most"), "{}", err.message());
    }
    agent.stop().await;
}

/// A client that opens a stream and never reads it (its HTTP/2 window is 0) does not hold the
/// agent up when it stops: after a grace period the open connections are closed.
#[tokio::test]
async fn a_client_that_never_reads_does_not_hold_up_the_shutdown() {
    let ca = TestCa::new(TD);
    let agent = serving_one_entry(&ca).await;
    let channel = tonic::transport::Endpoint::from_shared(agent.endpoint())
        .unwrap()
        .initial_stream_window_size(0)
        .connect()
        .await
        .unwrap();
    let mut raw = SpiffeWorkloadApiClient::new(channel);
    let mut req = tonic::Request::new(warden_api::workload::X509svidRequest {});
    req.metadata_mut()
        .insert(WORKLOAD_API_HEADER, "true".parse().unwrap());
    // The response head arrives (HEADERS are not flow-controlled); its message cannot.
    let _unread = tokio::time::timeout(WAIT, raw.fetch_x509svid(req))
        .await
        .unwrap()
        .unwrap();
    // `stop` fails if the agent has not stopped within 10 s.
    agent.stop().await;
}

/// Open streams are bounded per caller uid (and in all): one more is ResourceExhausted, and a
/// stream the caller drops gives its place back. The test agents allow six per uid.
#[tokio::test]
async fn open_streams_are_bounded_per_uid() {
    let ca = TestCa::new(TD);
    let agent = serving_one_entry(&ca).await;
    let per_uid = crate::support::STREAM_LIMITS.1;
    let open = || async {
        // A connection of its own each time: the bound is the uid's, not a connection's.
        let mut raw = SpiffeWorkloadApiClient::new(agent.raw_channel().await);
        let mut req = tonic::Request::new(warden_api::workload::X509BundlesRequest {});
        req.metadata_mut()
            .insert(WORKLOAD_API_HEADER, "true".parse().unwrap());
        raw.fetch_x509_bundles(req)
            .await
            .map(tonic::Response::into_inner)
    };
    let mut streams = Vec::new();
    for _ in 0..per_uid {
        let mut stream = open().await.unwrap();
        stream.message().await.unwrap().unwrap();
        streams.push(stream);
    }
    let err = open().await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(err.message().contains("uid"), "{}", err.message());
    // A dropped stream's place comes back once its task sees it gone.
    drop(streams.pop());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match open().await {
            Ok(mut stream) => {
                stream.message().await.unwrap().unwrap();
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
                assert!(tokio::time::Instant::now() < deadline, "no place came back");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    agent.stop().await;
}
