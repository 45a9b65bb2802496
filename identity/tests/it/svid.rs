//! `X509Svid` construction, PEM, redaction, and the SPIFFE ID helpers.

use std::time::Duration;

use base64::Engine as _;

use warden_identity::test_util::{BadLeaf, TestCa};
use warden_identity::{
    PrivatePkcs8KeyDer, SvidError, X509Svid, peer_spiffe_id, spiffe_id_from_cert,
};

use crate::support::{TD, WORKLOAD, id};

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn svid_round_trips_through_pem() {
    let ca = TestCa::new(TD);
    let svid = ca.intermediate().issue_svid(&id(WORKLOAD), HOUR);
    let again = X509Svid::from_pem(
        svid.cert_chain_pem().as_bytes(),
        svid.private_key_pem().as_bytes(),
    )
    .unwrap();
    assert_eq!(again.spiffe_id(), svid.spiffe_id());
    assert_eq!(again.cert_chain(), svid.cert_chain());
    assert_eq!(
        again.private_key().secret_pkcs8_der(),
        svid.private_key().secret_pkcs8_der()
    );
    assert_eq!(again.not_after(), svid.not_after());
    assert_eq!(
        svid.cert_chain_der().len(),
        svid.cert_chain().iter().map(|c| c.len()).sum::<usize>()
    );
}

#[test]
fn svid_rejects_key_of_another_certificate() {
    let ca = TestCa::new(TD);
    let a = ca.issue_svid(&id(WORKLOAD), HOUR);
    let b = ca.issue_svid(&id(WORKLOAD), HOUR);
    let err = X509Svid::new(a.cert_chain().to_vec(), b.private_key().clone_key()).unwrap_err();
    assert_eq!(err, SvidError::KeyMismatch);
}

#[test]
fn svid_rejects_garbage_key_and_empty_chain() {
    let ca = TestCa::new(TD);
    let a = ca.issue_svid(&id(WORKLOAD), HOUR);
    let garbage = PrivatePkcs8KeyDer::from(vec![0x30, 0x00]);
    assert_eq!(
        X509Svid::new(a.cert_chain().to_vec(), garbage).unwrap_err(),
        SvidError::BadPrivateKey
    );
    assert_eq!(
        X509Svid::new(Vec::new(), a.private_key().clone_key()).unwrap_err(),
        SvidError::EmptyChain
    );
}

#[test]
fn svid_rejects_leaf_with_two_uri_sans_x1() {
    let ca = TestCa::new(TD);
    let (chain, key) = ca.issue_bad_leaf(&id(WORKLOAD), BadLeaf::TwoUriSans);
    assert_eq!(
        X509Svid::new(chain, key).unwrap_err(),
        SvidError::MultipleUriSans(2)
    );
}

#[test]
fn svid_from_pem_names_wrong_block_labels() {
    let ca = TestCa::new(TD);
    let svid = ca.issue_svid(&id(WORKLOAD), HOUR);
    let key_as_cert = svid
        .private_key_pem()
        .replace("PRIVATE KEY", "EC PRIVATE KEY");
    let err =
        X509Svid::from_pem(svid.cert_chain_pem().as_bytes(), key_as_cert.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("`EC PRIVATE KEY`"), "{err}");
    let err = X509Svid::from_pem(
        svid.private_key_pem().as_bytes(),
        svid.private_key_pem().as_bytes(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("`PRIVATE KEY` block; expected `CERTIFICATE`"),
        "{err}"
    );
    let err = X509Svid::from_pem(b"not pem", svid.private_key_pem().as_bytes()).unwrap_err();
    assert_eq!(err, SvidError::EmptyChain);
}

#[test]
fn svid_debug_never_shows_the_private_key() {
    let ca = TestCa::new(TD);
    let svid = ca.issue_svid(&id(WORKLOAD), HOUR);
    let debug = format!("{svid:?}");
    assert!(debug.contains("<redacted>"));
    assert!(debug.contains(WORKLOAD));
    // The private scalar (after `INTEGER 1, OCTET STRING (32)` in the SEC 1 key the PKCS#8
    // document wraps), in every form a `Debug` could print it: a byte list, hex, base64.
    let der = svid.private_key().secret_pkcs8_der();
    let at = der
        .windows(5)
        .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
        .expect("a P-256 PKCS#8 key")
        + 5;
    let secret = &der[at..at + 32];
    let as_list = format!("{secret:?}");
    let as_list = as_list.trim_start_matches('[').trim_end_matches(']');
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    for form in [as_list, hex.as_str(), &b64[..20]] {
        assert!(!debug.contains(form), "{form} in {debug}");
    }
    let pem_body = svid.private_key_pem().lines().nth(1).unwrap().to_owned();
    assert!(!debug.contains(&pem_body[20..]), "{debug}");
}

#[test]
fn spiffe_id_is_read_from_the_certificate() {
    let ca = TestCa::new(TD);
    let svid = ca.issue_svid(&id(WORKLOAD), HOUR);
    assert_eq!(
        spiffe_id_from_cert(svid.leaf().as_ref()).unwrap(),
        id(WORKLOAD)
    );
    assert_eq!(peer_spiffe_id(svid.cert_chain()), Some(id(WORKLOAD)));
    assert_eq!(peer_spiffe_id(&[]), None);
    let (chain, _) = ca.issue_bad_leaf(&id(WORKLOAD), BadLeaf::TwoUriSans);
    assert_eq!(peer_spiffe_id(&chain), None);
    assert_eq!(
        spiffe_id_from_cert(b"junk"),
        Err(SvidError::BadCertificate { index: 0 })
    );
}
