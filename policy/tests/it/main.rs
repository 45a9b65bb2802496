//! Integration tests of warden-policy, against real policy directories on disk.

mod decide;
mod differential;
mod load;
mod reload;
mod support;
