//! Content hashes: SHA-1 and QuickXorHash computed in ONE read of a file.
//!
//! SharePoint reports only `quickXorHash` (graph-api.md section 9), which the
//! uploader verifies uploads against; SHA-1 identifies content locally
//! (renames, adopting files that are already remote). Both are fed from the
//! same buffer, so a file is read from disk once.
//!
//! This module hashes bytes and files; it does not decide *which* files to hash
//! (that is `scan`), and it never looks at file names or metadata.
//!
//! QuickXorHash comes from the `quickxorhash` crate (checked here against every
//! vector in graph-api.md section 9); it processes 160-byte blocks with plain
//! XORs that the compiler vectorises, so it costs a small fraction of SHA-1.
//! SHA-1 comes from `sha1`, which uses the SHA-NI instructions when the CPU has
//! them.
//!
//! Speed (1 GiB, page cache warm, 2-core EPYC with SHA-NI; the ignored test
//! `hash::tests::throughput` measures it): SHA-1 alone in memory 1.68 GB/s;
//! [`hash_file`] 1.63 GB/s (0.97x) with its two-thread pipeline, 1.45 GB/s
//! (0.87x) on one thread. Feeding both hashers 32 KiB at a time matters:
//! running them one after the other over a 256 KiB buffer gave 0.57x.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::mpsc;

use base64::Engine as _;
use bytes::{Buf as _, BytesMut};
use quickxorhash::QuickXorHash;
use sha1::{Digest as _, Sha1};

// The `quickxorhash` crate XORs the length as a `usize`; graph-api.md section 9
// requires a 64-bit length in bytes 12..20. Only 64-bit targets get that right.
#[cfg(not(target_pointer_width = "64"))]
compile_error!("quickxorhash 0.1 XORs a usize length: sharepush needs a 64-bit target");

/// Size of the read buffer used by [`FileHasher`] (about 128 KiB): large
/// enough that syscall overhead vanishes on big files, small enough that the
/// buffer and the page-cache pages it is copied from stay in L2 until hashed.
/// A whole number of [`INTERLEAVE`] slices, so full reads keep both hashers
/// on block boundaries.
pub const READ_BUFFER_SIZE: usize = 4 * INTERLEAVE;

/// Both hashers are fed this much at a time (about 32 KiB), a slice that
/// stays in L1 cache between them. A multiple of 320 bytes, the least common
/// multiple of QuickXorHash's 160-byte and SHA-1's 64-byte blocks, so neither
/// hasher falls back to its byte-wise path inside a large update.
pub const INTERLEAVE: usize = 320 * 102;

/// Where every read buffer starts. The kernel copies page-cache data into a
/// buffer that is not 64-byte aligned at a quarter of the speed (measured on
/// this 2-core EPYC: 2.5 GB/s at a 16-byte offset, which is where glibc puts
/// large allocations, against 10 GB/s aligned). On a 2 GiB upload that copy
/// had cost as much CPU as SHA-1.
pub const READ_ALIGN: usize = 64;

/// Bytes from `ptr` up to the next [`READ_ALIGN`] boundary.
pub fn align_pad(ptr: *const u8) -> usize {
    (READ_ALIGN - (ptr as usize) % READ_ALIGN) % READ_ALIGN
}

/// `len` zero bytes starting on a [`READ_ALIGN`] boundary: every read
/// buffer (scan hashing, upload fragments). A [`BytesMut`], so an upload
/// fragment becomes `Bytes` for its PUT and comes back without a copy.
pub fn aligned_buffer(len: usize) -> BytesMut {
    let mut buf = BytesMut::zeroed(len + READ_ALIGN - 1);
    buf.advance(align_pad(buf.as_ptr()));
    buf.truncate(len);
    buf
}

/// The two hashes of one file's content.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Hashes {
    /// Lowercase hex, 40 characters.
    pub sha1: String,
    /// Base64, 28 characters, as Graph returns it.
    pub quick_xor: String,
}

