//! Tests of the decision log: the queue of chunks, the writer, the rotating file.

use std::os::unix::fs::PermissionsExt;

use warden_policy::{DecisionRecord, Outcome};

use super::*;

fn line(n: usize) -> Vec<u8> {
    let record = DecisionRecord {
        time: "2026-01-01T00:00:00.000Z".to_owned(),
        decision_id: format!("d{n}"),
        peer_spiffe_id: Some("spiffe://example.org/a".to_owned()),
        source_addr: "127.0.0.1:1".to_owned(),
        resource: "api".to_owned(),
        method: "GET".to_owned(),
        path: "/".to_owned(),
        query: String::new(),
        headers: vec![],
        action: "GET".to_owned(),
        tls_version: Some("TLSv1.3".to_owned()),
        decision: Outcome::Allow,
        policy_ids: vec!["p".to_owned()],
        policy_version: "v".to_owned(),
        eval_time_us: 1,
        upstream_status: Some(200),
        latency_us: 2,
        errors: vec![],
    };
    let mut line = serde_json::to_vec(&record).unwrap();
    line.push(b'\n');
    line
}

fn ids_in(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<DecisionRecord>(l)
                .unwrap()
                .decision_id
        })
        .collect()
}

#[test]
fn file_is_0600_rotates_by_size_and_keeps_n_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.log");
    let mut r = Rotating::open(&path, 4096, 2).unwrap();
    // Batches of several lines, as the writer hands them over.
    for batch in (0..200).collect::<Vec<_>>().chunks(7) {
        let lines: Vec<u8> = batch.iter().flat_map(|&n| line(n)).collect();
        r.write_lines(&lines).unwrap();
    }
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(numbered(&path, 1).exists());
    assert!(numbered(&path, 2).exists());
    assert!(!numbered(&path, 3).exists());
    let line_len = line(100).len() as u64;
    for p in [numbered(&path, 2), numbered(&path, 1)] {
        // A rotated file ends with the line that brought it to the limit: whole lines only.
        let len = std::fs::metadata(&p).unwrap().len();
        assert!((4096..4096 + line_len).contains(&len), "{len}");
    }
    // Every line is whole and in order across the files.
    let mut ids = ids_in(&numbered(&path, 2));
    ids.extend(ids_in(&numbered(&path, 1)));
    ids.extend(ids_in(&path));
    let numbers: Vec<usize> = ids.iter().map(|id| id[1..].parse().unwrap()).collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    assert_eq!(numbers.last(), Some(&199));
}

#[test]
fn keep_0_starts_the_file_again_at_the_size_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.log");
    let mut r = Rotating::open(&path, 4096, 0).unwrap();
    for n in 0..200 {
        r.write_lines(&line(n)).unwrap();
    }
    assert!(!numbered(&path, 1).exists());
    let ids = ids_in(&path);
    assert_eq!(ids.last().map(String::as_str), Some("d199"));
    assert!(ids.len() < 200, "never started again: {} lines", ids.len());
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len < 4096 + line(199).len() as u64, "{len}");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // The files it let go of are removed by the time the log is dropped.
    drop(r);
    assert_eq!(names_in(dir.path()), ["decisions.log"]);
}

/// With `keep` 0, a rotation that moved the file aside but can open no new one (here: every
/// file descriptor is taken) moves it back and truncates it in place, and the lines go on; before
/// that fallback the rotation failed at every batch. Run in a process of its own, with a low
/// `ulimit -n`, so that taking every descriptor disturbs no other test.
#[test]
fn keep_0_truncates_in_place_when_no_new_file_can_be_opened() {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 64 && exec "$0" "$@""#)
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "decision_log::tests::keep_0_with_every_file_descriptor_taken",
            "--ignored",
            "--quiet",
            "--test-threads=1",
        ])
        .env("WARDEN_TEST_NO_FDS_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
    // The child got to the end of its checks (it does nothing without the variable).
    assert!(dir.path().join("checked").exists());
}

