//! Federation between CAs run as separate processes of the built binary (rule B-9): bundle
//! endpoints of both profiles (`https_spiffe`, `https_web`), `warden bundle fetch`, and the CA
//! keeping a relationship fresh by itself.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers fail fast, like the tests they serve"
)]

#[path = "support/procs.rs"]
#[allow(dead_code, reason = "each test binary uses some of the helpers")]
mod procs;

use std::path::Path;
use std::process::Command;

use warden_identity::test_util::free_port;

use procs::*;

/// Federation as an operator sets it up (rule B-9): partner.org's CA serves its bundle endpoint
/// (`https_spiffe`); example.org's operator fetches that bundle with `warden bundle fetch`,
/// authenticating the endpoint the first time with partner.org's root, then with the bundle it
/// holds. An endpoint with another SPIFFE ID, a plain `http://` URL and a first fetch with no
/// bundle to authenticate the endpoint are refused, naming the problem.
#[test]
fn a_federated_bundle_is_fetched_from_the_peers_bundle_endpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let endpoint_port = free_port();
    let (_partner, _) = start_ca(t, "partner.org", Some(endpoint_port), &[], &[]);
    let (_ours, socket) = start_ca(t, "example.org", None, &[], &[]);
    let conn = ["--admin-socket", socket.to_str().unwrap()];
    let url = format!("https://127.0.0.1:{endpoint_port}/");
    let root = t.join("partner.org/root.crt.pem");
    let fetch = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "bundle",
            "fetch",
            "--trust-domain",
            "partner.org",
            "--url",
            &url,
            "--endpoint-spiffe-id",
            "spiffe://partner.org/warden/ca",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        args.extend(extra.iter().map(ToString::to_string));
        args.extend(conn.iter().map(ToString::to_string));
        args
    };

    // No bundle of partner.org held yet, none given: nothing to authenticate the endpoint with.
    let args = fetch(&[]);
    let err = warden_fails(&as_strs(&args));
    assert!(
        err.contains("warden bundle set") && err.contains("--trust-bundle"),
        "{err}"
    );

    // The first fetch, with partner.org's root.
    let args = fetch(&["--trust-bundle", root.to_str().unwrap(), "--output", "json"]);
    let out = warden(&as_strs(&args));
    assert!(out.contains("\"partner.org\""), "{out}");
    let shown = warden(
        &[
            &["bundle", "show", "--trust-domain", "partner.org"],
            &conn[..],
        ]
        .concat(),
    );
    let root_pem = std::fs::read_to_string(&root).unwrap();
    let root_body: String = root_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let shown_body: String = shown.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(
        shown_body.contains(&root_body),
        "the fetched bundle lacks the root:\n{shown}"
    );

    // Again, authenticated with the bundle now held: unchanged, so not set (and audited) again.
    let args = fetch(&[]);
    let out = Command::new(bin()).args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unchanged"), "{err}");

    // An endpoint that is not the one named: refused at the handshake.
    let mut args = fetch(&[]);
    let id = args
        .iter()
        .position(|a| a == "spiffe://partner.org/warden/ca")
        .unwrap();
    args[id] = "spiffe://partner.org/someone-else".to_owned();
    let err = warden_fails(&as_strs(&args));
    assert!(err.contains("tls handshake failed"), "{err}");

    // The CA keeps a relationship fresh by itself when told to (`--federation`); a bad table,
    // and a federation with its own trust domain, stop it before it starts (exit 3).
    let ours_dir = t.join("example.org");
    let check = |table: &str| {
        Command::new(bin())
            .args(["ca", "serve", "--check-config", "--data-dir"])
            .arg(&ours_dir)
            .args(["--federation", table])
            .output()
            .unwrap()
    };
    let good = format!(
        "{{ trust_domain = \"partner.org\", url = \"{url}\", endpoint_spiffe_id = \"spiffe://partner.org/warden/ca\" }}"
    );
    let out = check(&good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (table, says) in [
        (
            "{ trust_domain = \"partner.org\" }".to_owned(),
            "--federation",
        ),
        (good.replace("https://", "http://"), "https://"),
        (
            good.replace("\"partner.org\"", "\"example.org\""),
            "own trust domain",
        ),
    ] {
        let out = check(&table);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{table}: {err}");
        assert!(err.contains(says), "{table}: {err}");
    }

    // Plain HTTP is not the https_spiffe profile.
    let mut args = fetch(&[]);
    let at = args.iter().position(|a| *a == url).unwrap();
    args[at] = format!("http://127.0.0.1:{endpoint_port}/");
    let err = warden_fails(&as_strs(&args));
    assert!(err.contains("https://"), "{err}");
}

