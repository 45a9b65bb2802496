//! Every refusal of the agent API: a gRPC status naming the problem, datastore unchanged.

use std::time::Duration;

use tonic::Code;
use warden_api::v1::{
    AttestJoinTokenRequest, ListEntriesRequest, RenewAgentRequest, SignJwtSvidRequest,
    SignX509SvidsRequest, SvidCsr,
};
use warden_ca::datastore::{join_token_agent_id, join_token_hash};
use x509_parser::prelude::FromDer as _;

use super::support::*;

async fn attest_err(ca: &TestCa, token: &str, csr: Vec<u8>) -> tonic::Status {
    ca.anon()
        .await
        .attest_join_token(AttestJoinTokenRequest {
            token: token.into(),
            csr,
        })
        .await
        .unwrap_err()
}

#[tokio::test]
async fn reused_token_is_refused_and_the_first_agent_is_unchanged() {
    let ca = start_ca().await;
    let _ = ca.attest("tok-reuse").await;
    let id = join_token_agent_id(&td(), "tok-reuse");
    let before = ca.ds().get_agent(&id).await.unwrap();
    let (_, csr) = key_and_csr(None);
    let err = attest_err(&ca, "tok-reuse", csr).await;
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("already used"), "{}", err.message());
    assert_eq!(ca.ds().get_agent(&id).await.unwrap(), before);
}

#[tokio::test]
async fn unknown_and_expired_tokens_are_refused() {
    let ca = start_ca().await;
    let (_, csr) = key_and_csr(None);
    let err = attest_err(&ca, "never-created", csr.clone()).await;
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("unknown"), "{}", err.message());
    ca.ds()
        .create_join_token(&join_token_hash("tok-old"), warden_ca_now() - 1, "test")
        .await
        .unwrap();
    let err = attest_err(&ca, "tok-old", csr.clone()).await;
    assert!(err.message().contains("expired"), "{}", err.message());
    let err = attest_err(&ca, "", csr).await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(ca.ds().list_agents().await.unwrap().is_empty());
}

#[tokio::test]
async fn malformed_csr_is_refused_without_consuming_the_token() {
    let ca = start_ca().await;
    ca.token("tok-bad-csr").await;
    let err = attest_err(&ca, "tok-bad-csr", b"not a csr".to_vec()).await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("malformed csr"), "{}", err.message());
    // Bad signature: flip the last byte (inside the signature).
    let (_, mut csr) = key_and_csr(None);
    let last = csr.len() - 1;
    csr[last] ^= 0x01;
    let err = attest_err(&ca, "tok-bad-csr", csr).await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("malformed csr"), "{}", err.message());
    // Oversize.
    let err = attest_err(&ca, "tok-bad-csr", vec![0x30; 16 * 1024 + 1]).await;
    assert!(err.message().contains("oversize csr"), "{}", err.message());
    // A well-formed CSR naming another SPIFFE ID than the token's agent ID.
    for other in ["spiffe://example.org/warden/ca", "spiffe://example.org/web"] {
        let (_, csr) = key_and_csr(Some(other));
        let err = attest_err(&ca, "tok-bad-csr", csr).await;
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().contains("csr id mismatch") && err.message().contains(other),
            "{}",
            err.message()
        );
    }
    assert!(ca.ds().list_agents().await.unwrap().is_empty());
    let audit = ca.ds().list_audit(0, 0).await.unwrap();
    assert!(
        audit.iter().all(|r| r.kind != "token.used"),
        "{:?}",
        audit.iter().map(|r| &r.kind).collect::<Vec<_>>()
    );
    // The token is still usable.
    let (key, csr) = key_and_csr(None);
    ca.attest_csr("tok-bad-csr", &key, csr).await.unwrap();
}

/// A token the CA does not know (anyone can send one) is refused before anything else is done
/// for it: before its CSR is signed, and without the write transaction that uses a token. A CSR
/// the CA would refuse shows the order: the answer names the token, not the CSR.
#[tokio::test]
async fn an_unknown_token_is_refused_before_its_csr_is_signed() {
    let ca = start_ca().await;
    let (_, csr) = key_and_csr(Some("spiffe://example.org/web"));
    let err = attest_err(&ca, "no-such-token", csr).await;
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("unknown"), "{}", err.message());
}

