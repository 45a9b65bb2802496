//! Tests of the configuration: defaults, overlays and every refused value.

use super::*;

fn flags_with_dir() -> RawConfig {
    RawConfig {
        data_dir: Some("/tmp/ca".into()),
        ..RawConfig::default()
    }
}

#[test]
fn bundle_endpoint_certificate_files_come_as_a_pair_on_a_served_endpoint() {
    let raw = |cert: Option<&str>, key: Option<&str>, listen: bool| RawConfig {
        bundle_endpoint_listen: listen.then(|| "127.0.0.1:8443".to_owned()),
        bundle_endpoint_cert_file: cert.map(PathBuf::from),
        bundle_endpoint_key_file: key.map(PathBuf::from),
        ..flags_with_dir()
    };
    let c = raw(Some("/e.crt"), Some("/e.key"), true).resolve().unwrap();
    assert_eq!(
        c.bundle_endpoint_web,
        Some(WebCertFiles {
            cert_file: "/e.crt".into(),
            key_file: "/e.key".into(),
            sync_interval: WebCertFiles::SYNC_INTERVAL,
        })
    );
    assert_eq!(
        raw(None, None, true).resolve().unwrap().bundle_endpoint_web,
        None
    );
    for (config, says) in [
        (
            raw(Some("/e.crt"), None, true),
            "bundle_endpoint_key_file, its private key",
        ),
        (
            raw(None, Some("/e.key"), true),
            "bundle_endpoint_cert_file, its certificate",
        ),
        (
            raw(Some("/e.crt"), Some("/e.key"), false),
            "set bundle_endpoint_listen",
        ),
    ] {
        let err = config.resolve().unwrap_err().to_string();
        assert!(err.contains(says), "{err}");
    }
    let file = RawConfig::from_toml(
        "bundle_endpoint_cert_file = \"/e.crt\"\nbundle_endpoint_key_file = \"/e.key\"\n",
        Path::new("ca.toml"),
    )
    .unwrap();
    assert_eq!(file.bundle_endpoint_key_file, Some("/e.key".into()));
}

#[test]
fn defaults_apply() {
    let c = flags_with_dir().resolve().unwrap();
    assert_eq!(c.listen, "127.0.0.1:8081".parse().unwrap());
    assert_eq!(c.http_listen, "127.0.0.1:8082".parse().unwrap());
    assert_eq!(c.ttls.ca, Duration::from_secs(86_400));
    assert_eq!(c.ttls.x509_svid, Duration::from_secs(3600));
    assert_eq!(c.ttls.jwt_svid, Duration::from_secs(300));
    assert_eq!(c.admin_socket, PathBuf::from("/tmp/ca/admin.sock"));
    assert_eq!(c.datastore, "/tmp/ca/datastore.sqlite3");
}

#[test]
fn flags_override_file() {
    let file = RawConfig::from_toml(
        "data_dir = \"/a\"\nca_ttl = \"2h\"\nlisten = \"127.0.0.1:1\"",
        Path::new("ca.toml"),
    )
    .unwrap();
    let flags = RawConfig {
        ca_ttl: Some("3h".into()),
        ..RawConfig::default()
    };
    let c = file.overlay(flags).resolve().unwrap();
    assert_eq!(c.ttls.ca, Duration::from_secs(3 * 3600));
    assert_eq!(c.listen, "127.0.0.1:1".parse().unwrap());
    assert_eq!(c.data_dir, PathBuf::from("/a"));
}

