//! The one place Strait calls libc directly (a commented wrapper; no other `unsafe` in the project).

/// Hands freed heap pages back to the OS. Reading config builds and drops a ~20 MB descriptor pool;
/// glibc keeps freed memory in its heap otherwise, and the proxy's idle RSS would carry it forever.
#[allow(unsafe_code)]
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own allocator state and
    // madvise()s free pages away. It is thread-safe (it takes the arena locks).
    unsafe {
        libc::malloc_trim(0);
    }
}
