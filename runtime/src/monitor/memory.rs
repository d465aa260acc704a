//! Keeping the monitor's resident set small. The node pays for it once per pod, so after
//! setup and after each call that ran rarely used code, the monitor drops the file pages it
//! has mapped (they fault back in from the page cache when needed) and returns free heap.

/// Returns the top of the heap to the kernel as soon as a page of it is free, and serves
/// allocations of a page or more from their own mappings whenever the heap has to grow.
pub(crate) fn tune_malloc() {
    // SAFETY: mallopt only changes allocator thresholds; called before other allocations
    // matter, single-threaded.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4096);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 4096);
    }
}

/// Unmaps the resident pages of read-only file mappings that hold no private copies
/// (`Anonymous: 0 kB`: their contents are exactly the file's, so dropping them loses
/// nothing), then trims the heap.
pub(crate) fn trim_resident() {
    let (ranges, stack) = clean_file_ranges();
    for (start, end) in ranges {
        // SAFETY: advice on a read-only, file-backed mapping of our own with no private
        // pages; the kernel refaults its pages from the file on access.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
    // The stack below the current frame is dead (no signal handler runs on it: signals
    // arrive through a signalfd); give back what a deep call (a JSON parse) once used.
    let marker = 0u8;
    let sp = std::hint::black_box(&marker) as *const u8 as usize;
    if let Some((low, _)) = stack {
        let high = sp.saturating_sub(16 * 1024) & !4095;
        if high > low {
            // SAFETY: the range lies in our stack mapping, at least 16 KiB below the live
            // frame; anonymous pages read back as zeros, which nothing below `sp` relies on.
            unsafe { libc::madvise(low as *mut libc::c_void, high - low, libc::MADV_DONTNEED) };
        }
    }
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe { libc::malloc_trim(0) };
}

/// A mapping's start and end addresses.
type Range = (usize, usize);

/// Read-only private file mappings without anonymous (copied) pages, and the stack.
fn clean_file_ranges() -> (Vec<Range>, Option<Range>) {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return (Vec::new(), None);
    };
    let mut out = Vec::new();
    let mut stack = None;
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        if let Some(anon) = line.strip_prefix("Anonymous:") {
            if let Some(range) = current.take()
                && anon.trim() == "0 kB"
            {
                out.push(range);
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
            stack = Some((start, end));
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
    (out, stack)
}
