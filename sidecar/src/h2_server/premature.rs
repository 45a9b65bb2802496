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
    use super::*;

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
