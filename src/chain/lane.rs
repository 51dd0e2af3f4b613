//! Cut-through to the first child: the thread that pushes a chunk into the
//! ring (a node's [`receive`], the server's [`pump`]) writes it to that child
//! itself, right after the push, instead of waking a forwarding thread for it.
//!
//! A chunk then crosses one thread wake-up per hop instead of two: on two
//! shared cores carrying a rack of relays, each wake-up is a scheduling delay
//! added to every hop and a context switch on every chunk. The child's ring
//! reader still advances chunk by chunk, so the replay history that failure
//! recovery needs is kept as with a forwarding thread. The forwarding thread
//! lends its child to the lane and takes it back to finish it (the end frame,
//! the close), or when a write fails.
//!
//! [`receive`]: super::receive
//! [`pump`]: super::pump

use std::net::{Shutdown, TcpStream};
use std::sync::{Condvar, Mutex, MutexGuard};

use super::ring::RingReader;
use crate::connection::FrameWriter;

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
    /// Given back, for the forwarding thread to take.
    returned: Option<Lent>,
    /// A child was lent once: others are forwarded by their own threads.
    taken: bool,
    /// The producer is done: a child lent from now on comes straight back.
    closed: bool,
    /// The lent child's socket, to unblock a write that would never end.
    socket: Option<TcpStream>,
    /// This node gave up: a child lent from now on is cut off at once.
    cut: bool,
}

/// A child while the lane has it.
pub struct Lent {
    pub reader: RingReader,
    pub child: FrameWriter,
    /// Bytes written to the child by the producer.
    pub sent: u64,
    /// Why a write to the child failed.
    pub error: Option<String>,
}

impl Lane {
    pub fn new() -> Lane {
        Lane::default()
    }

    fn lock(&self) -> MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands the child to the producer and waits for it to come back (the
    /// stream ended here, or a write failed). `Err` gives the child back at
    /// once when another child has the lane: forward it on this thread.
    pub fn lend(
        &self,
        mut reader: RingReader,
        child: FrameWriter,
    ) -> Result<Lent, (RingReader, FrameWriter)> {
        let mut st = self.lock();
        if st.taken {
            return Err((reader, child));
        }
        st.taken = true;
        if st.cut {
            let _ = child.stream().shutdown(Shutdown::Both);
            return Ok(Lent { reader, child, sent: 0, error: Some("this node gave up".into()) });
        }
        if st.closed {
            return Ok(Lent { reader, child, sent: 0, error: None });
        }
        st.socket = child.stream().try_clone().ok();
        reader.set_driven(true);
        st.lent = Some(Lent { reader, child, sent: 0, error: None });
        loop {
            if let Some(mut lent) = st.returned.take() {
                drop(st);
                lent.reader.set_driven(false);
                return Ok(lent);
            }
            st = self.back.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// From the producer, after each push: writes the child every chunk it
    /// has not had. A write blocks while the child's socket is full, which
    /// holds the producer back as the child's ring reader would have.
    pub fn drive(&self) {
        let Some(mut lent) = self.lock().lent.take() else { return };
        while let Some(chunk) = lent.reader.try_next_chunk() {
            if let Err(e) = lent.child.write_data(&chunk) {
                lent.error = Some(e.to_string());
                return self.give_back(lent);
            }
            lent.sent += chunk.len() as u64;
        }
        self.lock().lent = Some(lent);
    }

    /// The producer is done with the stream (ended, failed, or this node gave
    /// up): the child goes back to its thread, which finishes it.
    pub fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        if let Some(lent) = st.lent.take() {
            drop(st);
            self.give_back(lent);
        }
    }

    /// This node gave up: cuts the child off, even in the middle of a write
    /// (it waits to be reattached elsewhere, as when its forwarding thread
    /// closes it on an abandoned stream).
    pub fn cut(&self) {
        let mut st = self.lock();
        st.cut = true;
        if let Some(s) = &st.socket {
            let _ = s.shutdown(Shutdown::Both);
        }
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
    use std::sync::Arc;
    use std::thread;

    const CHUNKS: u8 = 100;
    const CHUNK: usize = 1000;

    /// A child on loopback that reads data frames until the end or an error;
    /// and the writer that sends to it.
    fn child() -> (FrameWriter, thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let reading = thread::spawn(move || {
            let mut conn = Connection::new(TcpStream::connect(addr).unwrap()).unwrap();
            let mut got = Vec::new();
            while let Ok(Some(Frame::Data(bytes))) = conn.read_frame() {
                got.extend_from_slice(&bytes);
            }
            got
        });
        let (stream, _) = listener.accept().unwrap();
        (Connection::new(stream).unwrap().writer().unwrap(), reading)
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

    /// The child connects late: its reserved reader has a full window of
    /// backlog and the producer waits on it. Once lent, it must no longer
    /// hold the producer back (only the producer's own drive can advance
    /// it), and the first drive sends the backlog.
    #[test]
    fn the_producer_writes_every_chunk_of_a_child_lent_late() {
        let ring = Ring::new(4 * CHUNK, 1);
        let lane = Arc::new(Lane::new());
        // A full window before the child comes: the next push must wait
        // for its reader, before or after the lending.
        ring.push(vec![0; CHUNK]).unwrap();
        ring.push(vec![1; CHUNK]).unwrap();
        let (done_tx, done) = std::sync::mpsc::channel();
        let producing = {
            let (ring, lane) = (Arc::clone(&ring), Arc::clone(&lane));
            thread::spawn(move || {
                produce(&ring, &lane, 2);
                let _ = done_tx.send(());
            })
        };
        let (writer, reading) = child();
        let lending = {
            let (lane, reader) = (Arc::clone(&lane), ring.reader(0));
            thread::spawn(move || lane.lend(reader, writer).ok().unwrap())
        };
        done.recv_timeout(std::time::Duration::from_secs(30))
            .expect("the producer is stuck on its lent child");
        producing.join().unwrap();
        let lent = lending.join().unwrap();
        // Everything went through the lane; the reader is at the end.
        assert_eq!((lent.sent, lent.error), (stream().len() as u64, None));
        let mut reader = lent.reader;
        assert!(reader.try_next_chunk().is_none());
        drop((reader, lent.child));
        assert_eq!(reading.join().unwrap(), stream());
    }

    #[test]
    fn a_child_that_breaks_comes_back_with_why_and_the_producer_goes_on() {
        let ring = Ring::new(4 * CHUNK, 2);
        let lane = Arc::new(Lane::new());
        let (writer, reading) = child();
        let lending = {
            let (lane, reader) = (Arc::clone(&lane), ring.reader(0));
            thread::spawn(move || {
                let lent = lane.lend(reader, writer).ok().unwrap();
                (lent.sent, lent.error)
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
