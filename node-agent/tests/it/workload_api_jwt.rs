//! The Workload API's JWT-SVID side (rules W-9..W-11, J-8 of SPIFFE-RULES.md): fetching with
//! an audience, the JWT bundles, and validation against the caller's trust domains.

use std::time::SystemTime;

use tonic::Code;
use warden_api::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use warden_api::workload::{JwtsvidRequest, ValidateJwtsvidRequest};

use crate::support::{TD, TestAgent, TestCa, entry, sign_jwt, uid_selector};
use crate::workload_api::{HOUR, with_header};

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