/// Feeds the same bytes to SHA-1 and QuickXorHash, so callers that stream
/// content (files, upload fragments) compute both in one pass.
#[derive(Default)]
pub struct ContentHasher {
    sha1: Sha1,
    quick_xor: QuickXorHash,
    /// Bytes seen so far (also folded into QuickXorHash by the crate itself).
    len: u64,
}

impl fmt::Debug for ContentHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContentHasher")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl ContentHasher {
    /// A hasher that has seen no bytes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `bytes` to both hashes. Any chunking gives the same result as one
    /// call with everything (property-tested below).
    pub fn update(&mut self, bytes: &[u8]) {
        // Feed both hashers slice by slice so QuickXorHash reads each slice
        // from L1 right after SHA-1 did; two passes over a large buffer read
        // it from memory twice (measured: 0.57x instead of 0.81x of SHA-1).
        for chunk in bytes.chunks(INTERLEAVE) {
            self.sha1.update(chunk);
            self.quick_xor.update(chunk);
        }
        self.len += bytes.len() as u64;
    }

    /// Number of bytes fed so far; lets callers check a file's length against
    /// its `stat` size without a second counter.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when no bytes were fed (the empty-content hashes).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The final hashes in the text forms the state database and Graph use.
    pub fn finish(self) -> Hashes {
        let mut quick_xor = self.quick_xor;
        Hashes {
            sha1: to_hex(&self.sha1.finalize()),
            quick_xor: base64::engine::general_purpose::STANDARD.encode(quick_xor.finalize()),
        }
    }
}

/// Files at least this large are hashed by two threads (see [`FileHasher`]).
/// Below it a thread start-up costs more than it saves.
pub const PIPELINE_MIN: u64 = 8 * 1024 * 1024;

/// Read buffers in flight between the reading and the SHA-1 thread.
const PIPELINE_DEPTH: usize = 4;

/// Opens `path` for reading only if it is a regular file. A scan judges a
/// path from its `stat`, but by the time it is read (by the scan, or by an
/// upload much later) it may have been replaced by a FIFO, whose plain
/// `open` blocks until a writer comes (forever, for a backup run), or by a
/// device. Opening without blocking and `fstat`ing the handle rules both
/// out (the flag is cleared again once the file is known to be regular). Anything
/// else is [`io::ErrorKind::InvalidInput`], "not a regular file".
pub fn open_regular(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (replaced by a FIFO, socket, device or folder since it was scanned)",
        ));
    }
    // Back to blocking reads: some FUSE file systems pass the flag on.
    let flags = rustix::fs::fcntl_getfl(&file)?;
    rustix::fs::fcntl_setfl(&file, flags - rustix::fs::OFlags::NONBLOCK)?;
    Ok(file)
}

/// Hashes whole files with one reusable read buffer. Keep one per thread so a
/// scan of 100,000 small files allocates the buffer once, not 100,000 times.
///
/// Files of [`PIPELINE_MIN`] bytes and more are hashed by two threads: this
/// one reads and computes QuickXorHash, a helper computes SHA-1 on the
/// buffers it is handed. Reading (a copy from the page cache) and
/// QuickXorHash cost about a quarter of SHA-1's time, which a single thread
/// pays on top of SHA-1; the pipeline hides it behind SHA-1 on a second core.
pub struct FileHasher {
    buf: BytesMut,
    /// Files this large or larger use the two-thread pipeline.
    pipeline_min: u64,
}

impl fmt::Debug for FileHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileHasher")
            .field("buffer_size", &self.buf.len())
            .field("pipeline_min", &self.pipeline_min)
            .finish()
    }
}

impl Default for FileHasher {
    fn default() -> Self {
        Self::with_options(READ_BUFFER_SIZE, PIPELINE_MIN)
    }
}

impl FileHasher {
    /// A hasher with the default buffer size and pipeline threshold.
    pub fn new() -> Self {
        Self::default()
    }

