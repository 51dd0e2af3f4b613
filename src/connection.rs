//! Frames over a TCP stream: the one place that reads and writes them, so size
//! limits and, on keyed sessions, authentication are enforced on every
//! connection alike.
//!
//! Once a keyed handshake has agreed on a connection key ([`crate::auth`]),
//! every frame in each direction carries a tag: a keyed BLAKE3 hash of the
//! direction, the frame's sequence number on the connection, its header and its
//! payload. A forged, altered, replayed, reordered or dropped frame fails the
//! check and closes the connection.

use std::io::{self, BufRead, BufReader, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::auth;
use crate::error::{Error, IoContext, Result};
use crate::protocol::{Frame, Header, Kind, HEADER_LEN, TAG_LEN};

/// The most payload a read asks the kernel to gather before waking it
/// (`SO_RCVLOWAT`), for data frames, not control frames. 64 KiB and not the
/// whole rest of a chunk: a low-water mark larger than half the receive buffer
/// makes the kernel grow the buffer and clamp the window to the mark, and
/// 64 KiB already cuts a relaying node's CPU by 10-20 % on a shaped 100 Mbit/s
/// link (about 3 % at 1 Gbit/s, where bursts are larger); docs/PERFORMANCE.md,
/// "Wire speed".
const LOWAT: usize = 64 * 1024;

/// Payload bytes still to come below which a read just takes what is there:
/// the two `setsockopt` calls would cost more than the wake-ups they save.
const LOWAT_FROM: usize = 16 * 1024;

/// Sets `SO_RCVLOWAT`; false if the kernel refused (the read then just wakes
/// more often).
fn set_rcvlowat(stream: &TcpStream, bytes: usize) -> bool {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt with a pointer to an int of the size given.
    let r = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

/// Authentication state of one direction of a keyed connection.
struct Seal {
    key: [u8; 32],
    /// `a` for frames from the acceptor, `c` from the connector: a frame cannot
    /// be reflected back to its sender.
    direction: u8,
    seq: u64,
}

impl Seal {
    fn tag(&mut self, head: &[u8; HEADER_LEN], payload: &[u8]) -> [u8; TAG_LEN] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(&[self.direction]);
        h.update(&self.seq.to_be_bytes());
        h.update(head);
        h.update(payload);
        self.seq += 1;
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&h.finalize().as_bytes()[..TAG_LEN]);
        tag
    }
}

/// Which end of the handshake this side was, for the tag directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Acceptor,
    Connector,
}

pub struct Connection {
    reader: BufReader<TcpStream>,
    writer: FrameWriter,
    peer: String,
    open: Option<Seal>,
}

