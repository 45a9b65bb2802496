//! Callers that reset most of their streams: the HTTP/2 rapid-reset pattern (CVE-2023-44487).
//! Each stream a caller opens makes the sidecar decide it and start it at the app or upstream;
//! one the caller resets at once is work done for nothing, and on the shared connection to the
//! app such resets add up towards the app closing it (see `h2_client::linger`). As Envoy does
//! (its `premature_reset` overload settings), a connection whose caller has reset more than half
//! of its streams within [`PREMATURE`] of opening them, once [`JUDGED_AFTER`] have ended, is
//! sent away: GOAWAY, its streams in flight finish (for up to [`DRAIN`]), and streams it opens
//! after [`GRACE`] are refused. (Gracefully, where Envoy closes it: a connection from another
//! sidecar carries other callers' streams too.) A client whose deadlines are shorter than
//! [`PREMATURE`] and mostly expire (against a slow app) looks the same; through another
//! sidecar its connection is then replaced every hundred streams or so.

use std::time::Duration;

/// A stream the caller resets this soon after opening it (before its response began) is reset
/// prematurely.
pub(super) const PREMATURE: Duration = Duration::from_secs(1);
/// Streams that must have ended before a connection is judged (then judged on all its streams
/// so far, at every stream that ends).
pub(super) const JUDGED_AFTER: u64 = 100;
/// After the GOAWAY, how long new streams are still taken (an honest client stops opening
/// them once the GOAWAY arrives); later ones are refused (`REFUSED_STREAM`).
pub(super) const GRACE: Duration = Duration::from_secs(1);
/// How long a connection sent away keeps its streams in flight; then it is closed, whatever
/// the caller does (it need never answer the GOAWAY's ping, or let its streams end).
pub(super) const DRAIN: Duration = Duration::from_secs(30);

/// A connection's ended streams and how many of them the caller reset prematurely.
#[derive(Debug, Default)]
pub(super) struct PrematureResets {
    ended: u64,
    premature: u64,
}

impl PrematureResets {
    /// Counts an ended stream; true when the connection should now be closed.
    pub(super) fn ended(&mut self, premature: bool) -> bool {
        self.ended += 1;
        self.premature += u64::from(premature);
        self.ended >= JUDGED_AFTER && self.premature * 2 > self.ended
    }

    /// `(premature, ended)`, for the log.
    pub(super) fn counts(&self) -> (u64, u64) {
        (self.premature, self.ended)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::Empty;

    use super::super::{Conn, H2Server};
    use super::*;

    /// A caller sent away for resetting its streams, that keeps a stream open which never
    /// ends, has its connection closed `DRAIN` after the GOAWAY. (Paused time: the runtime
    /// jumps to the next timer whenever every task waits.)
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_sent_away_connection_is_closed_after_the_drain_whatever_the_caller_does() {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(async move {
            let conn = Conn {
                io: server_io,
                peer: SocketAddr::from(([127, 0, 0, 1], 1)),
                idle: std::future::pending(),
                stop: std::future::pending(),
            };
            H2Server::new(16 * 1024, 1000, None, Duration::from_secs(3600))
                .serve(conn, |req| async move {
                    // `/hang` never gets an answer; the others only after a while, so the
                    // caller's resets come before their responses begin.
                    let wait = if req.uri().path() == "/hang" {
                        86_400
                    } else {
                        5
                    };
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                    Response::new(Empty::<Bytes>::new())
                })
                .await;
        });
        let (mut client, connection) = h2::client::handshake(client_io).await.unwrap();
        let driver = tokio::spawn(connection);
        let mut hanging = None;
        for n in 0..=JUDGED_AFTER {
            client = client.ready().await.unwrap();
            let path = if n == 0 { "/hang" } else { "/slow" };
            let req = Request::get(format!("http://svc{path}")).body(()).unwrap();
            let (response, _) = client.send_request(req, true).unwrap();
            if n == 0 {
                hanging = Some(response);
            } else {
                // Dropped at once: the client resets the stream (CANCEL).
                drop(response);
                tokio::task::yield_now().await;
            }
        }
        let sent_away = tokio::time::Instant::now();
        // The caller was told to go away: its client opens no new stream.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let refused = client.ready().await.and_then(|mut client| {
            let req = Request::get("http://svc/later").body(()).unwrap();
            client.send_request(req, true).map(drop)
        });
        assert!(refused.is_err(), "no GOAWAY came");
        let ended = tokio::time::timeout(10 * DRAIN, server).await;
        assert!(
            ended.is_ok(),
            "still open {:?} after the GOAWAY",
            10 * DRAIN
        );
        let took = sent_away.elapsed();
        assert!(
            took >= DRAIN && took < DRAIN + Duration::from_secs(2),
            "closed {took:?} after being sent away"
        );
        // The stream that never ended is gone with the connection.
        assert!(hanging.unwrap().await.is_err());
        driver.abort();
    }

    #[test]
    fn a_connection_is_judged_after_enough_streams_by_the_share_reset_prematurely() {
        let mut resets = PrematureResets::default();
        for _ in 0..JUDGED_AFTER - 1 {
            assert!(!resets.ended(true), "judged before {JUDGED_AFTER} streams");
        }
        assert!(resets.ended(true));

        let mut resets = PrematureResets::default();
        for n in 0..1000 {
            // Every other stream reset: half, not more than half.
            assert!(!resets.ended(n % 2 == 0 && n > 0), "{:?}", resets.counts());
        }
        // 499 of 1000: it takes three more to pass half.
        assert!(!resets.ended(true));
        assert!(!resets.ended(true));
        assert!(resets.ended(true), "{:?}", resets.counts());
    }
}
