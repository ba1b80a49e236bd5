//! How the node's process uses glibc's allocator (the binary's, not the library's: the only
//! unsafe code, two calls into the C library).
//!
//! glibc gives every thread that allocates under contention an arena of its own (up to eight
//! per core) and keeps freed memory inside them. A node that has just stored a burst of
//! mail from hundreds of sources is left holding hundreds of megabytes it no longer uses:
//! measured on 1,000 idling IMAP sources, 304 MB resident against about 100 MB in use.
//! So the node caps the arenas at one per core, and while it runs, gives free memory
//! back to the system after it grew: every [`TRIM_EVERY`] it reads its resident size, and
//! trims when that grew by [`TRIM_AFTER_BYTES`] since the last trim. An idle node is left
//! alone. (A trim every 10 s regardless cost 1,000 idle sources 2 % of a core, and asking
//! glibc how much free memory it holds, `mallinfo2`, walks every free chunk: 1 % of a core.)
//!
//! Elsewhere (other C libraries) these are no-ops.

use std::time::Duration;

/// How often a running node looks whether it has free memory to give back.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Growth of the resident size since the last trim that makes the next one.
pub const TRIM_AFTER_BYTES: usize = 16 * 1024 * 1024;

/// The process' resident size in bytes (`/proc/self/statm`: a cheap read).
fn resident_bytes() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> usize {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: sysconf only reads a system constant.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(size).unwrap_or(4096)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        4096
    }
}

/// Whether a resident size of `now` bytes, against `since_trim` right after the last trim
/// (or the lowest seen since), is worth a trim.
fn worth_trimming(now: usize, since_trim: usize) -> bool {
    now >= since_trim.saturating_add(TRIM_AFTER_BYTES)
}

/// Caps glibc's arenas at one per core (at least two). Call before other threads start:
/// arenas already made stay.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        let arenas = i32::try_from(cores.max(2)).unwrap_or(i32::MAX);
        // SAFETY: mallopt only changes allocator settings; any value is accepted.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// Gives free memory in every arena back to the system (what it can: whole free pages).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the arena locks itself; it does not touch live allocations.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Starts a thread that, for the rest of the process, calls [`trim`] when the resident size
/// has grown by [`TRIM_AFTER_BYTES`] since the last trim (looked at every [`TRIM_EVERY`]). Its own
/// thread: a trim of a large heap takes milliseconds, which no async task should.
pub fn spawn_trimmer() {
    let started = std::thread::Builder::new()
        .name("memory-trim".into())
        .spawn(|| {
            let Some(mut since_trim) = resident_bytes() else {
                return;
            };
            loop {
                std::thread::sleep(TRIM_EVERY);
                let Some(now) = resident_bytes() else {
                    return;
                };
                if worth_trimming(now, since_trim) {
                    trim();
                    since_trim = resident_bytes().unwrap_or(now);
                } else {
                    // Shrunk on its own: the next growth is measured from here.
                    since_trim = since_trim.min(now);
                }
            }
        });
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot start the memory trimmer: freed memory stays with the process");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rss_kib() -> u64 {
        resident_bytes().unwrap() as u64 / 1024
    }

    #[test]
    fn trims_only_once_the_resident_size_has_grown_enough() {
        let base = 40 * 1024 * 1024;
        assert!(!worth_trimming(base, base));
        assert!(!worth_trimming(base + TRIM_AFTER_BYTES - 1, base));
        assert!(worth_trimming(base + TRIM_AFTER_BYTES, base));
        assert!(!worth_trimming(0, base));
    }

    /// Memory the process touches shows in what the trimmer looks at.
    /// The tests that read the resident size run one at a time (they share the process).
    static RSS_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn resident_size_follows_touched_memory() {
        let _one = RSS_TESTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = resident_bytes().unwrap();
        let block = vec![1u8; 64 * 1024 * 1024];
        let after = resident_bytes().unwrap();
        assert!(
            worth_trimming(after, before),
            "{before} bytes resident before touching 64 MiB, {after} after"
        );
        assert_eq!(block[12345], 1);
    }

    /// Freed memory that glibc cannot give back by itself (live chunks scattered through it)
    /// goes back to the system on a trim.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_trim_gives_back_memory_freed_between_live_allocations() {
        let _one = RSS_TESTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Done on a thread of its own, as the node's threads would.
        std::thread::spawn(|| {
            let mut chunks: Vec<Vec<u8>> =
                (0..400_000).map(|i| vec![(i % 251) as u8; 300]).collect();
            // Keep one chunk in 64 alive: no page at the top of the heap is free, so
            // glibc's own trimming on free returns nothing.
            let kept: Vec<Vec<u8>> = chunks
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| i % 64 == 0)
                .map(|(_, c)| std::mem::take(c))
                .collect();
            drop(chunks);
            let before = rss_kib();
            trim();
            let after = rss_kib();
            assert!(
                before.saturating_sub(after) > 60 * 1024,
                "RSS {before} KiB before the trim, {after} KiB after"
            );
            assert_eq!(kept.len(), 6250);
            assert!(
                kept.iter()
                    .enumerate()
                    .all(|(k, c)| c[0] == ((k * 64) % 251) as u8)
            );
        })
        .join()
        .unwrap();
    }
}
