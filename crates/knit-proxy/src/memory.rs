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

/// Lets go of the pages of this binary that start-up read and nothing runs again: the
/// executable's read-only file-backed mappings (code, read-only data, unwind tables) are
/// dropped from this process's page tables (`MADV_DONTNEED`), and the kernel maps back, from the
/// page cache, only what runs from then on. The proxy's code is large (14 MB, most of it TLS,
/// gRPC and protobuf used while it certifies and first discovers) and its steady working set
/// small. A mapping that holds any page of its own (a relocated page, a debugger's breakpoint:
/// `Anonymous` in smaps) is left alone, since dropping it would lose that content; so is
/// anything writable. A code path first run later costs minor page faults once. Called once, on
/// a blocking thread, when the proxy owns the process.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // madvise: see the SAFETY comment.
pub fn release_startup_code() {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else { return };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else { return };
    let mut mapping: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        // A mapping's header: START-END PERMS OFFSET DEV INODE PATH; its fields follow.
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [range, perms, _, _, _, path] = fields[..] {
            mapping = None;
            if perms.starts_with('r') && !perms.contains('w') && std::path::Path::new(path) == exe {
                if let Some((a, b)) = range.split_once('-') {
                    if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                        mapping = Some((a, b));
                    }
                }
            }
            continue;
        }
        if let (Some((start, end)), ["Anonymous:", "0", "kB"]) = (mapping, &fields[..]) {
            mapping = None;
            // SAFETY: the range is one of this process's own read-only, private, file-backed
            // mappings, page-aligned as the kernel lists it, with no page of its own (Anonymous:
            // 0): every page dropped is a clean copy of the file, which the next access maps
            // again from the page cache unchanged. No content, protection or address changes.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub fn release_startup_code() {}
