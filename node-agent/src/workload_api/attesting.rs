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
        // From here the uid's count is given back by `Place`, or below.
        let acquired =
            tokio::time::timeout(self.max_wait, Arc::clone(&self.places).acquire_owned()).await;
        match acquired {
            Ok(Ok(permit)) => Ok(Place {
                _permit: permit,
                uid,
                attesting: Arc::clone(self),
            }),
            Ok(Err(_)) | Err(_) => {
                self.leave(uid);
                Err(Status::unavailable(
                    "workload attestation is busy; retry later",
                ))
            }
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

impl Drop for Place {
    fn drop(&mut self) {
        self.attesting.leave(self.uid);
    }
}
