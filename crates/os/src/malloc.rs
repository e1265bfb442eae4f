//! How glibc's allocator gives memory back to the kernel.
//!
//! ipc-channel allocates a buffer of the socket's largest message (about 200 KiB here)
//! for every message it receives, and frees it once the message is decoded. With
//! glibc's defaults, the free shrinks the thread's arena at once (`madvise`), and the
//! next message faults the pages back in: a third of the supervisor's IPC thread went
//! there, about 18 µs per job (`perf`, `scripts/bench depth`), and as much again in
//! every worker and in the grabber.

#![allow(unsafe_code)]

/// Serve blocks up to 1 MiB from the arenas (larger ones are mapped and unmapped as
/// before) and keep up to 4 MiB freed at the top of each arena: a block freed and
/// taken again at once (the receive buffer) stays mapped, and what an arena may hold
/// beyond its use stays small (the supervisor's RSS with 1,000 workers is a goal).
/// Call it first thing in `main`, before any thread starts.
pub fn keep_freed_memory() {
    // SAFETY: mallopt only sets two of the allocator's tunables; it is called before
    // any other thread exists, and a refusal (0) leaves the defaults, which work.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 4 << 20);
    }
}