#[test]
#[ignore = "run by keep_0_truncates_in_place_when_no_new_file_can_be_opened, in a process of its own"]
fn keep_0_with_every_file_descriptor_taken() {
    let Some(dir) = std::env::var_os("WARDEN_TEST_NO_FDS_DIR") else {
        return;
    };
    let dir = Path::new(&dir);
    let path = dir.join("decisions.log");
    let mut r = Rotating::open(&path, 4096, 0).unwrap();
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
    let mut taken = Vec::new();
    let exhausted = loop {
        match File::open("/dev/null") {
            Ok(file) if taken.len() < 4096 => taken.push(file),
            Ok(_) => panic!("the descriptor limit is not low"),
            Err(e) => break e,
        }
    };
    assert_eq!(exhausted.raw_os_error(), Some(libc::EMFILE), "{exhausted}");
    for batch in (0..200).collect::<Vec<_>>().chunks(7) {
        let lines: Vec<u8> = batch.iter().flat_map(|&n| line(n)).collect();
        r.write_lines(&lines).unwrap();
    }
    drop(taken);
    drop(r);
    let ids = ids_in(&path);
    assert_eq!(ids.last().map(String::as_str), Some("d199"));
    assert!(ids.len() < 200, "never started again: {} lines", ids.len());
    // The same file, truncated in place; nothing left beside it.
    let now = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
    assert_eq!(now, inode);
    assert_eq!(names_in(dir), ["decisions.log"]);
    std::fs::write(dir.join("checked"), "").unwrap();
}

/// The names in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn a_rotation_moves_the_file_it_drops_aside_for_another_thread_to_remove() {
    // Freeing a file (the rename over `file.<keep>` did) holds the writer for as long as the
    // filesystem takes to drop the file's pages and blocks; lines pile up meanwhile.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.log");
    for keep in [2, 0] {
        let mut r = Rotating::open(&path, 4096, keep).unwrap();
        let (to_remove, handed) = std::sync::mpsc::channel();
        r.retire = Retirer::handing_to(&path, to_remove);
        for batch in (0..200).collect::<Vec<_>>().chunks(7) {
            let lines: Vec<u8> = batch.iter().flat_map(|&n| line(n)).collect();
            r.write_lines(&lines).unwrap();
        }
        let handed: Vec<PathBuf> = handed.try_iter().collect();
        assert!(handed.len() >= 2, "keep {keep}: {handed:?}");
        // Each is still there, under a hidden name beside the log, holding the oldest lines:
        // the rotation removed nothing itself.
        let mut ids: Vec<usize> = Vec::new();
        for file in &handed {
            assert_eq!(file.parent(), Some(dir.path()));
            let name = file.file_name().unwrap().to_str().unwrap();
            assert!(name.starts_with(".decisions.log.retired."), "{name}");
            ids.extend(
                ids_in(file)
                    .iter()
                    .map(|id| id[1..].parse::<usize>().unwrap()),
            );
        }
        let kept = (1..=keep).rev().map(|n| numbered(&path, n));
        for file in kept.chain([path.clone()]) {
            ids.extend(
                ids_in(&file)
                    .iter()
                    .map(|id| id[1..].parse::<usize>().unwrap()),
            );
        }
        assert_eq!(ids, (0..200).collect::<Vec<_>>(), "keep {keep}");
        for file in handed.iter().chain([&path]) {
            std::fs::remove_file(file).unwrap();
        }
        for n in 1..=keep {
            std::fs::remove_file(numbered(&path, n)).unwrap();
        }
    }
}

