//! Loopback ports for tests that hand a port number to another process.
//!
//! The usual trick — bind `127.0.0.1:0`, read the port, drop the listener — hands out a port
//! from the kernel's *ephemeral* range, the same range the kernel draws from for the local end
//! of every outgoing connection. A test that reserves a port and starts its server seconds
//! later (after starting a CA and an agent, which open many connections) can find the port
//! taken by one of those connections. [`free_port`] therefore picks below the ephemeral range,
//! where the kernel never assigns ports on its own, and checks that the port is free now.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// Lowest port handed out (above the well-known and common registered service ports).
const LOW: u16 = 20_000;
/// Where the kernel's ephemeral range starts when `/proc` does not say (Linux default).
const DEFAULT_EPHEMERAL_START: u16 = 32_768;

/// Ports handed out so far by this process; with the process id it spreads concurrent test
/// processes (e.g. under `cargo nextest`) over different parts of the range.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A loopback TCP port below the kernel's ephemeral range that nothing listens on now.
///
/// # Panics
///
/// When every port in the range is taken (a test set-up failure).
#[must_use]
#[expect(
    clippy::panic,
    reason = "test-only helper: no free port means the test cannot run"
)]
pub fn free_port() -> u16 {
    let high = ephemeral_start();
    let span = u32::from(high.saturating_sub(LOW)).max(1);
    let offset = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let candidate = u32::from(LOW) + (offset + n) % span;
        let Ok(port) = u16::try_from(candidate) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{high}");
}

/// The first port of the kernel's ephemeral range (`net.ipv4.ip_local_port_range`).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|&start| start > LOW + 1_000)
        .unwrap_or(DEFAULT_EPHEMERAL_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_distinct_and_bindable() {
        let a = free_port();
        let b = free_port();
        assert_ne!(a, b);
        for p in [a, b] {
            assert!((LOW..ephemeral_start()).contains(&p), "{p}");
            TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }
}
