//! The local copy of the stream as a hashed `Read`, for the node's own sink.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ring::{Chunk, Finish, Next, RingReader};
use crate::protocol::End;

/// Bytes the ring gathers for the sink before waking it: the sink is off the
/// chain's path (children are fed by the producer and their own threads), and
/// a wake-up per 64 KiB chunk was a tenth of a relaying node's CPU at
/// 100 Mbit/s (`perf`, docs/PERFORMANCE.md). 1 MiB is a moment of any disk's
/// time and a sliver of the ring.
pub const SINK_GATHER: usize = 1 << 20;

/// The longest a chunk waits for the sink to gather more: the heartbeat
/// (every 250 ms) must see the sink take what it has, or a sink idle behind a
/// stalled upstream would look hung.
pub const SINK_GATHER_WITHIN: Duration = Duration::from_millis(100);

/// Hands out the stream chunk by chunk (or through `Read`) while hashing every
/// byte, so the node can verify the end-of-stream length and hash whatever its
/// sink does with the bytes.
pub struct StreamReader {
    reader: RingReader,
    hasher: blake3::Hasher,
    bytes: u64,
    current: Option<(Chunk, usize)>,
    finish: Option<Finish>,
    meter: Arc<SinkMeter>,
}

/// What the heartbeat tells the server about the local sink.
#[derive(Debug, Default)]
pub struct SinkMeter {
    /// Bytes handed to the sink so far: a sink that stops taking bytes is how a
    /// hung disk shows.
    pub taken: AtomicU64,
    /// Milliseconds the sink spent waiting for data: a sink that never waits
    /// while the others do is the slow node of the chain.
    pub idle_ms: AtomicU64,
}

/// What the node received, checked against the end-of-stream frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub bytes: u64,
    pub hash_ok: bool,
    /// Why the stream did not arrive whole, when it did not.
    pub error: Option<String>,
}

impl StreamReader {
    pub fn new(reader: RingReader) -> StreamReader {
        StreamReader::metered(reader, Arc::new(SinkMeter::default()))
    }

    pub fn metered(mut reader: RingReader, meter: Arc<SinkMeter>) -> StreamReader {
        reader.gather(SINK_GATHER, SINK_GATHER_WITHIN);
        StreamReader { reader, hasher: blake3::Hasher::new(), bytes: 0, current: None, finish: None, meter }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The next whole chunk, or `None` at the end. Chunks handed out are hashed.
    pub fn next_chunk(&mut self) -> Option<Chunk> {
        if let Some((chunk, pos)) = self.current.take() {
            if pos < chunk.len() {
                // Rare: a `Read` user stopped mid-chunk; hand out the rest as a copy.
                return Some(std::sync::Arc::new(chunk[pos..].to_vec()));
            }
        }
        if self.finish.is_some() {
            return None;
        }
        let waited = Instant::now();
        let next = self.reader.next_chunk();
        self.meter.idle_ms.fetch_add(waited.elapsed().as_millis() as u64, Ordering::Relaxed);
        match next {
            Next::Chunk(c) => {
                self.hasher.update(&c);
                self.bytes += c.len() as u64;
                self.meter.taken.store(self.bytes, Ordering::Relaxed);
                Some(c)
            }
            Next::Finished(f) => {
                self.finish = Some(f);
                None
            }
        }
    }

    /// Reads and hashes whatever the sink left unread, so the chain is never held
    /// up by a failed sink and the verdict still covers the whole stream.
    pub fn drain(&mut self) {
        while self.next_chunk().is_some() {}
    }

    /// Drains the rest and compares length and hash with the end-of-stream frame.
    pub fn verdict(mut self) -> Verdict {
        self.drain();
        let bytes = self.bytes;
        match self.finish.take() {
            Some(Finish::Complete(End { length, hash })) => {
                let ours = *self.hasher.finalize().as_bytes();
                let error = if length != bytes {
                    Some(format!("received {bytes} bytes, the stream has {length}"))
                } else if hash != ours {
                    Some("BLAKE3 hash mismatch: the received bytes differ from the source".into())
                } else {
                    None
                };
                Verdict { bytes, hash_ok: error.is_none(), error }
            }
            Some(Finish::Failed(why) | Finish::Abandoned(why)) => {
                Verdict { bytes, hash_ok: false, error: Some(why) }
            }
            None => {
                Verdict { bytes, hash_ok: false, error: Some("stream ended without an end frame".into()) }
            }
        }
    }
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some((chunk, pos)) = &mut self.current {
                if *pos < chunk.len() {
                    let n = buf.len().min(chunk.len() - *pos);
                    buf[..n].copy_from_slice(&chunk[*pos..*pos + n]);
                    *pos += n;
                    return Ok(n);
                }
            }
            self.current = None;
            match self.next_chunk() {
                Some(c) => self.current = Some((c, 0)),
                None => {
                    return match &self.finish {
                        Some(Finish::Failed(why) | Finish::Abandoned(why)) => {
                            Err(io::Error::other(why.clone()))
                        }
                        _ => Ok(0),
                    }
                }
            }
        }
    }
}
