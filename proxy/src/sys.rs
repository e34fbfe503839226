//! The one place Strait calls libc directly (commented wrappers; no other `unsafe` in the project),
//! and the memory policy built on them: freed heap pages and start-up code pages go back to the OS.

use std::sync::atomic::{AtomicU64, Ordering};

/// Hands freed heap pages back to the OS. Reading config builds and drops a ~20 MB descriptor pool,
/// and a burst of connections leaves their buffers freed in the middle of glibc's heaps; glibc only
/// returns memory at the top of a heap otherwise, and the proxy's RSS would carry it forever.
#[allow(unsafe_code)]
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own allocator state and
    // madvise()s free pages away. It is thread-safe (it takes the arena locks).
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Drops the executable's code pages from this process's resident set. Start-up and config reading
/// touch several MB of code (protobuf descriptors, YAML, validation) that the data path never runs
/// again; the hot path's pages fault straight back in from the page cache (no disk read), the rest
/// stay out. Only the read-only, executable mapping of our own binary is touched: its pages are
/// never written (no text relocations), so dropping them loses nothing.
#[allow(unsafe_code)]
pub fn release_startup_code() {
    #[cfg(target_os = "linux")]
    {
        let Ok(exe) = std::env::current_exe() else { return };
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return };
        for line in maps.lines() {
            let mut fields = line.split_whitespace();
            let (Some(range), Some(perms)) = (fields.next(), fields.next()) else { continue };
            let path = fields.nth(3);
            if perms != "r-xp" || path.map(std::path::Path::new) != Some(exe.as_path()) {
                continue;
            }
            let Some((start, end)) = range.split_once('-') else { continue };
            let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else {
                continue;
            };
            // SAFETY: the range is a whole mapping from /proc/self/maps: page-aligned, mapped, and
            // the private read-only text of our executable. MADV_DONTNEED on a private file mapping
            // that was never written only unmaps the pages; the next access maps them again from the
            // file's page cache, with the same contents.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
}

/// Connections (downstream and upstream) closed since start.
static CONNECTIONS_CLOSED: AtomicU64 = AtomicU64::new(0);

/// Records that a connection closed: its buffers are now free heap memory.
pub fn connection_closed() {
    CONNECTIONS_CLOSED.fetch_add(1, Ordering::Relaxed);
}

/// When connections closed since the last look, returns freed heap memory to the OS, at most once a
/// second (a trim walks the heaps under their locks). Called every quarter second with the caller's
/// memory of the close count and of the last trim.
pub fn return_memory_after_closes(seen: &mut u64, last_trim: &mut Option<std::time::Instant>) {
    let closed = CONNECTIONS_CLOSED.load(Ordering::Relaxed);
    if closed == *seen || last_trim.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1)) {
        return;
    }
    *seen = closed;
    *last_trim = Some(std::time::Instant::now());
    release_free_memory();
}
