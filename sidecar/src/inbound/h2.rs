//! Inbound connections that chose `h2` by ALPN: served by the sidecar's own HTTP/2 server
//! ([`H2Server`](crate::h2_server::H2Server)), each stream decided and forwarded by
//! [`handle`], exactly as hyper's server does it for HTTP/1.1 (and for HTTP/2 by prior
//! knowledge in permissive mode).

use std::future::Future;
use std::sync::Arc;

use futures::future;
use tokio::io::{AsyncRead, AsyncWrite};

use super::http::{handle, lapsed_answer};
use super::record;
use super::{ConnInfo, Shared};
use crate::config::AppProtocol;
use crate::h2_server::Conn;
use crate::lapse::LapseSignal;
use crate::orig_proto;

/// Serves one HTTP/2 connection until it ends or `idle` completes. When the sidecar stops, or
/// `lapsed` completes (the caller's credentials lapsed, `signal`), the connection sends GOAWAY,
/// finishes the streams in flight and closes; a stream opened after the lapse gets 503.
pub(super) async fn serve<I>(
    shared: Arc<Shared>,
    io: I,
    conn: ConnInfo,
    idle: impl Future<Output = ()>,
    lapsed: impl Future<Output = ()>,
    signal: Arc<LapseSignal>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = &*shared;
    let conn = &conn;
    let xfcc = record::xfcc(conn);
    let mut stop = shared.stop.subscribe();
    let stop = async move {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => {}
            () = lapsed => {}
        }
    };
    let connection = Conn {
        io,
        peer: conn.source,
        idle,
        stop,
    };
    shared
        .h2
        .serve(connection, |req| {
            // The client may open streams until it acknowledges the GOAWAY: none is served
            // once its credentials have lapsed.
            if signal.is_lapsed() {
                return future::Either::Right(future::ready(lapsed_answer(shared)));
            }
            future::Either::Left(handle(shared, conn, xfcc.clone(), req, |req| {
                // HTTP/1.x carried over HTTP/2 by an outbound sidecar reaches the app as it came.
                match shared.app.protocol() {
                    AppProtocol::Auto if !orig_proto::is_http1(&req) => {
                        future::Either::Left(shared.app.send_h2(req))
                    }
                    // Boxed: the common path's stream futures stay as small as they were.
                    AppProtocol::Auto | AppProtocol::Http1 => {
                        future::Either::Right(Box::pin(shared.app.send_h2_as_h1(req)))
                    }
                }
            }))
        })
        .await;
}
