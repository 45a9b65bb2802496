//! Local clients of the outbound listener: one HTTP/1.1 or h2c connection each.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::support::{BoxBody, WAIT};

/// A response with its body read.
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_default()
    }
}

/// One local connection to the outbound listener, HTTP/1.1 or h2c.
pub(crate) enum LocalClient {
    H1(hyper::client::conn::http1::SendRequest<BoxBody>),
    H2(hyper::client::conn::http2::SendRequest<BoxBody>),
}

impl LocalClient {
    pub(crate) async fn h1(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self::H1(send)
    }

    pub(crate) async fn h2(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        Self::H2(send)
    }

    /// Sends `req` (an origin-form path; HTTP/1.1 gets `Host: <addr>`, h2 an absolute URI).
    pub(crate) async fn send(
        &mut self,
        addr: SocketAddr,
        req: Request<BoxBody>,
    ) -> Response<Incoming> {
        let (mut parts, body) = req.into_parts();
        let response = match self {
            Self::H1(send) => {
                if !parts.headers.contains_key(http::header::HOST) {
                    parts
                        .headers
                        .insert(http::header::HOST, addr.to_string().parse().unwrap());
                }
                send.ready().await.unwrap();
                let fut = send.send_request(Request::from_parts(parts, body));
                tokio::time::timeout(WAIT, fut).await
            }
            Self::H2(send) => {
                parts.uri = format!("http://{addr}{}", parts.uri).parse().unwrap();
                parts.version = http::Version::HTTP_2;
                send.ready().await.unwrap();
                let fut = send.send_request(Request::from_parts(parts, body));
                tokio::time::timeout(WAIT, fut).await
            }
        };
        response.unwrap().unwrap()
    }

    /// Sends `req` and reads the whole body.
    pub(crate) async fn call(&mut self, addr: SocketAddr, req: Request<BoxBody>) -> Reply {
        let response = self.send(addr, req).await;
        read(response).await
    }

    /// `GET path`.
    pub(crate) async fn get(&mut self, addr: SocketAddr, path: &str) -> Reply {
        self.call(addr, get(path)).await
    }
}

pub(crate) async fn read(response: Response<Incoming>) -> Reply {
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(WAIT, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

pub(crate) fn get(path: &str) -> Request<BoxBody> {
    Request::get(path).body(empty()).unwrap()
}

pub(crate) fn empty() -> BoxBody {
    Full::new(Bytes::new()).map_err(Into::into).boxed_unsync()
}

pub(crate) fn body_of(bytes: impl Into<Bytes>) -> BoxBody {
    Full::new(bytes.into()).map_err(Into::into).boxed_unsync()
}

/// A body fed chunk by chunk from the returned sender.
pub(crate) fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, BoxBody) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| {
            (
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper::body::Frame::data(chunk)),
                rx,
            )
        })
    });
    (tx, http_body_util::StreamBody::new(stream).boxed_unsync())
}
