//! A bounded broadcast buffer: one producer, a fixed set of readers, each reading
//! every chunk in order. Chunks are kept until space is needed, not merely until
//! every reader has passed them, so the recent past stays available for replay.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::protocol::End;

pub type Chunk = Arc<Vec<u8>>;

/// How the stream ended, as seen by this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    Complete(End),
    Failed(String),
}

pub enum Next {
    Chunk(Chunk),
    Finished(Finish),
}

pub struct Ring {
    state: Mutex<State>,
    /// Readers wait here for new chunks or the end.
    data: Condvar,
    /// The producer waits here for room.
    space: Condvar,
    capacity: usize,
}

struct State {
    chunks: VecDeque<Chunk>,
    /// Sequence number of `chunks[0]`.
    base: u64,
    held: usize,
    readers: Vec<ReaderState>,
    finish: Option<Finish>,
    producer_waiting: bool,
    /// Buffers of evicted chunks, reused so a long stream does not churn the allocator.
    spare: Vec<Vec<u8>>,
}

struct ReaderState {
    next: u64,
    active: bool,
}

/// Why the producer should stop: nobody is left to read.
#[derive(Debug)]
pub struct NoReaders;

impl Ring {
    pub fn new(capacity: usize, readers: usize) -> Arc<Ring> {
        Arc::new(Ring {
            state: Mutex::new(State {
                chunks: VecDeque::new(),
                base: 0,
                held: 0,
                readers: (0..readers)
                    .map(|_| ReaderState {
                        next: 0,
                        active: true,
                    })
                    .collect(),
                finish: None,
                producer_waiting: false,
                spare: Vec::new(),
            }),
            data: Condvar::new(),
            space: Condvar::new(),
            capacity,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A reader thread that panicked must not take the others down with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn reader(self: &Arc<Ring>, id: usize) -> RingReader {
        RingReader {
            ring: Arc::clone(self),
            id,
        }
    }

    /// An empty buffer of `size` bytes of capacity, recycled when possible.
    pub fn alloc(&self, size: usize) -> Vec<u8> {
        let mut spare = self.lock().spare.pop().unwrap_or_default();
        spare.clear();
        spare.reserve(size);
        spare
    }

    /// Appends a chunk, waiting while the ring is full. Fails when every reader has
    /// detached, so the producer can stop early.
    pub fn push(&self, chunk: Vec<u8>) -> Result<(), NoReaders> {
        let len = chunk.len();
        let mut st = self.lock();
        loop {
            if !st.readers.iter().any(|r| r.active) {
                return Err(NoReaders);
            }
            st.evict_for(len, self.capacity);
            if st.held + len <= self.capacity || st.chunks.is_empty() {
                break;
            }
            st.producer_waiting = true;
            st = self.space.wait(st).unwrap_or_else(|p| p.into_inner());
            st.producer_waiting = false;
        }
        st.held += len;
        st.chunks.push_back(Arc::new(chunk));
        drop(st);
        self.data.notify_all();
        Ok(())
    }

    pub fn finish(&self, finish: Finish) {
        let mut st = self.lock();
        if st.finish.is_none() {
            st.finish = Some(finish);
        }
        drop(st);
        self.data.notify_all();
    }

    fn next(&self, id: usize) -> Next {
        let mut st = self.lock();
        loop {
            let pos = st.readers[id].next;
            let idx = pos.saturating_sub(st.base) as usize;
            if let Some(chunk) = st.chunks.get(idx) {
                let chunk = Arc::clone(chunk);
                st.readers[id].next = pos + 1;
                let wake = st.producer_waiting;
                drop(st);
                if wake {
                    self.space.notify_one();
                }
                return Next::Chunk(chunk);
            }
            if let Some(f) = &st.finish {
                return Next::Finished(f.clone());
            }
            st = self.data.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The reader leaves: it no longer holds back the producer.
    fn detach(&self, id: usize) {
        let mut st = self.lock();
        st.readers[id].active = false;
        let wake = st.producer_waiting;
        drop(st);
        if wake {
            self.space.notify_one();
        }
    }

    /// Bytes currently held, for tests of the memory bound.
    pub fn held(&self) -> usize {
        self.lock().held
    }
}

impl State {
    /// Drops the oldest chunks every active reader has passed, until `len` more
    /// bytes fit or nothing more can go.
    fn evict_for(&mut self, len: usize, capacity: usize) {
        let slowest = self
            .readers
            .iter()
            .filter(|r| r.active)
            .map(|r| r.next)
            .min()
            .unwrap_or(u64::MAX);
        while self.held + len > capacity && self.base < slowest {
            let Some(old) = self.chunks.pop_front() else {
                break;
            };
            self.base += 1;
            self.held -= old.len();
            if let Ok(buf) = Arc::try_unwrap(old) {
                if self.spare.len() < 4 {
                    self.spare.push(buf);
                }
            }
        }
    }
}

/// One reader's handle. Dropping it detaches the reader, so a consumer that fails
/// or panics never stalls the chain.
pub struct RingReader {
    ring: Arc<Ring>,
    id: usize,
}

impl RingReader {
    pub fn next_chunk(&mut self) -> Next {
        self.ring.next(self.id)
    }
}

impl Drop for RingReader {
    fn drop(&mut self) {
        self.ring.detach(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    fn end() -> Finish {
        Finish::Complete(End {
            length: 0,
            hash: [0; 32],
        })
    }

    #[test]
    fn every_reader_sees_every_chunk_in_order_within_the_bound() {
        let ring = Ring::new(10, 3);
        let readers: Vec<_> = (0..3)
            .map(|i| {
                let mut r = ring.reader(i);
                thread::spawn(move || {
                    let mut got = Vec::new();
                    loop {
                        match r.next_chunk() {
                            Next::Chunk(c) => got.push(c[0]),
                            Next::Finished(f) => return (got, f),
                        }
                    }
                })
            })
            .collect();
        for i in 0..200u8 {
            ring.push(vec![i; 3]).unwrap();
            assert!(ring.held() <= 10);
        }
        ring.finish(end());
        for h in readers {
            let (got, f) = h.join().unwrap();
            assert_eq!(got, (0..200).collect::<Vec<u8>>());
            assert_eq!(f, end());
        }
    }

    #[test]
    fn a_detached_reader_no_longer_holds_back_the_producer() {
        let ring = Ring::new(4, 2);
        let slow = ring.reader(0);
        let mut fast = ring.reader(1);
        drop(slow);
        let consumer = thread::spawn(move || {
            let mut n = 0;
            while let Next::Chunk(_) = fast.next_chunk() {
                n += 1;
            }
            n
        });
        for _ in 0..100 {
            ring.push(vec![0; 2]).unwrap();
        }
        ring.finish(end());
        assert_eq!(consumer.join().unwrap(), 100);
    }

    #[test]
    fn push_fails_once_every_reader_has_gone() {
        let ring = Ring::new(4, 1);
        drop(ring.reader(0));
        assert!(ring.push(vec![1]).is_err());
    }

    #[test]
    fn a_chunk_larger_than_the_ring_still_passes_alone() {
        let ring = Ring::new(4, 1);
        let mut r = ring.reader(0);
        ring.push(vec![7; 10]).unwrap();
        match r.next_chunk() {
            Next::Chunk(c) => assert_eq!(c.len(), 10),
            Next::Finished(_) => panic!("expected the chunk"),
        }
    }
}