#[test]
fn a_file_that_cannot_be_moved_aside_is_rotated_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.log");
    for keep in [1, 0] {
        // A non-empty directory where the first hidden name goes: the rename onto it fails.
        let pid = std::process::id();
        let blocker = dir.path().join(format!(".decisions.log.retired.{pid}.0"));
        std::fs::create_dir(&blocker).unwrap();
        std::fs::write(blocker.join("x"), "x\n").unwrap();
        if keep == 1 {
            // So that the first rotation has a `file.1` to move aside (onto the blocker).
            std::fs::write(numbered(&path, 1), line(1000)).unwrap();
        }
        let mut r = Rotating::open(&path, 4096, keep).unwrap();
        for batch in (0..200).collect::<Vec<_>>().chunks(7) {
            let lines: Vec<u8> = batch.iter().flat_map(|&n| line(n)).collect();
            r.write_lines(&lines).unwrap();
        }
        drop(r);
        let ids = ids_in(&path);
        assert_eq!(ids.last().map(String::as_str), Some("d199"), "keep {keep}");
        assert!(ids.len() < 200, "keep {keep}: never rotated");
        assert_eq!(numbered(&path, 1).exists(), keep == 1);
        assert!(blocker.join("x").exists());
        std::fs::remove_dir_all(&blocker).unwrap();
        let mut left = names_in(dir.path());
        left.retain(|n| n.starts_with('.'));
        assert!(left.is_empty(), "keep {keep}: {left:?}");
        for n in 0..=keep {
            let _ = std::fs::remove_file(numbered(&path, n));
        }
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn a_stopped_log_leaves_no_retired_file_and_opening_removes_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.log");
    let mut r = Rotating::open(&path, 4096, 1).unwrap();
    let batch: Vec<u8> = (0..200).flat_map(line).collect();
    r.write_lines(&batch).unwrap();
    drop(r);
    assert_eq!(names_in(dir.path()), ["decisions.log", "decisions.log.1"]);
    // A process that stopped before its remover got to them leaves hidden files; the next
    // open removes them, and nothing else.
    for name in [
        ".decisions.log.retired.3",
        ".other.log.retired.3",
        ".decisions.log",
    ] {
        std::fs::write(dir.path().join(name), "x\n").unwrap();
    }
    let r = Rotating::open(&path, 4096, 1).unwrap();
    drop(r);
    assert_eq!(
        names_in(dir.path()),
        [
            ".decisions.log",
            ".other.log.retired.3",
            "decisions.log",
            "decisions.log.1"
        ]
    );
}

#[test]
fn a_failed_write_leaves_whole_lines_only_and_says_how_much_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.log");
    let mut r = Rotating::open(&path, 1 << 20, 1).unwrap();
    r.write_lines(&[line(0), line(1)].concat()).unwrap();
    // A write that stopped part-way through a line…
    let before = r.file.metadata().unwrap().len();
    r.file.write_all(&line(2)[..40]).unwrap();
    // …is cut back to the length before it.
    r.cut_back(before);
    assert_eq!(ids_in(&path), ["d0", "d1"]);
    // A file that cannot be written: nothing of the lines is in it, and it stays whole.
    r.file = File::open(&path).unwrap();
    let (_, done) = r.write_lines(&line(3)).unwrap_err();
    assert_eq!(done, 0);
    assert_eq!(ids_in(&path), ["d0", "d1"]);
}

#[test]
fn lines_a_failed_write_lost_are_counted_as_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.log");
    let mut r = Rotating::open(&path, 1 << 20, 1).unwrap();
    r.file = File::open(&path).unwrap();
    let pending = Pending::default();
    {
        let mut state = pending.state.lock().unwrap();
        for n in 0..5 {
            assert!(state.append(&line(n)).is_some());
        }
        state.closed = true;
    }
    let metrics = Metrics::new();
    writer(Sink::File(r), &pending, &metrics);
    assert!(
        metrics
            .encode()
            .contains("warden_sidecar_decision_log_dropped_total 5"),
        "{}",
        metrics.encode()
    );
}

#[test]
fn lines_from_counts_the_unwritten_lines_of_a_batch() {
    let batch = vec![b"a\nb\n".to_vec(), b"c\nd\ne\n".to_vec(), b"f\n".to_vec()];
    assert_eq!(lines_from(&batch, 0, 0), 6);
    assert_eq!(lines_from(&batch, 0, 2), 5);
    assert_eq!(lines_from(&batch, 1, 4), 2);
    assert_eq!(lines_from(&batch, 2, 0), 1);
    assert_eq!(lines_from(&batch, 3, 0), 0);
}

