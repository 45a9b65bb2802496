//! Workload API conformance (rules W-1..W-15 of SPIFFE-RULES.md), checked with the `spiffe`
//! crate as the client and rustls-webpki as an independent chain verifier.

use std::time::{Duration, SystemTime};

use rustls_pki_types::{CertificateDer, UnixTime};
use tonic::Code;
use warden_api::WORKLOAD_API_HEADER;
use warden_api::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use warden_api::workload::{JwtsvidRequest, ValidateJwtsvidRequest, X509svidRequest};

use crate::support::{TD, TestAgent, TestCa, entry, sign_jwt, uid_selector};

const HOUR: Duration = Duration::from_secs(3600);

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

fn with_header<T>(msg: T) -> tonic::Request<T> {
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

#[tokio::test]
async fn jwt_svid_requires_audience_w9() {
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
        .fetch_jwtsvid(with_header(JwtsvidRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("audience"));
    let req = JwtsvidRequest {
        audience: vec!["a".into()],
        spiffe_id: "not a spiffe id".into(),
    };
    assert_eq!(
        raw.fetch_jwtsvid(with_header(req))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    agent.stop().await;
}

#[tokio::test]
async fn jwt_svids_are_fetched_filtered_cached_and_validated_by_spiffe_crate_w9_w10_w11() {
    let ca = TestCa::new(TD);
    let sel = uid_selector();
    let entries = vec![
        entry("a", &format!("spiffe://{TD}/first"), &sel, 1, ""),
        entry("b", &format!("spiffe://{TD}/second"), &sel, 2, ""),
    ];
    let minter = ca.minter();
    let agent = TestAgent::start_with(&ca, entries, HOUR, vec![], minter.clone(), true).await;
    let client = agent.client().await;
    let all = client.fetch_all_jwt_svids(["svc-b"], None).await.unwrap();
    assert_eq!(all.len(), 2);
    let second: spiffe::SpiffeId = format!("spiffe://{TD}/second").parse().unwrap();
    let only = client
        .fetch_jwt_svid(["svc-b"], Some(&second))
        .await
        .unwrap();
    assert_eq!(only.spiffe_id(), &second);
    assert_eq!(
        minter.minted.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "cached per entry and audience"
    );
    // Independent validation with the JWT bundles the agent serves (W-10).
    let bundles = client.fetch_jwt_bundles().await.unwrap();
    let parsed = spiffe::JwtSvid::parse_and_validate(only.token(), &bundles, &["svc-b"]).unwrap();
    assert_eq!(parsed.spiffe_id(), &second);
    // ValidateJWTSVID (W-11).
    let validated = client
        .validate_jwt_token("svc-b", only.token())
        .await
        .unwrap();
    assert_eq!(validated.spiffe_id(), &second);
    let err = client
        .validate_jwt_token("someone-else", only.token())
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").contains("InvalidArgument") || format!("{err}").contains("audience"),
        "{err:?}"
    );
    agent.stop().await;
}

#[tokio::test]
async fn validate_jwt_svid_requires_all_fields_and_returns_claims_w11() {
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
    let missing_aud = ValidateJwtsvidRequest {
        audience: String::new(),
        svid: "a.b.c".into(),
    };
    assert_eq!(
        raw.validate_jwtsvid(with_header(missing_aud))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let missing_svid = ValidateJwtsvidRequest {
        audience: "a".into(),
        svid: String::new(),
    };
    assert_eq!(
        raw.validate_jwtsvid(with_header(missing_svid))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let garbage = ValidateJwtsvidRequest {
        audience: "a".into(),
        svid: "not-a-jwt".into(),
    };
    assert_eq!(
        raw.validate_jwtsvid(with_header(garbage))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let token = raw
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .svids
        .remove(0)
        .svid;
    let ok = raw
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "a".into(),
            svid: token,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.spiffe_id, format!("spiffe://{TD}/w"));
    let claims = ok.claims.unwrap();
    assert!(claims.fields.contains_key("exp") && claims.fields.contains_key("aud"));
    agent.stop().await;
}

/// A JWT-SVID signed by `ca`'s JWT key for `sub` and `aud`, valid for five minutes.
fn jwt_of(ca: &TestCa, sub: &str, aud: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    let header = serde_json::json!({"alg": "ES256", "kid": ca.kid, "typ": "JWT"});
    let claims = serde_json::json!({"sub": sub, "aud": [aud], "exp": exp});
    sign_jwt(&ca.jwt_signer(), &header, &claims)
}

/// J-8 and W-11, as SPIRE's agent does it: a token is validated against the bundles the caller
/// holds (its own trust domain's and those its entries federate with), not every bundle the
/// agent keeps for its other workloads.
#[tokio::test]
async fn validate_jwt_svid_trusts_only_the_callers_trust_domains_w11_j8() {
    let ca = TestCa::new(TD);
    let fed = TestCa::new("partner.test");
    let unrelated = TestCa::new("unrelated.test");
    let mut e = entry("e", &format!("spiffe://{TD}/w"), &uid_selector(), 1, "");
    e.federates_with = vec![fed.td.clone()];
    let agent = TestAgent::start(&ca, vec![e], HOUR, vec![fed.bundle(), unrelated.bundle()]).await;
    let mut raw = SpiffeWorkloadApiClient::new(agent.raw_channel().await);
    let validate = |svid: String| ValidateJwtsvidRequest {
        audience: "a".into(),
        svid,
    };
    for (issuer, sub) in [
        (&ca, format!("spiffe://{TD}/x")),
        (&fed, "spiffe://partner.test/x".to_owned()),
    ] {
        let ok = raw
            .validate_jwtsvid(with_header(validate(jwt_of(issuer, &sub, "a"))))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ok.spiffe_id, sub);
    }
    // The agent holds unrelated.test's bundle (for another workload, say), this caller not.
    let err = raw
        .validate_jwtsvid(with_header(validate(jwt_of(
            &unrelated,
            "spiffe://unrelated.test/x",
            "a",
        ))))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("unrelated.test"),
        "{}",
        err.message()
    );
    agent.stop().await;

    // A caller with no entry (a service that only checks tokens): the own trust domain only,
    // though another workload's entry federates with partner.test.
    let mut other = entry(
        "x",
        &format!("spiffe://{TD}/other"),
        "unix:uid:4294967000",
        1,
        "",
    );
    other.federates_with = vec![fed.td.clone()];
    let agent = TestAgent::start(&ca, vec![other], HOUR, vec![fed.bundle()]).await;
    let mut raw = SpiffeWorkloadApiClient::new(agent.raw_channel().await);
    let own = raw
        .validate_jwtsvid(with_header(validate(jwt_of(
            &ca,
            &format!("spiffe://{TD}/x"),
            "a",
        ))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.spiffe_id, format!("spiffe://{TD}/x"));
    let err = raw
        .validate_jwtsvid(with_header(validate(jwt_of(
            &fed,
            "spiffe://partner.test/x",
            "a",
        ))))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    agent.stop().await;
}

#[tokio::test]
async fn jwt_bundles_hold_only_jwt_svid_keys_w10_w12() {
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
    let mut s = raw
        .fetch_jwt_bundles(with_header(Default::default()))
        .await
        .unwrap()
        .into_inner();
    let msg = s.message().await.unwrap().unwrap();
    let jwks: serde_json::Value =
        serde_json::from_slice(msg.bundles.get("spiffe://example.org").unwrap()).unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["use"], "jwt-svid");
    assert_eq!(keys[0]["kid"], ca.kid.as_str());
    assert!(keys[0].get("x5c").is_none());
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
