//! What the commands print on standard output. A reader that went away (`warden policy eval …
//! | grep -q allow`, a `tee` killed before `warden up` stops) is no error: the rest of the
//! output is dropped and the command ends as it would have, its exit code included. Any other
//! failure to write (a full disk behind a redirection) is reported and ends the command with
//! exit 1, so that nothing is lost silently. `println!` would panic on either.

use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once the reader of standard output has gone: later output is dropped.
static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes `args` to standard output, and a newline after it when `newline`.
pub(crate) fn write(args: std::fmt::Arguments<'_>, newline: bool) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::BrokenPipe => CLOSED.store(true, Ordering::Relaxed),
        Err(e) => {
            eprintln!("error: cannot write to standard output: {e}");
            std::process::exit(1);
        }
    }
}

/// Writes a line for `warden up`, whatever becomes of standard output: the supervisor must
/// go on to stop its children, so no failure to write ends it.
pub(crate) fn say(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(args).and_then(|()| out.write_all(b"\n"));
    let _ = out.flush();
}

/// A line from `warden up` (see [`say`]).
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::output::say(format_args!($($arg)*))
    };
}

/// `println!` that neither panics nor loses output silently (see the module docs).
macro_rules! outln {
    () => {
        $crate::output::write(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::output::write(format_args!($($arg)*), true)
    };
}

/// `print!` that neither panics nor loses output silently (see the module docs).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write(format_args!($($arg)*), false)
    };
}
