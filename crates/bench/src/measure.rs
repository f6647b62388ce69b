//! Measuring: one command in a child process, or a closure in this process,
//! and the table the harness prints.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::resource::{UsageWho, getrusage};
use serde::{Deserialize, Serialize};

/// What one measured run cost.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Cost {
    pub wall_s: f64,
    /// User + system CPU seconds.
    pub cpu_s: f64,
    /// Peak resident set size in KiB (`ru_maxrss`); 0 when not measured.
    pub max_rss_kib: u64,
}

/// One line of the result table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub name: String,
    #[serde(flatten)]
    pub cost: Cost,
    /// Throughput where it means something (MB/s = 10^6 bytes/s).
    pub mb_per_s: Option<f64>,
    /// `name`'s figure divided by the baseline's, as the target states it.
    pub ratio: Option<f64>,
    /// e.g. "<= 2.0x find" or "baseline".
    pub target: String,
    /// None for baselines.
    pub met: Option<bool>,
}

impl Row {
    pub fn baseline(scenario: &str, name: &str, cost: Cost, mb_per_s: Option<f64>) -> Row {
        Row {
            scenario: scenario.into(),
            name: name.into(),
            cost,
            mb_per_s,
            ratio: None,
            target: "baseline".into(),
            met: None,
        }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn tv_secs(tv: nix::sys::time::TimeVal) -> f64 {
    tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6
}

/// User + system CPU seconds of one `getrusage` reading; every scenario
/// measures CPU as the difference of two of these.
/// CPU seconds (utime + stime) process `pid` has used so far, from
/// `/proc/<pid>/stat`: for a child whose CPU `getrusage` cannot give while
/// it runs (the daemon, the emulator process).
pub fn process_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    use anyhow::Context as _;
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| path.clone())?;
    let ticks = cpu_ticks(&stat).with_context(|| format!("{path}: unexpected format"))?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100);
    Ok(ticks as f64 / hz as f64)
}

/// utime + stime (fields 14 and 15, in clock ticks) of a `/proc/PID/stat`
/// line. The command name (field 2) is in parentheses and may itself hold
/// spaces and parentheses, so fields are counted from its last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let mut after = stat.rsplit_once(')')?.1.split_whitespace();
    // `after` starts at field 3 (the state).
    let utime: u64 = after.nth(14 - 3)?.parse().ok()?;
    let stime: u64 = after.next()?.parse().ok()?;
    Some(utime + stime)
}

pub fn cpu_seconds(usage: &nix::sys::resource::Usage) -> f64 {
    tv_secs(usage.user_time()) + tv_secs(usage.system_time())
}

/// `__measure` child: run the command, wait, print the rusage of that one child.
pub fn child_main(command: &[String]) -> anyhow::Result<()> {
    let (program, args) = command.split_first().context("__measure needs a command")?;
    let start = Instant::now();
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    let wall = start.elapsed();
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN)?;
    if !output.status.success() {
        bail!(
            "{program} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let cost = Cost {
        wall_s: secs(wall),
        cpu_s: cpu_seconds(&usage),
        max_rss_kib: usage.max_rss() as u64,
    };
    // The command's stdout goes first, then one line of JSON with the cost.
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&output.stdout)?;
    writeln!(stdout, "\n__COST__ {}", serde_json::to_string(&cost)?)?;
    Ok(())
}

/// Runs `program args` in a measuring child; returns its stdout and cost.
pub fn run_measured(program: &str, args: &[&str]) -> anyhow::Result<(String, Cost)> {
    let me = std::env::current_exe()?;
    let output = Command::new(me)
        .arg("--__measure")
        .arg(program)
        .args(args)
        .output()
        .context("starting the measuring child")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let (body, cost) = stdout
        .rsplit_once("\n__COST__ ")
        .context("measuring child printed no cost line")?;
    let cost: Cost = serde_json::from_str(cost.trim())?;
    Ok((body.to_string(), cost))
}

/// Measures a closure in this process (CPU from `RUSAGE_SELF` deltas; RSS not
/// meaningful in-process and left 0).
pub fn in_process<T>(f: impl FnOnce() -> T) -> anyhow::Result<(T, Cost)> {
    let before = getrusage(UsageWho::RUSAGE_SELF)?;
    let start = Instant::now();
    let value = f();
    let wall = start.elapsed();
    let after = getrusage(UsageWho::RUSAGE_SELF)?;
    let cpu = cpu_seconds(&after) - cpu_seconds(&before);
    Ok((
        value,
        Cost {
            wall_s: secs(wall),
            cpu_s: cpu,
            max_rss_kib: 0,
        },
    ))
}

/// Prints the rows as an aligned plain-text (Markdown-compatible) table.
pub fn print_table(rows: &[Row]) {
    println!(
        "| scenario | measurement | wall s | CPU s | peak RSS MiB | MB/s | ratio | target | met |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---|---|");
    for r in rows {
        let rss = if r.cost.max_rss_kib == 0 {
            "-".to_string()
        } else {
            format!("{:.1}", r.cost.max_rss_kib as f64 / 1024.0)
        };
        let mbs = r.mb_per_s.map_or("-".into(), |v| format!("{v:.0}"));
        let ratio = r.ratio.map_or("-".into(), |v| format!("{v:.2}x"));
        let met = match r.met {
            None => "",
            Some(true) => "yes",
            Some(false) => "NO",
        };
        println!(
            "| {} | {} | {:.3} | {:.3} | {} | {} | {} | {} | {} |",
            r.scenario, r.name, r.cost.wall_s, r.cost.cpu_s, rss, mbs, ratio, r.target, met
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{cpu_ticks, process_cpu_seconds};

    #[test]
    fn cpu_ticks_are_utime_plus_stime_even_with_odd_command_names() {
        // Fields 14 and 15 are 7 and 5; field 16 (cutime) must not count.
        let rest = "R 1 1 1 0 -1 4194304 123 0 0 0 7 5 9 9 20 0 1 0 4869214";
        assert_eq!(cpu_ticks(&format!("42 (graph-emulator) {rest}")), Some(12));
        assert_eq!(cpu_ticks(&format!("42 (a) b (c)) {rest}")), Some(12));
        assert_eq!(cpu_ticks("42 (x) R 1 2"), None);
        assert_eq!(cpu_ticks("no parenthesis here"), None);
    }

    #[test]
    fn this_processs_cpu_is_read() {
        assert!(process_cpu_seconds(std::process::id()).unwrap() >= 0.0);
        assert!(process_cpu_seconds(u32::MAX).is_err());
    }
}
