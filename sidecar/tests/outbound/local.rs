//! Local clients of an outbound listener that misbehave at the connection level.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_sidecar::outbound::OutboundLimits;

use crate::support::*;

/// The HTTP/2 connection preface and an empty SETTINGS frame: an h2c client's opening.
const H2C_OPENING: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test]
async fn h2c_client_that_never_answers_pings_is_disconnected() {
    let pki = Pki::new();
    let upstream = Upstream::http(&pki).await;
    let mut limits = OutboundLimits::default();
    // Pings every 200 ms, each to be answered within 300 ms.
    limits.idle_timeout = Duration::from_millis(400);
    limits.handshake_timeout = Duration::from_millis(300);
    let proxy = Proxy::start(ProxyOptions {
        limits,
        ..ProxyOptions::http(&pki, &upstream)
    })
    .await;

    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client.write_all(H2C_OPENING).await.unwrap();
    // Read (and ignore) whatever the sidecar sends, answering nothing, until it closes.
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(WAIT, client.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "the silent h2c client kept its connection");
    // The sidecar spoke HTTP/2 to it: its SETTINGS frame (type 4) came first.
    assert!(sink.len() >= 9 && sink[3] == 4, "{sink:?}");
    assert_eq!(upstream.requests(), 0);
    proxy.stop().await;
}
