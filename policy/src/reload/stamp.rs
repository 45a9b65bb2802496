//! What the watcher looks at before it reads any file: each set file's name, size, inode and
//! change times. The directory is hashed only when that differs from the last look, or when a
//! file changed so recently that an edit within the same tick of the file system's clock could
//! keep all of it (git's "racy" rule). A write changes the inode's ctime, which no user can set
//! back, so an unchanged stamp older than the clock's tick means unchanged content.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::loader::is_set_file;

/// How recent a change keeps a stamp from standing for the content: well over the coarsest
/// timestamp granularity of common file systems (ext4 and xfs keep nanoseconds, but the kernel
/// updates them from a clock that ticks every few milliseconds; FAT keeps 2 s).
const RACY: Duration = Duration::from_secs(3);

/// One look at a directory's set files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stamp(Vec<FileStamp>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    name: String,
    len: u64,
    inode: u64,
    modified: Option<SystemTime>,
    changed: (i64, i64),
}

/// The stamp of `dir` at `now`; `None` when it cannot stand for the content: the directory or
/// a file cannot be read, or a file changed within [`RACY`] of `now`.
pub(super) fn stamp(dir: &Path, now: SystemTime) -> Option<Stamp> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if !is_set_file(&path) {
            continue;
        }
        let meta = std::fs::metadata(&path).ok()?;
        let file = file_stamp(&path, &meta)?;
        let recent = |t: SystemTime| now.duration_since(t).map_or(true, |age| age < RACY);
        if file.modified.is_none_or(recent) || recent(changed_at(file.changed)) {
            return None;
        }
        files.push(file);
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Some(Stamp(files))
}

/// When a set file of `dir` last changed (the latest inode change time; elsewhere the latest
/// modification time), or `None` if no set file can be looked at.
pub(super) fn last_change(dir: &Path) -> Option<SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| is_set_file(path))
        .filter_map(|path| std::fs::metadata(&path).ok())
        .filter_map(|meta| changed_time(&meta))
        .max()
}

#[cfg(unix)]
fn changed_time(meta: &std::fs::Metadata) -> Option<SystemTime> {
    use std::os::unix::fs::MetadataExt as _;
    Some(changed_at((meta.ctime(), meta.ctime_nsec())))
}

#[cfg(not(unix))]
fn changed_time(meta: &std::fs::Metadata) -> Option<SystemTime> {
    meta.modified().ok()
}

#[cfg(unix)]
fn file_stamp(path: &Path, meta: &std::fs::Metadata) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt as _;
    Some(FileStamp {
        name: path.file_name()?.to_string_lossy().into_owned(),
        len: meta.len(),
        inode: meta.ino(),
        modified: meta.modified().ok(),
        changed: (meta.ctime(), meta.ctime_nsec()),
    })
}

/// Elsewhere there is no ctime to rely on: never a stamp, always a hash.
#[cfg(not(unix))]
fn file_stamp(_path: &Path, _meta: &std::fs::Metadata) -> Option<FileStamp> {
    None
}

fn changed_at((secs, nanos): (i64, i64)) -> SystemTime {
    let whole = Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    let part = Duration::from_nanos(u64::try_from(nanos).unwrap_or(0));
    SystemTime::UNIX_EPOCH + whole + part
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_stands_only_for_files_older_than_the_racy_window() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.cedar"), "x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let now = SystemTime::now();
        assert_eq!(stamp(dir.path(), now), None, "just written");
        let later = now + RACY + Duration::from_secs(1);
        let first = stamp(dir.path(), later).unwrap();
        assert_eq!(first.0.len(), 1, "only set files");
        assert_eq!(stamp(dir.path(), later), Some(first.clone()));
        // Same size, and the modification time put back: the change time still moves.
        let file = std::fs::File::options()
            .write(true)
            .open(dir.path().join("a.cedar"))
            .unwrap();
        let mtime = file.metadata().unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        std::io::Write::write_all(&mut &file, b"y").unwrap();
        file.set_modified(mtime).unwrap();
        let later = SystemTime::now() + RACY + Duration::from_secs(1);
        let second = stamp(dir.path(), later).unwrap();
        assert_ne!(second, first);
        // A new set file is a change, a file of another kind is not.
        std::fs::write(dir.path().join("other.txt"), "ignored").unwrap();
        assert_eq!(stamp(dir.path(), later), Some(second.clone()));
        std::fs::write(dir.path().join("b.cedar"), "z").unwrap();
        let third = stamp(dir.path(), later + Duration::from_secs(1)).unwrap();
        assert_eq!(third.0.len(), 2);
    }

    #[test]
    fn an_unreadable_directory_has_no_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        assert_eq!(stamp(&gone, SystemTime::now()), None);
    }
}