#[tokio::test]
async fn concurrent_attestation_with_one_token_succeeds_exactly_once() {
    let ca = std::sync::Arc::new(start_ca().await);
    ca.token("tok-race").await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let ca = ca.clone();
        tasks.push(tokio::spawn(async move {
            let (_, csr) = key_and_csr(None);
            ca.anon()
                .await
                .attest_join_token(AttestJoinTokenRequest {
                    token: "tok-race".into(),
                    csr,
                })
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert!(e.message().contains("already used"), "{}", e.message()),
        }
    }
    assert_eq!(ok, 1);
}

#[tokio::test]
async fn calls_without_an_agent_svid_are_unauthenticated() {
    let ca = start_ca().await;
    let mut c = ca.anon().await;
    let err = c.list_entries(ListEntriesRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("mutual tls"), "{}", err.message());
    let (_, csr) = key_and_csr(None);
    let err = c.renew_agent(RenewAgentRequest { csr }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn banned_and_evicted_agents_are_refused_on_their_next_call() {
    let ca = start_ca().await;
    let a = ca.attest("tok-ban").await;
    let mut c = ca.as_agent(&a).await;
    c.list_entries(ListEntriesRequest {}).await.unwrap();
    ca.ds().ban_agent(a.spiffe_id(), "test").await.unwrap();
    let err = c.list_entries(ListEntriesRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("banned"), "{}", err.message());
    let (_, csr) = key_and_csr(None);
    let err = c.renew_agent(RenewAgentRequest { csr }).await.unwrap_err();
    assert!(err.message().contains("banned"), "{}", err.message());

    let b = ca.attest("tok-evict").await;
    let mut c = ca.as_agent(&b).await;
    ca.ds().evict_agent(b.spiffe_id(), "test").await.unwrap();
    let err = c.list_entries(ListEntriesRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("unknown agent"), "{}", err.message());
}

fn assert_serial_mismatch(result: Result<impl std::fmt::Debug, tonic::Status>) {
    let err = result.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(
        err.message().contains("svid serial mismatch"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn superseded_agent_svids_are_refused_and_renewal_keeps_working() {
    let ca = start_ca().await;
    let s1 = ca.attest("tok-serial").await;
    // The reply to a renewal may be lost: until the new SVID is presented, the old one still
    // works, and may renew again (the SVID whose reply was lost is then refused).
    let lost = ca.renew(&s1).await.unwrap();
    ca.call_as(&s1).await.unwrap();
    let s2 = ca.renew(&s1).await.unwrap();
    assert_serial_mismatch(ca.call_as(&lost).await);
    ca.call_as(&s2).await.unwrap();
    // Once the new SVID has been presented, the one it was renewed from is refused.
    assert_serial_mismatch(ca.call_as(&s1).await);
    assert_serial_mismatch(ca.renew(&s1).await);
    // The normal flow goes on: renew, use the new SVID, renew again.
    let s3 = ca.renew(&s2).await.unwrap();
    ca.call_as(&s3).await.unwrap();
    let s4 = ca.renew(&s3).await.unwrap();
    ca.call_as(&s4).await.unwrap();
    for old in [&s1, &s2, &s3] {
        assert_serial_mismatch(ca.call_as(old).await);
    }
    let record = ca.ds().get_agent(s1.spiffe_id()).await.unwrap().unwrap();
    assert_eq!(
        record.previous_serial, None,
        "confirmed by the call with s4"
    );
}

#[tokio::test]
async fn a_copied_agent_is_locked_out_once_the_copy_renews() {
    let ca = start_ca().await;
    let original = ca.attest("tok-clone").await;
    let clone = original.clone();
    let renewed = ca.renew(&clone).await.unwrap();
    ca.call_as(&renewed).await.unwrap();
    assert_serial_mismatch(ca.call_as(&original).await);
    assert_serial_mismatch(ca.renew(&original).await);
    ca.call_as(&renewed).await.unwrap();
}

#[tokio::test]
async fn svids_from_before_an_eviction_stay_refused_after_re_attestation() {
    let ca = start_ca().await;
    let old = ca.attest("tok-reattest").await;
    let mut record = ca.ds().get_agent(old.spiffe_id()).await.unwrap().unwrap();
    ca.ds().evict_agent(old.spiffe_id(), "test").await.unwrap();
    // The same agent ID attests again (as an x509pop node with the same certificate would).
    record.serial = "7f000000000000000000000000000001".into();
    ca.ds().attest_agent(&record).await.unwrap();
    assert_serial_mismatch(ca.call_as(&old).await);
    assert_serial_mismatch(ca.renew(&old).await);
}

#[tokio::test]
async fn signing_refusals_name_the_entry_and_write_nothing() {
    let ca = start_ca().await;
    let a = ca.attest("tok-sign").await;
    let other = ca.attest("tok-other").await;
    let mine = ca
        .entry("spiffe://example.org/mine", a.spiffe_id(), &[])
        .await;
    let theirs = ca
        .entry("spiffe://example.org/theirs", other.spiffe_id(), &[])
        .await;
    let mut c = ca.as_agent(&a).await;
    let audit_before = ca.ds().verify_audit().await.unwrap().records;

    // Entry of another agent, after a valid one: the whole batch is refused.
    let (_, ok_csr) = key_and_csr(None);
    let (_, csr) = key_and_csr(None);
    let err = c
        .sign_x509_svids(SignX509SvidsRequest {
            csrs: vec![
                SvidCsr {
                    entry_id: mine.clone(),
                    csr: ok_csr,
                },
                SvidCsr {
                    entry_id: theirs.clone(),
                    csr,
                },
            ],
        })
        .await
        .unwrap_err();
    // NotFound: the entry is not this agent's (the agent then signs the others alone).
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains(&theirs), "{}", err.message());

    // CSR asking for another ID.
    let (_, csr) = key_and_csr(Some("spiffe://example.org/admin"));
    let err = c
        .sign_x509_svids(SignX509SvidsRequest {
            csrs: vec![SvidCsr {
                entry_id: mine.clone(),
                csr,
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("csr id mismatch") && err.message().contains(&mine),
        "{}",
        err.message()
    );

    // Malformed and oversize CSRs in a batch.
    let err = c
        .sign_x509_svids(SignX509SvidsRequest {
            csrs: vec![SvidCsr {
                entry_id: mine.clone(),
                csr: vec![1, 2, 3],
            }],
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("malformed csr"), "{}", err.message());
    let err = c
        .sign_x509_svids(SignX509SvidsRequest {
            csrs: vec![SvidCsr {
                entry_id: mine.clone(),
                csr: vec![0; 20_000],
            }],
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("oversize csr"), "{}", err.message());

    // Too many CSRs.
    let (_, csr) = key_and_csr(None);
    let many = (0..501)
        .map(|_| SvidCsr {
            entry_id: mine.clone(),
            csr: csr.clone(),
        })
        .collect();
    let err = c
        .sign_x509_svids(SignX509SvidsRequest { csrs: many })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("at most 500"), "{}", err.message());

    // JWT: entry of another agent; empty audience.
    let err = c
        .sign_jwt_svid(SignJwtSvidRequest {
            entry_id: theirs.clone(),
            audience: vec!["a".into()],
        })
        .await
        .unwrap_err();
    assert!(err.message().contains(&theirs), "{}", err.message());
    let err = c
        .sign_jwt_svid(SignJwtSvidRequest {
            entry_id: mine.clone(),
            audience: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("audience"), "{}", err.message());
    // More audiences than a JWT-SVID may carry (they would all go into the audit log).
    let err = c
        .sign_jwt_svid(SignJwtSvidRequest {
            entry_id: mine.clone(),
            audience: (0..=warden_identity::MAX_AUDIENCES)
                .map(|i| format!("aud-{i}"))
                .collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("at most"), "{}", err.message());

    // Nothing was logged or audited.
    assert_eq!(ca.ds().verify_audit().await.unwrap().records, audit_before);
}

#[tokio::test]
async fn id_from_another_trust_domain_is_refused() {
    let ca = start_ca().await;
    let (_, csr) = key_and_csr(None);
    let err = sign_direct(&ca.running.authority, &csr, "spiffe://evil.org/x")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("another trust domain") && err.contains("evil.org"),
        "{err}"
    );
    let err = ca
        .running
        .authority
        .sign_jwt_svid(
            &"spiffe://evil.org/x".parse().unwrap(),
            &["a".into()],
            Duration::ZERO,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("another trust domain"), "{err}");
}

/// CSRs made with `openssl req -new -newkey <type> [-sha256|-sha384] -outform DER` (fixtures/).
#[tokio::test]
async fn csr_key_types_are_checked_ec_p256_p384_ed25519_rsa2048_only() {
    let ca = start_ca().await;
    let id = "spiffe://example.org/k".parse().unwrap();
    let sign = |name: &str| {
        let der = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/server/fixtures")
                .join(name),
        )
        .unwrap();
        ca.running
            .authority
            .sign_x509_svid(&der, &id, &[], Duration::ZERO)
    };
    let root = ca.running.authority.root_cert().clone();
    // A CSR's signature hash need not be its curve's (`openssl req` signs P-384 requests with
    // SHA-256): the certificate carries the key as the CSR does.
    for ok in [
        "rsa2048.csr.der",
        "ed25519.csr.der",
        "p384-sha256.csr.der",
        "p384-sha384.csr.der",
        "p256-sha384.csr.der",
    ] {
        let s = sign(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        verify_both(&s.cert_chain, &ca.bundles(), &root);
        let csr = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/server/fixtures")
                .join(ok),
        )
        .unwrap();
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&csr).unwrap();
        let (_, cert) =
            x509_parser::certificate::X509Certificate::from_der(&s.cert_chain[0]).unwrap();
        assert_eq!(
            cert.public_key().raw,
            csr.certification_request_info.subject_pki.raw,
            "{ok}: the certificate's key is not the csr's"
        );
    }
    let err = sign("rsa1024.csr.der").unwrap_err().to_string();
    assert!(
        err.contains("key type not allowed") && err.contains("rsa 1024"),
        "{err}"
    );
    for bad in ["p521.csr.der", "secp256k1.csr.der"] {
        let err = sign(bad).unwrap_err().to_string();
        assert!(
            err.contains("key type not allowed") && err.contains("ec curve"),
            "{bad}: {err}"
        );
    }
}

#[tokio::test]
async fn agent_svid_of_another_ca_is_rejected() {
    let ca = start_ca().await;
    let other = start_ca().await;
    let foreign = other.attest("tok-foreign").await;
    // Same trust domain name, different root: the TLS layer or the handler must refuse it.
    let cfg_result = async {
        let mut c = ca.as_agent_unchecked(&foreign).await?;
        c.list_entries(ListEntriesRequest {})
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    .await;
    assert!(cfg_result.is_err(), "a foreign agent svid was accepted");
}
