//! Cut-through to the first child: the thread that pushes a chunk into the
//! ring (a node's [`receive`], the server's [`pump`]) writes it to that child
//! itself, right after the push, instead of waking a forwarding thread for it.
//!
//! A chunk then crosses one thread wake-up per hop instead of two: on two
//! shared cores carrying a rack of relays, each wake-up is a scheduling delay
//! added to every hop and a context switch on every chunk. The child's ring
//! reader still advances chunk by chunk, so the replay history that failure
//! recovery needs is kept as with a forwarding thread.
//!
//! The producer never waits on the child: it writes what the child's socket
//! takes at once, and when the socket is full it hands the child back to its
//! own thread with the rest of the frame, and goes back to its upstream
//! (waiting there would stop this node reading, and its upstream link would
//! idle). The child's thread sends the rest, catches up from the ring, and
//! lends the child again. It also takes the child back to finish it (the end
//! frame, the close) and when a write fails.
//!
//! [`receive`]: super::receive
//! [`pump`]: super::pump

use std::net::{Shutdown, TcpStream};
use std::sync::{Condvar, Mutex, MutexGuard};

use super::ring::RingReader;
use crate::connection::{FrameWriter, PartialFrame};

/// The one child forwarded on the producer's thread.
#[derive(Default)]
pub struct Lane {
    state: Mutex<LaneState>,
    back: Condvar,
}

#[derive(Default)]
struct LaneState {
    /// With the producer, between two chunks.
    lent: Option<Lent>,
    /// Given back, for the child's thread to take.
    returned: Option<Lent>,
    /// A child has the lane: others are forwarded by their own threads.
    claimed: bool,
    /// The producer is done: a child lent from now on comes straight back.
    closed: bool,
    /// The lent child's socket, to cut it off from another thread.
    socket: Option<TcpStream>,
    /// This node gave up: a child lent from now on is cut off at once.
    cut: bool,
}

/// A child while the lane has it, and how it came back.
pub struct Lent {
    pub reader: RingReader,
    pub child: FrameWriter,
    /// Bytes written to the child by the producer.
    pub sent: u64,
    /// The frame the child's socket had no room for: to be sent first.
    pub pending: Option<PartialFrame>,
    /// Why a write to the child failed.
    pub error: Option<String>,
    /// The producer is done: the rest is the child's thread's.
    pub closed: bool,
}

impl Lane {
    pub fn new() -> Lane {
        Lane::default()
    }

    fn lock(&self) -> MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this child may use the lane: the first one to ask only.
    pub fn claim(&self) -> bool {
        !std::mem::replace(&mut self.lock().claimed, true)
    }

