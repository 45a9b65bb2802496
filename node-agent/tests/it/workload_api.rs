//! Workload API conformance (rules W-1..W-15 of SPIFFE-RULES.md), checked with the `spiffe`
//! crate as the client and rustls-webpki as an independent chain verifier.

use std::time::{Duration, SystemTime};

use rustls_pki_types::{CertificateDer, UnixTime};
use tonic::Code;
use warden_api::WORKLOAD_API_HEADER;
use warden_api::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use warden_api::workload::{JwtsvidRequest, ValidateJwtsvidRequest, X509svidRequest};

use crate::support::{TD, TestAgent, TestCa, entry, uid_selector};

pub(crate) const HOUR: Duration = Duration::from_secs(3600);

fn webpki_verify(leaf: &[u8], roots: &[CertificateDer<'_>]) {
    let anchors: Vec<_> = roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).unwrap().to_owned())
        .collect();
    let leaf = CertificateDer::from(leaf.to_vec());
    let cert = webpki::EndEntityCert::try_from(&leaf).unwrap();
    cert.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &[],
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .unwrap();
}

pub(crate) fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert(WORKLOAD_API_HEADER, "true".parse().unwrap());
    req
}

#[tokio::test]
async fn spiffe_client_fetches_x509_svid_over_unix_socket_without_tls_w1_w3_w7() {
    let ca = TestCa::new(TD);
    let id = format!("spiffe://{TD}/web");
    let agent = TestAgent::start(
        &ca,
        vec![entry("e1", &id, &uid_selector(), 1, "")],
        HOUR,
        vec![],
    )
    .await;
    let client = agent.client().await;
    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), id);
    // Independent chain check against the bundle the agent served.
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let td = spiffe::TrustDomain::new(TD).unwrap();
    let bundle = bundles.get(&td).unwrap();
    let roots: Vec<CertificateDer<'_>> = bundle
        .authorities()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    assert_eq!(roots, vec![ca.root().clone()]);
    webpki_verify(svid.leaf().as_bytes(), &roots);
    agent.stop().await;
}

#[tokio::test]
async fn every_matching_entry_is_served_default_first_with_unique_hints_w7() {
    let ca = TestCa::new(TD);
    let sel = uid_selector();
    let entries = vec![
        entry("b", &format!("spiffe://{TD}/second"), &sel, 20, "db"),
        entry("a", &format!("spiffe://{TD}/first"), &sel, 10, "web"),
        entry("c", &format!("spiffe://{TD}/dup-hint"), &sel, 30, "db"),
        entry(
            "d",
            &format!("spiffe://{TD}/not-mine"),
            "unix:uid:4294967000",
            0,
            "",
        ),
    ];
    let agent = TestAgent::start(&ca, entries, HOUR, vec![]).await;
    let client = agent.client().await;
    let all = client.fetch_all_x509_svids().await.unwrap();
    let ids: Vec<String> = all.iter().map(|s| s.spiffe_id().to_string()).collect();
    assert_eq!(
        ids,
        vec![
            format!("spiffe://{TD}/first"),
            format!("spiffe://{TD}/second")
        ]
    );
    assert_eq!(all.first().unwrap().hint(), Some("web"));
    let default = client.fetch_x509_svid().await.unwrap();
    assert_eq!(
        default.spiffe_id().to_string(),
        format!("spiffe://{TD}/first")
    );

    // Raw view: every mandatory field is non-empty (W-7).
    let mut raw = SpiffeWorkloadApiClient::new(agent.raw_channel().await);
    let mut stream = raw
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let msg = stream.message().await.unwrap().unwrap();
    assert_eq!(msg.svids.len(), 2);
    for s in &msg.svids {
        assert!(!s.spiffe_id.is_empty() && !s.x509_svid.is_empty());
        assert!(!s.x509_svid_key.is_empty() && !s.bundle.is_empty());
    }
    agent.stop().await;
}

