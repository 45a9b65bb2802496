//! Which HTTP version a plaintext client speaks (an outbound route's local clients, the inbound's
//! plaintext callers in permissive mode): HTTP/2 clients (h2c, prior knowledge) open with the
//! connection preface, anything else is HTTP/1.x. The first bytes are peeked, not read,
//! so whichever server then takes the connection reads them itself.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long to wait before peeking again at a connection that has sent part of the preface: the
/// first wait, doubled each time up to the last.
const PARTIAL_RETRY: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(50));

/// Whether the client on `stream` opened with the HTTP/2 preface. HTTP/1.x requests differ from
/// it within their first bytes; a client that has sent only part of it is peeked at again,
/// less and less often, until it sends the rest: the caller bounds that wait with a timeout. A
/// client that closes before sending anything is not h2c.
pub(crate) async fn is_h2c(stream: &TcpStream) -> io::Result<bool> {
    let mut buf = [0u8; PREFACE.len()];
    let mut retry = PARTIAL_RETRY.0;
    loop {
        let n = stream.peek(&mut buf).await?;
        let seen = buf.get(..n).unwrap_or_default();
        if n == 0 || !PREFACE.starts_with(seen) {
            return Ok(false);
        }
        if n == PREFACE.len() {
            return Ok(true);
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(PARTIAL_RETRY.1);
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A connected pair of loopback sockets: (client, server).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn the_preface_in_pieces_is_h2c_and_nothing_is_consumed() {
        let (mut client, mut server) = pair().await;
        let sniffing = tokio::spawn(async move {
            let h2 = is_h2c(&server).await.unwrap();
            let mut first = [0u8; PREFACE.len()];
            server.read_exact(&mut first).await.unwrap();
            (h2, first)
        });
        client.write_all(&PREFACE[..3]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(&PREFACE[3..]).await.unwrap();
        let (h2, first) = sniffing.await.unwrap();
        assert!(h2);
        assert_eq!(&first, PREFACE);
    }

    #[tokio::test]
    async fn http1_requests_are_told_by_their_first_bytes_even_short_ones() {
        // Shorter than the preface and sharing its first letter.
        for request in [
            &b"PUT / HTTP/1.0\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nhost: a\r\n\r\n",
        ] {
            let (mut client, server) = pair().await;
            client.write_all(request).await.unwrap();
            assert!(!is_h2c(&server).await.unwrap());
        }
    }

    #[tokio::test]
    async fn a_client_stalling_inside_the_preface_waits_for_the_callers_timeout() {
        let (mut client, server) = pair().await;
        client.write_all(b"PRI * HT").await.unwrap();
        let sniffed = tokio::time::timeout(Duration::from_millis(200), is_h2c(&server)).await;
        assert!(sniffed.is_err(), "{sniffed:?}");
        // Closing without a byte: not h2c.
        let (client, server) = pair().await;
        drop(client);
        assert!(!is_h2c(&server).await.unwrap());
    }
}