#[test]
fn every_pushed_line_is_written_by_the_time_the_last_handle_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.log");
    let config = DecisionLogConfig {
        target: LogTarget::File(path.clone()),
        max_bytes: 64 * 1024 * 1024,
        keep: 1,
    };
    let log = DecisionLog::start(&config, Arc::new(Metrics::new())).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for n in 0..500 {
                    log.push(&line(t * 1000 + n));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(log);
    let ids = ids_in(&path);
    assert_eq!(ids.len(), 2000);
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 2000);
}

/// Everything waiting, in order.
fn waiting(state: &PendingState) -> Vec<u8> {
    state.chunks.concat()
}

#[test]
fn lines_beyond_the_pending_limit_are_refused_whole() {
    let mut state = PendingState::default();
    assert_eq!(state.append(b"a\n"), Some(Appended::Wake));
    assert_eq!(state.append(b"b\n"), Some(Appended::Quiet));
    let filler = vec![b'x'; MAX_PENDING_BYTES - 3];
    assert_eq!(state.append(&filler), None, "one byte too many");
    assert_eq!(
        state.append(&filler[1..]),
        Some(Appended::Wake),
        "exactly at the limit (and past the batch size)"
    );
    assert_eq!(state.bytes, MAX_PENDING_BYTES);
    assert_eq!(waiting(&state).len(), MAX_PENDING_BYTES);
    assert_eq!(state.append(b"c\n"), None);
    assert!(waiting(&state).starts_with(b"a\nb\nx"));
}

/// A line longer than the limit on its own would never be written: it is taken when nothing
/// waits, and only then.
#[test]
fn a_line_longer_than_the_pending_limit_is_taken_when_nothing_waits() {
    let huge = vec![b'x'; MAX_PENDING_BYTES + 1];
    let mut state = PendingState::default();
    assert_eq!(state.append(b"a\n"), Some(Appended::Wake));
    assert_eq!(state.append(&huge), None, "lines wait");
    let mut taken = Vec::new();
    state.take(&mut taken);
    assert_eq!(state.append(&huge), Some(Appended::Wake));
    assert_eq!(state.bytes, huge.len());
    assert_eq!(state.append(b"b\n"), None, "over the limit now");
}

#[test]
fn the_writer_is_woken_by_the_first_line_and_by_the_line_that_fills_a_batch_only() {
    let mut state = PendingState::default();
    assert_eq!(state.append(b"a\n"), Some(Appended::Wake), "first line");
    let almost = vec![b'x'; BATCH_BYTES - 3];
    assert_eq!(
        state.append(&almost),
        Some(Appended::Quiet),
        "one byte short"
    );
    assert_eq!(
        state.append(b"b\n"),
        Some(Appended::Wake),
        "fills the batch"
    );
    assert_eq!(state.append(b"c\n"), Some(Appended::Quiet), "past it");
    // The writer took the batch: the next line starts a new one.
    state.take(&mut Vec::new());
    assert_eq!(state.append(b"d\n"), Some(Appended::Wake));
}

#[test]
fn waiting_lines_hold_about_one_chunk_more_than_their_bytes_and_keep_their_order() {
    let mut state = PendingState::default();
    let lines: Vec<Vec<u8>> = (0..5000).map(line).collect();
    let longest = lines.iter().map(Vec::len).max().unwrap_or(0);
    let mut expected = Vec::new();
    for (n, l) in lines.iter().enumerate() {
        assert!(state.append(l).is_some());
        expected.extend_from_slice(l);
        // Each full chunk's tail is shorter than the line that did not fit in it.
        let held: usize = state.chunks.iter().map(Vec::capacity).sum();
        assert!(
            held <= state.bytes + CHUNK_BYTES + state.chunks.len() * longest,
            "after line {n}: {held} bytes held for {} waiting",
            state.bytes
        );
    }
    assert!(state.bytes > MAX_PENDING_BYTES / 4, "{}", state.bytes);
    assert_eq!(waiting(&state), expected);
    // A line longer than a chunk gets one of its own, exactly its size.
    let long = vec![b'y'; CHUNK_BYTES + 1];
    assert!(state.append(&long).is_some());
    assert_eq!(state.chunks.last().map(Vec::capacity), Some(long.len()));
    assert!(state.append(b"z\n").is_some());
    assert_eq!(state.chunks.last().map(Vec::as_slice), Some(&b"z\n"[..]));
}

