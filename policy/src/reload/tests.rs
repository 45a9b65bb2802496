//! The engine's reload and start, with made-up times where waiting would be slow.

use std::net::{IpAddr, Ipv4Addr};
use std::time::SystemTime;

use super::*;
use crate::request::{Caller, Operation};

const PERMIT: &str = "@id(\"allow-all\")\npermit(principal, action, resource);\n";
const FORBID: &str = "@id(\"deny-all\")\nforbid(principal, action, resource);\n";

fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/mesh.cedarschema");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(schema, dir.path().join("mesh.cedarschema")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn get() -> Request<'static> {
    Request {
        caller: Caller::Spiffe("spiffe://example.org/ns/prod/sa/a"),
        operation: Operation::Http("GET"),
        resource: "api",
        path: "/",
        query: "",
        headers: &[],
        source: IpAddr::V4(Ipv4Addr::LOCALHOST),
        tls: None,
        time: SystemTime::UNIX_EPOCH,
    }
}

/// An engine on an allow-all and a deny-all set whose `baseline.cedar` (the deny-all) has
/// just been truncated, as the first half of a save; the path and the content it is being
/// saved with.
fn truncated_baseline() -> (tempfile::TempDir, Engine, PathBuf, String) {
    let dir = dir_with(&[("allow.cedar", PERMIT), ("baseline.cedar", FORBID)]);
    let engine = Engine::new(dir.path()).unwrap();
    let baseline = dir.path().join("baseline.cedar");
    std::fs::write(&baseline, "").unwrap();
    let saved = format!("// quarantine everything\n{FORBID}");
    (dir, engine, baseline, saved)
}

/// Polls as a watcher does until the content has been the same for [`QUIET`]: once to
/// see it, and once more [`QUIET`] later (monotonic time made up, not slept).
fn settled_poll(engine: &Engine) -> Option<Result<Reload, LoadError>> {
    let now = SystemTime::now();
    let start = Instant::now();
    if let Some(result) = engine.inner.poll_at(now, start) {
        return Some(result);
    }
    engine.inner.poll_at(now, start + QUIET)
}

/// `cp new.cedar baseline.cedar` truncates the file, then writes it: a poll between the
/// two, before the write began, finds a valid set without the forbid, and the files stay
/// the same while it loads. The watcher waits for the directory to be quiet.
#[test]
fn a_poll_just_after_a_file_was_truncated_waits_for_it_to_be_written() {
    let (_dir, engine, baseline, saved) = truncated_baseline();
    let old = engine.current().version().to_owned();
    let t0 = Instant::now();
    assert!(engine.inner.poll_at(SystemTime::now(), t0).is_none());
    assert_eq!(engine.current().version(), old);
    assert!(!engine.decide(&get()).is_allowed());
    std::fs::write(&baseline, &saved).unwrap();
    // A poll finding other content than the last one starts the wait again.
    assert!(
        engine
            .inner
            .poll_at(SystemTime::now(), t0 + QUIET)
            .is_none()
    );
    assert_eq!(engine.current().version(), old);
    let Some(Ok(Reload::Replaced { .. })) = engine.inner.poll_at(SystemTime::now(), t0 + QUIET * 2)
    else {
        panic!("the settled directory was not reloaded");
    };
    assert_eq!(engine.decide(&get()).policy_ids(), ["deny-all"]);
}

/// A file dated ahead of the clock (copied from a host whose clock runs fast, `touch -d`)
/// is loaded like any other change.
#[test]
fn a_file_dated_in_the_future_is_still_reloaded() {
    let dir = dir_with(&[("set.cedar", PERMIT)]);
    let engine = Engine::new(dir.path()).unwrap();
    let path = dir.path().join("set.cedar");
    std::fs::write(&path, FORBID).unwrap();
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(SystemTime::now() + Duration::from_secs(3600))
        .unwrap();
    drop(file);
    let Some(Ok(Reload::Replaced { .. })) = settled_poll(&engine) else {
        panic!("the change was not reloaded");
    };
    assert_eq!(engine.decide(&get()).policy_ids(), ["deny-all"]);
}

#[test]
fn only_a_load_of_files_that_did_not_change_is_settled() {
    assert!(settled("a", Some("a"), "a"));
    // An invalid set read from files that did not change: its error stands.
    assert!(settled("a", None, "a"));
    // Changed between the first look and the load, after the load, or there and back.
    assert!(!settled("a", Some("b"), "b"));
    assert!(!settled("a", Some("a"), "b"));
    assert!(!settled("a", Some("b"), "a"));
    assert!(!settled("a", None, "b"));
}

#[test]
fn the_fingerprint_of_a_valid_directory_is_its_version() {
    let dir = dir_with(&[("allow.cedar", PERMIT), ("notes.txt", "ignored")]);
    let set = PolicySet::load(dir.path()).unwrap();
    assert_eq!(fingerprint(dir.path()), set.version());
}

