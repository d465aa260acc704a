//! Dropping a process's clean file pages from its resident set, shared by the daemon and
//! the monitor: the code and read-only data a burst of calls touched stay mapped (and
//! counted in RSS) until the process exits, although the page cache still holds them and
//! a later access faults them back in without reading the disk.

/// A mapping's start and end addresses.
pub type Range = (usize, usize);

/// What [`own_mappings`] found in `/proc/self/smaps`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Mappings {
    /// Read-only private file mappings holding no private copies (`Anonymous: 0 kB`):
    /// their contents are exactly the file's, so dropping their pages loses nothing.
    pub clean_files: Vec<Range>,
    /// The main thread's stack.
    pub stack: Option<Range>,
}

/// This process's mappings; empty when `/proc/self/smaps` cannot be read.
pub fn own_mappings() -> Mappings {
    std::fs::read_to_string("/proc/self/smaps").map_or_else(|_| Mappings::default(), |s| parse(&s))
}

/// Unmaps the resident pages of `ranges`, clean file mappings from [`own_mappings`]. The
/// kernel drops such pages itself under memory pressure and refaults them from the file, so
/// this adds no hazard: other threads running code there fault it back in.
pub fn drop_file_pages(ranges: &[Range]) {
    for &(start, end) in ranges {
        // SAFETY: advice on a read-only, file-backed private mapping of our own with no
        // private pages; the kernel refaults its pages from the file on access.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}

/// Reads the mappings out of smaps text: a header line per mapping (`start-end perms offset
/// dev inode [path]`), then its fields, `Anonymous:` among them.
fn parse(smaps: &str) -> Mappings {
    let mut out = Mappings::default();
    let mut current: Option<Range> = None;
    for line in smaps.lines() {
        if let Some(anon) = line.strip_prefix("Anonymous:") {
            if let Some(range) = current.take()
                && anon.trim() == "0 kB"
            {
                out.clean_files.push(range);
            }
            continue;
        }
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        if !range.contains('-') || perms.len() != 4 {
            continue;
        }
        current = None;
        let path = f.nth(3);
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        else {
            continue;
        };
        if path == Some("[stack]") {
            out.stack = Some((start, end));
            continue;
        }
        if perms.as_bytes()[1] == b'w'
            || perms.as_bytes()[3] != b'p'
            || !path.is_some_and(|p| p.starts_with('/'))
        {
            continue;
        }
        current = Some((start, end));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mapping's header and the fields that matter here.
    fn mapping(range: &str, perms: &str, path: &str, anon_kb: u64) -> String {
        format!(
            "{range} {perms} 00000000 fd:00 42 {path}\nRss:                  12 kB\n\
             Anonymous:       {anon_kb:>8} kB\nVmFlags: rd mr mw me\n"
        )
    }

    #[test]
    fn only_read_only_private_file_mappings_without_copies_are_clean() {
        let smaps = [
            mapping("1000-3000", "r-xp", "/usr/bin/berth", 0),
            mapping("3000-4000", "r--p", "/usr/bin/berth", 0),
            // RELRO: read-only now, but its relocated pages are private copies.
            mapping("4000-5000", "r--p", "/usr/bin/berth", 4),
            mapping("5000-6000", "rw-p", "/usr/bin/berth", 0),
            mapping("6000-7000", "r--s", "/dev/shm/x", 0),
            mapping("7000-8000", "r--p", "[vvar]", 0),
            mapping("8000-9000", "rw-p", "", 8),
            mapping("a000-c000", "rw-p", "[stack]", 8),
            mapping("c000-d000", "r-xp", "/usr/lib/libc.so.6", 0),
        ]
        .concat();
        let m = parse(&smaps);
        assert_eq!(
            m.clean_files,
            vec![(0x1000, 0x3000), (0x3000, 0x4000), (0xc000, 0xd000)]
        );
        assert_eq!(m.stack, Some((0xa000, 0xc000)));
    }

    #[test]
    fn unreadable_text_gives_nothing_to_drop() {
        assert_eq!(parse("garbage\n1-2\n"), Mappings::default());
        // A header whose Anonymous line never came is not taken.
        assert_eq!(
            parse("1000-2000 r-xp 0 fd:00 1 /bin/x\n").clean_files,
            vec![]
        );
    }

    /// KiB resident in this process's mappings that start at one of `starts`.
    fn resident_kib(starts: &[usize]) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut counted = false;
        let mut kib = 0;
        for line in smaps.lines() {
            if let Some(v) = line.strip_prefix("Rss:") {
                if counted {
                    kib += v
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .unwrap();
                }
            } else if let Some((a, _)) = line.split_once('-')
                && let Ok(start) = usize::from_str_radix(a, 16)
            {
                counted = starts.contains(&start);
            }
        }
        kib
    }

    #[test]
    fn our_own_clean_pages_are_dropped_and_fault_back_in() {
        let m = own_mappings();
        assert!(
            !m.clean_files.is_empty(),
            "the test binary's code is a clean mapping"
        );
        let starts: Vec<usize> = m.clean_files.iter().map(|r| r.0).collect();
        let before = resident_kib(&starts);
        drop_file_pages(&m.clean_files);
        let after = resident_kib(&starts);
        // Other test threads run code meanwhile and fault some back, never all of it.
        assert!(
            after < before,
            "resident {before} KiB before, {after} KiB after"
        );
        // Code and read-only data still work after their pages were dropped.
        let again = own_mappings();
        assert_eq!(again.clean_files.len(), m.clean_files.len());
    }
}
