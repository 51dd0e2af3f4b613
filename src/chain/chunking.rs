//! Where the server cuts its stream into chunks.
//!
//! Every hop forwards a chunk once it has it whole, so a chain of H hops ends
//! (H - 1) x the largest chunk / rate after its first node, whatever the order
//! of the chunks (a proportionate flow shop): a 256 KiB chunk costs 22 ms per hop
//! at 100 Mbit/s. Small chunks cost CPU per byte instead (about 25% more per node
//! at 1 Gbit/s with 64 KiB), which only matters where the chain is fast. So by
//! default the server starts with small chunks, measures the pace the chain takes
//! the stream at, and switches to large ones once, only if that pace is fast.
//!
//! The re-read fallback must cut the same boundaries as the live stream (a node
//! fed from a re-read relays to children that may later reattach to a ring
//! filled by the live stream, by offset), so the switch happens at an offset
//! that is a multiple of the large chunk, and a re-read that gets ahead of the
//! live stream before the switch is decided waits for the decision.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::info;

use super::CHUNK_SIZE;

/// The chunk an adaptive stream starts with: 5.5 ms per hop at 100 Mbit/s, where
/// its extra CPU per byte is a small share of a core.
pub const SMALL_CHUNK: usize = 64 * 1024;

/// Pace (bytes/s) from which large chunks pay: between the goodputs of 100 Mbit/s
/// (12 MB/s) and 1 Gbit/s (119 MB/s) links; beyond it a 256 KiB chunk crosses a
/// hop in under 7 ms, and small chunks' per-chunk costs start to show in a
/// node's CPU.
pub const FAST_PACE: f64 = 40e6;

/// Stream span over which the pace is measured: 0.7 s at 100 Mbit/s, long enough
/// to average over TCP's bursts, short enough that a fast chain switches early.
const MEASURED_SPAN: u64 = 8 << 20;

/// Stream bytes past `--buffer` after which the producer, never held back by the
/// chain, measures anyway: the input (a slow command, `--max-rate`) sets the pace.
const SETTLE_SLACK: u64 = 16 << 20;

/// How the server cuts its stream: `ServerConfig::chunk`, `--chunk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkSize {
    /// Every chunk this many bytes.
    Fixed(usize),
    /// [`SMALL_CHUNK`] until the chain's pace is measured, then [`CHUNK_SIZE`]
    /// if it reaches [`FAST_PACE`].
    Auto,
}

impl ChunkSize {
    /// The largest chunk the stream may have: what `--buffer` must hold twice.
    pub fn largest(self) -> usize {
        match self {
            ChunkSize::Fixed(n) => n,
            ChunkSize::Auto => CHUNK_SIZE,
        }
    }
}

/// How a session's stream was cut, for its report.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct ChunkReport {
    /// Size of the stream's first chunks.
    pub first: usize,
    /// Offset from which the chunks were `large`, if they grew.
    pub large_from: Option<u64>,
    pub large: usize,
    /// The pace the chain took the stream at, measured to decide (MB/s).
    pub measured_mb_s: Option<f64>,
}

/// One session's chunk boundaries, shared by the live stream (the pump) and
/// the re-reads of its input.
pub struct Chunking {
    small: usize,
    large: usize,
    /// Producer offset from which it measures even if never held back.
    settle_at: u64,
    state: Mutex<Plan>,
    decided: Condvar,
}

#[derive(Default)]
struct Plan {
    /// The live stream's offset: every chunk before it is cut.
    pumped: u64,
    /// Offset of the first large chunk; `u64::MAX` once decided never.
    switch: Option<u64>,
    /// Where and when the measured span began.
    meter: Option<(u64, Instant)>,
    /// Re-reads waiting in [`Chunking::at`].
    waiting: usize,
    /// Bytes/s measured, once decided.
    pace: Option<f64>,
}