    /// A hasher with a chosen buffer size (at least 1 byte) and pipeline
    /// threshold (`u64::MAX` = never); for benchmarks and tests.
    pub fn with_options(buffer_size: usize, pipeline_min: u64) -> Self {
        FileHasher {
            buf: aligned_buffer(buffer_size.max(1)),
            pipeline_min,
        }
    }

    /// Opens and hashes the file at `path`; returns the hashes and the number
    /// of bytes read.
    pub fn hash_file(&mut self, path: &Path) -> io::Result<(Hashes, u64)> {
        let mut file = open_regular(path)?;
        let expected = file.metadata()?.len();
        self.hash_reader(&mut file, expected)
    }

    /// Hashes everything `reader` yields until end of file. `scan` uses this
    /// on a file it has opened itself, so it can `fstat` the same handle after
    /// reading and notice a file that changed while it was being hashed.
    /// `expected_len` (the size `stat` reported) only picks the strategy;
    /// the result is the same for any value.
    pub fn hash_reader<R: Read + ?Sized>(
        &mut self,
        reader: &mut R,
        expected_len: u64,
    ) -> io::Result<(Hashes, u64)> {
        if expected_len >= self.pipeline_min
            && let Some(result) = self.hash_pipelined(reader)
        {
            return result;
        }
        let mut hasher = ContentHasher::new();
        loop {
            match read_some(reader, &mut self.buf)? {
                0 => break,
                n => hasher.update(&self.buf[..n]),
            }
        }
        let len = hasher.len();
        Ok((hasher.finish(), len))
    }

    /// The two-thread pipeline; `None` if the helper thread cannot be started
    /// (the caller then hashes on this thread alone).
    fn hash_pipelined<R: Read + ?Sized>(
        &mut self,
        reader: &mut R,
    ) -> Option<io::Result<(Hashes, u64)>> {
        let buffer_size = self.buf.len();
        let (to_sha1, sha1_input) = mpsc::sync_channel::<(BytesMut, usize)>(PIPELINE_DEPTH);
        let (give_back, returned) = mpsc::sync_channel::<BytesMut>(PIPELINE_DEPTH);
        std::thread::scope(|scope| {
            let sha1_thread = std::thread::Builder::new()
                .name("sha1".into())
                .spawn_scoped(scope, move || {
                    let mut sha1 = Sha1::new();
                    for (buf, n) in sha1_input {
                        sha1.update(&buf[..n]);
                        // The reader may have stopped on an error: fine.
                        let _ = give_back.send(buf);
                    }
                    sha1.finalize()
                })
                .ok()?;
            let mut quick_xor = QuickXorHash::new();
            let mut len = 0u64;
            let mut fresh = PIPELINE_DEPTH;
            let read: io::Result<()> = loop {
                let mut buf = if fresh > 0 {
                    fresh -= 1;
                    aligned_buffer(buffer_size)
                } else {
                    match returned.recv() {
                        Ok(buf) => buf,
                        // Only if the SHA-1 thread panicked; join reports it.
                        Err(_) => break Ok(()),
                    }
                };
                match read_some(reader, &mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        quick_xor.update(&buf[..n]);
                        len += n as u64;
                        if to_sha1.send((buf, n)).is_err() {
                            break Ok(());
                        }
                    }
                    Err(e) => break Err(e),
                }
            };
            drop(to_sha1);
            let sha1 = match sha1_thread.join() {
                Ok(digest) => digest,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            Some(read.map(|()| {
                let hashes = Hashes {
                    sha1: to_hex(&sha1),
                    quick_xor: base64::engine::general_purpose::STANDARD
                        .encode(quick_xor.finalize()),
                };
                (hashes, len)
            }))
        })
    }
}

