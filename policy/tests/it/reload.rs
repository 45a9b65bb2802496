//! Hot reload: a valid new set replaces the old one atomically, a failing set never does
//! (proptest model, CONVENTIONS 27), decisions in flight see one set, and the watcher notices
//! changes on disk.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use warden_policy::{Engine, Outcome, PolicySet, Reload};

use crate::support::{dir_with, http};

const PERMIT: &str = "@id(\"allow-all\")\npermit(principal, action, resource);";
const FORBID: &str = "@id(\"deny-all\")\nforbid(principal, action, resource);";

fn write(dir: &std::path::Path, text: &str) {
    std::fs::write(dir.join("set.cedar"), text).unwrap();
}

#[test]
fn valid_new_set_replaces_the_old_one() {
    let dir = dir_with(&[("set.cedar", PERMIT)]);
    let engine = Engine::new(dir.path()).unwrap();
    let old = engine.current().version().to_owned();
    let req = http("spiffe://example.org/a", "GET", "api", "/");
    assert!(engine.decide(&req).is_allowed());
    write(dir.path(), FORBID);
    let Reload::Replaced { old: was, new } = engine.reload().unwrap() else {
        panic!("not replaced")
    };
    assert_eq!(was, old);
    let d = engine.decide(&req);
    assert_eq!((d.outcome(), d.version()), (Outcome::Deny, new.as_str()));
    assert_eq!(engine.reload().unwrap(), Reload::Unchanged);
}

#[test]
fn invalid_new_set_keeps_the_old_one_in_force() {
    let dir = dir_with(&[("set.cedar", PERMIT)]);
    let engine = Engine::new(dir.path()).unwrap();
    let version = engine.current().version().to_owned();
    write(
        dir.path(),
        "@id(\"x\")\npermit(principal == Mesh::Nope::\"x\", action, resource);",
    );
    let err = engine.reload().unwrap_err();
    assert!(err.to_string().contains("Mesh::Nope"), "{err}");
    assert_eq!(engine.current().version(), version);
    assert!(
        engine
            .decide(&http("spiffe://example.org/a", "GET", "api", "/"))
            .is_allowed()
    );
}

#[test]
fn a_held_set_keeps_deciding_with_its_own_policies_after_a_swap() {
    let dir = dir_with(&[("set.cedar", PERMIT)]);
    let engine = Engine::new(dir.path()).unwrap();
    let held = engine.current();
    write(dir.path(), FORBID);
    engine.reload().unwrap();
    let req = http("spiffe://example.org/a", "GET", "api", "/");
    assert!(held.decide(&req).is_allowed());
    assert!(!engine.decide(&req).is_allowed());
}

#[test]
fn concurrent_decisions_never_mix_two_sets() {
    let dir = dir_with(&[("set.cedar", PERMIT)]);
    let engine = Arc::new(Engine::new(dir.path()).unwrap());
    let permit_version = engine.current().version().to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (engine, stop, permit_version) = (
                Arc::clone(&engine),
                Arc::clone(&stop),
                permit_version.clone(),
            );
            std::thread::spawn(move || {
                let mut seen = 0;
                while !stop.load(Ordering::Relaxed) {
                    let d = engine.decide(&http("spiffe://example.org/a", "GET", "api", "/"));
                    let consistent = if d.version() == permit_version {
                        d.is_allowed() && d.policy_ids() == ["allow-all"]
                    } else {
                        !d.is_allowed() && d.policy_ids() == ["deny-all"]
                    };
                    assert!(consistent, "{d:?}");
                    seen += 1;
                }
                seen
            })
        })
        .collect();
    for i in 0..20 {
        write(dir.path(), if i % 2 == 0 { FORBID } else { PERMIT });
        engine.reload().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        assert!(w.join().unwrap() > 0);
    }
}

#[test]
fn watcher_picks_up_a_change_on_disk() {
    let dir = dir_with(&[("set.cedar", PERMIT)]);
    let engine = Engine::watch(dir.path(), Duration::from_millis(20)).unwrap();
    let old = engine.current().version().to_owned();
    write(dir.path(), FORBID);
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.current().version() == old {
        assert!(
            Instant::now() < deadline,
            "watcher did not reload within 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !engine
            .decide(&http("spiffe://example.org/a", "GET", "api", "/"))
            .is_allowed()
    );
}

#[test]
fn watcher_notices_a_policy_file_named_in_capitals_and_refuses_the_set() {
    let dir = dir_with(&[("set.cedar", PERMIT)]);
    let (tx, rx) = std::sync::mpsc::channel();
    let engine = Engine::watch_with(dir.path(), Duration::from_millis(20), move |r| {
        let _ = tx.send(r.as_ref().map_err(|e| e.to_string()).map(|_| ()));
    })
    .unwrap();
    let old = engine.current().version().to_owned();
    std::fs::write(dir.path().join("Deny.CEDAR"), FORBID).unwrap();
    let outcome = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the watcher tried a reload");
    let err = outcome.unwrap_err();
    assert!(
        err.contains("Deny.CEDAR") && err.contains("`Deny.cedar`"),
        "{err}"
    );
    assert_eq!(engine.current().version(), old);
}

#[derive(Debug, Clone)]
enum Op {
    WriteValid(u8),
    WriteInvalid(u8),
    Reload,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..4).prop_map(Op::WriteValid),
        (0u8..4).prop_map(Op::WriteInvalid),
        Just(Op::Reload)
    ]
}

fn valid(n: u8) -> String {
    format!(
        "@id(\"p{n}\")\npermit(principal, action == Mesh::Action::\"GET\", resource == Mesh::Service::\"s{n}\");"
    )
}

fn invalid(n: u8) -> String {
    match n {
        0 => "@id(\"x\") permit(principal, action, resource".to_owned(),
        1 => "permit(principal, action, resource);".to_owned(),
        2 => "@id(\"x\") permit(principal, action, resource) when { context.nope };".to_owned(),
        _ => format!("{}\n{}", valid(0), valid(0)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Model: the live version is the version of the last directory content that loaded; a
    /// failing set never replaces it.
    #[test]
    fn failing_set_never_replaces_the_live_one(ops in proptest::collection::vec(op(), 1..12)) {
        let dir = dir_with(&[("set.cedar", &valid(9))]);
        let engine = Engine::new(dir.path()).unwrap();
        let mut model = engine.current().version().to_owned();
        let mut on_disk_valid = true;
        for op in ops {
            match op {
                Op::WriteValid(n) => { write(dir.path(), &valid(n)); on_disk_valid = true; }
                Op::WriteInvalid(n) => { write(dir.path(), &invalid(n)); on_disk_valid = false; }
                Op::Reload => {
                    let result = engine.reload();
                    prop_assert_eq!(result.is_ok(), on_disk_valid);
                    if on_disk_valid {
                        model = PolicySet::load(dir.path()).unwrap().version().to_owned();
                    }
                }
            }
            let live = engine.current();
            prop_assert_eq!(live.version(), model.as_str());
        }
    }
}