impl Chunking {
    /// `buffer` is the producer's `--buffer`: until its window fills, the
    /// producer runs ahead of the chain and its pace says nothing.
    pub fn new(size: ChunkSize, buffer: usize) -> Chunking {
        let (small, large, switch) = match size {
            ChunkSize::Fixed(n) => (n, n, Some(0)),
            ChunkSize::Auto => (SMALL_CHUNK, CHUNK_SIZE, None),
        };
        Chunking {
            small,
            large,
            settle_at: buffer as u64 + SETTLE_SLACK,
            state: Mutex::new(Plan { switch, ..Plan::default() }),
            decided: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Plan> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn size_in(&self, plan: &Plan, offset: u64) -> usize {
        match plan.switch {
            Some(at) if offset >= at => self.large,
            _ => self.small,
        }
    }

    /// The size of the live stream's next chunk, at `offset`.
    pub fn next(&self, offset: u64) -> usize {
        self.size_in(&self.lock(), offset)
    }

    /// The live stream pushed up to `offset` at `now`; `held_back` when the
    /// push had to wait for room, i.e. the chain, not the input, sets the pace.
    /// Measures that pace and decides the switch.
    pub fn pushed(&self, offset: u64, held_back: bool, now: Instant) {
        let mut plan = self.lock();
        plan.pumped = offset;
        if plan.switch.is_none() {
            match plan.meter {
                None if held_back || offset >= self.settle_at => plan.meter = Some((offset, now)),
                Some((from, since)) if offset - from >= MEASURED_SPAN => {
                    let took = now.saturating_duration_since(since).max(Duration::from_micros(1));
                    let pace = (offset - from) as f64 / took.as_secs_f64();
                    let at =
                        if pace >= FAST_PACE { offset.next_multiple_of(self.large as u64) } else { u64::MAX };
                    if at == u64::MAX {
                        info!("the chain takes {:.1} MB/s: chunks stay {} KiB", pace / 1e6, self.small >> 10);
                    } else {
                        info!(
                            "the chain takes {:.1} MB/s: chunks of {} KiB from byte {at}",
                            pace / 1e6,
                            self.large >> 10
                        );
                    }
                    plan.switch = Some(at);
                    plan.pace = Some(pace);
                }
                _ => {}
            }
        }
        // Called for every chunk: wake only if a re-read waits.
        let waiting = plan.waiting > 0;
        drop(plan);
        if waiting {
            self.decided.notify_all();
        }
    }

    /// The live stream ended (or failed): an undecided switch never comes.
    pub fn settle(&self) {
        let mut plan = self.lock();
        plan.switch.get_or_insert(u64::MAX);
        drop(plan);
        self.decided.notify_all();
    }

    pub fn report(&self) -> ChunkReport {
        let plan = self.lock();
        ChunkReport {
            first: self.small,
            large_from: plan.switch.filter(|&at| at != u64::MAX && self.large != self.small),
            large: self.large,
            measured_mb_s: plan.pace.map(|p| (p / 1e4).round() / 100.0),
        }
    }

    /// The size of the chunk at `offset` (a chunk boundary of the live stream),
    /// for a re-read of the input: waits while the live stream has not reached
    /// `offset` and the switch is undecided.
    pub fn at(&self, offset: u64) -> usize {
        let mut plan = self.lock();
        while plan.switch.is_none() && offset >= plan.pumped {
            plan.waiting += 1;
            plan = self.decided.wait(plan).unwrap_or_else(|p| p.into_inner());
            plan.waiting -= 1;
        }
        self.size_in(&plan, offset)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::thread;

    use super::*;

    /// Drives the live side: pushes `bytes` in its chunks at `pace` bytes/s,
    /// held back from the first push. Returns the chunk sizes cut.
    fn pump(chunking: &Chunking, bytes: u64, pace: f64) -> Vec<usize> {
        let start = Instant::now();
        let (mut offset, mut cuts) = (0u64, Vec::new());
        while offset < bytes {
            let size = chunking.next(offset).min((bytes - offset) as usize);
            cuts.push(size);
            offset += size as u64;
            chunking.pushed(offset, true, start + Duration::from_secs_f64(offset as f64 / pace));
        }
        chunking.settle();
        cuts
    }

    #[test]
    fn a_slow_chain_keeps_small_chunks_to_the_end() {
        let chunking = Chunking::new(ChunkSize::Auto, 32 << 20);
        let cuts = pump(&chunking, 64 << 20, 12e6);
        assert!(cuts.iter().all(|&c| c == SMALL_CHUNK), "{:?}", &cuts[cuts.len() - 3..]);
        assert_eq!(chunking.at(60 << 20), SMALL_CHUNK);
        let report = chunking.report();
        assert_eq!(report.large_from, None);
        assert!((report.measured_mb_s.unwrap() - 12.0).abs() < 0.5, "{report:?}");
    }

    #[test]
    fn a_fast_chain_switches_once_at_a_large_chunk_boundary() {
        let chunking = Chunking::new(ChunkSize::Auto, 32 << 20);
        let cuts = pump(&chunking, 64 << 20, 119e6);
        let first_large = cuts.iter().position(|&c| c == CHUNK_SIZE).expect("switched to large chunks");
        assert!(cuts[..first_large].iter().all(|&c| c == SMALL_CHUNK));
        assert!(cuts[first_large..].iter().all(|&c| c == CHUNK_SIZE));
        let at = (first_large * SMALL_CHUNK) as u64;
        assert_eq!(at % CHUNK_SIZE as u64, 0, "switched at {at}");
        assert!(at <= (MEASURED_SPAN + CHUNK_SIZE as u64), "measured from the first held-back push: {at}");
        // A re-read cuts the same boundaries on either side of the switch.
        assert_eq!(chunking.at(at - SMALL_CHUNK as u64), SMALL_CHUNK);
        assert_eq!(chunking.at(at), CHUNK_SIZE);
        let report = chunking.report();
        assert_eq!(report.large_from, Some(at));
        assert!((report.measured_mb_s.unwrap() - 119.0).abs() < 0.5, "{report:?}");
    }

    #[test]
    fn a_producer_never_held_back_measures_once_past_its_buffer() {
        let chunking = Chunking::new(ChunkSize::Auto, 4 << 20);
        let start = Instant::now();
        let mut offset = 0u64;
        while chunking.next(offset) == SMALL_CHUNK && offset < 64 << 20 {
            offset += SMALL_CHUNK as u64;
            chunking.pushed(offset, false, start + Duration::from_secs_f64(offset as f64 / 200e6));
        }
        assert!(offset >= (4 << 20) + SETTLE_SLACK + MEASURED_SPAN, "switched at {offset}");
        assert!(offset < 64 << 20, "never switched");
    }

    #[test]
    fn a_fixed_size_is_every_chunk() {
        let chunking = Chunking::new(ChunkSize::Fixed(100_000), 32 << 20);
        assert!(pump(&chunking, 10 << 20, 119e6).iter().rev().skip(1).all(|&c| c == 100_000));
        assert_eq!(chunking.at(300_000), 100_000);
    }

    #[test]
    fn a_reread_ahead_of_the_undecided_stream_waits_for_it() {
        let chunking = Arc::new(Chunking::new(ChunkSize::Auto, 32 << 20));
        let start = Instant::now();
        chunking.pushed(1 << 20, true, start);
        assert_eq!(chunking.at(SMALL_CHUNK as u64), SMALL_CHUNK, "behind the live stream: no wait");
        let ahead = {
            let chunking = Arc::clone(&chunking);
            thread::spawn(move || chunking.at(12 << 20))
        };
        while chunking.lock().waiting == 0 {
            thread::yield_now();
        }
        // Fast: the switch lands at the first 256K boundary past 9 MiB, so
        // byte 12 MiB is in a large chunk, which the waiting re-read must see.
        chunking.pushed(9 << 20, true, start + Duration::from_millis(10));
        assert_eq!(ahead.join().unwrap(), CHUNK_SIZE);
    }
}