#[test]
fn unknown_key_is_rejected_naming_it() {
    let err = RawConfig::from_toml("data_dir = \"/a\"\nca_tll = \"1h\"", Path::new("ca.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("ca_tll"), "{err}");
    assert!(err.contains("ca.toml"), "{err}");
}

#[test]
fn bad_duration_names_key_and_value() {
    let mut raw = flags_with_dir();
    raw.svid_ttl = Some("soon".into());
    let err = raw.resolve().unwrap_err().to_string();
    assert!(
        err.contains("`svid_ttl`") && err.contains("`soon`"),
        "{err}"
    );
}

#[test]
fn too_short_ca_ttl_is_rejected() {
    let mut raw = flags_with_dir();
    raw.ca_ttl = Some("2s".into());
    let err = raw.resolve().unwrap_err().to_string();
    assert!(err.contains("`ca_ttl`"), "{err}");
}

#[test]
fn bad_listen_address_is_rejected() {
    let mut raw = flags_with_dir();
    raw.listen = Some("localhost".into());
    let err = raw.resolve().unwrap_err().to_string();
    assert!(
        err.contains("`listen`") && err.contains("`localhost`"),
        "{err}"
    );
}

#[test]
fn missing_data_dir_is_an_error() {
    let err = RawConfig::default().resolve().unwrap_err().to_string();
    assert!(err.contains("data_dir"), "{err}");
}

#[test]
fn federation_relationships_are_read_and_checked_naming_the_problem() {
    let file = RawConfig::from_toml(
        "data_dir = \"/a\"\nbundle_endpoint_listen = \"0.0.0.0:8443\"\n\
         [[federation]]\ntrust_domain = \"partner.org\"\n\
         url = \"https://ca.partner.org:8443/\"\n\
         endpoint_spiffe_id = \"spiffe://partner.org/warden/ca\"\n",
        Path::new("ca.toml"),
    )
    .unwrap();
    let c = file.clone().resolve().unwrap();
    assert_eq!(
        c.bundle_endpoint_listen,
        Some("0.0.0.0:8443".parse().unwrap())
    );
    assert_eq!(c.federation.len(), 1);
    assert_eq!(c.federation[0].trust_domain.name(), "partner.org");
    assert_eq!(
        c.federation[0].endpoint,
        Endpoint::Spiffe("spiffe://partner.org/warden/ca".parse().unwrap())
    );
    let good = file.federation.clone().unwrap().remove(0);
    for (change, says) in [
        (
            RawRelationship {
                url: "http://ca.partner.org/".into(),
                ..good.clone()
            },
            "https://",
        ),
        (
            RawRelationship {
                endpoint_spiffe_id: Some("partner.org".into()),
                ..good.clone()
            },
            "endpoint_spiffe_id",
        ),
        (
            RawRelationship {
                endpoint_spiffe_id: Some("spiffe://partner.org".into()),
                ..good.clone()
            },
            "no path",
        ),
        (
            RawRelationship {
                endpoint_spiffe_id: None,
                ..good.clone()
            },
            "endpoint_spiffe_id is missing",
        ),
        (
            RawRelationship {
                profile: Some("https_web".into()),
                ..good.clone()
            },
            "endpoint_spiffe_id is for the https_spiffe profile",
        ),
        (
            RawRelationship {
                profile: Some("https".into()),
                ..good.clone()
            },
            "profile `https` is not `https_spiffe` or `https_web`",
        ),
        (
            RawRelationship {
                url: "https://ca.partner.org:84430/".into(),
                ..good.clone()
            },
            "port",
        ),
        (
            RawRelationship {
                trust_domain: "partner org".into(),
                ..good.clone()
            },
            "trust_domain",
        ),
    ] {
        let mut raw = flags_with_dir();
        raw.federation = Some(vec![change]);
        let err = raw.resolve().unwrap_err().to_string();
        assert!(err.contains("`federation`") && err.contains(says), "{err}");
    }
    // https_web: no endpoint SPIFFE ID; an explicit https_spiffe is the default's meaning.
    let web = RawRelationship {
        profile: Some("https_web".into()),
        endpoint_spiffe_id: None,
        ..good.clone()
    };
    assert_eq!(web.resolve().unwrap().endpoint, Endpoint::Web);
    let explicit = RawRelationship {
        profile: Some("https_spiffe".into()),
        ..good.clone()
    };
    assert_eq!(explicit.resolve(), good.resolve());
    let mut raw = flags_with_dir();
    raw.federation = Some(vec![good.clone(), good]);
    let err = raw.resolve().unwrap_err().to_string();
    assert!(err.contains("listed twice"), "{err}");
    let err = RawConfig::from_toml(
        "[[federation]]\ntrust_domain = \"p.org\"\nurl = \"https://p\"\nendpoint_id = \"x\"\n",
        Path::new("ca.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("endpoint_id"), "{err}");
}