impl Connection {
    pub fn new(stream: TcpStream) -> Result<Connection> {
        let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "unknown peer".into());
        // Control frames are small and latency matters; data frames are written
        // header + payload in one vectored write, so Nagle buys nothing.
        stream.set_nodelay(true).context(|| format!("{peer}: set TCP_NODELAY"))?;
        let writer = stream.try_clone().context(|| format!("{peer}: clone socket"))?;
        let writer = FrameWriter { stream: writer, peer: peer.clone(), seal: Arc::new(Mutex::new(None)) };
        Ok(Connection { reader: BufReader::with_capacity(64 * 1024, stream), writer, peer, open: None })
    }

    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Connection> {
        let stream = TcpStream::connect_timeout(&addr, timeout).context(|| format!("connect to {addr}"))?;
        Connection::new(stream)
    }

    /// From now on every frame both ways is tagged with `key` (see the module doc).
    pub fn seal(&mut self, key: [u8; 32], us: End) {
        let (ours, theirs) = match us {
            End::Acceptor => (b'a', b'c'),
            End::Connector => (b'c', b'a'),
        };
        self.open = Some(Seal { key, direction: theirs, seq: 0 });
        *self.writer.seal.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Seal { key, direction: ours, seq: 0 });
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.writer.stream.peer_addr()
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.writer.stream.local_addr()
    }

    pub fn stream(&self) -> &TcpStream {
        &self.writer.stream
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> Result<()> {
        self.writer.stream.set_read_timeout(t).context(|| format!("{}: set read timeout", self.peer))
    }

    /// A second handle for writing from another thread (the reader stays here).
    /// All handles share the tag sequence, so frames stay in order.
    pub fn writer(&self) -> Result<FrameWriter> {
        let stream = self.writer.stream.try_clone().context(|| format!("{}: clone socket", self.peer))?;
        Ok(FrameWriter { stream, peer: self.peer.clone(), seal: Arc::clone(&self.writer.seal) })
    }

    /// The next header, or `None` on a clean end of stream between frames.
    pub fn read_header(&mut self) -> Result<Option<Header>> {
        let mut head = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            // Nothing buffered: ask the socket for the header alone. The
            // buffered reader would take up to 64 KiB of the payload with it,
            // which `read_payload` then copies a second time (7% of a
            // relaying node's CPU with 64 KiB chunks, `perf`).
            let read = if self.reader.buffer().is_empty() {
                self.reader.get_mut().read(&mut head[got..])
            } else {
                self.reader.read(&mut head[got..])
            };
            match read {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => {
                    return Err(Error::Closed { peer: self.peer.clone(), during: "inside a frame header" })
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_err(e)),
            }
        }
        let header = Header::parse(&head).map_err(|err| Error::Protocol { peer: self.peer.clone(), err })?;
        match (header.tagged, self.open.is_some()) {
            (false, true) => {
                Err(self.auth_err(format!("an unauthenticated {} frame on a keyed connection", header.kind)))
            }
            (true, false) => {
                Err(self.auth_err(format!("a tagged {} frame but no key was agreed", header.kind)))
            }
            _ => Ok(Some(header)),
        }
    }

    /// Reads a payload whose length the header already validated, and checks
    /// its tag on a keyed connection.
    pub fn read_payload(&mut self, header: Header, buf: &mut Vec<u8>) -> Result<()> {
        buf.resize(header.len as usize, 0);
        // The rest of the payload is on its way for sure: let the kernel wake
        // us once per 64 KiB (or once for a smaller rest) rather than for
        // every burst of segments. On a shaped link bursts are small and those
        // wake-ups cost the relay more than its copies. The socket is then read
        // directly, for exactly the bytes of this frame still missing: a read
        // never waits for more than it asks, so the small end frame after the
        // last chunk is never held up (the buffered reader would ask for
        // 64 KiB whatever was left).
        let have = self.reader.buffer().len().min(buf.len());
        buf[..have].copy_from_slice(&self.reader.buffer()[..have]);
        self.reader.consume(have);
        let rest = &mut buf[have..];
        if rest.len() >= LOWAT_FROM && set_rcvlowat(self.reader.get_ref(), rest.len().min(LOWAT)) {
            let read = self.reader.get_mut().read_exact(rest);
            set_rcvlowat(self.reader.get_ref(), 1);
            read.map_err(|e| self.read_err(e))?;
        } else {
            self.read_exact(rest)?;
        }
        if let Some(seal) = self.open.as_mut() {
            let want = seal.tag(&header.to_bytes(), buf);
            let mut got = [0u8; TAG_LEN];
            self.read_exact(&mut got)?;
            if !auth::same(&got, &want) {
                return Err(self.auth_err(format!(
                    "a {} frame failed authentication (altered, replayed, forged or wrong key)",
                    header.kind
                )));
            }
        }
        Ok(())
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        self.reader.read_exact(buf).map_err(|e| self.read_err(e))
    }

    fn read_err(&self, e: io::Error) -> Error {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Error::Closed { peer: self.peer.clone(), during: "inside a frame" }
        } else {
            self.io_err(e)
        }
    }

    pub fn read_frame(&mut self) -> Result<Option<Frame>> {
        let Some(header) = self.read_header()? else {
            return Ok(None);
        };
        let mut payload = Vec::new();
        self.read_payload(header, &mut payload)?;
        Frame::parse_payload(header.kind, &payload)
            .map(Some)
            .map_err(|err| Error::Protocol { peer: self.peer.clone(), err })
    }

    /// A frame that must be there: end of stream is an error naming `during`.
    pub fn expect_frame(&mut self, during: &'static str) -> Result<Frame> {
        self.read_frame()?.ok_or_else(|| Error::Closed { peer: self.peer.clone(), during })
    }

    pub fn write_frame(&mut self, frame: &Frame) -> Result<()> {
        self.writer.write_frame(frame)
    }

    pub fn unexpected(&self, frame: &Frame, during: &'static str) -> Error {
        Error::Unexpected { peer: self.peer.clone(), got: frame.kind().name(), during }
    }

    fn io_err(&self, err: io::Error) -> Error {
        Error::Io { context: format!("{}: receive", self.peer), err }
    }

    fn auth_err(&self, why: String) -> Error {
        Error::Auth { peer: self.peer.clone(), why }
    }
}

