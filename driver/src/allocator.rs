//! How the process's memory allocator keeps what it freed (glibc builds; the image's musl
//! allocator returns memory by itself and needs none of this).
//!
//! Two measured problems (docs/benchmarks.md): I/O bursts leave megabytes of freed frame
//! buffers in glibc's per-thread arenas, kept resident forever by a long-lived process
//! (a replica service: 52 MiB); and glibc raises its mmap threshold after large frees, so
//! that the FUSE frontend's 16 MiB session buffers (two per staged replicated volume) come
//! from the arenas, zeroed and so resident, and are never given back (a node with 10
//! staged volumes: 167 MiB, 156 MiB after they were all gone). So: two arenas, a fixed
//! 128 KiB mmap threshold (large buffers are mapped: pages never touched are never
//! resident, and a free unmaps at once), and a trim every 10 s.

/// Call once, early, from inside the runtime.
pub fn limit_retention() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt and malloc_trim only tune and trim glibc's allocator; they are
        // safe to call at any time from any thread.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
            // Setting it fixes it: glibc no longer raises it after large frees.
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        }
        tokio::spawn(async {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                // SAFETY: as above.
                unsafe {
                    libc::malloc_trim(0);
                }
            }
        });
    }
}
