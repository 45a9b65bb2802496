//! Letting go of the code pages a sidecar ran only to start.
//!
//! A process's resident set counts every page of its executable and libraries that it has
//! mapped, and the kernel maps code in blocks (fault-around: 64 KiB) around each page first
//! run. `warden` is one executable for the CA, the agent, the CLI and the sidecar; starting a
//! sidecar runs argument and config parsing, the Workload API client, the Cedar parser and
//! validator over every policy, certificate parsing — code scattered over the binary that is
//! then idle for the sidecar's life but stays mapped. Seen here (BENCHMARKS.md): an inbound's
//! executable code 15.5 MB resident when idle, of which 3.7 MB was touched under load.
//!
//! `release_code_pages` drops this process's page-table entries for the file-backed mappings
//! that are not writable and hold no private copy of any page (`MADV_DONTNEED`): every page in
//! such a mapping is exactly the file's, so the next access maps the same page from the page
//! cache again (a minor fault, no I/O, nothing lost). What runs again comes back; what ran once
//! stays out. The page cache itself is untouched (other sidecars share it), but pages no process
//! maps lose the protection the kernel gives mapped executable pages and are reclaimed first.
//! Writable mappings and any mapping holding a private page (relocated data, a debugger's
//! breakpoint) are never touched: dropping those would lose their contents.

use std::ops::Range;

/// One mapping `release_code_pages` may drop: its address range and how much of it is resident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Releasable {
    pub(crate) range: Range<usize>,
    pub(crate) rss_kb: u64,
}

/// A mapping being read: its range, whether its header allows it, its Rss and Anonymous lines.
struct Reading {
    range: Range<usize>,
    allowed: bool,
    rss_kb: Option<u64>,
    anonymous_kb: Option<u64>,
}

impl Reading {
    fn finish(self) -> Option<Releasable> {
        match (self.allowed, self.rss_kb, self.anonymous_kb) {
            (true, Some(rss_kb), Some(0)) if rss_kb > 0 => Some(Releasable {
                range: self.range,
                rss_kb,
            }),
            _ => None,
        }
    }
}

/// The mappings of a `/proc/<pid>/smaps` text that hold only unmodified file pages: backed by a
/// file (a path, not `[vdso]` or anonymous memory), private, not writable, with no anonymous
/// (copied-on-write) page, and with something resident. Anything it cannot read is left out.
pub(crate) fn releasable(smaps: &str) -> Vec<Releasable> {
    let mut out = Vec::new();
    let mut current: Option<Reading> = None;
    for line in smaps.lines() {
        if let Some((range, allowed)) = mapping_header(line) {
            out.extend(current.take().and_then(Reading::finish));
            current = Some(Reading {
                range,
                allowed,
                rss_kb: None,
                anonymous_kb: None,
            });
        } else if let Some(reading) = current.as_mut() {
            if let Some(v) = line.strip_prefix("Rss:") {
                reading.rss_kb = kilobytes(v);
            } else if let Some(v) = line.strip_prefix("Anonymous:") {
                reading.anonymous_kb = kilobytes(v);
            }
        }
    }
    out.extend(current.and_then(Reading::finish));
    out
}

/// `start-end perms offset dev inode [path]`: the range, and whether the header alone allows
/// the mapping (private, readable, not writable, a file path). None if the line is not a
/// mapping header.
fn mapping_header(line: &str) -> Option<(Range<usize>, bool)> {
    let mut fields = line.split_ascii_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let &[read, write, _exec, share] = fields.next()?.as_bytes() else {
        return None;
    };
    let (_offset, _dev, _inode) = (fields.next()?, fields.next()?, fields.next()?);
    if start >= end {
        return None;
    }
    let path = fields.next();
    let allowed =
        read == b'r' && write == b'-' && share == b'p' && path.is_some_and(|p| p.starts_with('/'));
    Some((start..end, allowed))
}

