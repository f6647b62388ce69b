//! The progress bar `sharepush sync` shows on a terminal (stderr): job,
//! files done/total, bytes sent/total, current rate and time left, drawn by
//! `indicatif` from the counters of [`crate::upload::Progress`].
//!
//! While a bar is shown, log lines must not land on it: [`StderrWriter`] is
//! the `tracing` writer, and it writes each record inside the bar's
//! `suspend` (the bar is cleared, the line printed, the bar redrawn). Without
//! a terminal no bar exists, the writer is plain stderr and `sync` prints
//! only its per-job summary lines.

use std::io::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::upload::Progress;

/// The bar being shown, if any; log lines go through its `suspend`.
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn active() -> Option<ProgressBar> {
    ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The bar's text before the gauge: `docs: 3/10 files`.
pub fn message(job: &str, files_done: u64, files_total: u64) -> String {
    format!("{job}: {files_done}/{files_total} files")
}

/// A bar on stderr, shown until [`Bar::finish`] (or drop) clears it.
#[derive(Debug)]
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    /// Starts drawing `progress` on stderr (call only when stderr is a
    /// terminal); from now on log lines are printed above the bar.
    pub fn start(progress: Arc<Progress>) -> (Bar, tokio::task::JoinHandle<()>) {
        // Hidden until a job has something to upload: no empty bar while
        // the scan runs or when nothing changed.
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
        bar.set_style(style(false));
        *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
        let ticker = tokio::spawn(feed(bar.clone(), progress));
        (Bar { bar }, ticker)
    }

    /// Clears the bar; log lines go straight to stderr again.
    pub fn finish(self) {}
}

impl Drop for Bar {
    fn drop(&mut self) {
        ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.bar.finish_and_clear();
    }
}

/// How long a job uploads before the bar shows a rate and ETA: earlier,
/// the estimate is a few fragments over a few milliseconds (GiB/s).
const RATE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// The bar's look: with the rate and ETA once they mean something.
fn style(with_rate: bool) -> ProgressStyle {
    let template = if with_rate {
        "{msg} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}"
    } else {
        "{msg} [{wide_bar}] {bytes}/{total_bytes}"
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// Copies the upload counters into the bar a few times a second. A new job
/// resets the bar (its counters start again from zero).
async fn feed(bar: ProgressBar, p: Arc<Progress>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    let mut shown_job = String::new();
    let mut with_rate = false;
    loop {
        tick.tick().await;
        let files_total = p.files_total.load(Relaxed);
        if files_total == 0 {
            continue;
        }
        let (job, running) = p.job();
        let first = shown_job.is_empty();
        if job != shown_job {
            bar.reset();
            bar.set_style(style(false));
            with_rate = false;
            shown_job = job.clone();
        }
        if !with_rate && running >= RATE_AFTER {
            bar.set_style(style(true));
            with_rate = true;
        }
        bar.set_length(p.bytes_total.load(Relaxed));
        bar.set_position(p.bytes_sent.load(Relaxed));
        bar.set_message(message(&job, p.files_done.load(Relaxed), files_total));
        if first {
            // Shown once it holds the first job's figures.
            bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
        }
    }
}

/// The `tracing` writer: stderr, printed above the bar while one is shown.
#[derive(Debug, Clone, Copy, Default)]
pub struct StderrWriter;

/// One log record, buffered and written in one piece when dropped.
#[derive(Debug)]
pub struct Record(Vec<u8>);

impl Write for Record {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let line = std::mem::take(&mut self.0);
        let write = move || {
            let _ = std::io::stderr().lock().write_all(&line);
        };
        match active() {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for StderrWriter {
    type Writer = Record;
    fn make_writer(&'a self) -> Record {
        Record(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_the_job_and_counts_files() {
        assert_eq!(message("docs", 3, 10), "docs: 3/10 files");
        assert_eq!(message("a b", 0, 1), "a b: 0/1 files");
    }

    #[tokio::test(start_paused = true)]
    async fn the_bar_follows_the_counters_and_resets_for_a_new_job() {
        let p = Arc::new(Progress::default());
        let (bar, ticker) = Bar::start(Arc::clone(&p));
        let shown = bar.bar.clone();
        assert!(
            active().is_some(),
            "log lines go through the bar while shown"
        );
        p.start_job("docs", 4, 1000);
        p.files_done.store(2, Relaxed);
        p.bytes_sent.store(600, Relaxed);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(shown.length(), Some(1000));
        assert_eq!(shown.position(), 600);
        assert_eq!(shown.message(), "docs: 2/4 files");
        p.start_job("photos", 1, 50);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!((shown.length(), shown.position()), (Some(50), 0));
        assert_eq!(shown.message(), "photos: 0/1 files");
        ticker.abort();
        bar.finish();
        assert!(
            active().is_none(),
            "no bar: log lines go straight to stderr"
        );
        assert!(shown.is_finished());
    }

    #[test]
    fn a_record_is_buffered_until_dropped() {
        let mut r = Record(Vec::new());
        write!(r, "a ").unwrap();
        write!(r, "line").unwrap();
        assert_eq!(r.0, b"a line");
        r.0.clear();
    }
}
