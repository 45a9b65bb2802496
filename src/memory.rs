//! Handing memory the sidecar no longer uses back to the kernel, for `warden sidecar run`:
//! freed heap pages every few seconds, and the code pages it ran only to start (or once since)
//! every minute (`code_pages`).
//!
//! glibc's allocator returns memory to the kernel only from the top of a heap: what is freed
//! in the middle stays resident, so a sidecar's private memory ratchets up to the most it ever
//! held at once plus fragmentation (under the bench's changing load an inbound sidecar kept
//! ~3.6 MB of freed memory of its ~9.5 MB private memory; BENCHMARKS.md). `malloc_trim(0)` gives
//! back every whole free page of every heap. Envoy does the same on a timer with tcmalloc (its
//! bootstrap's `memory_allocator_manager.memory_release_interval`).

mod code_pages;

use std::time::Duration;

/// How often `warden sidecar run` hands freed heap memory back.
pub(crate) const RELEASE_INTERVAL: Duration = Duration::from_secs(5);

/// Code pages are let go on the first release (the sidecar has started by then) and on every
/// this-many-th after it (once a minute): what a sidecar runs under any load it sees is back
/// within microseconds, so doing it more often would only add page faults.
const CODE_RELEASE_EVERY: u64 = 12;

/// What `warden sidecar run` gives back on release number `tick` (0, 1, 2, …): freed heap
/// memory every time, the mappings of code and read-only data on the first and every
/// `CODE_RELEASE_EVERY`-th. True if anything was released.
pub(crate) fn release_unused_memory(tick: u64) -> bool {
    let heap = release_free_memory();
    let code_kb = if releases_code(tick) {
        code_pages::release_code_pages()
    } else {
        0
    };
    if code_kb > 0 {
        tracing::debug!(code_kb, "released the mappings of code not run recently");
    }
    heap || code_kb > 0
}

/// Returns every whole free page of every heap to the kernel; true if any memory was released.
/// Does nothing (false) where the C library is not glibc.
pub(crate) fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // The first of the two unsafe calls in the workspace (root package lints:
        // `unsafe_code = "deny"`; the other is `madvise` in src/memory/code_pages.rs).
        // SAFETY: `malloc_trim` has no preconditions: it takes the allocator's own locks and
        // only releases pages no allocation covers.
        #[allow(unsafe_code)]
        let released = unsafe { libc::malloc_trim(0) };
        released != 0
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Whether release number `tick` lets go of code pages too.
fn releases_code(tick: u64) -> bool {
    tick.is_multiple_of(CODE_RELEASE_EVERY)
}

/// Calls `release(0)`, `release(1)`, … every `interval` (not at once) on a blocking thread —
/// trimming walks every heap's free chunks under its lock and reads the process's memory map,
/// which must not stall the worker — until the runtime stops.
pub(crate) async fn release_periodically(interval: Duration, release: fn(u64) -> bool) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0.. {
        tick.tick().await;
        if tokio::task::spawn_blocking(move || release(n))
            .await
            .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn rss_anon_kb() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn memory_freed_in_the_middle_of_the_heap_goes_back_to_the_kernel() {
        const BLOCKS: usize = 64 * 1024; // 1 KiB each: 64 MiB
        let before = rss_anon_kb();
        let mut blocks: Vec<Vec<u8>> = (0..BLOCKS).map(|i| vec![i as u8; 1024]).collect();
        // Keep one block in 64: what lies between them is freed, but no free page is at the
        // top of the heap, so the allocator keeps it all resident.
        let mut kept = Vec::new();
        for (i, b) in blocks.drain(..).enumerate() {
            if i % 64 == 63 {
                kept.push(b);
            }
        }
        drop(blocks);
        let after_free = rss_anon_kb();
        assert!(
            after_free > before + 40 * 1024,
            "the premise: freed memory stays resident ({before} kB -> {after_free} kB after free)"
        );
        assert!(release_free_memory(), "malloc_trim released nothing");
        let after_release = rss_anon_kb();
        assert!(
            after_release + 40 * 1024 < after_free,
            "{after_free} kB after free -> {after_release} kB after release"
        );
        assert_eq!(kept.len(), BLOCKS / 64);
        assert!(kept.iter().all(|b| b.len() == 1024));
    }

    #[test]
    fn code_pages_go_on_the_first_release_and_then_once_a_minute() {
        let code: Vec<u64> = (0..40).filter(|t| releases_code(*t)).collect();
        assert_eq!(code, vec![0, 12, 24, 36]);
        assert_eq!(
            RELEASE_INTERVAL * CODE_RELEASE_EVERY as u32,
            Duration::from_secs(60)
        );
    }

    static CALLS: AtomicUsize = AtomicUsize::new(0);
    static LAST_TICK: AtomicUsize = AtomicUsize::new(usize::MAX);

    fn count(tick: u64) -> bool {
        let n = CALLS.fetch_add(1, Ordering::SeqCst);
        assert_eq!(tick, n as u64, "releases are numbered 0, 1, 2, … in order");
        LAST_TICK.store(tick as usize, Ordering::SeqCst);
        true
    }

    #[tokio::test(start_paused = true)]
    async fn release_runs_once_per_interval_and_not_at_start() {
        let task = tokio::spawn(release_periodically(Duration::from_secs(5), count));
        tokio::time::sleep(Duration::from_millis(4_900)).await;
        assert_eq!(
            CALLS.load(Ordering::SeqCst),
            0,
            "released before the first interval"
        );
        tokio::time::sleep(Duration::from_millis(10_200)).await;
        assert_eq!(CALLS.load(Ordering::SeqCst), 3, "5 s, 10 s and 15 s");
        assert_eq!(
            LAST_TICK.load(Ordering::SeqCst),
            2,
            "the third release is number 2"
        );
        task.abort();
    }
}
