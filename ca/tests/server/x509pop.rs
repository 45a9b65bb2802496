//! x509pop node attestation against a configured node CA.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tonic::Code;
use warden_api::v1::{AttestX509PopRequest, X509PopChallengeRequest};

use super::support::*;

#[tokio::test]
async fn x509pop_attests_a_node_once_per_challenge() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    p.distinguished_name.push(DnType::CommonName, "node ca");
    let node_ca = p.self_signed(&ca_key).unwrap();
    let ca_path = dir.path().join("node-ca.pem");
    std::fs::write(&ca_path, node_ca.pem()).unwrap();
    let issuer = Issuer::new(p, ca_key);
    let node_key = KeyPair::generate().unwrap();
    let mut np = CertificateParams::new(vec!["node1.example.org".to_string()]).unwrap();
    np.distinguished_name.push(DnType::CommonName, "node1");
    let node_cert = np.signed_by(&node_key, &issuer).unwrap();

    let ca = start_ca_with(default_ttls(), vec![ca_path]).await;
    let mut c = ca.anon().await;
    let ch = c
        .x509_pop_challenge(X509PopChallengeRequest {
            cert_chain: vec![node_cert.der().to_vec()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ch.nonce.len(), 32);
    let rng = ring::rand::SystemRandom::new();
    let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &node_key.serialize_der(),
        &rng,
    )
    .unwrap();
    let sig = signer.sign(&rng, &ch.nonce).unwrap().as_ref().to_vec();

    // A wrong signature is refused and uses up the challenge.
    let (_, csr) = key_and_csr(None);
    let err = c
        .attest_x509_pop(AttestX509PopRequest {
            challenge_id: ch.challenge_id.clone(),
            signature: vec![0; 64],
            csr: csr.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("does not verify"),
        "{}",
        err.message()
    );
    let err = c
        .attest_x509_pop(AttestX509PopRequest {
            challenge_id: ch.challenge_id.clone(),
            signature: sig.clone(),
            csr: csr.clone(),
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("already used"), "{}", err.message());

    // A fresh challenge answered correctly attests the node.
    let ch = c
        .x509_pop_challenge(X509PopChallengeRequest {
            cert_chain: vec![node_cert.der().to_vec()],
        })
        .await
        .unwrap()
        .into_inner();
    let sig = signer.sign(&rng, &ch.nonce).unwrap().as_ref().to_vec();
    let (key, csr) = key_and_csr(None);
    let resp = c
        .attest_x509_pop(AttestX509PopRequest {
            challenge_id: ch.challenge_id,
            signature: sig,
            csr,
        })
        .await
        .unwrap()
        .into_inner();
    let svid = svid_of(resp.svid.as_ref().unwrap(), &key);
    let fp = hex::encode(ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        node_cert.der(),
    ));
    assert_eq!(
        svid.spiffe_id().as_str(),
        format!("spiffe://example.org/agent/x509pop/{fp}")
    );
    let root = ca.running.authority.root_cert().clone();
    assert_eq!(
        &verify_both(svid.cert_chain(), &ca.bundles(), &root),
        svid.spiffe_id()
    );
    let rec = ca.ds().get_agent(svid.spiffe_id()).await.unwrap().unwrap();
    let sels: Vec<String> = rec.selectors.iter().map(ToString::to_string).collect();
    let ca_fp = hex::encode(ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        node_ca.der(),
    ));
    assert!(
        sels.contains(&"x509pop:subject:cn:node1".to_string()),
        "{sels:?}"
    );
    assert!(
        sels.contains(&format!("x509pop:ca:fingerprint:{ca_fp}")),
        "{sels:?}"
    );

    // A certificate from another CA is refused at the challenge.
    let stranger = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
    let err = c
        .x509_pop_challenge(X509PopChallengeRequest {
            cert_chain: vec![stranger.cert.der().to_vec()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("node ca"), "{}", err.message());
}

#[tokio::test]
async fn x509pop_is_refused_when_no_node_ca_is_configured() {
    let ca = start_ca().await;
    let err = ca
        .anon()
        .await
        .x509_pop_challenge(X509PopChallengeRequest {
            cert_chain: vec![vec![1]],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("not enabled"), "{}", err.message());
}
