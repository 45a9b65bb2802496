//! How many Workload API streams are open: in all, and per caller uid. Each open stream holds a
//! task and a copy of its last message (SVIDs and keys), and streams last as long as their
//! callers keep them: without a bound, one local user could open connections × 64 streams until
//! the agent runs out of memory. A stream past a bound is refused with ResourceExhausted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tonic::Status;

/// Most streams open at once, in all.
pub const MAX_STREAMS: usize = 16_384;
/// Most streams open at once for one uid (many workloads of a node may share one, as the pods
/// of a Kubernetes node often do).
pub const MAX_STREAMS_PER_UID: usize = 4_096;

/// The open streams: in all, and per uid.
#[derive(Debug)]
pub(crate) struct StreamSlots {
    open: Mutex<(usize, HashMap<u32, usize>)>,
    max: usize,
    max_per_uid: usize,
}

/// One open stream's place, given back when dropped (when the stream's task ends).
#[derive(Debug)]
pub(crate) struct StreamSlot {
    slots: Arc<StreamSlots>,
    uid: u32,
}

impl StreamSlots {
    pub(crate) fn new(max: usize, max_per_uid: usize) -> Arc<Self> {
        Arc::new(Self {
            open: Mutex::new((0, HashMap::new())),
            max,
            max_per_uid,
        })
    }

    /// A place for one more stream of `uid`, or ResourceExhausted naming the bound.
    pub(crate) fn enter(self: &Arc<Self>, uid: u32) -> Result<StreamSlot, Status> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let (total, per_uid) = &mut *open;
        let of_uid = per_uid.entry(uid).or_insert(0);
        if *of_uid >= self.max_per_uid {
            return Err(Status::resource_exhausted(format!(
                "uid {uid} has {} workload api streams open, the most allowed",
                self.max_per_uid
            )));
        }
        if *total >= self.max {
            return Err(Status::resource_exhausted(format!(
                "{} workload api streams are open, the most allowed",
                self.max
            )));
        }
        *of_uid += 1;
        *total += 1;
        Ok(StreamSlot {
            slots: Arc::clone(self),
            uid,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (total, per_uid) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(n) = per_uid.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_uid.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_bounded_per_uid_and_in_all() {
        let slots = StreamSlots::new(3, 2);
        let a1 = slots.enter(1).unwrap();
        let _a2 = slots.enter(1).unwrap();
        let err = slots.enter(1).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("uid 1"), "{}", err.message());
        let _b1 = slots.enter(2).unwrap();
        let err = slots.enter(3).unwrap_err();
        assert!(
            err.message().contains("3 workload api streams"),
            "{}",
            err.message()
        );
        drop(a1);
        let _a3 = slots.enter(1).unwrap();
        assert_eq!(slots.open.lock().unwrap().0, 3);
    }
}
