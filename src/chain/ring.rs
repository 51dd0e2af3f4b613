//! A bounded broadcast buffer: one producer, readers that each read every chunk
//! in order, at their own pace.
//!
//! The capacity is split in two. The *window* (half) bounds how far the producer
//! may run ahead of the slowest reader: that is the back-pressure. The other half
//! keeps the most recent chunks every reader has passed, so a node that lost its
//! upstream can reattach here and be replayed what it missed (`attach_at`). Memory
//! never exceeds the capacity, plus one chunk when a single chunk is larger.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::protocol::End;

pub type Chunk = Arc<Vec<u8>>;

/// How the stream ended, as seen by this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    Complete(End),
    /// The stream itself failed (the server's input): every node fails, and the
    /// reason travels down the chain.
    Failed(String),
    /// This node gave up (declared dead, lost the server). Its children just see
    /// their upstream close and wait to be reattached elsewhere.
    Abandoned(String),
}

pub enum Next {
    Chunk(Chunk),
    Finished(Finish),
}

pub struct Ring {
    state: Mutex<State>,
    /// Readers wait here for new chunks or the end.
    data: Condvar,
    /// Readers that gather ([`RingReader::gather`]) wait here instead.
    gathered: Condvar,
    /// The producer waits here for room (or for a reader to appear).
    space: Condvar,
    capacity: usize,
    window: usize,
}

struct Stored {
    /// Byte offset of the chunk's first byte in the stream.
    offset: u64,
    bytes: Chunk,
}

struct State {
    chunks: VecDeque<Stored>,
    /// Sequence number of `chunks[0]`.
    base: u64,
    /// Bytes pushed so far: the offset the next chunk will have.
    head_offset: u64,
    held: usize,
    readers: Vec<ReaderState>,
    finish: Option<Finish>,
    closed: bool,
    /// See [`Ring::rereadable`].
    rereadable: bool,
    producer_waiting: bool,
    /// Threads waiting on `data`: a push wakes them only if there are any,
    /// since a condvar's notify is a futex syscall even with nobody waiting,
    /// and a relaying node's readers are mostly driven or gathering.
    data_waiters: usize,
    /// Buffers of evicted chunks, reused so a long stream does not churn the allocator.
    spare: Vec<Vec<u8>>,
}

struct ReaderState {
    next: u64,
    active: bool,
    /// Does not hold back the producer: it is dropped if it falls out of the
    /// buffer (a slow node fed on its own when the input cannot be re-read).
    weak: bool,
    /// Read by the producer's own thread after each push (a [`Lane`]): it must
    /// not hold back the push that would let it advance. It is driven only
    /// while its child's socket takes every chunk at once; once full, the
    /// child's thread takes it back and it holds back the producer again. Its
    /// chunks are kept from eviction either way.
    ///
    /// [`Lane`]: super::Lane
    driven: bool,
    /// Bytes that must be waiting for this reader before it is woken (0: every
    /// chunk wakes it), and how long it waits for them at most. See
    /// [`RingReader::gather`].
    gather: usize,
    gather_within: Duration,
    /// Waiting in [`Ring::next`] on `gathered`.
    waiting: bool,
}

impl ReaderState {
    fn new(next: u64, weak: bool) -> ReaderState {
        ReaderState {
            next,
            active: true,
            weak,
            driven: false,
            gather: 0,
            gather_within: Duration::ZERO,
            waiting: false,
        }
    }
}

/// Why the producer should stop: the ring was closed with nobody left to read.
#[derive(Debug)]
pub struct NoReaders;