/// A web PKI: a root (`root.pem`) and a certificate for `localhost` from it (`endpoint.crt`,
/// key `endpoint.key`, 0600), as a public CA or an ACME client would provide.
fn web_pki(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let root_key = KeyPair::generate().unwrap();
    let mut root_params = CertificateParams::new(Vec::new()).unwrap();
    root_params
        .distinguished_name
        .push(DnType::CommonName, "federation e2e web root");
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let root = root_params.self_signed(&root_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let issuer = rcgen::Issuer::new(root_params, root_key);
    let endpoint = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("root.pem"), root.pem()).unwrap();
    std::fs::write(dir.join("endpoint.crt"), endpoint.pem()).unwrap();
    std::fs::write(dir.join("endpoint.key"), key.serialize_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        dir.join("endpoint.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
}

/// `https_web` (rule B-9): partner.org's CA serves its bundle endpoint with a WebPKI
/// certificate for `localhost` from files; example.org's CA keeps the relationship fresh by
/// itself with nothing set out of band, trusting the certificate's root through
/// `SSL_CERT_FILE`; `warden bundle fetch --profile https_web` fetches it too, and refuses an
/// endpoint whose certificate the roots do not vouch for.
#[test]
fn an_https_web_bundle_endpoint_is_followed_with_nothing_set_out_of_band() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    web_pki(t);
    let (root, cert, key) = (
        t.join("root.pem"),
        t.join("endpoint.crt"),
        t.join("endpoint.key"),
    );
    let port = free_port();
    let (_partner, _) = start_ca(
        t,
        "partner.org",
        Some(port),
        &[
            "--bundle-endpoint-cert-file",
            cert.to_str().unwrap(),
            "--bundle-endpoint-key-file",
            key.to_str().unwrap(),
        ],
        &[],
    );
    let url = format!("https://localhost:{port}/");
    let table =
        format!("{{ trust_domain = \"partner.org\", url = \"{url}\", profile = \"https_web\" }}");
    let (mut ours, socket) = start_ca(
        t,
        "example.org",
        None,
        &["--federation", &table],
        &[("SSL_CERT_FILE", &root)],
    );
    let conn = ["--admin-socket", socket.to_str().unwrap()];

    // The CA fetched partner.org's bundle by itself: it holds partner.org's root.
    let show = || {
        Command::new(bin())
            .args(["bundle", "show", "--trust-domain", "partner.org"])
            .args(conn)
            .output()
            .unwrap()
    };
    wait_until("partner.org's bundle fetched", &mut ours, || {
        show().status.success()
    });
    let shown = String::from_utf8_lossy(&show().stdout).into_owned();
    let partner_root = std::fs::read_to_string(t.join("partner.org/root.crt.pem")).unwrap();
    let body = |pem: &str| -> String { pem.lines().filter(|l| !l.starts_with("-----")).collect() };
    assert!(body(&shown).contains(&body(&partner_root)), "{shown}");

    // `bundle fetch` the same way: unchanged, so not set again.
    let fetch = |roots: &Path| {
        Command::new(bin())
            .args([
                "bundle",
                "fetch",
                "--profile",
                "https_web",
                "--trust-domain",
                "partner.org",
            ])
            .args(["--url", &url])
            .args(conn)
            .env("SSL_CERT_FILE", roots)
            .env_remove("SSL_CERT_DIR")
            .output()
            .unwrap()
    };
    let out = fetch(&root);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("unchanged"), "{err}");

    // Roots that do not vouch for the endpoint's certificate (partner.org's SPIFFE root is no
    // web root of it): refused at the handshake.
    let out = fetch(&t.join("partner.org/root.crt.pem"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls handshake failed"), "{err}");
}
