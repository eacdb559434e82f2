//! How the daemons use glibc's allocator.
//!
//! glibc gives freed heap memory back to the kernel as soon as 128 KiB are free at the top of the
//! heap, and the data path's buffers (64 KiB packets and frames, 192 KiB output chunks, 512 KiB reads)
//! come and go in exactly that range: the heap shrank and grew again every few packets, a page fault
//! per 4 KiB each time. So during traffic freed memory is kept (up to 16 MiB), and it is given back
//! when a session ends, so that a daemon whose peers are gone shrinks back to its idle size.

/// Keeps up to 16 MiB of freed memory and serves blocks up to 1 MiB from the heap rather than mmap.
/// One arena for all threads: `malloc_trim` gives back the free memory at the top of the main heap
/// only, never at the top of a thread's own arena, so with per-thread arenas a daemon kept ten MiB
/// or more after its sessions ended (seen with 512 KiB read buffers freed by another thread). The
/// data path runs on one tokio worker by default (`tuning.worker_threads`), so the lock is rarely shared.
/// Call before the runtime starts its threads.
pub fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 * 1024 * 1024);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Gives the freed memory [`tune_malloc`] lets the heap keep back to the kernel.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's arenas to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
