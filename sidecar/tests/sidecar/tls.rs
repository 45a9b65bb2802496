//! Handshake refusals: every kind of bad client certificate is refused at the handshake and
//! counted by reason; `curl` and `openssl s_client` see the same.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use http::StatusCode;
use warden_identity::test_util::{BadLeaf, TestCa};

use crate::support::*;

async fn refused(f: &Fixture, client: &Client) {
    let result = client.request(f.inbound, get("/x")).await;
    assert!(
        result.is_err(),
        "request with a bad certificate succeeded: {result:?}"
    );
}

fn raw(ca: &TestCa, f: &Fixture, bad: BadLeaf) -> Client {
    let (chain, key) = ca.issue_bad_leaf(&id(WEB_ID), bad);
    Client::raw(chain, key, TestCa::bundle_set(&[&f.ca]))
}

#[tokio::test]
async fn client_without_certificate_is_refused_and_counted() {
    let f = Fixture::start(Options::default()).await;
    refused(&f, &Client::new(None, TestCa::bundle_set(&[&f.ca]))).await;
    let m = wait_for_metric(&f, r#"reason="no_cert"} 1"#).await;
    assert!(
        m.contains(
            r#"warden_sidecar_handshake_failures_total{direction="inbound",reason="no_cert"} 1"#
        ),
        "{m}"
    );
    assert_eq!(f.app.seen(), 0);
}

#[tokio::test]
async fn certificate_from_another_ca_of_the_same_trust_domain_is_untrusted_x11() {
    let f = Fixture::start(Options::default()).await;
    let rogue = TestCa::new(TD);
    let c = Client::new(
        Some(rogue.issue_svid(&id(WEB_ID), Duration::from_secs(600))),
        TestCa::bundle_set(&[&f.ca]),
    );
    refused(&f, &c).await;
    let m = wait_for_metric(&f, r#"reason="untrusted"} 1"#).await;
    assert!(m.contains(r#"reason="untrusted"} 1"#), "{m}");
    assert_eq!(f.app.seen(), 0);
}

#[tokio::test]
async fn other_trust_domain_is_refused_without_its_bundle_x11() {
    let f = Fixture::start(Options::default()).await;
    let partner = TestCa::new("partner.org");
    let c = Client::new(
        Some(partner.issue_svid(&id("spiffe://partner.org/web"), Duration::from_secs(600))),
        TestCa::bundle_set(&[&f.ca]),
    );
    refused(&f, &c).await;
    let m = wait_for_metric(&f, r#"reason="untrusted"} 1"#).await;
    assert!(m.contains(r#"reason="untrusted"} 1"#), "{m}");
}

#[tokio::test]
async fn other_trust_domain_is_accepted_with_a_federated_bundle_b8() {
    let partner = TestCa::new("partner.org");
    let svid = partner.issue_svid(&id("spiffe://partner.org/web"), Duration::from_secs(600));
    let f = Fixture::start(Options {
        federated: vec![partner],
        ..Options::default()
    })
    .await;
    let c = Client::new(Some(svid), TestCa::bundle_set(&[&f.ca]));
    let (status, _, body) = c.request(f.inbound, get("/x")).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("URI=spiffe://partner.org/web"), "{body}");
    let records = f.decisions(1).await;
    assert_eq!(records[0].policy_ids, ["partner-reads"]);
}

#[tokio::test]
async fn expired_certificate_is_refused_and_counted() {
    let f = Fixture::start(Options::default()).await;
    refused(&f, &raw(&f.ca, &f, BadLeaf::Expired)).await;
    let m = wait_for_metric(&f, r#"reason="expired"} 1"#).await;
    assert!(m.contains(r#"reason="expired"} 1"#), "{m}");
}

#[tokio::test]
async fn non_svid_certificates_are_refused_and_counted_x1_x4_x6() {
    let f = Fixture::start(Options::default()).await;
    for bad in [
        BadLeaf::NoUriSan,
        BadLeaf::TwoUriSans,
        BadLeaf::CaLeaf,
        BadLeaf::NoDigitalSignature,
    ] {
        refused(&f, &raw(&f.ca, &f, bad)).await;
    }
    let m = wait_for_metric(&f, r#"reason="not_svid"} 4"#).await;
    assert!(m.contains(r#"reason="not_svid"} 4"#), "{m}");
    assert_eq!(f.app.seen(), 0);
}

// === real clients ===

/// These tests need the real tools; `scripts/test.sh` installs them where it can.
fn require(tool: &str) {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .or_else(|_| Command::new(tool).arg("version").output())
        .is_ok();
    assert!(
        found,
        "`{tool}` is not installed: this test drives it as a real client"
    );
}

fn write_pem(dir: &Path, name: &str, tag: &str, ders: &[&[u8]]) -> String {
    let blocks: Vec<pem::Pem> = ders
        .iter()
        .map(|d| pem::Pem::new(tag, d.to_vec()))
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, pem::encode_many(&blocks)).unwrap();
    path.display().to_string()
}

/// (cert, key) PEM paths for `kind`: `good`, `expired`, `nosan`, `rogue`.
fn cert_files(f: &Fixture, kind: &str) -> (String, String) {
    let dir = f.dir.path();
    let (chain, key) = match kind {
        "good" => {
            let s = f.ca.issue_svid(&id(WEB_ID), Duration::from_secs(600));
            (s.cert_chain().to_vec(), s.private_key().clone_key())
        }
        "expired" => f.ca.issue_bad_leaf(&id(WEB_ID), BadLeaf::Expired),
        "nosan" => f.ca.issue_bad_leaf(&id(WEB_ID), BadLeaf::NoUriSan),
        _ => {
            let s = TestCa::new(TD).issue_svid(&id(WEB_ID), Duration::from_secs(600));
            (s.cert_chain().to_vec(), s.private_key().clone_key())
        }
    };
    let ders: Vec<&[u8]> = chain.iter().map(|c| c.as_ref()).collect();
    (
        write_pem(dir, &format!("{kind}.pem"), "CERTIFICATE", &ders),
        write_pem(
            dir,
            &format!("{kind}.key"),
            "PRIVATE KEY",
            &[key.secret_pkcs8_der()],
        ),
    )
}

#[tokio::test]
async fn curl_with_bad_certificates_is_refused() {
    require("curl");
    let f = Fixture::start(Options::default()).await;
    let url = format!("https://127.0.0.1:{}/x", f.inbound.port());
    for kind in ["good", "expired", "nosan", "rogue", "none"] {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sk",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ]);
        if kind != "none" {
            let (cert, key) = cert_files(&f, kind);
            cmd.args(["--cert", &cert, "--key", &key]);
        }
        cmd.arg(&url);
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        let code = String::from_utf8_lossy(&out.stdout).to_string();
        if kind == "good" {
            assert_eq!(code, "200", "curl with a valid svid: {out:?}");
        } else {
            assert!(
                !out.status.success() && code != "200",
                "curl with `{kind}` got through: {out:?}"
            );
        }
    }
    assert_eq!(f.app.seen(), 1);
}

#[tokio::test]
async fn openssl_s_client_with_bad_certificates_is_refused() {
    require("openssl");
    let f = Fixture::start(Options::default()).await;
    let addr = f.inbound.to_string();
    for kind in ["good", "expired", "nosan", "rogue", "none"] {
        let mut cmd = Command::new("openssl");
        cmd.args(["s_client", "-connect", &addr, "-quiet", "-alpn", "http/1.1"]);
        if kind != "none" {
            let (cert, key) = cert_files(&f, kind);
            cmd.args(["-cert", &cert, "-key", &key]);
        }
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let out = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut child = cmd.spawn().unwrap();
            let mut stdin = child.stdin.take().unwrap();
            let _ = stdin.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
            drop(stdin);
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if kind == "good" {
            assert!(
                stdout.starts_with("HTTP/1.1 200"),
                "openssl with a valid svid: {out:?}"
            );
        } else {
            assert!(
                !stdout.contains("HTTP/1.1 200"),
                "openssl with `{kind}` got through: {out:?}"
            );
        }
    }
    assert_eq!(f.app.seen(), 1);
}

/// A client offering only TLS 1.2, presenting a good SVID.
fn tls12_client(f: &Fixture) -> Client {
    let svid = f.ca.issue_svid(&id(WEB_ID), Duration::from_secs(600));
    let verifier = std::sync::Arc::new(warden_identity::SpiffeServerCertVerifier::new(
        std::sync::Arc::new(std::sync::Arc::new(TestCa::bundle_set(&[&f.ca]))),
        warden_identity::Authorize::AnyTrusted,
    ));
    let mut config =
        rustls::ClientConfig::builder_with_provider(warden_identity::tls::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(
                svid.cert_chain().to_vec(),
                rustls_pki_types::PrivateKeyDer::Pkcs8(svid.private_key().clone_key()),
            )
            .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Client {
        config: std::sync::Arc::new(config),
    }
}

#[tokio::test]
async fn tls12_is_refused_by_default_and_accepted_when_configured() {
    // Default: TLS 1.3 only; a TLS 1.2 client fails the handshake and nothing reaches the app.
    let f = Fixture::start(Options::default()).await;
    let result = tls12_client(&f).request(f.inbound, get("/x")).await;
    assert!(result.is_err(), "a TLS 1.2 client got through: {result:?}");
    wait_for_metric(&f, r#"reason="incompatible"} 1"#).await;
    assert_eq!(f.app.seen(), 0);
    // `tls12 = true`: the same client is served, and policies and the log see TLSv1.2.
    let f = Fixture::start(Options {
        inbound_extra: "tls12 = true",
        ..Options::default()
    })
    .await;
    let (status, _, body) = tls12_client(&f)
        .request(f.inbound, get("/x"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let records = f.decisions(1).await;
    assert_eq!(records[0].tls_version.as_deref(), Some("TLSv1.2"));
    assert_eq!(f.app.seen(), 1);
}
