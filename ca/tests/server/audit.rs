//! What the agent API writes to the audit log: `jwt_svid.issued` for every JWT-SVID (never the
//! token), and `agent.attestation_failed` for a known join token that is refused.

use warden_api::v1::SignJwtSvidRequest;
use warden_ca::datastore::AuditRecord;

use super::support::*;

async fn audit_of_kind(ca: &TestCa, kind: &str) -> Vec<AuditRecord> {
    let all = ca.ds().list_audit(0, 1000).await.unwrap();
    all.into_iter().filter(|r| r.kind == kind).collect()
}

#[tokio::test]
async fn jwt_svid_issuance_is_audited_without_the_token() {
    let ca = start_ca().await;
    let agent = ca.attest("tok-jwt-audit").await;
    let entry = ca
        .entry("spiffe://example.org/web", agent.spiffe_id(), &[])
        .await;
    let jwt = ca
        .as_agent(&agent)
        .await
        .sign_jwt_svid(SignJwtSvidRequest {
            entry_id: entry.clone(),
            audience: vec!["billing".into(), "ledger".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let records = audit_of_kind(&ca, "jwt_svid.issued").await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.actor, agent.spiffe_id().as_str());
    assert_eq!(r.subject, "spiffe://example.org/web");
    let detail: serde_json::Value = serde_json::from_str(&r.detail).unwrap();
    assert_eq!(detail["entry_id"], entry.as_str());
    assert_eq!(detail["audience"], serde_json::json!(["billing", "ledger"]));
    assert_eq!(detail["expires_at"], jwt.expires_at);
    let kid = detail["kid"].as_str().unwrap();
    let bundle = ca.running.authority.bundle();
    assert!(
        bundle.jwt_authorities().iter().any(|k| k.kid() == kid),
        "kid `{kid}` is a published jwt authority"
    );
    let signature = jwt.token.rsplit('.').next().unwrap();
    for r in ca.ds().list_audit(0, 1000).await.unwrap() {
        assert!(
            !r.detail.contains(&jwt.token) && !r.detail.contains(signature),
            "token in {r:?}"
        );
    }
}

#[tokio::test]
async fn a_refused_known_join_token_is_audited_and_an_unknown_one_is_not() {
    let ca = start_ca().await;
    let _ = ca.attest("tok-replayed").await;
    let (key, csr) = key_and_csr(None);
    let err = ca.attest_csr("tok-replayed", &key, csr).await.unwrap_err();
    assert!(err.message().contains("already used"), "{}", err.message());
    let (key, csr) = key_and_csr(None);
    let err = ca
        .attest_csr("tok-never-made", &key, csr)
        .await
        .unwrap_err();
    assert!(err.message().contains("unknown"), "{}", err.message());

    let records = audit_of_kind(&ca, "agent.attestation_failed").await;
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r.actor, "anonymous");
    assert_eq!(
        r.subject,
        warden_ca::datastore::join_token_agent_id(&td(), "tok-replayed").as_str()
    );
    let detail: serde_json::Value = serde_json::from_str(&r.detail).unwrap();
    assert_eq!(detail["attestor"], "join_token");
    assert!(
        detail["reason"].as_str().unwrap().contains("already used"),
        "{detail}"
    );
    assert!(
        detail["src_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{detail}"
    );
    for r in ca.ds().list_audit(0, 1000).await.unwrap() {
        assert!(!format!("{r:?}").contains("tok-"), "a token in {r:?}");
    }
    assert!(ca.ds().verify_audit().await.unwrap().is_ok());
}