    /// Hands the claimed child to the producer and waits for it to come back:
    /// its socket was full, a write failed, or the stream ended here. A child
    /// with chunks waiting in the ring comes back at once, for its thread to
    /// write them first: the producer writes a lent child only after a push,
    /// and when its upstream stalls (dead, until the server reattaches this
    /// node) no push comes to carry them.
    pub fn lend(&self, mut reader: RingReader, child: FrameWriter) -> Lent {
        let lent = |reader, child| Lent { reader, child, sent: 0, pending: None, error: None, closed: false };
        let mut st = self.lock();
        if st.cut {
            let _ = child.stream().shutdown(Shutdown::Both);
            return Lent { error: Some("this node gave up".into()), ..lent(reader, child) };
        }
        if st.closed {
            return Lent { closed: true, ..lent(reader, child) };
        }
        // Checked under the lane's lock: a push from now on is followed by
        // a `drive` that waits for this lock, and finds the child lent.
        if !reader.drive_if_caught_up() {
            return lent(reader, child);
        }
        st.socket = child.stream().try_clone().ok();
        st.lent = Some(lent(reader, child));
        loop {
            if let Some(mut back) = st.returned.take() {
                drop(st);
                back.reader.undrive();
                return back;
            }
            st = self.back.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// From the producer, after each push: writes the child every chunk it
    /// has not had, as far as its socket takes them without waiting.
    pub fn drive(&self) {
        let Some(mut lent) = self.lock().lent.take() else { return };
        while let Some(chunk) = lent.reader.try_next_chunk() {
            match lent.child.try_write_data(&chunk) {
                Ok(None) => lent.sent += chunk.len() as u64,
                Ok(Some(rest)) => {
                    lent.sent += chunk.len() as u64;
                    lent.pending = Some(rest);
                    return self.give_back(lent);
                }
                Err(e) => {
                    lent.error = Some(e.to_string());
                    return self.give_back(lent);
                }
            }
        }
        self.lock().lent = Some(lent);
    }

    /// The producer is done with the stream (ended, failed, or this node gave
    /// up): the child goes back to its thread, which finishes it.
    pub fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        if let Some(mut lent) = st.lent.take() {
            drop(st);
            lent.closed = true;
            self.give_back(lent);
        }
    }

    /// This node gave up: cuts the lent child off (it waits to be reattached
    /// elsewhere, as when its thread closes it on an abandoned stream).
    pub fn cut(&self) {
        let mut st = self.lock();
        st.cut = true;
        if let Some(s) = &st.socket {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    #[cfg(test)]
    fn is_lent(&self) -> bool {
        self.lock().lent.is_some()
    }

    fn give_back(&self, lent: Lent) {
        let mut st = self.lock();
        st.returned = Some(lent);
        st.socket = None;
        drop(st);
        self.back.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::ring::{Finish, Ring};
    use crate::connection::Connection;
    use crate::protocol::{End, Frame};
    use std::net::TcpListener;
    use std::sync::{mpsc, Arc};
    use std::thread;
    use std::time::Duration;

    const CHUNKS: u8 = 100;
    const CHUNK: usize = 1000;

    /// A child on loopback that reads data frames until the end or an error,
    /// saying how many bytes it has after each; and the writer that sends to it.
    fn child_with_progress() -> (FrameWriter, thread::JoinHandle<Vec<u8>>, mpsc::Receiver<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (progress, progress_rx) = mpsc::channel();
        let reading = thread::spawn(move || {
            let mut conn = Connection::new(TcpStream::connect(addr).unwrap()).unwrap();
            let mut got = Vec::new();
            while let Ok(Some(Frame::Data(bytes))) = conn.read_frame() {
                got.extend_from_slice(&bytes);
                let _ = progress.send(got.len());
            }
            got
        });
        let (stream, _) = listener.accept().unwrap();
        (Connection::new(stream).unwrap().writer().unwrap(), reading, progress_rx)
    }

    fn child() -> (FrameWriter, thread::JoinHandle<Vec<u8>>) {
        let (writer, reading, _) = child_with_progress();
        (writer, reading)
    }

    /// The producer pushes and drives every chunk from `from` on.
    fn produce(ring: &Ring, lane: &Lane, from: u8) {
        for i in from..CHUNKS {
            ring.push(vec![i; CHUNK]).unwrap();
            lane.drive();
        }
        lane.close();
    }

    fn stream() -> Vec<u8> {
        (0..CHUNKS).flat_map(|i| std::iter::repeat_n(i, CHUNK)).collect()
    }

    fn complete() -> Finish {
        Finish::Complete(End { length: stream().len() as u64, hash: [0; 32] })
    }

    /// The child connects late: its reserved reader has a full window of
    /// backlog and the producer waits on it. Once lent, it must no longer
    /// hold the producer back (only the producer's own drive can advance
    /// it), and every byte reaches the child, through the lane or, when its
    /// socket was full, through its own thread.
    #[test]
    fn a_child_lent_late_gets_every_chunk_and_never_stalls_the_producer() {
        let ring = Ring::new(4 * CHUNK, 1);
        let lane = Arc::new(Lane::new());
        // A full window before the child comes: the next push must wait
        // for its reader, before or after the lending.
        ring.push(vec![0; CHUNK]).unwrap();
        ring.push(vec![1; CHUNK]).unwrap();
        let (done_tx, done) = mpsc::channel();
        let producing = {
            let (ring, lane) = (Arc::clone(&ring), Arc::clone(&lane));
            thread::spawn(move || {
                produce(&ring, &lane, 2);
                let _ = done_tx.send(());
            })
        };
        let (writer, reading) = child();
        let forwarding = {
            let (lane, reader) = (Arc::clone(&lane), ring.reader(0));
            thread::spawn(move || crate::chain::forward_through(&lane, reader, writer))
        };
        done.recv_timeout(Duration::from_secs(30)).expect("the producer is stuck on its lent child");
        producing.join().unwrap();
        ring.finish(complete());
        assert_eq!(forwarding.join().unwrap(), Ok(stream().len() as u64));
        assert_eq!(reading.join().unwrap(), stream());
    }

    /// The upstream stalls (it died; the server has not reattached this node
    /// yet) right after chunks the child has not had: they must still reach
    /// it, although no push comes to drive them.
    #[test]
    fn chunks_held_when_the_child_is_lent_reach_it_while_the_upstream_stalls() {
        // A window of four chunks: the three pushed before the child comes fit.
        let ring = Ring::new(8 * CHUNK, 1);
        let lane = Arc::new(Lane::new());
        for i in 0..3 {
            ring.push(vec![i; CHUNK]).unwrap();
            lane.drive();
        }
        let (writer, reading, progress) = child_with_progress();
        let forwarding = {
            let (lane, reader) = (Arc::clone(&lane), ring.reader(0));
            thread::spawn(move || crate::chain::forward_through(&lane, reader, writer))
        };
        // No push until the child has the three chunks.
        let mut got = 0;
        while got < 3 * CHUNK {
            got = progress
                .recv_timeout(Duration::from_secs(30))
                .expect("the held chunks never reached the child");
        }
        for i in 3..CHUNKS {
            ring.push(vec![i; CHUNK]).unwrap();
            lane.drive();
        }
        lane.close();
        ring.finish(complete());
        assert_eq!(forwarding.join().unwrap(), Ok(stream().len() as u64));
        assert_eq!(reading.join().unwrap(), stream());
    }

    /// A child that reads nothing: the producer writes what its socket takes
    /// and goes on; the child comes back with the rest of a frame to send.
    #[test]
    fn a_full_child_socket_comes_back_to_its_thread_instead_of_blocking_the_producer() {
        const BIG: usize = 256 * 1024;
        // More than any socket buffer here holds for a reader that reads nothing.
        const BIG_CHUNKS: usize = 128;
        let ring = Ring::new(2 * BIG_CHUNKS * BIG, 1);
        let lane = Arc::new(Lane::new());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let silent = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let writer = Connection::new(listener.accept().unwrap().0).unwrap().writer().unwrap();
        assert!(lane.claim() && !lane.claim(), "one child only has the lane");
        let lending = {
            let (lane, reader) = (Arc::clone(&lane), ring.reader(0));
            thread::spawn(move || lane.lend(reader, writer))
        };
        // Lent with nothing held: from now on only the producer writes it.
        while !lane.is_lent() {
            thread::yield_now();
        }
        let (done_tx, done) = mpsc::channel();
        let producing = {
            let (ring, lane) = (Arc::clone(&ring), Arc::clone(&lane));
            thread::spawn(move || {
                for _ in 0..BIG_CHUNKS {
                    ring.push(vec![7; BIG]).unwrap();
                    lane.drive();
                }
                let _ = done_tx.send(());
            })
        };
        done.recv_timeout(Duration::from_secs(30)).expect("the producer waited on a full socket");
        producing.join().unwrap();
        lane.close();
        let back = lending.join().unwrap();
        assert!(back.error.is_none() && !back.closed, "it came back for its socket, not for the end");
        assert!(back.pending.is_some(), "the frame the socket had no room for");
        assert!(back.sent < (BIG_CHUNKS * BIG) as u64);
        drop(silent);
    }

    #[test]
    fn a_child_that_breaks_comes_back_with_why_and_the_producer_goes_on() {
        let ring = Ring::new(4 * CHUNK, 2);
        let lane = Arc::new(Lane::new());
        let (writer, reading) = child();
        assert!(lane.claim());
        let lending = {
            let (lane, reader) = (Arc::clone(&lane), ring.reader(0));
            thread::spawn(move || {
                let back = lane.lend(reader, writer);
                (back.sent, back.error)
            })
        };
        // A second reader, drained on its own, that the broken child must not
        // hold back once its thread drops its reader.
        let mut other = ring.reader(1);
        let draining = thread::spawn(move || {
            let mut n = 0;
            while let crate::chain::Next::Chunk(c) = other.next_chunk() {
                n += c.len();
            }
            n
        });
        // The socket breaks mid-stream, as when this node gives up.
        lane.cut();
        produce(&ring, &lane, 0);
        ring.finish(Finish::Complete(End { length: 0, hash: [0; 32] }));
        let (sent, error) = lending.join().unwrap();
        assert!(error.is_some(), "a write to a cut socket must fail");
        assert!(sent < stream().len() as u64);
        assert_eq!(draining.join().unwrap(), stream().len());
        assert!(reading.join().unwrap().len() < stream().len());
    }
}