/// The write half of a connection, usable from another thread.
pub struct FrameWriter {
    stream: TcpStream,
    peer: String,
    seal: Arc<Mutex<Option<Seal>>>,
}

impl FrameWriter {
    pub fn peer(&self) -> &str {
        &self.peer
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub fn write_frame(&mut self, frame: &Frame) -> Result<()> {
        let bytes = frame.encode();
        self.send(frame.kind(), &bytes[HEADER_LEN..])
            .context(|| format!("{}: send {} frame", self.peer, frame.kind()))
    }

    /// One data frame: header, payload (and tag) in a single vectored write, so
    /// a chunk costs one syscall in the common case and is never copied.
    pub fn write_data(&mut self, payload: &[u8]) -> Result<()> {
        self.send(Kind::Data, payload).context(|| format!("{}: send data", self.peer))
    }

    /// One data frame, as much of it as the socket takes now without
    /// waiting. `Some` holds the rest, which [`FrameWriter::finish_frame`]
    /// must send before any other frame.
    pub fn try_write_data(&mut self, payload: &Arc<Vec<u8>>) -> Result<Option<PartialFrame>> {
        let mut seal = self.seal.lock().unwrap_or_else(|p| p.into_inner());
        let (head, tag) = seal_frame(&mut seal, Kind::Data, payload);
        let mut frame = PartialFrame { head, payload: Arc::clone(payload), tag, written: 0 };
        let socket = socket2::SockRef::from(&self.stream);
        while frame.written < frame.len() {
            match frame.with_rest(|rest| socket.send_vectored_with_flags(rest, libc::MSG_DONTWAIT)) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)).context(|| self.sending()),
                Ok(n) => frame.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Some(frame)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context(|| self.sending()),
            }
        }
        Ok(None)
    }

    /// Sends the rest of a frame [`FrameWriter::try_write_data`] began.
    pub fn finish_frame(&mut self, frame: PartialFrame) -> Result<()> {
        frame.with_rest(|rest| write_all_vectored(&mut self.stream, rest)).context(|| self.sending())
    }

    fn sending(&self) -> String {
        format!("{}: send data", self.peer)
    }

    fn send(&mut self, kind: Kind, payload: &[u8]) -> io::Result<()> {
        // The lock spans the write: tags are numbered in the order frames leave.
        let mut seal = self.seal.lock().unwrap_or_else(|p| p.into_inner());
        let (head, tag) = seal_frame(&mut seal, kind, payload);
        let tag: &[u8] = tag.as_ref().map(|t| &t[..]).unwrap_or(&[]);
        write_all_vectored(
            &mut self.stream,
            &mut [IoSlice::new(&head), IoSlice::new(payload), IoSlice::new(tag)],
        )
    }
}

/// A data frame the socket took only part of.
pub struct PartialFrame {
    head: [u8; HEADER_LEN],
    payload: Arc<Vec<u8>>,
    tag: Option<[u8; TAG_LEN]>,
    /// Bytes of the frame already sent.
    written: usize,
}

impl PartialFrame {
    fn len(&self) -> usize {
        HEADER_LEN + self.payload.len() + self.tag.map_or(0, |t| t.len())
    }