/// `cp new.cedar baseline.cedar` truncates and then writes; a load between the two read an
/// empty file, a valid set without the forbid. It must not be put in force.
#[test]
fn a_set_read_while_a_file_was_being_saved_is_not_put_in_force() {
    let (dir, engine, baseline, saved) = truncated_baseline();
    let old = engine.current().version().to_owned();
    let result = engine
        .inner
        .reload_checked(None, || std::fs::write(&baseline, &saved).unwrap());
    assert_eq!(result.unwrap(), Reload::Unsettled);
    assert_eq!(engine.current().version(), old);
    assert!(!engine.decide(&get()).is_allowed());

    // The next poll reloads even though nothing changed since, and finds the whole file.
    let Some(Ok(Reload::Replaced { new, .. })) = settled_poll(&engine) else {
        panic!("the next poll did not reload");
    };
    assert_eq!(new, PolicySet::load(dir.path()).unwrap().version());
    let d = engine.decide(&get());
    assert_eq!(
        (d.is_allowed(), d.policy_ids()),
        (false, &["deny-all".to_owned()][..])
    );
    assert!(settled_poll(&engine).is_none());
}

/// At start, a file just truncated (a save half done) is not read until it has been quiet:
/// the save finishes while the engine waits, and the first set in force has its policies.
#[test]
fn a_start_waits_for_a_save_in_progress() {
    let dir = dir_with(&[("allow.cedar", PERMIT), ("baseline.cedar", "")]);
    let baseline = dir.path().join("baseline.cedar");
    let mut waits = 0;
    let engine = Engine::new_checked(
        dir.path(),
        || {
            if waits == 0 {
                std::fs::write(&baseline, FORBID).unwrap();
            }
            waits += 1;
        },
        |_| {},
    )
    .unwrap();
    assert!(waits >= 1);
    assert!(!engine.decide(&get()).is_allowed());
}

/// At start, files that change while they are read are read again; files that never stop
/// changing are an error, not a set.
#[test]
fn a_start_reads_again_files_that_changed_while_read() {
    let dir = dir_with(&[("allow.cedar", PERMIT), ("baseline.cedar", "")]);
    let baseline = dir.path().join("baseline.cedar");
    let engine = Engine::new_checked(
        dir.path(),
        || {},
        |attempt| {
            if attempt == 0 {
                std::fs::write(&baseline, FORBID).unwrap();
            }
        },
    )
    .unwrap();
    assert!(!engine.decide(&get()).is_allowed());

    let mut n = 0;
    let err = Engine::new_checked(
        dir.path(),
        || {},
        |_| {
            n += 1;
            std::fs::write(&baseline, format!("// {n}\n{FORBID}")).unwrap();
        },
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("changed every time they were read"),
        "{err}"
    );
    assert_eq!(n, START_ATTEMPTS);
}

/// An edit of the same size with the same modification time (within one tick of the file
/// system's clock, or a restored mtime) is still a change.
#[test]
fn an_edit_keeping_size_and_mtime_is_reloaded() {
    let dir = dir_with(&[("set.cedar", PERMIT)]);
    let engine = Engine::new(dir.path()).unwrap();
    let path = dir.path().join("set.cedar");
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let edited = PERMIT.replace("allow-all", "allow-any");
    assert_eq!(edited.len(), PERMIT.len());
    std::fs::write(&path, &edited).unwrap();
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(mtime).unwrap();
    drop(file);
    assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);

    let Some(Ok(Reload::Replaced { .. })) = settled_poll(&engine) else {
        panic!("the edit was not reloaded");
    };
    assert_eq!(engine.decide(&get()).policy_ids(), ["allow-any"]);
}

#[test]
fn a_poll_reads_no_file_while_the_stamp_stands_and_hashes_once_it_moves() {
    let dir = dir_with(&[("a.cedar", PERMIT)]);
    let engine = Engine::new(dir.path()).unwrap();
    let later = SystemTime::now() + Duration::from_secs(60);
    let real = engine.inner.fingerprint_by_stamp(later);
    assert_eq!(real, engine.current().version());
    // While the stamp stands, the fingerprint kept with it is the answer (here a made-up
    // one, to show that no file was hashed).
    if let Ok(mut stamped) = engine.inner.stamped.lock() {
        let (stamp, _) = stamped.take().unwrap();
        *stamped = Some((stamp, "sha256:kept".to_owned()));
    }
    assert_eq!(engine.inner.fingerprint_by_stamp(later), "sha256:kept");
    // A file changed: hashed again.
    std::fs::write(dir.path().join("a.cedar"), FORBID).unwrap();
    let moved = engine
        .inner
        .fingerprint_by_stamp(SystemTime::now() + Duration::from_secs(60));
    assert_ne!(moved, "sha256:kept");
    assert_ne!(moved, real);
    // Within the racy window nothing is kept: every poll hashes.
    let racy = engine.inner.fingerprint_by_stamp(SystemTime::now());
    assert_eq!(racy, moved);
    assert!(engine.inner.stamped.lock().unwrap().is_none());
}