fn kilobytes(value: &str) -> Option<u64> {
    value.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// Drops this process's mappings of unmodified file pages (see the module documentation);
/// returns how many kilobytes were resident in them. Does nothing (0) off Linux.
pub(crate) fn release_code_pages() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
            return 0;
        };
        let mut released = 0;
        for mapping in releasable(&smaps) {
            // The second of the two unsafe calls in the workspace (root package lints:
            // `unsafe_code = "deny"`; the other is `malloc_trim` in src/memory.rs).
            // SAFETY: the range is one whole mapping of this process, read from its smaps just
            // now: private, not writable, backed by a file, holding no anonymous page. Every
            // resident page in it is therefore the file's own page, and MADV_DONTNEED on a
            // private file mapping only removes page-table entries: the next access faults the
            // same bytes back in from the file. Nothing in this process writes, remaps or
            // unmaps its executable's or libraries' read-only mappings, so the range cannot
            // have changed since it was read. No Rust reference is invalidated: the memory's
            // contents, as any reader sees them, are the same before and after.
            #[allow(unsafe_code)]
            let rc = unsafe {
                libc::madvise(
                    mapping.range.start as *mut libc::c_void,
                    mapping.range.end - mapping.range.start,
                    libc::MADV_DONTNEED,
                )
            };
            if rc == 0 {
                released += mapping.rss_kb;
            }
        }
        released
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
556284350000-556284afd000 r--p 00000000 fe:00 5310149                    /usr/bin/warden
Size:               7860 kB
Rss:                2304 kB
Anonymous:             0 kB
VmFlags: rd mr mw me dw sd
556284afd000-5562860a4000 r-xp 007ac000 fe:00 5310149                    /usr/bin/warden
Size:              22172 kB
Rss:               15504 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me dw sd
5562860a4000-556286169000 r--p 01d52000 fe:00 5310149                    /usr/bin/warden
Size:                788 kB
Rss:                 788 kB
Anonymous:           788 kB
VmFlags: rd mr mw me dw ac sd
556286169000-556286173000 rw-p 01e16000 fe:00 5310149                    /usr/bin/warden
Size:                 40 kB
Rss:                  40 kB
Anonymous:            12 kB
556286173000-556286174000 rw-p 00000000 00:00 0
Rss:                   4 kB
Anonymous:             4 kB
5562870a0000-5562870c1000 rw-p 00000000 00:00 0                          [heap]
Rss:                1664 kB
Anonymous:          1664 kB
7f0000000000-7f0000001000 r--s 00000000 00:05 77                         /dev/shm/shared
Rss:                   4 kB
Anonymous:             0 kB
7f1000000000-7f1000100000 r-xp 00028000 fe:00 42                         /usr/lib/libc.so.6
Rss:                 936 kB
Anonymous:             0 kB
7f1000100000-7f1000101000 rw-p 0002f000 fe:00 42                         /usr/lib/libc.so.6
Rss:                   4 kB
Anonymous:             0 kB
7f1000200000-7f1000300000 r--p 00000000 fe:00 43                         /usr/lib/libm.so.6
Rss:                   0 kB
Anonymous:             0 kB
7f1000300000-7f1000301000 ---p 00000000 fe:00 43                         /usr/lib/libm.so.6
Rss:                   0 kB
Anonymous:             0 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
Rss:                   8 kB
Anonymous:             0 kB
7ffd10000000-7ffd10001000 r-xp 00000000 00:00 0
Rss:                   4 kB
Anonymous:             0 kB
";

    #[test]
    fn only_private_read_only_file_mappings_without_private_pages_are_released() {
        assert_eq!(
            releasable(SMAPS),
            vec![
                Releasable {
                    range: 0x5562_8435_0000..0x5562_84af_d000,
                    rss_kb: 2304
                },
                Releasable {
                    range: 0x5562_84af_d000..0x5562_860a_4000,
                    rss_kb: 15504
                },
                Releasable {
                    range: 0x7f10_0000_0000..0x7f10_0010_0000,
                    rss_kb: 936
                },
            ],
            "relocated read-only data (anonymous pages), writable (even unwritten), shared, anonymous, \
             [vdso] and non-resident mappings must all be left alone"
        );
    }

    #[test]
    fn a_mapping_whose_anonymous_count_is_missing_or_unreadable_is_left_alone() {
        let cases = [
            "7f1000000000-7f1000100000 r-xp 00028000 fe:00 42 /usr/lib/libc.so.6\nRss: 936 kB\n",
            "7f1000000000-7f1000100000 r-xp 00028000 fe:00 42 /usr/lib/libc.so.6\n\
             Rss: 936 kB\nAnonymous: lots\n",
            "7f1000100000-7f1000000000 r-xp 00028000 fe:00 42 /usr/lib/libc.so.6\n\
             Rss: 936 kB\nAnonymous: 0 kB\n",
            "7f1000000000-7f1000100000 r-xp 00028000 fe:00 42\nRss: 936 kB\nAnonymous: 0 kB\n",
            "not smaps at all\nRss: 4 kB\nAnonymous: 0 kB\n",
            "",
        ];
        for case in cases {
            assert_eq!(releasable(case), vec![], "released from {case:?}");
        }
    }

    fn status_kb(field: &str) -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(kilobytes)
            .unwrap_or(0)
    }

    #[inline(never)]
    fn checksum(data: &[u8]) -> u64 {
        data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        })
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn released_code_pages_leave_the_resident_set_and_run_again_unchanged() {
        let before = checksum(b"the same bytes before and after");
        let file_before = status_kb("RssFile:");
        let released = release_code_pages();
        let file_after = status_kb("RssFile:");
        assert!(
            released > 0,
            "nothing was released ({file_before} kB file-backed resident)"
        );
        assert!(
            file_after < file_before,
            "file-backed resident memory did not fall: {file_before} kB -> {file_after} kB \
             ({released} kB released)"
        );
        // Code and read-only data come back from the file, byte for byte: the same function
        // gives the same answer. Relocated data (vtables, the GOT) was left alone: formatting
        // through `dyn` vtables and a heap allocation still work.
        assert_eq!(checksum(b"the same bytes before and after"), before);
        let shown: Box<dyn std::fmt::Display> = Box::new(42_u32);
        assert_eq!(format!("{shown} {}", 7.5_f64), "42 7.5");
    }
}
