//! The scenarios: each generates its input (reused when present), runs its
//! baselines and sharepush in the same run, and returns table rows.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail, ensure};
use sha1::Digest;

use crate::Args;
use crate::measure::{Cost, Row, in_process, run_measured};

/// A small deterministic generator so trees are the same on every machine.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn sharepush_binary(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.sharepush {
        return Ok(p.clone());
    }
    let me = std::env::current_exe()?;
    let sibling = me.with_file_name("sharepush");
    ensure!(
        sibling.exists(),
        "{} not found: build it first (`cargo build --release --workspace`) or pass --sharepush PATH",
        sibling.display()
    );
    Ok(sibling)
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not valid UTF-8", p.display()))
}

/// Generates `files` files spread over `dirs` folders, unless a tree of that
/// exact shape is already there.
fn generate_tree(root: &Path, args: &Args) -> anyhow::Result<()> {
    let shape = format!(
        "files={} dirs={} min={} max={}\n",
        args.files, args.dirs, args.min_size, args.max_size
    );
    // The marker sits beside the tree, not in it: the tree is scanned.
    let marker = root.with_extension("shape");
    if fs::read_to_string(&marker).ok().as_deref() == Some(shape.as_str()) {
        return Ok(());
    }
    if root.exists() {
        fs::remove_dir_all(root)?;
    }
    eprintln!(
        "generating {} files in {} folders under {} ...",
        args.files,
        args.dirs,
        root.display()
    );
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut buf = vec![0u8; args.max_size];
    let span = (args.max_size - args.min_size + 1) as u64;
    for d in 0..args.dirs {
        fs::create_dir_all(root.join(format!("d{d:04}")))?;
    }
    for i in 0..args.files {
        let size = args.min_size + (rng.next() % span) as usize;
        rng.fill(&mut buf[..size]);
        let path = root.join(format!("d{:04}/f{i:06}.bin", i % args.dirs));
        fs::write(&path, &buf[..size])?;
    }
    fs::write(&marker, shape)?;
    Ok(())
}

/// The counts `sharepush scan --json` reports for the first job.
#[derive(Debug, serde::Deserialize)]
struct ScanCounts {
    new: u64,
    changed: u64,
    hashed_bytes: u64,
}

fn scan_counts(stdout: &str) -> anyhow::Result<ScanCounts> {
    let v: serde_json::Value = serde_json::from_str(stdout)
        .with_context(|| format!("sharepush scan --json printed: {stdout}"))?;
    Ok(serde_json::from_value(v["jobs"][0].clone())?)
}

/// `scan`: first scan, unchanged rescan and a 1%-touched rescan against the
/// stat floor (`find -printf`) and the hash floor (`sha1sum` over every file).
pub fn scan(args: &Args) -> anyhow::Result<Vec<Row>> {
    let bin = sharepush_binary(args)?;
    let work = fs::canonicalize({
        fs::create_dir_all(&args.work_dir)?;
        &args.work_dir
    })?;
    let tree = work.join("scan-tree");
    generate_tree(&tree, args)?;
    let tree_s = path_str(&tree)?;
    let config = work.join("scan.toml");
    fs::write(
        &config,
        format!(
            "[auth]\ntenant = \"bench.onmicrosoft.com\"\nclient_id = \"00000000-0000-0000-0000-000000000000\"\nmode = \"device_code\"\n\n[[job]]\nname = \"bench\"\nsource = \"{tree_s}\"\nsite = \"https://contoso.sharepoint.com/sites/bench\"\nlibrary = \"Documents\"\nfolder = \"bench\"\nschedule = \"@daily\"\n"
        ),
    )?;
    let state = work.join("scan-state");
    if state.exists() {
        fs::remove_dir_all(&state)?;
    }
    let total_bytes = dir_bytes(&tree)?;

    // Warm the page cache (metadata and content) so every measurement below starts equal.
    run_measured("find", &[tree_s, "-printf", "%s %T@ %i\n"])?;
    run_measured(
        "sh",
        &[
            "-c",
            "find \"$0\" -type f -print0 | xargs -0 cat > /dev/null",
            tree_s,
        ],
    )?;

    let (_, stat_floor) = run_measured("find", &[tree_s, "-printf", "%s %T@ %i\n"])?;
    let (_, hash_floor) = run_measured(
        "sh",
        &[
            "-c",
            "find \"$0\" -type f -print0 | xargs -0 sha1sum > /dev/null",
            tree_s,
        ],
    )?;

    let sp = |extra: &[&str]| -> anyhow::Result<(ScanCounts, Cost)> {
        let mut a = vec![
            "--config",
            path_str(&config)?,
            "--state-dir",
            path_str(&state)?,
            "-q",
            "scan",
            "--json",
        ];
        a.extend_from_slice(extra);
        let (out, cost) = run_measured(path_str(&bin)?, &a)?;
        Ok((scan_counts(&out)?, cost))
    };

    let (first, first_cost) = sp(&[])?;
    ensure!(
        first.new == args.files as u64,
        "first scan reported {} new files, expected {}",
        first.new,
        args.files
    );
    let (again, again_cost) = sp(&[])?;
    ensure!(
        again.changed == 0 && again.new == 0 && again.hashed_bytes == 0,
        "unchanged rescan reported {again:?}"
    );

    // Touch 1%: rewrite content (one byte differs) and move mtime forward.
    let step = 100;
    let mut touched = 0u64;
    let later = SystemTime::now() + Duration::from_secs(5);
    for i in (0..args.files).step_by(step) {
        let path = tree.join(format!("d{:04}/f{i:06}.bin", i % args.dirs));
        let mut bytes = fs::read(&path)?;
        bytes[0] ^= 0xFF;
        let mut f = fs::File::create(&path)?;
        f.write_all(&bytes)?;
        f.set_modified(later)?;
        touched += 1;
    }
    let (touch, touch_cost) = sp(&[])?;
    ensure!(
        touch.changed == touched,
        "rescan after touching {touched} files reported {} changed",
        touch.changed
    );

    let mbs = |c: &Cost| Some(total_bytes as f64 / 1e6 / c.wall_s);
    let mut rows = vec![
        Row::baseline("scan", "find -printf (stat floor)", stat_floor, None),
        Row::baseline(
            "scan",
            "sha1sum every file (hash floor)",
            hash_floor,
            mbs(&hash_floor),
        ),
    ];
    let ratio_first = first_cost.wall_s / hash_floor.wall_s;
    rows.push(Row {
        scenario: "scan".into(),
        name: format!("sharepush first scan ({} files)", args.files),
        cost: first_cost,
        mb_per_s: mbs(&first_cost),
        ratio: Some(ratio_first),
        target: "<= 0.5x sha1sum".into(),
        met: Some(ratio_first <= 0.5),
    });
    let ratio_again = again_cost.wall_s / stat_floor.wall_s;
    rows.push(Row {
        scenario: "scan".into(),
        name: "sharepush unchanged rescan".into(),
        cost: again_cost,
        mb_per_s: None,
        ratio: Some(ratio_again),
        target: "<= 2.0x find, RSS <= 64 MiB".into(),
        met: Some(ratio_again <= 2.0 && again_cost.max_rss_kib <= 64 * 1024),
    });
    let ratio_touch = touch_cost.wall_s / stat_floor.wall_s;
    rows.push(Row {
        scenario: "scan".into(),
        name: format!("sharepush rescan, {touched} touched (1%)"),
        cost: touch_cost,
        mb_per_s: None,
        ratio: Some(ratio_touch),
        target: "(vs find)".into(),
        met: None,
    });
    Ok(rows)
}

