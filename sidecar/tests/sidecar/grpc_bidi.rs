//! Client-streaming and bidirectional gRPC through the inbound listener: the request stream
//! stays open while responses flow back, each message passes as soon as it is sent (nothing is
//! buffered until the end), and the trailers arrive after the last one. The app behind the
//! sidecar is a bare HTTP/2 echo (the sidecar does not parse gRPC messages, only frames): it
//! sends each request message back as it arrives, then `grpc-status: 0`.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::support::*;

type Frames<E> = mpsc::Receiver<Result<Frame<Bytes>, E>>;

/// A body that yields what is sent on the channel, as it is sent.
fn channel_body<E>(rx: Frames<E>) -> StreamBody<ReceiverStream<Result<Frame<Bytes>, E>>> {
    StreamBody::new(ReceiverStream::new(rx))
}

/// An h2c app that echoes every DATA frame of a request as it arrives, then ends the response
/// with `grpc-status: 0` when the request ends.
async fn echo_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
                let mut body = req.into_body();
                tokio::spawn(async move {
                    while let Some(Ok(frame)) = body.frame().await {
                        if let Ok(data) = frame.into_data()
                            && tx.send(Ok(Frame::data(data))).await.is_err()
                        {
                            return;
                        }
                    }
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("0"));
                    let _ = tx.send(Ok(Frame::trailers(trailers))).await;
                });
                let mut resp = Response::new(channel_body(rx));
                resp.headers_mut()
                    .insert("content-type", HeaderValue::from_static("application/grpc"));
                Ok::<_, Infallible>(resp)
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// One gRPC message: the 5-byte prefix (not compressed, length) and the payload.
fn message(payload: &[u8]) -> Bytes {
    let mut m = vec![0];
    m.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    m.extend_from_slice(payload);
    Bytes::from(m)
}

#[tokio::test]
async fn grpc_bidi_stream_passes_each_message_as_sent_and_the_trailers_at_the_end() {
    let f = Fixture::start(Options {
        app_addr: Some(echo_app().await),
        ..Options::default()
    })
    .await;
    let tls = f.client(WEB_ID).connect(f.inbound).await.unwrap();
    let mut sender = crate::raw_http::h2_sender(tls).await;
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let req = Request::post("https://api.local/test.Echo/Chat")
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(channel_body(rx))
        .unwrap();
    // The first message goes out before the response is awaited; the request stays open.
    tx.send(Ok(Frame::data(message(b"one")))).await.unwrap();
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut next = async || {
        tokio::time::timeout(WAIT, body.frame())
            .await
            .expect("no frame within the wait: a message is held back")
            .unwrap()
            .unwrap()
    };
    // Each echo arrives while the request stream is still open (full duplex).
    assert_eq!(next().await.into_data().unwrap(), message(b"one"));
    tx.send(Ok(Frame::data(message(b"two")))).await.unwrap();
    assert_eq!(next().await.into_data().unwrap(), message(b"two"));
    tx.send(Ok(Frame::data(message(b"three")))).await.unwrap();
    assert_eq!(next().await.into_data().unwrap(), message(b"three"));
    // The client ends its stream: the app's trailers come back.
    drop(tx);
    let trailers = next().await.into_trailers().unwrap();
    assert_eq!(trailers["grpc-status"], "0");
    // One decision for the whole stream, as gRPC, allowed by `web-calls-grpc`.
    let records = f.decisions_exactly(1).await;
    assert_eq!(records[0].action, "grpc");
    assert_eq!(records[0].policy_ids, ["web-calls-grpc"]);
}