impl Ring {
    pub fn new(capacity: usize, readers: usize) -> Arc<Ring> {
        Arc::new(Ring {
            state: Mutex::new(State {
                chunks: VecDeque::new(),
                base: 0,
                head_offset: 0,
                held: 0,
                readers: (0..readers).map(|_| ReaderState::new(0, false)).collect(),
                finish: None,
                closed: false,
                rereadable: false,
                producer_waiting: false,
                data_waiters: 0,
                spare: Vec::new(),
            }),
            data: Condvar::new(),
            gathered: Condvar::new(),
            space: Condvar::new(),
            capacity,
            window: (capacity / 2).max(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A reader thread that panicked must not take the others down with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The handle of one of the readers the ring was created with.
    pub fn reader(self: &Arc<Ring>, id: usize) -> RingReader {
        RingReader { ring: Arc::clone(self), id }
    }

    /// A new reader starting at byte `offset`, if the ring still holds it (or it
    /// is exactly where the stream is now). `None` when that part is gone.
    pub fn attach_at(self: &Arc<Ring>, offset: u64) -> Option<RingReader> {
        self.attach(offset, false)
    }

    /// As [`Ring::attach_at`], for a reader that never holds back the producer
    /// and fails if it falls behind what the ring holds.
    pub fn attach_weak_at(self: &Arc<Ring>, offset: u64) -> Option<RingReader> {
        self.attach(offset, true)
    }

    fn attach(self: &Arc<Ring>, offset: u64, weak: bool) -> Option<RingReader> {
        let mut st = self.lock();
        let seq = if offset == st.head_offset {
            st.base + st.chunks.len() as u64
        } else {
            let i = st.chunks.iter().position(|c| c.offset == offset)?;
            st.base + i as u64
        };
        st.readers.push(ReaderState::new(seq, weak));
        let id = st.readers.len() - 1;
        drop(st);
        self.space.notify_all();
        Some(RingReader { ring: Arc::clone(self), id })
    }

    /// A buffer with room for `size` bytes, recycled when possible. It may hold
    /// up to `size` stale bytes: callers resize it and overwrite every byte they
    /// keep, so a recycled chunk of the usual size needs no zeroing (it was a
    /// 256 KiB memset per chunk, 4% of a node's CPU).
    pub fn alloc(&self, size: usize) -> Vec<u8> {
        let mut buf = self.lock().spare.pop().unwrap_or_default();
        buf.truncate(size);
        buf.reserve(size - buf.len());
        buf
    }

    /// Appends a chunk, waiting while the slowest reader is a window behind, or
    /// while no reader is attached (one may reattach). Says whether it waited:
    /// then the readers, not the producer, set the pace. Fails once the ring is
    /// closed with no reader left.
    pub fn push(&self, chunk: Vec<u8>) -> Result<bool, NoReaders> {
        let len = chunk.len();
        let mut waited = false;
        let mut st = self.lock();
        loop {
            if st.finish.is_some() {
                // Ended from elsewhere (the node was cut off): stop producing.
                return Err(NoReaders);
            }
            match st.slowest_offset() {
                // Only driven readers: the producer's own writes pace it.
                // Or none, and one that comes back is fed from a re-read.
                None if st.readers.iter().any(|r| r.active && r.driven) || (st.rereadable && !st.closed) => {
                    st.evict_for(len, self.capacity);
                    break;
                }
                None if st.closed => return Err(NoReaders),
                None => {}
                Some(slowest) => {
                    let ahead = (st.head_offset - slowest) as usize;
                    if ahead + len <= self.window || ahead == 0 {
                        st.evict_for(len, self.capacity);
                        break;
                    }
                }
            }
            st.producer_waiting = true;
            waited = true;
            // A gathering reader may be the one holding it back: it must not
            // wait for more than the window lets in.
            if st.readers.iter().any(|r| r.waiting) {
                self.gathered.notify_all();
            }
            st = self.space.wait(st).unwrap_or_else(|p| p.into_inner());
            st.producer_waiting = false;
        }
        let offset = st.head_offset;
        st.head_offset += len as u64;
        st.held += len;
        st.chunks.push_back(Stored { offset, bytes: Arc::new(chunk) });
        let gathered = st.readers.iter().any(|r| r.waiting && st.waiting_for(r) >= r.gather as u64);
        let wake_data = st.data_waiters > 0;
        drop(st);
        if wake_data {
            self.data.notify_all();
        }
        if gathered {
            self.gathered.notify_all();
        }
        Ok(waited)
    }

    pub fn finish(&self, finish: Finish) {
        let mut st = self.lock();
        if st.finish.is_none() {
            st.finish = Some(finish);
        }
        drop(st);
        self.data.notify_all();
        self.gathered.notify_all();
        self.space.notify_all();
    }

    /// Waits until the stream has ended and says how.
    pub fn wait_finish(&self) -> Finish {
        let mut st = self.lock();
        loop {
            if let Some(f) = &st.finish {
                return f.clone();
            }
            st = self.wait_data(st);
        }
    }

    /// Waits on `data`, counted so that a push knows whether to notify.
    fn wait_data<'a>(&self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        st.data_waiters += 1;
        let mut st = self.data.wait(st).unwrap_or_else(|p| p.into_inner());
        st.data_waiters -= 1;
        st
    }

    /// The stream can be read again from any offset (the server's input is a
    /// file): with no reader attached the producer goes on instead of waiting
    /// for one to come back, which is fed from a re-read if the ring no longer
    /// holds its offset. Without this, once the last child reading from the
    /// ring is cut off, the stream would never end for the children fed from
    /// re-reads: they wait for its end frame.
    pub fn rereadable(&self) {
        self.lock().rereadable = true;
    }

    /// No reader will attach any more: a producer waiting for one gives up.
    pub fn close(&self) {
        self.lock().closed = true;
        self.space.notify_all();
    }

    fn next(&self, id: usize) -> Next {
        let mut st = self.lock();
        loop {
            let pos = st.readers[id].next;
            if pos < st.base {
                let why =
                    "it fell further behind than the server's buffer holds (use -i FILE to allow re-reading)";
                return Next::Finished(Finish::Abandoned(why.into()));
            }
            if let Some(chunk) = st.take(id) {
                self.release(st);
                return Next::Chunk(chunk);
            }
            if let Some(f) = &st.finish {
                return Next::Finished(f.clone());
            }
            if st.readers[id].gather == 0 {
                st = self.wait_data(st);
            } else {
                st.readers[id].waiting = true;
                let within = st.readers[id].gather_within;
                st = self.gathered.wait_timeout(st, within).unwrap_or_else(|p| p.into_inner()).0;
                st.readers[id].waiting = false;
            }
        }
    }

    /// The next chunk if the ring holds it already; never waits.
    fn try_next(&self, id: usize) -> Option<Chunk> {
        let mut st = self.lock();
        let chunk = st.take(id)?;
        self.release(st);
        Some(chunk)
    }

    /// Marks the reader driven or not; it becomes driven only if no chunk
    /// is waiting for it (see [`RingReader::drive_if_caught_up`]). Returns
    /// whether it was marked.
    fn set_driven(&self, id: usize, driven: bool) -> bool {
        let mut st = self.lock();
        if driven && st.held_for(id).is_some() {
            return false;
        }
        st.readers[id].driven = driven;
        drop(st);
        // A producer waiting on other readers re-checks with this one counted
        // or not.
        self.space.notify_all();
        true
    }

    /// The reader leaves: it no longer holds back the producer.
    fn detach(&self, id: usize) {
        let mut st = self.lock();
        st.readers[id].active = false;
        self.release(st);
    }

    /// Unlocks after a reader moved on or left: a producer waiting for room
    /// may be waiting on that reader.
    fn release(&self, st: MutexGuard<'_, State>) {
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
    /// Reader `id`'s next chunk, if the ring holds it, and moves the reader
    /// past it.
    fn take(&mut self, id: usize) -> Option<Chunk> {
        let chunk = Arc::clone(self.held_for(id)?);
        self.readers[id].next += 1;
        Some(chunk)
    }

    /// Reader `id`'s next chunk, if the ring holds it.
    fn held_for(&self, id: usize) -> Option<&Chunk> {
        let pos = self.readers[id].next;
        Some(&self.chunks.get(pos.checked_sub(self.base)? as usize)?.bytes)
    }

    /// Bytes held that reader `r` has not read yet.
    fn waiting_for(&self, r: &ReaderState) -> u64 {
        if r.next < self.base {
            // Fell out of the ring: it must wake to learn it.
            return u64::MAX;
        }
        self.head_offset - self.offset_of(r.next)
    }

    fn offset_of(&self, seq: u64) -> u64 {
        match self.chunks.get(seq.saturating_sub(self.base) as usize) {
            Some(c) => c.offset,
            None => self.head_offset,
        }
    }

    /// Byte offset of the slowest active reader, `None` when there is none.
    fn slowest_offset(&self) -> Option<u64> {
        let seq = self.readers.iter().filter(|r| r.active && !r.weak && !r.driven).map(|r| r.next).min()?;
        Some(self.offset_of(seq))
    }

    /// Drops the oldest chunks every active reader has passed, until `len` more
    /// bytes fit in the capacity.
    fn evict_for(&mut self, len: usize, capacity: usize) {
        let slowest =
            self.readers.iter().filter(|r| r.active && !r.weak).map(|r| r.next).min().unwrap_or(u64::MAX);
        while self.held + len > capacity && self.base < slowest {
            let Some(old) = self.chunks.pop_front() else { break };
            self.base += 1;
            self.held -= old.bytes.len();
            if let Ok(buf) = Arc::try_unwrap(old.bytes) {
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

    /// The next chunk if it is there already, without waiting.
    pub fn try_next_chunk(&mut self) -> Option<Chunk> {
        self.ring.try_next(self.id)
    }

    /// Becomes driven ([`ReaderState::driven`]) only if no chunk is waiting
    /// for it: the producer writes a driven reader's chunks after each push,
    /// so a chunk already there when it became driven would wait for the
    /// next push.
    pub(crate) fn drive_if_caught_up(&mut self) -> bool {
        self.ring.set_driven(self.id, true)
    }

    /// Back with its child's thread: it holds back the producer again.
    pub(crate) fn undrive(&mut self) {
        self.ring.set_driven(self.id, false);
    }

    /// From now on, once caught up, this reader is woken only when `bytes`
    /// are waiting for it (at most half the window, and always when the
    /// producer would otherwise wait for it, or at the end), or `within` after
    /// it began to wait: for a reader off the chain's path, such as the node's
    /// own sink, one wake-up per chunk is CPU for nothing, but a chunk must
    /// not sit unread for long (a sink that takes nothing looks hung).
    pub fn gather(&mut self, bytes: usize, within: Duration) {
        let window = self.ring.window;
        let mut st = self.ring.lock();
        st.readers[self.id].gather = bytes.min(window / 2);
        st.readers[self.id].gather_within = within;
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
        Finish::Complete(End { length: 0, hash: [0; 32] })
    }

    fn drain(mut r: RingReader) -> (Vec<u8>, Finish) {
        let mut got = Vec::new();
        loop {
            match r.next_chunk() {
                Next::Chunk(c) => got.push(c[0]),
                Next::Finished(f) => return (got, f),
            }
        }
    }

    #[test]
    fn every_reader_sees_every_chunk_in_order_within_the_bound() {
        let ring = Ring::new(10, 3);
        let readers: Vec<_> = (0..3)
            .map(|i| {
                let r = ring.reader(i);
                thread::spawn(move || drain(r))
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
    fn alloc_recycles_evicted_chunks_without_exceeding_the_asked_size() {
        let ring = Ring::new(4, 1);
        let mut r = ring.reader(0);
        for i in 0..4u8 {
            ring.push(vec![i; 4]).unwrap();
            assert!(matches!(r.next_chunk(), Next::Chunk(_)));
        }
        // The first three chunks were evicted to make room, and recycled.
        let buf = ring.alloc(4);
        assert_eq!((buf.len(), buf.capacity() >= 4), (4, true), "a whole recycled chunk");
        let short = ring.alloc(3);
        assert_eq!(short.len(), 3, "a recycled chunk is cut to the asked size");
        let big = ring.alloc(64);
        assert!(big.len() <= 64 && big.capacity() >= 64, "room for the asked size");
    }

    #[test]
    fn a_detached_reader_no_longer_holds_back_the_producer() {
        let ring = Ring::new(4, 2);
        drop(ring.reader(0));
        let fast = ring.reader(1);
        let consumer = thread::spawn(move || drain(fast).0.len());
        for _ in 0..100 {
            ring.push(vec![0; 2]).unwrap();
        }
        ring.finish(end());
        assert_eq!(consumer.join().unwrap(), 100);
    }

    #[test]
    fn a_rereadable_ring_goes_on_without_readers_and_keeps_its_capacity() {
        let ring = Ring::new(4, 1);
        drop(ring.reader(0));
        ring.rereadable();
        // Without a reader and without `rereadable`, the first push past the
        // window would wait for a reader that never comes.
        for i in 0..100u8 {
            ring.push(vec![i; 2]).unwrap();
        }
        assert!(ring.attach_at(0).is_none(), "the start was evicted");
        let mut late = ring.attach_at(198).expect("the last chunk is held");
        assert!(matches!(late.next_chunk(), Next::Chunk(c) if *c == vec![99; 2]));
        drop(late);
        ring.close();
        assert!(ring.push(vec![1]).is_err(), "closed: the producer stops");
    }

    #[test]
    fn push_fails_once_closed_with_every_reader_gone() {
        let ring = Ring::new(4, 1);
        drop(ring.reader(0));
        ring.close();
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

    #[test]
    fn history_is_kept_for_replay_even_under_back_pressure() {
        // 8 bytes: a window of 4 ahead of the reader, 4 of history behind it.
        let ring = Ring::new(8, 1);
        let mut r = ring.reader(0);
        for i in 0..4u8 {
            ring.push(vec![i; 2]).unwrap();
            let _ = r.next_chunk();
        }
        ring.push(vec![4; 2]).unwrap();
        ring.push(vec![5; 2]).unwrap();
        // Chunks at offsets 4 and 6 are behind the reader but still held.
        let (got, _) = {
            let late = ring.attach_at(4).expect("offset 4 is still held");
            ring.finish(end());
            drain(late)
        };
        assert_eq!(got, [2, 3, 4, 5]);
        assert!(ring.attach_at(0).is_none(), "offset 0 was evicted");
        assert!(ring.attach_at(5).is_none(), "not a chunk boundary");
        assert!(ring.attach_at(12).is_some(), "the head itself");
        assert!(ring.held() <= 8);
    }

    #[test]
    fn a_producer_without_readers_waits_for_one_to_attach() {
        let ring = Ring::new(8, 1);
        drop(ring.reader(0));
        let producer = {
            let ring = Arc::clone(&ring);
            thread::spawn(move || {
                for i in 0..10u8 {
                    ring.push(vec![i; 2]).unwrap();
                }
                ring.finish(end());
            })
        };
        let late = loop {
            // Offset 0 is held until the producer has room to need it back.
            if let Some(r) = ring.attach_at(0) {
                break r;
            }
        };
        assert_eq!(drain(late).0, (0..10).collect::<Vec<u8>>());
        producer.join().unwrap();
    }

    /// Spins until reader `id` waits for its gather (no sleep: the flag is
    /// set under the lock before it waits).
    fn until_gathering(ring: &Ring, id: usize) {
        while !ring.lock().readers[id].waiting {
            thread::yield_now();
        }
    }

    #[test]
    fn a_gathering_reader_sleeps_through_small_chunks_and_wakes_for_enough() {
        let ring = Ring::new(10_000, 1);
        let mut reader = ring.reader(0);
        reader.gather(1_000, Duration::from_secs(600));
        let first = thread::spawn(move || match reader.next_chunk() {
            Next::Chunk(c) => (c[0], reader),
            Next::Finished(f) => panic!("finished: {f:?}"),
        });
        until_gathering(&ring, 0);
        for i in 0..3u8 {
            ring.push(vec![i; 300]).unwrap();
        }
        // 900 bytes are not enough: still asleep, nothing taken.
        let st = ring.lock();
        assert!(st.readers[0].waiting && st.readers[0].next == 0);
        drop(st);
        ring.push(vec![3; 300]).unwrap();
        let (got, mut reader) = first.join().unwrap();
        assert_eq!(got, 0);
        // Once awake it takes what is there without waiting for more.
        for i in 1..4u8 {
            assert_eq!(reader.try_next_chunk().map(|c| c[0]), Some(i));
        }
        ring.finish(end());
        assert!(matches!(reader.next_chunk(), Next::Finished(_)), "the end wakes it whatever it gathered");
    }

    #[test]
    fn a_gathering_reader_is_woken_when_the_producer_waits_for_it() {
        // Window 500, gather 250: a 200-byte chunk does not wake it, and a
        // 400-byte one does not fit the window until it reads.
        let ring = Ring::new(1_000, 1);
        let mut reader = ring.reader(0);
        reader.gather(10_000, Duration::from_secs(600));
        let reading = thread::spawn(move || drain(reader));
        until_gathering(&ring, 0);
        let (done, finished) = std::sync::mpsc::channel();
        let producer = {
            let ring = Arc::clone(&ring);
            thread::spawn(move || {
                ring.push(vec![1; 200]).unwrap();
                let waited = ring.push(vec![2; 400]).unwrap();
                ring.finish(end());
                done.send(waited).unwrap();
            })
        };
        let waited = finished.recv_timeout(Duration::from_secs(30)).expect("the producer never got room");
        assert!(waited, "the second chunk had to wait for the reader");
        producer.join().unwrap();
        assert_eq!(reading.join().unwrap().0, vec![1, 2]);
    }

    #[test]
    fn a_gathering_reader_takes_a_lone_chunk_after_its_delay() {
        let ring = Ring::new(10_000, 1);
        let mut reader = ring.reader(0);
        reader.gather(1_000, Duration::from_millis(20));
        let second = thread::spawn(move || {
            let started = std::time::Instant::now();
            (reader.next_chunk(), started.elapsed())
        });
        until_gathering(&ring, 0);
        // Not enough to wake it and no end: only the delay brings it.
        ring.push(vec![8; 10]).unwrap();
        let (next, took) = second.join().unwrap();
        assert!(matches!(next, Next::Chunk(c) if c[0] == 8));
        assert!(took >= Duration::from_millis(20), "woken after {took:?}, before its delay");
    }
}
