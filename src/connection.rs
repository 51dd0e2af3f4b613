//! Frames over a TCP stream: the one place that reads and writes them, so size
//! limits are enforced on every connection alike.

use std::io::{self, BufReader, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::error::{Error, IoContext, Result};
use crate::protocol::{Frame, Header, Kind, HEADER_LEN};

pub struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    peer: String,
}

impl Connection {
    pub fn new(stream: TcpStream) -> Result<Connection> {
        let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "unknown peer".into());
        // Control frames are small and latency matters; data frames are written
        // header + payload in one vectored write, so Nagle buys nothing.
        stream.set_nodelay(true).context(|| format!("{peer}: set TCP_NODELAY"))?;
        let writer = stream.try_clone().context(|| format!("{peer}: clone socket"))?;
        Ok(Connection { reader: BufReader::with_capacity(64 * 1024, stream), writer, peer })
    }

    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Connection> {
        let stream = TcpStream::connect_timeout(&addr, timeout).context(|| format!("connect to {addr}"))?;
        Connection::new(stream)
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.writer.peer_addr()
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.writer.local_addr()
    }

    pub fn stream(&self) -> &TcpStream {
        &self.writer
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> Result<()> {
        self.writer.set_read_timeout(t).context(|| format!("{}: set read timeout", self.peer))
    }

    /// A second handle for writing from another thread (the reader stays here).
    pub fn writer(&self) -> Result<FrameWriter> {
        let stream = self.writer.try_clone().context(|| format!("{}: clone socket", self.peer))?;
        Ok(FrameWriter { stream, peer: self.peer.clone() })
    }

    /// The next header, or `None` on a clean end of stream between frames.
    pub fn read_header(&mut self) -> Result<Option<Header>> {
        let mut head = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            match self.reader.read(&mut head[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => {
                    return Err(Error::Closed { peer: self.peer.clone(), during: "inside a frame header" })
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_err(e)),
            }
        }
        Header::parse(&head).map(Some).map_err(|err| Error::Protocol { peer: self.peer.clone(), err })
    }

    /// Reads a payload whose length the header already validated.
    pub fn read_payload(&mut self, header: Header, buf: &mut Vec<u8>) -> Result<()> {
        buf.resize(header.len as usize, 0);
        self.reader.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                Error::Closed { peer: self.peer.clone(), during: "inside a frame payload" }
            } else {
                self.io_err(e)
            }
        })
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
        let bytes = frame.encode();
        let peer = &self.peer;
        self.writer.write_all(&bytes).context(|| format!("{peer}: send {} frame", frame.kind()))
    }

    pub fn unexpected(&self, frame: &Frame, during: &'static str) -> Error {
        Error::Unexpected { peer: self.peer.clone(), got: frame.kind().name(), during }
    }

    fn io_err(&self, err: io::Error) -> Error {
        Error::Io { context: format!("{}: receive", self.peer), err }
    }
}

/// The write half of a connection, usable from another thread.
pub struct FrameWriter {
    stream: TcpStream,
    peer: String,
}

impl FrameWriter {
    pub fn from_stream(stream: TcpStream) -> FrameWriter {
        let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "unknown peer".into());
        FrameWriter { stream, peer }
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub fn write_frame(&mut self, frame: &Frame) -> Result<()> {
        let peer = &self.peer;
        self.stream.write_all(&frame.encode()).context(|| format!("{peer}: send {} frame", frame.kind()))
    }

    /// One data frame: header and payload in a single vectored write, so a chunk
    /// costs one syscall in the common case and the payload is never copied.
    pub fn write_data(&mut self, payload: &[u8]) -> Result<()> {
        let head = Header::encode(Kind::Data, payload.len());
        write_all_vectored(&mut self.stream, &head, payload).context(|| format!("{}: send data", self.peer))
    }
}

fn write_all_vectored(w: &mut impl Write, head: &[u8], body: &[u8]) -> io::Result<()> {
    let total = head.len() + body.len();
    let mut done = 0;
    while done < total {
        let n = if done < head.len() {
            w.write_vectored(&[IoSlice::new(&head[done..]), IoSlice::new(body)])
        } else {
            w.write(&body[done - head.len()..])
        };
        match n {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
