//! Fuzz target: `warden_identity::fuzzing::jwt_svid` must never panic on any input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    warden_identity::fuzzing::jwt_svid(data);
});
