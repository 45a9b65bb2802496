//! Connections whose caller's credentials lapse: its SVID expires, or a new bundle no longer
//! verifies it. Each is closed (HTTP/1.1 after the request in flight, HTTP/2 with GOAWAY, a
//! request still in flight dropped one idle timeout later); a rotation that keeps trust keeps
//! them.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use warden_identity::test_util::TestCa;

use crate::raw_http::frame;
use crate::support::*;

#[tokio::test]
async fn a_rotation_that_keeps_the_old_root_keeps_established_connections() {
    let f = Fixture::start(Options::default()).await;
    let new_ca = TestCa::new(TD);
    let mut both = f.ca.bundle();
    both.add_x509_authority(new_ca.root_cert().clone());
    let svid = f.ca.issue_svid(&id(WEB_ID), Duration::from_secs(600));
    let client = Client::new(Some(svid), std::iter::once(both.clone()).collect()).http1();
    let mut kept = client.http1_sender(f.inbound).await;
    assert_eq!(
        kept.send_request(get("/x")).await.unwrap().status(),
        StatusCode::OK
    );
    // The sidecar moves to an SVID of the new root; the bundle holds both roots.
    let own = new_ca.issue_svid(&id(SIDECAR_ID), Duration::from_secs(3600));
    f.api.set_with_bundle(&own, &both, &[]);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let tls = client.connect(f.inbound).await.unwrap();
        if tls.get_ref().1.peer_certificates().unwrap()[0].as_ref() == own.cert_chain()[0].as_ref()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new svid was never used"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    kept.ready().await.unwrap();
    assert_eq!(
        kept.send_request(get("/x")).await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_connection_is_not_served_past_its_callers_svid_expiry() {
    let f = Fixture::start(Options::default()).await;
    let client = short_lived(&f).http1();
    served_until_it_lapses(&client, &f).await;
    assert!(client.request(f.inbound, get("/x")).await.is_err());
}

/// An intermediate that expires before the caller's leaf ends the chain there: the verifier
/// checks every certificate's validity, so the connection does not outlive it.
#[tokio::test]
async fn a_connection_is_not_served_past_the_expiry_of_an_intermediate_in_the_callers_chain() {
    let f = Fixture::start(Options::default()).await;
    let intermediate =
        f.ca.intermediate_until(std::time::SystemTime::now() + Duration::from_secs(2));
    let svid = intermediate.issue_svid(&id(WEB_ID), Duration::from_secs(3600));
    let client = Client::new(Some(svid), std::iter::once(f.ca.bundle()).collect()).http1();
    served_until_it_lapses(&client, &f).await;
}

/// One HTTP/1.1 connection of `client`, kept busy (the idle timeout never fires), is served
/// and then closed once what it presented expires (`notAfter` is in whole seconds: at least
/// 1 s after the handshake), not before.
async fn served_until_it_lapses(client: &Client, f: &Fixture) {
    let mut kept = client.http1_sender(f.inbound).await;
    assert_eq!(
        kept.send_request(get("/x")).await.unwrap().status(),
        StatusCode::OK
    );
    let started = tokio::time::Instant::now();
    closed_sender(&mut kept).await;
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}

/// The same over HTTP/2: GOAWAY once the SVID has expired.
#[tokio::test]
async fn an_http2_connection_is_not_served_past_its_callers_svid_expiry() {
    let f = Fixture::start(Options::default()).await;
    let client = short_lived(&f);
    let tls = client.connect(f.inbound).await.unwrap();
    let mut sender = crate::raw_http::h2_sender(tls).await;
    let started = tokio::time::Instant::now();
    let mut served = 0;
    while sender.ready().await.is_ok() {
        match sender.send_request(get_h2("/x")).await {
            Ok(resp) => {
                assert_eq!(resp.status(), StatusCode::OK);
                served += 1;
            }
            Err(_) => break,
        }
        assert!(started.elapsed() < WAIT, "still served after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served > 0 && started.elapsed() >= Duration::from_millis(500));
}

/// A request still in flight when its caller's SVID expires has one idle timeout to finish:
/// a body that never ends (bytes keep coming, so the idle timeout itself never fires) does not
/// keep the connection past it.
#[tokio::test]
async fn a_request_in_flight_when_the_callers_svid_expires_has_one_idle_timeout_to_finish() {
    use tokio::io::AsyncWriteExt;
    let f = Fixture::start_with_limits(r#"idle_timeout = "1s""#).await;
    let client = short_lived(&f).http1();
    let mut tls = client.connect(f.inbound).await.unwrap();
    tls.write_all(b"GET /x HTTP/1.1\r\nhost: api.local\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    loop {
        if tls.write_all(b"1\r\nx\r\n").await.is_err() || tls.flush().await.is_err() {
            break;
        }
        assert!(started.elapsed() < WAIT, "still open after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Expiry (at least 1 s away) plus the 1 s grace.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

/// Keeps sending requests on `sender` (so that neither the idle timeout nor the request-head
/// deadline can be what closes it) until the server closes the connection.
pub(crate) async fn closed_sender(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while sender.ready().await.is_ok() {
        if let Ok(resp) = sender.send_request(get("/x")).await {
            assert_eq!(resp.status(), StatusCode::OK);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the connection was still served after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An HTTP/2 client that never acknowledges the GOAWAY may still open streams (h2 sends the
/// real GOAWAY only once its PING is answered): none of them is served once its SVID expired.
#[tokio::test]
async fn http2_streams_opened_after_the_callers_svid_expired_are_not_served() {
    use tokio::io::AsyncWriteExt;
    let f = Fixture::start(Options::default()).await;
    let client = short_lived(&f);
    let mut tls = client.connect(f.inbound).await.unwrap();
    // `GET /x` with `:scheme https`, `:authority api.local` (HPACK literals, no Huffman).
    let mut block = vec![0x82, 0x87, 0x04, 2];
    block.extend_from_slice(b"/x");
    block.extend_from_slice(&[0x01, 9]);
    block.extend_from_slice(b"api.local");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&frame(4, 0, 0, &[]));
    out.extend_from_slice(&frame(1, 0x5, 1, &block));
    tls.write_all(&out).await.unwrap();
    // Read frames (never answering a PING) until the GOAWAY, after the first answer.
    let mut answered = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (kind, stream) = tokio::time::timeout_at(deadline, read_frame(&mut tls))
            .await
            .expect("no GOAWAY");
        if kind == 0x1 {
            answered.push(stream);
        }
        if kind == 0x7 {
            break;
        }
    }
    assert_eq!(answered, [1]);
    assert_eq!(f.app.seen(), 1);
    // A new stream now gets an answer, but the app never sees it.
    tls.write_all(&frame(1, 0x5, 3, &block)).await.unwrap();
    loop {
        let (kind, stream) = tokio::time::timeout_at(deadline, read_frame(&mut tls))
            .await
            .expect("no answer on stream 3");
        assert_ne!(kind, 0x3, "stream reset");
        if kind == 0x1 && stream == 3 {
            break;
        }
    }
    assert_eq!(f.app.seen(), 1);
    wait_for_metric(
        &f,
        r#"warden_sidecar_requests_total{direction="inbound",decision="none",status_class="5xx"} 1"#,
    )
    .await;
}

/// Reads one HTTP/2 frame: its type and stream id.
async fn read_frame<I: tokio::io::AsyncRead + Unpin>(io: &mut I) -> (u8, u32) {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 9];
    io.read_exact(&mut head).await.unwrap();
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    io.read_exact(&mut payload).await.unwrap();
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    (head[3], stream)
}

/// A client for `web` whose SVID expires in 2 s.
pub(crate) fn short_lived(f: &Fixture) -> Client {
    let svid = f.ca.issue_svid(&id(WEB_ID), Duration::from_secs(2));
    Client::new(Some(svid), std::iter::once(f.ca.bundle()).collect())
}
