//! Keeping the monitor's resident set small. The node pays for it once per pod, so once a
//! burst of activity (its start, a call, an exec) has been quiet for a moment, the monitor
//! drops the file pages it has mapped (they fault back in from the page cache when needed)
//! and returns free heap.

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
/// (`crate::resident`), then trims the heap.
pub(crate) fn trim_resident() {
    let mappings = crate::resident::own_mappings();
    crate::resident::drop_file_pages(&mappings.clean_files);
    // The stack below the current frame is dead (no signal handler runs on it: signals
    // arrive through a signalfd); give back what a deep call (a JSON parse) once used.
    let marker = 0u8;
    let sp = std::hint::black_box(&marker) as *const u8 as usize;
    if let Some((low, _)) = mappings.stack {
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