#[tokio::test]
async fn calls_without_security_header_are_invalid_argument_w2() {
    let ca = TestCa::new(TD);
    let agent = TestAgent::start(
        &ca,
        vec![entry(
            "e",
            &format!("spiffe://{TD}/w"),
            &uid_selector(),
            1,
            "",
        )],
        HOUR,
        vec![],
    )
    .await;
    let mut raw = SpiffeWorkloadApiClient::new(agent.raw_channel().await);
    let err = raw
        .fetch_x509svid(tonic::Request::new(X509svidRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("workload.spiffe.io"),
        "{}",
        err.message()
    );
    // The value is case sensitive.
    let mut req = tonic::Request::new(JwtsvidRequest {
        audience: vec!["a".into()],
        spiffe_id: String::new(),
    });
    req.metadata_mut()
        .insert(WORKLOAD_API_HEADER, "TRUE".parse().unwrap());
    assert_eq!(
        raw.fetch_jwtsvid(req).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let req = tonic::Request::new(ValidateJwtsvidRequest {
        audience: "a".into(),
        svid: "x".into(),
    });
    assert_eq!(
        raw.validate_jwtsvid(req).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    agent.stop().await;
}

/// An entry that names the workload's program by its digest (`unix:sha256`) is served to it:
/// the digest, which the agent computes only when an entry asks for one, is computed then.
#[tokio::test]
async fn an_entry_naming_the_programs_digest_is_served_to_it() {
    use sha2::Digest as _;
    let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let digest = hex::encode(sha2::Sha256::digest(&exe));
    let ca = TestCa::new(TD);
    let id = format!("spiffe://{TD}/by-digest");
    let entries = vec![entry("d", &id, &format!("unix:sha256:{digest}"), 1, "")];
    let agent = TestAgent::start(&ca, entries, HOUR, vec![]).await;
    let svid = agent.client().await.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), id);
    agent.stop().await;
}

#[tokio::test]
async fn workload_without_matching_entry_gets_no_identity_issued_w5_w7() {
    let ca = TestCa::new(TD);
    let entries = vec![entry(
        "x",
        &format!("spiffe://{TD}/other"),
        "unix:uid:4294967000",
        1,
        "",
    )];
    let agent = TestAgent::start(&ca, entries, HOUR, vec![]).await;
    let client = agent.client().await;
    let err = client.fetch_x509_svid().await.unwrap_err();
    assert!(
        matches!(err, spiffe::WorkloadApiError::NoIdentityIssued),
        "{err:?}"
    );
    let err = client.fetch_jwt_svid(["aud"], None).await.unwrap_err();
    assert!(
        matches!(err, spiffe::WorkloadApiError::NoIdentityIssued),
        "{err:?}"
    );
    let mut raw = SpiffeWorkloadApiClient::new(agent.raw_channel().await);
    let err = raw
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::PermissionDenied, "no identity issued")
    );
    let text = agent.metrics.encode(SystemTime::now());
    assert!(
        text.contains("warden_agent_workload_attestations_total{result=\"no_identity\"} 3"),
        "{text}"
    );
    agent.stop().await;
}

#[tokio::test]
async fn agent_answers_unavailable_until_first_sync_w5() {
    let ca = TestCa::new(TD);
    let e = entry("e", &format!("spiffe://{TD}/w"), &uid_selector(), 1, "");
    let agent = TestAgent::start_with(&ca, vec![e], HOUR, vec![], ca.minter(), false).await;
    let mut raw = SpiffeWorkloadApiClient::new(agent.raw_channel().await);
    let err = raw
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    agent.stop().await;
}

#[tokio::test]
async fn x509_bundles_hold_own_and_federated_trust_domains_keyed_by_spiffe_id_w8_w12() {
    let ca = TestCa::new(TD);
    let fed = TestCa::new("partner.test");
    let unrelated = TestCa::new("unrelated.test");
    let mut e = entry("e", &format!("spiffe://{TD}/w"), &uid_selector(), 1, "");
    e.federates_with = vec![fed.td.clone()];
    let agent = TestAgent::start(&ca, vec![e], HOUR, vec![fed.bundle(), unrelated.bundle()]).await;
    let mut raw = SpiffeWorkloadApiClient::new(agent.raw_channel().await);
    let mut s = raw
        .fetch_x509_bundles(with_header(Default::default()))
        .await
        .unwrap()
        .into_inner();
    let msg = s.message().await.unwrap().unwrap();
    let mut keys: Vec<&String> = msg.bundles.keys().collect();
    keys.sort();
    assert_eq!(keys, vec!["spiffe://example.org", "spiffe://partner.test"]);
    assert_eq!(
        msg.bundles.get("spiffe://partner.test").unwrap(),
        &fed.root().to_vec()
    );
    // The X.509-SVID response carries the federated bundle too.
    let mut s = raw
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let msg = s.message().await.unwrap().unwrap();
    assert_eq!(
        msg.federated_bundles.keys().collect::<Vec<_>>(),
        vec!["spiffe://partner.test"]
    );
    // The spiffe crate parses both.
    let set = agent.client().await.fetch_x509_bundles().await.unwrap();
    assert_eq!(set.len(), 2);
    agent.stop().await;
}