    /// Calls `f` with what is left to send.
    fn with_rest<R>(&self, f: impl FnOnce(&mut [IoSlice<'_>]) -> R) -> R {
        let tag: &[u8] = self.tag.as_ref().map(|t| &t[..]).unwrap_or(&[]);
        let mut bufs = [IoSlice::new(&self.head), IoSlice::new(&self.payload), IoSlice::new(tag)];
        let mut rest: &mut [IoSlice<'_>] = &mut bufs;
        IoSlice::advance_slices(&mut rest, self.written);
        f(rest)
    }
}

/// The header of the next frame and, on a keyed connection, its tag. Tags
/// are numbered: the caller sends this frame before any other.
fn seal_frame(
    seal: &mut Option<Seal>,
    kind: Kind,
    payload: &[u8],
) -> ([u8; HEADER_LEN], Option<[u8; TAG_LEN]>) {
    let head = Header { kind, len: payload.len() as u32, tagged: seal.is_some() }.to_bytes();
    let tag = seal.as_mut().map(|s| s.tag(&head, payload));
    (head, tag)
}

fn write_all_vectored(w: &mut impl Write, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A sealed pair, with every byte from the writer passing through `meddle`.
    fn sealed_pair(meddle: impl FnOnce(Vec<u8>) -> Vec<u8> + Send + 'static) -> Connection {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let relay = TcpListener::bind("127.0.0.1:0").unwrap();
        let (target, relay_addr) = (listener.local_addr().unwrap(), relay.local_addr().unwrap());
        let key = [9u8; 32];
        let writer = std::thread::spawn(move || {
            let mut w = Connection::connect(relay_addr, Duration::from_secs(5)).unwrap();
            w.seal(key, End::Connector);
            w.write_frame(&Frame::Progress { received: 1, written: 2, idle_ms: 3 }).unwrap();
            w.writer().unwrap().write_data(&[5u8; 1000]).unwrap();
        });
        // A man in the middle: reads everything, alters it, forwards it.
        let mitm = std::thread::spawn(move || {
            let (mut from, _) = relay.accept().unwrap();
            let mut bytes = Vec::new();
            from.read_to_end(&mut bytes).unwrap();
            let mut to = TcpStream::connect(target).unwrap();
            to.write_all(&meddle(bytes)).unwrap();
        });
        let (stream, _) = listener.accept().unwrap();
        let mut r = Connection::new(stream).unwrap();
        r.seal(key, End::Acceptor);
        writer.join().unwrap();
        mitm.join().unwrap();
        r
    }

    #[test]
    fn sealed_frames_pass_untouched() {
        let mut r = sealed_pair(|b| b);
        assert_eq!(r.read_frame().unwrap(), Some(Frame::Progress { received: 1, written: 2, idle_ms: 3 }));
        assert_eq!(r.read_frame().unwrap(), Some(Frame::Data(vec![5; 1000])));
    }

    #[test]
    fn an_altered_data_byte_is_refused() {
        let mut r = sealed_pair(|mut b| {
            let last = b.len() - TAG_LEN - 1;
            b[last] ^= 1;
            b
        });
        assert!(r.read_frame().is_ok());
        let e = r.read_frame().unwrap_err().to_string();
        assert!(e.contains("a data frame failed authentication"), "{e}");
    }

    #[test]
    fn a_dropped_or_replayed_frame_breaks_the_sequence() {
        // Drop the first frame (6 + 24 + 16 bytes): the second arrives out of sequence.
        let mut r = sealed_pair(|b| b[HEADER_LEN + 24 + TAG_LEN..].to_vec());
        let e = r.read_frame().unwrap_err().to_string();
        assert!(e.contains("failed authentication"), "{e}");
    }

    /// Frames begun without waiting and finished later, on a sealed
    /// connection whose reader starts late: every byte and every tag arrive
    /// in order.
    #[test]
    fn frames_the_socket_took_in_part_are_finished_whole_and_sealed() {
        const CHUNK: usize = 256 * 1024;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let key = [3u8; 32];
        let mut r = Connection::connect(listener.local_addr().unwrap(), Duration::from_secs(5)).unwrap();
        let mut w = Connection::new(listener.accept().unwrap().0).unwrap();
        w.seal(key, End::Acceptor);
        r.seal(key, End::Connector);
        let mut writer = w.writer().unwrap();
        let chunks: Vec<Arc<Vec<u8>>> = (0..64u8).map(|i| Arc::new(vec![i; CHUNK])).collect();
        let (cut, first_cut) = std::sync::mpsc::channel();
        let sending = std::thread::spawn(move || {
            let mut partial = 0;
            for c in &chunks {
                if let Some(rest) = writer.try_write_data(c).unwrap() {
                    partial += 1;
                    let _ = cut.send(());
                    writer.finish_frame(rest).unwrap();
                }
            }
            let _ = cut.send(());
            partial
        });
        // Nothing is read before a frame is cut (or all were sent whole): a
        // reader as fast as the writer could otherwise keep every frame whole.
        first_cut.recv().unwrap();
        for i in 0..64u8 {
            assert_eq!(r.read_frame().unwrap(), Some(Frame::Data(vec![i; CHUNK])), "frame {i}");
        }
        assert!(sending.join().unwrap() > 0, "16 MiB to a slower reader: some frame must have been cut");
    }

    #[test]
    fn an_injected_plain_frame_is_refused() {
        let mut r = sealed_pair(|b| {
            let mut forged = Frame::Progress { received: 7, written: 7, idle_ms: 7 }.encode();
            forged.extend(b);
            forged
        });
        let e = r.read_frame().unwrap_err().to_string();
        assert!(e.contains("unauthenticated progress frame on a keyed connection"), "{e}");
    }
}
