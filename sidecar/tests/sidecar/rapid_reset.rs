//! A rapid-reset caller that ignores being sent away: after the GOAWAY it keeps opening
//! streams and never answers the GOAWAY's ping. Streams it opens more than a second later are
//! refused and never reach the app. (Written frame by frame: hyper's client honours GOAWAY.)

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::raw_http::frame;
use crate::raw_http::h2frame::*;
use crate::support::*;

const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;

/// An HPACK block for `GET https://api<path>`, literals never indexed (no table state).
fn get(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x87, 0x04, u8::try_from(path.len()).unwrap()];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 3]);
    block.extend_from_slice(b"api");
    block
}

/// The next frame: type, stream id, payload.
async fn next_frame<I: AsyncRead + Unpin>(io: &mut I) -> (u8, u32, Vec<u8>) {
    let mut head = [0u8; 9];
    io.read_exact(&mut head).await.unwrap();
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    io.read_exact(&mut payload).await.unwrap();
    (head[3], stream, payload)
}

/// Reads frames until one of `kind` (on `stream`, if given) arrives; its payload.
async fn until<I: AsyncRead + Unpin>(io: &mut I, kind: u8, stream: Option<u32>) -> Vec<u8> {
    tokio::time::timeout(WAIT, async {
        loop {
            let (k, s, payload) = next_frame(io).await;
            if k == kind && stream.is_none_or(|want| want == s) {
                return payload;
            }
        }
    })
    .await
    .expect("frame never came")
}

#[tokio::test]
async fn a_rapid_reset_caller_that_ignores_the_goaway_has_its_new_streams_refused() {
    let f = Fixture::start(Options::default()).await;
    let mut tls = f.client(WEB_ID).connect(f.inbound).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&frame(SETTINGS, 0, 0, &[]));
    for n in 0..100u32 {
        out.extend_from_slice(&frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            2 * n + 1,
            &get("/slow"),
        ));
    }
    tls.write_all(&out).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while f.app.seen() < 100 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} reached the app",
            f.app.seen()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Every one given up on at once.
    let mut resets = Vec::new();
    for n in 0..100u32 {
        resets.extend_from_slice(&frame(RST_STREAM, 0, 2 * n + 1, &CANCEL.to_be_bytes()));
    }
    tls.write_all(&resets).await.unwrap();
    until(&mut tls, GOAWAY, Some(0)).await;
    // The GOAWAY's ping is never answered, and a second later a new stream is opened.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    tls.write_all(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        201,
        &get("/after"),
    ))
    .await
    .unwrap();
    let code = until(&mut tls, RST_STREAM, Some(201)).await;
    assert_eq!(code, REFUSED_STREAM.to_be_bytes());
    assert_eq!(f.app.seen(), 100, "the refused stream reached the app");
}