async fn call_unknown_method(agent: &TestAgent, path: &'static str) -> tonic::Status {
    let channel = agent.raw_channel().await;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec: tonic_prost::ProstCodec<X509svidRequest, X509svidRequest> =
        tonic_prost::ProstCodec::default();
    grpc.unary(
        with_header(X509svidRequest {}),
        http::uri::PathAndQuery::from_static(path),
        codec,
    )
    .await
    .unwrap_err()
}

#[tokio::test]
async fn wit_profile_methods_are_unimplemented_w15() {
    let ca = TestCa::new(TD);
    let agent = TestAgent::start(
        &ca,
        vec![entry(
            "e",
            &format!("spiffe://{TD}/w"),
            &uid_selector(),
            1,
            "",
        )],
        HOUR,
        vec![],
    )
    .await;
    assert_eq!(
        call_unknown_method(&agent, "/SpiffeWorkloadAPI/FetchWITSVID")
            .await
            .code(),
        Code::Unimplemented
    );
    assert_eq!(
        call_unknown_method(&agent, "/SpiffeWorkloadAPI/FetchWITBundles")
            .await
            .code(),
        Code::Unimplemented
    );
    agent.stop().await;
}

#[tokio::test]
async fn service_is_exactly_spiffe_workload_api_without_extensions_w14() {
    // The service answers at `/SpiffeWorkloadAPI/<Method>` (no package) and nothing else.
    let ca = TestCa::new(TD);
    let agent = TestAgent::start(
        &ca,
        vec![entry(
            "e",
            &format!("spiffe://{TD}/w"),
            &uid_selector(),
            1,
            "",
        )],
        HOUR,
        vec![],
    )
    .await;
    let wrong_pkg =
        call_unknown_method(&agent, "/spiffe.workload.SpiffeWorkloadAPI/FetchJWTSVID").await;
    assert_eq!(wrong_pkg.code(), Code::Unimplemented);
    let extension = call_unknown_method(&agent, "/SpiffeWorkloadAPI/FetchEverything").await;
    assert_eq!(extension.code(), Code::Unimplemented);
    agent.stop().await;
}

#[tokio::test]
async fn server_reflection_lists_the_workload_api_and_describes_it_w14() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let ca = TestCa::new(TD);
    let agent = TestAgent::start(
        &ca,
        vec![entry(
            "e",
            &format!("spiffe://{TD}/w"),
            &uid_selector(),
            1,
            "",
        )],
        HOUR,
        vec![],
    )
    .await;
    let mut client = ServerReflectionClient::new(agent.raw_channel().await);
    let ask = |m: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };
    let requests = vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "SpiffeWorkloadAPI".into(),
        )),
    ];
    let mut answers = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();

    let listed = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = listed.message_response else {
        panic!("expected a service list, got {listed:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"SpiffeWorkloadAPI"), "{names:?}");
    // Only the Workload API and reflection itself: nothing of Warden's own APIs leaks here.
    assert!(
        names
            .iter()
            .all(|n| *n == "SpiffeWorkloadAPI" || n.starts_with("grpc.reflection.")),
        "{names:?}"
    );

    let described = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = described.message_response else {
        panic!("expected a file descriptor, got {described:?}");
    };
    let file = <prost_types::FileDescriptorProto as prost::Message>::decode(
        files.file_descriptor_proto[0].as_slice(),
    )
    .unwrap();
    let service = &file.service[0];
    assert_eq!(service.name(), "SpiffeWorkloadAPI");
    let methods: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
    for m in [
        "FetchX509SVID",
        "FetchX509Bundles",
        "FetchJWTSVID",
        "FetchJWTBundles",
        "ValidateJWTSVID",
    ] {
        assert!(methods.contains(&m), "{m} missing from {methods:?}");
    }
    agent.stop().await;
}
