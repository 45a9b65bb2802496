//! The open-files limit of the long-running commands (`sidecar run`, `agent run`, `ca serve`):
//! the soft limit raised to the hard one at start, as Go programs do since Go 1.19.
//!
//! systemd starts services with a soft limit of 1024 and a far higher hard one, expecting a
//! program that needs many descriptors to raise its own soft limit; containerd 2 gives
//! containers the same. A sidecar holds up to two descriptors per proxied connection (the
//! caller's and the app's or upstream's), and the inbound one more per HTTP/2 stream it hands
//! to an HTTP/1.1 app (at most `limits.max_connections` of those), so 1024 would cap it near
//! 500 connections whatever `limits.max_connections` says, with accepts failing past that.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// The open-files soft limit before and after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpenFiles {
    pub(crate) before: u64,
    pub(crate) now: u64,
}

/// Raises the soft open-files limit (`RLIMIT_NOFILE`) to the hard limit.
pub(crate) fn raise() -> Result<OpenFiles, nix::Error> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= hard {
        return Ok(OpenFiles {
            before: soft,
            now: soft,
        });
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(OpenFiles {
        before: soft,
        now: hard,
    })
}

/// Raises the limit and logs what changed; warns, naming both numbers, when even the hard limit
/// is below `needed` descriptors (`what` says who needs them).
pub(crate) fn raise_for(needed: u64, what: &str) {
    match raise() {
        Ok(files) => {
            if files.now > files.before {
                tracing::info!(
                    from = files.before,
                    to = files.now,
                    "raised the open-files limit (RLIMIT_NOFILE) to its hard limit"
                );
            }
            if files.now < needed {
                tracing::warn!(
                    limit = files.now,
                    needed,
                    "the open-files limit (RLIMIT_NOFILE) is {}, below the {needed} that {what} \
                     may need; raise the hard limit (LimitNOFILE= in a systemd unit, \
                     `ulimit -Hn` in a shell)",
                    files.now
                );
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-files limit (RLIMIT_NOFILE)")
        }
    }
}
