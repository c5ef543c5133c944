//! Giving freed memory back to the kernel. glibc's allocator keeps what is freed in the middle
//! of its heaps for reuse, so the buffers idle connections let go of when they park
//! (`http/park.rs`) would still count in the proxy's RSS. After connections have parked, the
//! proxy asks glibc to return whole free pages (`malloc_trim`), at most once per
//! [`TRIM_EVERY`], on a blocking thread, so that no request waits on it.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

/// The least time between two trims.
pub const TRIM_EVERY: Duration = Duration::from_secs(2);

static RELEASED: AtomicBool = AtomicBool::new(false);

/// Notes that memory was let go of (a connection parked).
pub fn released() {
    RELEASED.store(true, Ordering::Relaxed);
}

/// Trims after each period in which memory was let go of; runs for the proxy's life.
pub async fn trim_loop() {
    loop {
        tokio::time::sleep(TRIM_EVERY).await;
        if RELEASED.swap(false, Ordering::Relaxed) {
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // malloc_trim: see the SAFETY comment.
fn trim() {
    // SAFETY: malloc_trim takes a byte count and only walks glibc's own heaps under their locks;
    // it has no preconditions on the caller and returns a flag.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