fn dir_bytes(root: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

/// `hash`: our one-pass SHA-1 + QuickXorHash from a warm file against
/// `sha1sum` on the same file and SHA-1 over an in-memory buffer.
pub fn hash(args: &Args) -> anyhow::Result<Vec<Row>> {
    let work = {
        fs::create_dir_all(&args.work_dir)?;
        fs::canonicalize(&args.work_dir)?
    };
    let size = args.hash_mib as u64 * 1024 * 1024;
    let file = work.join(format!("hash-{}MiB.bin", args.hash_mib));
    if fs::metadata(&file).map(|m| m.len()).ok() != Some(size) {
        eprintln!("generating {} ...", file.display());
        let mut rng = XorShift(0xD1B5_4A32_D192_ED03);
        let mut f = fs::File::create(&file)?;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..args.hash_mib {
            rng.fill(&mut buf);
            f.write_all(&buf)?;
        }
        f.sync_all()?;
    }
    let file_s = path_str(&file)?;
    // Warm the page cache.
    run_measured("cat", &[file_s])
        .map(|_| ())
        .or_else(|_| -> anyhow::Result<()> {
            fs::read(&file)?;
            Ok(())
        })?;

    let mb = size as f64 / 1e6;
    let (_, sha1sum_cost) = run_measured("sha1sum", &[file_s])?;

    // In-memory SHA-1 over the same number of bytes (a 64 MiB buffer, hashed repeatedly).
    let mut buffer = vec![0u8; 64 << 20];
    XorShift(7).fill(&mut buffer);
    let rounds = (size / buffer.len() as u64).max(1);
    let (digest, mem_cost) = in_process(|| {
        let mut h = sha1::Sha1::new();
        for _ in 0..rounds {
            h.update(&buffer);
        }
        h.finalize()
    })?;
    std::hint::black_box(digest);
    let mem_bytes = rounds as f64 * buffer.len() as f64 / 1e6;
    drop(buffer);

    let (result, ours) = in_process(|| sharepush::hash::hash_file(&file))?;
    let (_, hashed) = result.with_context(|| format!("hashing {}", file.display()))?;
    if hashed != size {
        bail!("hash_file read {hashed} bytes of {size}");
    }

    let mem_speed = mem_bytes / mem_cost.wall_s;
    let our_speed = mb / ours.wall_s;
    let ratio = our_speed / mem_speed;
    Ok(vec![
        Row::baseline(
            "hash",
            "sha1sum (Debian coreutils)",
            sha1sum_cost,
            Some(mb / sha1sum_cost.wall_s),
        ),
        Row::baseline(
            "hash",
            "SHA-1 in memory (sha1 crate)",
            mem_cost,
            Some(mem_speed),
        ),
        Row {
            scenario: "hash".into(),
            name: format!("sharepush SHA-1+QuickXor from disk ({} MiB)", args.hash_mib),
            cost: ours,
            mb_per_s: Some(our_speed),
            ratio: Some(ratio),
            target: ">= 0.8x in-memory SHA-1".into(),
            met: Some(ratio >= 0.8),
        },
    ])
}
