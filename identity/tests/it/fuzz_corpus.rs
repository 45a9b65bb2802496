//! Replays the fuzz targets' seed corpus (`fuzz/corpus/<target>/*`) through the same
//! functions the fuzz targets call, so every seed is also an ordinary test.

use std::path::PathBuf;

use warden_identity::fuzzing;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "fuzz seed {} panicked", path.display());
        count += 1;
    }
    assert!(
        count >= 5,
        "expected seeds in {}, found {count}",
        dir.display()
    );
}

#[test]
fn spiffe_id_seed_corpus_never_panics() {
    replay("spiffe_id", fuzzing::spiffe_id);
}

#[test]
fn selector_seed_corpus_never_panics() {
    replay("selector", fuzzing::selector);
}

#[test]
fn jwt_svid_seed_corpus_never_panics() {
    replay("jwt_svid", fuzzing::jwt_svid);
}

#[test]
fn bundle_jwks_seed_corpus_never_panics() {
    replay("bundle_jwks", fuzzing::bundle_jwks);
}

#[test]
fn jwt_svid_seeds_named_valid_are_accepted_so_fuzzing_reaches_claim_checks() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/jwt_svid");
    let mut valid = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let result = fuzzing::jwt_svid_validate(&std::fs::read(&path).unwrap());
        if name.starts_with("valid") {
            assert!(result.is_ok(), "{name}: {result:?}");
            valid += 1;
        } else {
            assert!(result.is_err(), "{name} was accepted");
        }
    }
    assert!(valid >= 3);
}