#[test]
fn written_chunks_are_reused_up_to_the_spare_limit_and_the_rest_freed() {
    let mut state = PendingState::default();
    let mut batch = Vec::new();
    let filler = vec![b'x'; CHUNK_BYTES];
    for _ in 0..3 * SPARE_CHUNKS {
        assert!(state.append(&filler).is_some());
    }
    assert!(state.append(&vec![b'y'; CHUNK_BYTES + 1]).is_some());
    state.take(&mut batch);
    assert_eq!((state.bytes, state.chunks.len()), (0, 0));
    assert_eq!(batch.len(), 3 * SPARE_CHUNKS + 1);
    let kept: Vec<*const u8> = batch
        .iter()
        .rev()
        .take(SPARE_CHUNKS + 1)
        .map(|c| c.as_ptr())
        .collect();
    state.recycle(&mut batch);
    // The oversized chunk (last) is not kept; the spares are emptied chunks of the usual size.
    assert_eq!(state.spare.len(), SPARE_CHUNKS);
    assert!(
        state
            .spare
            .iter()
            .all(|c| c.is_empty() && c.capacity() == CHUNK_BYTES)
    );
    assert_eq!(batch.len(), 2 * SPARE_CHUNKS, "left for the caller to free");
    // The next lines fill the spares before anything new is allocated.
    for _ in 0..SPARE_CHUNKS {
        assert!(state.append(&filler).is_some());
    }
    assert!(state.spare.is_empty());
    assert!(
        state.chunks.iter().all(|c| kept.contains(&c.as_ptr())),
        "a chunk was allocated while spares were left"
    );
}

#[test]
fn missing_directory_is_an_error_naming_the_path() {
    let err = Rotating::open(Path::new("/nonexistent/dir/decisions.log"), 4096, 1)
        .err()
        .unwrap();
    assert!(err.to_string().contains("/nonexistent/dir/decisions.log"));
}

#[test]
fn a_symbolic_link_or_a_non_file_at_the_path_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "keep me\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    let path = dir.path().join("decisions.log");
    std::os::unix::fs::symlink(&victim, &path).unwrap();
    let err = Rotating::open(&path, 4096, 1).err().unwrap().to_string();
    assert!(
        err.contains("decisions.log") && err.contains("symbolic link"),
        "{err}"
    );
    let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me\n");
    // A directory is no log file either.
    let err = Rotating::open(dir.path(), 4096, 1)
        .err()
        .unwrap()
        .to_string();
    assert!(!err.is_empty());
    // A link planted in place of the live file before a rotation: the rotation moves the link,
    // and the new live file is a file of its own; the target is never written nor chmod-ed.
    let path = dir.path().join("rotating.log");
    let mut r = Rotating::open(&path, 4096, 1).unwrap();
    r.write_lines(&line(0)).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&victim, &path).unwrap();
    let batch: Vec<u8> = (1..100).flat_map(line).collect();
    r.write_lines(&batch).unwrap();
    assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
    assert!(ids_in(&path).contains(&"d99".to_owned()));
    let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me\n");
}

#[test]
fn a_log_file_removed_from_outside_is_started_again_and_the_rotated_files_stay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.log");
    let mut r = Rotating::open(&path, 4096, 3).unwrap();
    let batch = |range: std::ops::Range<usize>| -> Vec<u8> { range.flat_map(line).collect() };
    r.write_lines(&batch(0..60)).unwrap();
    assert!(numbered(&path, 1).exists());
    std::fs::remove_file(&path).unwrap();
    // Enough for several rotations.
    for n in 0..10 {
        r.write_lines(&batch(100 + n * 20..120 + n * 20)).unwrap();
    }
    assert!(path.exists());
    for p in [numbered(&path, 1), numbered(&path, 2), numbered(&path, 3)] {
        assert!(!ids_in(&p).is_empty(), "{}", p.display());
    }
    let last: Vec<String> = ids_in(&path);
    assert_eq!(last.last().map(String::as_str), Some("d299"));
}