/// One `read`, retried on `EINTR`; 0 means end of file.
fn read_some<R: Read + ?Sized>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match reader.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Hashes the file at `path` in one read. Convenience for one-off callers;
/// loops should keep a [`FileHasher`] instead.
pub fn hash_file(path: &Path) -> io::Result<(Hashes, u64)> {
    FileHasher::new().hash_file(path)
}

/// Hashes an in-memory buffer (small uploads, tests).
pub fn hash_bytes(bytes: &[u8]) -> Hashes {
    let mut hasher = ContentHasher::new();
    hasher.update(bytes);
    hasher.finish()
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rstest::rstest;

    fn qx(bytes: &[u8]) -> String {
        hash_bytes(bytes).quick_xor
    }

    #[test]
    fn read_buffers_start_on_a_64_byte_boundary() {
        for len in [1, 100, READ_BUFFER_SIZE, 10 << 20] {
            let mut buf = aligned_buffer(len);
            assert_eq!(buf.len(), len);
            assert_eq!(buf.as_ptr() as usize % READ_ALIGN, 0, "len {len}");
            assert!(buf.iter().all(|&b| b == 0));
            buf[len - 1] = 7;
            assert_eq!(buf[len - 1], 7);
        }
    }

    // graph-api.md section 9, every row.
    #[rstest]
    #[case::empty(b"".to_vec(), "AAAAAAAAAAAAAAAAAAAAAAAAAAA=")]
    #[case::one_byte(vec![0x4a], "SgAAAAAAAAAAAAAAAQAAAAAAAAA=")]
    #[case::two_bytes(vec![0xb5, 0xb4], "taAFAAAAAAAAAAAAAgAAAAAAAAA=")]
    #[case::foo_newline(b"foo\n".to_vec(), "ZnjDGxQAAAAAAAAABAAAAAAAAAA=")]
    #[case::hello_world(b"hello world".to_vec(), "aCgDG9jwBhDc4Q1yawMZAAAAAAA=")]
    #[case::all_bytes((0..=255u8).collect(), "QkGEfSisZcA7k+FCh71r2dbCayY=")]
    fn quick_xor_vectors(#[case] input: Vec<u8>, #[case] expected: &str) {
        assert_eq!(qx(&input), expected);
        // And byte by byte, which exercises the crate's partial-block path.
        let mut h = ContentHasher::new();
        for b in &input {
            h.update(std::slice::from_ref(b));
        }
        assert_eq!(h.finish().quick_xor, expected);
    }

    #[test]
    fn sha1_known_values() {
        assert_eq!(
            hash_bytes(b"hello world").sha1,
            "2aae6c35c94fcfb415dbe95f408b9ce91ee846ed"
        );
        assert_eq!(
            hash_bytes(b"").sha1,
            "da39a3ee5e6b4b0d3255bfef95601890afd80709"
        );
    }

    /// An independent, bit-by-bit reading of graph-api.md section 9, to check
    /// the crate on inputs longer than the vectors (several 160-byte blocks).
    fn reference_quick_xor(bytes: &[u8]) -> [u8; 20] {
        let mut state = [0u8; 20];
        for (i, &b) in bytes.iter().enumerate() {
            for bit in 0..8 {
                if b >> bit & 1 == 1 {
                    let pos = (i * 11 + bit) % 160;
                    state[pos / 8] ^= 1 << (pos % 8);
                }
            }
        }
        for (k, l) in (bytes.len() as u64).to_le_bytes().iter().enumerate() {
            state[12 + k] ^= l;
        }
        state
    }

    #[test]
    fn hash_file_reads_whole_file_with_small_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let content: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let mut hasher = FileHasher::with_options(4097, u64::MAX);
        let (hashes, len) = hasher.hash_file(&path).unwrap();
        assert_eq!(len, 100_000);
        assert_eq!(hashes, hash_bytes(&content));
        assert_eq!(hash_file(&path).unwrap(), (hash_bytes(&content), 100_000));
        // The two-thread pipeline, with more buffers than it keeps in flight.
        let mut pipelined = FileHasher::with_options(999, 0);
        assert_eq!(
            pipelined.hash_file(&path).unwrap(),
            (hash_bytes(&content), 100_000)
        );
    }

    #[test]
    fn pipeline_handles_empty_input_and_read_errors() {
        let mut pipelined = FileHasher::with_options(16, 0);
        let (hashes, len) = pipelined.hash_reader(&mut io::empty(), 0).unwrap();
        assert_eq!((hashes, len), (hash_bytes(b""), 0));

        /// Yields some bytes, then fails, like a disk read error.
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("disk on fire"));
                }
                self.0 -= 1;
                buf[0] = 1;
                Ok(1)
            }
        }
        for pipeline_min in [0, u64::MAX] {
            let mut hasher = FileHasher::with_options(16, pipeline_min);
            let err = hasher.hash_reader(&mut Failing(100), 100).unwrap_err();
            assert_eq!(err.to_string(), "disk on fire");
        }
    }

    #[test]
    fn hash_file_missing_is_not_found() {
        let err = hash_file(Path::new("/nonexistent/sharepush/x")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    proptest! {
        #[test]
        fn chunked_updates_equal_one_shot(
            data in proptest::collection::vec(any::<u8>(), 0..2000),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let one_shot = hash_bytes(&data);
            let mut positions: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
            positions.sort_unstable();
            let mut h = ContentHasher::new();
            let mut start = 0;
            for p in positions {
                h.update(&data[start..p]);
                start = p;
            }
            h.update(&data[start..]);
            prop_assert_eq!(h.len(), data.len() as u64);
            prop_assert_eq!(h.finish(), one_shot.clone());
            let reference = base64::engine::general_purpose::STANDARD.encode(reference_quick_xor(&data));
            prop_assert_eq!(one_shot.quick_xor.clone(), reference);
            let mut pipelined = FileHasher::with_options(7 + cuts.len() * 13, 0);
            let (hashes, len) = pipelined.hash_reader(&mut data.as_slice(), 0).unwrap();
            prop_assert_eq!(len, data.len() as u64);
            prop_assert_eq!(hashes, one_shot);
        }
    }

    /// `cargo test --release -p sharepush --lib hash::tests::throughput -- --ignored --nocapture`
    /// Measures hash_file on a 1 GiB file (page cache warm) against SHA-1
    /// over the same bytes in memory.
    #[test]
    #[ignore = "benchmark: writes 1 GiB to /tmp; run in release"]
    fn throughput() {
        use std::time::Instant;
        const SIZE: usize = 1 << 30;
        let data: Vec<u8> = (0..SIZE)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let path = dir.path().join("one-gib");
        std::fs::write(&path, &data).unwrap();
        let gbps = |secs: f64| SIZE as f64 / secs / 1e9;
        let best = |f: &mut dyn FnMut()| {
            (0..3)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::MAX, f64::min)
        };
        let mem_sha1 = best(&mut || {
            let mut s = Sha1::new();
            s.update(&data);
            std::hint::black_box(s.finalize());
        });
        let mem_qx = best(&mut || {
            let mut q = QuickXorHash::new();
            q.update(&data);
            std::hint::black_box(q.finalize());
        });
        drop(data);
        let _ = hash_file(&path).unwrap(); // warm the page cache
        println!("in-memory SHA-1:      {:.2} GB/s", gbps(mem_sha1));
        println!("in-memory QuickXor:   {:.2} GB/s", gbps(mem_qx));
        for (name, pipeline_min) in [("one thread", u64::MAX), ("pipelined", PIPELINE_MIN)] {
            let mut hasher = FileHasher::with_options(READ_BUFFER_SIZE, pipeline_min);
            let t = best(&mut || {
                std::hint::black_box(hasher.hash_file(&path).unwrap());
            });
            println!(
                "hash_file, {name:>10}: {:.2} GB/s = {:.2}x in-memory SHA-1",
                gbps(t),
                mem_sha1 / t
            );
        }
    }
}
