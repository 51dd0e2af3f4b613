//! Live progress of a session: an indicatif bar on a terminal, plain periodic
//! lines otherwise (logs, CI, a PXE console).

use std::io::IsTerminal;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use kacast::session::Stats;
use kacast::size::human;

/// Plain lines this often when not on a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);
const TICK: Duration = Duration::from_millis(200);

/// Follows `stats` until `over` is signalled or dropped. Runs on its own thread.
pub fn watch(stats: Arc<Stats>, over: Receiver<()>) {
    let tty = std::io::stderr().is_terminal();
    let bar = tty.then(|| {
        let b = ProgressBar::new(0);
        b.enable_steady_tick(TICK);
        b
    });
    let mut last_line = Instant::now();
    let mut started: Option<Instant> = None;
    loop {
        let sent = Stats::get(&stats.sent);
        let total = Stats::get(&stats.total);
        let nodes = Stats::count(&stats.nodes);
        let (done, failed) = (Stats::count(&stats.done), Stats::count(&stats.failed));
        let started_now = stats.started.load(std::sync::atomic::Ordering::Relaxed);
        if started_now && started.is_none() {
            started = Some(Instant::now());
        }
        let tail = Stats::get(&stats.slowest);
        let msg = if started_now && done + failed < nodes && tail > 0 {
            format!("nodes {done} done, {failed} failed / {nodes}, last node at {}", human(tail))
        } else if started_now {
            format!("nodes {done} done, {failed} failed / {nodes}")
        } else {
            format!("waiting: {} nodes joined", Stats::count(&stats.joined))
        };
        if let Some(b) = &bar {
            if total > 0 {
                b.set_length(total);
                b.set_style(
                    ProgressStyle::with_template(
                        "{spinner} {elapsed_precise} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}  {msg}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
            } else {
                b.set_style(
                    ProgressStyle::with_template(
                        "{spinner} {elapsed_precise} {bytes} {bytes_per_sec}  {msg}",
                    )
                    .expect("valid template"),
                );
            }
            b.set_position(sent);
            b.set_message(msg);
        } else if last_line.elapsed() >= PLAIN_EVERY {
            last_line = Instant::now();
            let rate =
                started.map(|t| sent as f64 / 1e6 / t.elapsed().as_secs_f64().max(1e-3)).unwrap_or(0.0);
            let of = if total > 0 { format!(" of {}", human(total)) } else { String::new() };
            eprintln!("progress: sent {}{of} ({rate:.1} MB/s), {msg}", human(sent));
        }
        match over.recv_timeout(TICK) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => break,
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
}
