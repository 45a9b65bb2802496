//! HTTP/1.1 spoken by hand over any stream, for what clients do not expose: upgrades and the
//! bytes of the upgraded connection.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::support::WAIT;

/// Writes an upgrade request to the `echo` protocol (with a forged XFCC) and reads the response
/// head.
pub(crate) async fn upgrade<I>(io: &mut I, method: &str, protocol: &str) -> String
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    upgrade_at(io, method, protocol, "/chat").await
}

/// [`upgrade`] at `path`.
pub(crate) async fn upgrade_at<I>(io: &mut I, method: &str, protocol: &str, path: &str) -> String
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: api.local\r\nconnection: upgrade\r\n\
         upgrade: {protocol}\r\nx-forwarded-client-cert: URI=spiffe://example.org/admin\r\n\
         content-length: 0\r\n\r\n"
    );
    io.write_all(request.as_bytes()).await.unwrap();
    read_head(io).await
}

/// Reads up to the end of a response head.
pub(crate) async fn read_head<I: AsyncRead + Unpin>(io: &mut I) -> String {
    read_until(io, b"\r\n\r\n").await.to_ascii_lowercase()
}

/// Reads the body of a response whose (lowercased) head is `head`, by its `content-length`.
pub(crate) async fn read_body<I: AsyncRead + Unpin>(io: &mut I, head: &str) -> String {
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap_or_else(|| panic!("no content-length in {head}"))
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0u8; length];
    tokio::time::timeout(WAIT, io.read_exact(&mut body))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8(body).unwrap()
}

/// Reads one `\n`-terminated line.
pub(crate) async fn read_line<I: AsyncRead + Unpin>(io: &mut I) -> String {
    read_until(io, b"\n").await
}

/// Reads byte by byte (nothing past `end` is consumed) until what was read ends with `end`.
async fn read_until<I: AsyncRead + Unpin>(io: &mut I, end: &[u8]) -> String {
    let mut read = Vec::new();
    let mut byte = [0u8; 1];
    while !read.ends_with(end) {
        let n = tokio::time::timeout(WAIT, io.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&read));
        read.push(byte[0]);
    }
    String::from_utf8(read).unwrap()
}

/// Sends `text` and expects it back.
pub(crate) async fn echo<I: AsyncRead + AsyncWrite + Unpin>(io: &mut I, text: &str) {
    io.write_all(text.as_bytes()).await.unwrap();
    let mut back = vec![0u8; text.len()];
    tokio::time::timeout(WAIT, io.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8(back).unwrap(), text);
}

/// Waits for the other side to close: EOF or a reset, within `within`.
pub(crate) async fn closed<I: AsyncRead + Unpin>(io: &mut I, within: Duration) {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(within, io.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(n)) => panic!("read {n} more bytes instead of the close"),
        Err(_) => panic!("still open after {within:?}"),
    }
}

/// Writes `msg` and reads its echo every 100 ms (bytes keep moving, so no idle timeout is what
/// ends it) until the other side closes; returns how long that took. Fails the test if it is
/// still open after [`WAIT`].
pub(crate) async fn echo_until_closed<I: AsyncRead + AsyncWrite + Unpin>(
    io: &mut I,
    msg: &[u8],
) -> Duration {
    let started = tokio::time::Instant::now();
    let mut back = vec![0u8; msg.len()];
    loop {
        let echoed = async {
            io.write_all(msg).await?;
            io.read_exact(&mut back).await
        };
        if echoed.await.is_err() {
            return started.elapsed();
        }
        assert!(started.elapsed() < WAIT, "still open after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// HTTP/2 frame types and flags (RFC 9113 §6), for tests that write frames by hand.
pub(crate) mod h2frame {
    pub(crate) const DATA: u8 = 0;
    pub(crate) const HEADERS: u8 = 1;
    pub(crate) const RST_STREAM: u8 = 3;
    pub(crate) const SETTINGS: u8 = 4;
    pub(crate) const PING: u8 = 6;
    pub(crate) const GOAWAY: u8 = 7;
    pub(crate) const END_STREAM: u8 = 0x1;
    pub(crate) const ACK: u8 = 0x1;
    pub(crate) const END_HEADERS: u8 = 0x4;
}

/// An HTTP/2 frame: type, flags, stream id, payload.
pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HTTP/2 client connection over `io` (an established TLS stream with ALPN `h2`), its
/// connection task spawned: the handle to send requests on.
pub(crate) async fn h2_sender<I, B>(io: I) -> hyper::client::conn::http2::SendRequest<B>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}
