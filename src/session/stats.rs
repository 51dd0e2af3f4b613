//! Live counters of a running session, read by progress displays.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    /// Bytes the server has read from its input and put into the chain.
    pub sent: AtomicU64,
    /// Stream length when known in advance (a file input), else 0.
    pub total: AtomicU64,
    pub joined: AtomicUsize,
    /// Nodes in the chain once the session has started.
    pub nodes: AtomicUsize,
    pub done: AtomicUsize,
    pub failed: AtomicUsize,
    pub started: AtomicBool,
    /// Lowest byte count reported by a node still receiving: the chain's tail.
    pub slowest: AtomicU64,
}

impl Stats {
    pub fn get(v: &AtomicU64) -> u64 {
        v.load(Ordering::Relaxed)
    }

    pub fn count(v: &AtomicUsize) -> usize {
        v.load(Ordering::Relaxed)
    }
}
