//! Giving the memory a finished run freed back to the system.
//!
//! A daemon's first run over a large tree allocates a lot at once: over
//! 100,000 files, the job's state records, the scan, the plan and the upload
//! results reach a heap peak of about 92 MiB (heaptrack). When the run ends
//! all of it is freed and 3.8 MiB stays live, yet glibc malloc kept about
//! 70 MiB resident: each worker thread's arena only shrinks from its top, and
//! a few allocations that outlive the run (a pooled connection, a cached
//! statement) sit above the freed space and pin it. `malloc_trim(0)` hands
//! back the free pages inside every arena; measured on the `idle` benchmark
//! it took the daemon from 70 MiB to 48 MiB (README, Performance).
//!
//! [`release_freed`] is called once after each run. It does nothing on other
//! C libraries (musl returns memory by itself); it frees nothing that is in
//! use and only costs the walk over the allocator's free lists (milliseconds).

/// Returns the pages of freed heap memory to the kernel (glibc only).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_freed() {
    // SAFETY: malloc_trim takes no pointer and touches only the allocator's
    // own free chunks, under the allocator's locks (glibc documents it as
    // MT-Safe); the Rust global allocator is glibc malloc here.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Returns the pages of freed heap memory to the kernel (glibc only).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_freed() {}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// The process's anonymous resident memory in KiB.
    fn rss_anon_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("RssAnon:"))
            .expect("RssAnon in /proc/self/status");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// The pattern a big run leaves: many small blocks freed, a few kept
    /// alive among them (and at the end, so the arena cannot shrink from
    /// its top). glibc keeps the freed pages until `release_freed`.
    #[test]
    fn freed_small_blocks_between_live_ones_go_back_to_the_system() {
        // Its own thread, so the blocks land in one arena the way a tokio
        // worker's do.
        let (before, after) = std::thread::spawn(|| {
            let mut blocks: Vec<Box<[u8; 256]>> =
                (0..240_000).map(|_| Box::new([1u8; 256])).collect();
            let kept: Vec<Box<[u8; 256]>> = blocks
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| i % 64 == 0 || *i == 239_999)
                .map(|(_, b)| std::mem::replace(b, Box::new([2u8; 256])))
                .collect();
            drop(blocks);
            let before = rss_anon_kib();
            release_freed();
            let after = rss_anon_kib();
            assert_eq!(kept.iter().filter(|b| b[0] == 1).count(), kept.len());
            (before, after)
        })
        .join()
        .unwrap();
        // About 60 MiB was freed; most of it must leave the process.
        assert!(
            before.saturating_sub(after) >= 24 * 1024,
            "RSS went from {before} KiB to {after} KiB"
        );
    }
}
