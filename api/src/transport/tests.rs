//! The listener's limits, and address parsing.
use super::*;

/// Resolves no certificate: enough for tests that never finish a handshake.
#[derive(Debug)]
struct NoCertificate;

impl rustls::server::ResolvesServerCert for NoCertificate {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }
}

/// Whether the server closes `tcp` (reads end) within `within`.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(within, tcp.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Past either limit (here one place, held by a client that never starts its handshake)
/// a new connection is closed at accept; once the place is given back, a connection is
/// kept again. Each limit is checked with the other one out of the way.
#[tokio::test]
async fn connections_past_the_limits_are_closed_at_accept() {
    for limits in [
        Limits {
            max_connections: 1,
            max_handshakes: 4,
            ..Limits::default()
        },
        Limits {
            max_connections: 4,
            max_handshakes: 1,
            ..Limits::default()
        },
        Limits {
            max_handshakes_per_source: 1,
            ..Limits::default()
        },
    ] {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(NoCertificate));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _incoming = tls_incoming_with(listener, Arc::new(config), limits);
        let held = TcpStream::connect(addr).await.unwrap();
        let mut refused = TcpStream::connect(addr).await.unwrap();
        // At once, not at the end of its handshake timeout (10 s).
        assert!(
            closed_within(&mut refused, Duration::from_secs(3)).await,
            "{limits:?}"
        );
        // The held connection goes; its failed handshake gives the place back.
        drop(held);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut next = TcpStream::connect(addr).await.unwrap();
            if !closed_within(&mut next, Duration::from_millis(300)).await {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{limits:?}: the place never came back"
            );
        }
    }
}

/// Accepts any server certificate: these tests are about what the server holds, not who
/// it is.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A connection without a client certificate lasts `unauthenticated_lifetime`, and past
/// `max_unauthenticated` of them (in all, or `max_unauthenticated_per_source` from one address)
/// one more is closed after its handshake: they cannot hold the server's places for good.
#[tokio::test]
async fn connections_without_a_client_certificate_are_bounded_in_number_and_time() {
    use tokio::io::AsyncReadExt;
    use tokio_stream::StreamExt;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let server = Arc::new(server);
    // The limit in all, and the one per source address, each with the other out of the way.
    for limits in [
        Limits {
            max_unauthenticated: 1,
            unauthenticated_lifetime: Duration::from_millis(300),
            ..Limits::default()
        },
        Limits {
            max_unauthenticated_per_source: 1,
            unauthenticated_lifetime: Duration::from_millis(300),
            ..Limits::default()
        },
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = tls_incoming_with(listener, Arc::clone(&server), limits);
        let connect = || async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            connector.connect(name, tcp).await.unwrap()
        };
        let _first = connect().await;
        let mut kept = tokio::time::timeout(Duration::from_secs(10), incoming.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        // A second one completes its handshake and is closed: the server never serves it.
        let mut second = connect().await;
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(10), second.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "{limits:?}: {read:?}");
        // The first ends with its lifetime: the server's reads fail.
        let started = std::time::Instant::now();
        let read = tokio::time::timeout(Duration::from_secs(10), kept.read(&mut byte)).await;
        assert!(
            matches!(&read, Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut),
            "{limits:?}: {read:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

/// One IPv6 host commonly holds a whole /64: its addresses count as one source; an IPv4-mapped
/// address counts as its IPv4 one.
#[test]
fn sources_are_ipv4_addresses_and_ipv6_64s() {
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    assert_eq!(source_of(ip("10.0.0.7")), ip("10.0.0.7"));
    assert_eq!(source_of(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
    assert_eq!(
        source_of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
        source_of(ip("2001:db8:1:2::1"))
    );
    assert_ne!(
        source_of(ip("2001:db8:1:3::1")),
        source_of(ip("2001:db8:1:2::1"))
    );
    assert_eq!(source_of(ip("::ffff:10.0.0.7")), ip("10.0.0.7"));
}

#[test]
fn host_of_strips_port_and_brackets() {
    assert_eq!(host_of("127.0.0.1:8081"), "127.0.0.1");
    assert_eq!(host_of("[::1]:8081"), "::1");
    assert_eq!(host_of("ca.example.org:443"), "ca.example.org");
}

/// Failed handshakes and refused connections are logged once a second at most, the first at
/// once, each line with the count since the last.
#[test]
fn throttled_events_are_reported_first_then_with_a_count() {
    let events = std::sync::Mutex::new(Refused::default());
    assert_eq!(Refused::due(&events), Some(1));
    for _ in 0..100 {
        assert_eq!(Refused::due(&events), None);
    }
    // A second later the next one is reported, with the 100 before it.
    events
        .lock()
        .unwrap()
        .warned
        .replace(std::time::Instant::now() - Duration::from_secs(1));
    assert_eq!(Refused::due(&events), Some(101));
    assert_eq!(Refused::due(&events), None);
}
