//! How many workload attestations run at once. Each reads `/proc` and may hash an executable of
//! up to 1 GiB; one whose executable sits on a filesystem that never answers never ends. So
//! they run on blocking threads (never the async workers that serve everything else), at most
//! [`MAX_ATTESTING`] at a time, at most [`MAX_PER_UID`] of them for one uid (so that one user
//! cannot take every place), and a caller waits at most [`MAX_WAIT`] for a place: past any
//! of these it gets Unavailable, which SPIFFE clients retry (W-5).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// Attestations that run at once.
pub(crate) const MAX_ATTESTING: usize = 4;
/// Attestations that run at once for one uid.
pub(crate) const MAX_PER_UID: usize = 2;
/// Longest wait for a place.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(10);

/// The places.
#[derive(Debug)]
pub(crate) struct Attesting {
    places: Arc<Semaphore>,
    per_uid: Mutex<HashMap<u32, usize>>,
    max_per_uid: usize,
    max_wait: Duration,
}

/// A place taken; given back when dropped (by the blocking task, when the attestation ends).
#[derive(Debug)]
pub(crate) struct Place {
    _permit: OwnedSemaphorePermit,
    _counted: Counted,
}

/// One attestation of `uid` counted against its share; uncounted when dropped, whether it got
/// a place or not (its caller gone while it waited, say).
#[derive(Debug)]
struct Counted {
    uid: u32,
    attesting: Arc<Attesting>,
}

impl Attesting {
    pub(crate) fn new() -> Arc<Self> {
        Self::with_limits(MAX_ATTESTING, MAX_PER_UID, MAX_WAIT)
    }

    pub(crate) fn with_limits(total: usize, per_uid: usize, max_wait: Duration) -> Arc<Self> {
        Arc::new(Self {
            places: Arc::new(Semaphore::new(total)),
            per_uid: Mutex::new(HashMap::new()),
            max_per_uid: per_uid,
            max_wait,
        })
    }

    /// A place for an attestation of a caller of `uid`, or Unavailable.
    pub(crate) async fn enter(self: &Arc<Self>, uid: u32) -> Result<Place, Status> {
        {
            let mut per_uid = self.per_uid.lock().unwrap_or_else(PoisonError::into_inner);
            let running = per_uid.entry(uid).or_insert(0);
            if *running >= self.max_per_uid {
                return Err(Status::unavailable(format!(
                    "{running} attestations of uid {uid} are still running; retry later"
                )));
            }
            *running += 1;
        }
        let counted = Counted {
            uid,
            attesting: Arc::clone(self),
        };
        let acquired =
            tokio::time::timeout(self.max_wait, Arc::clone(&self.places).acquire_owned()).await;
        match acquired {
            Ok(Ok(permit)) => Ok(Place {
                _permit: permit,
                _counted: counted,
            }),
            Ok(Err(_)) | Err(_) => Err(Status::unavailable(
                "workload attestation is busy; retry later",
            )),
        }
    }

    fn leave(&self, uid: u32) {
        let mut per_uid = self.per_uid.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(running) = per_uid.get_mut(&uid) {
            *running = running.saturating_sub(1);
            if *running == 0 {
                per_uid.remove(&uid);
            }
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.attesting.leave(self.uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller that goes away while it waits for a place is uncounted: its uid keeps its
    /// share.
    #[tokio::test]
    async fn a_caller_gone_while_waiting_leaves_its_uids_share_whole() {
        let attesting = Attesting::with_limits(1, 1, Duration::from_secs(60));
        let held = attesting.enter(1).await.unwrap();
        let waiting = {
            let attesting = Arc::clone(&attesting);
            tokio::spawn(async move { attesting.enter(2).await.map(drop) })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        waiting.abort();
        let _ = waiting.await;
        drop(held);
        // uid 2 has its share again: it gets the place.
        let place = tokio::time::timeout(Duration::from_secs(5), attesting.enter(2)).await;
        assert!(matches!(place, Ok(Ok(_))), "{place:?}");
    }
}
