//! Giving freed heap back to the system.
//!
//! glibc's allocator keeps what the gateway frees in its per-thread arenas. After a burst (large
//! outputs queued for slow clients that were then evicted, or many kernels shut down at once) the
//! process stays at its peak resident size although nothing holds the memory any more, and an
//! operator watching RSS cannot tell a leak from a high-water mark. Every few seconds this looks at
//! how much the allocator holds free and, when it is worth it, asks it to return the free pages
//! (`malloc_trim`), which costs well under a millisecond for a heap of this size.

// The workspace denies `unsafe`; this module is its one exception, for two argument-less glibc calls.
#![allow(unsafe_code)]

use std::time::Duration;

/// How often the free heap is looked at.
const PERIOD: Duration = Duration::from_secs(5);

/// Free heap below this is left alone: trimming it would gain little.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const WORTH_TRIMMING: usize = 4 << 20;

/// Runs until the runtime stops; spawned by `main`.
pub(crate) async fn return_freed_memory() {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        trim();
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: both are glibc calls without arguments that point anywhere; they take the
    // allocator's own locks and are safe to call from any thread at any time.
    let free = unsafe { libc::mallinfo2() }.fordblks;
    if free >= WORTH_TRIMMING {
        let released = unsafe { libc::malloc_trim(0) };
        tracing::debug!(
            free_mib = free >> 20,
            released,
            "returned free heap to the system"
        );
    }
}

/// Other allocators (musl, macOS) return memory on their own terms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
