//! Relays the stream to one child node.

use std::io::Read;
use std::net::Shutdown;
use std::time::Duration;

use super::chunking::Chunking;
use super::lane::Lane;
use super::ring::{Finish, Next, Ring, RingReader};
use super::source::fill;
use crate::connection::FrameWriter;
use crate::protocol::{End, Frame};

/// How long a child may take to close its side after the end frame. It closes as
/// soon as it has read the end frame, so this only bounds a broken child.
const CLOSE_WAIT: Duration = Duration::from_secs(30);

/// Sends every chunk from the reader's position, then the end frame, then waits
/// for the child to close: its close is the acknowledgement that every byte
/// arrived. On failure the reader is dropped (detached) so this child no longer
/// holds back the others.
pub fn forward(mut reader: RingReader, mut child: FrameWriter) -> Result<u64, String> {
    let mut sent = 0u64;
    loop {
        match reader.next_chunk() {
            Next::Chunk(chunk) => {
                child.write_data(&chunk).map_err(|e| e.to_string())?;
                sent += chunk.len() as u64;
            }
            Next::Finished(finish) => {
                drop(reader);
                return finish_child(child, finish).map(|()| sent);
            }
        }
    }
}

/// As [`forward`], through the producer's [`Lane`] when this child is the
/// first to claim it: the producer writes the chunks while the child's socket
/// takes them at once; this thread sends what it could not, catches up from
/// the ring, lends the child again, and finishes it.
pub fn forward_through(lane: &Lane, reader: RingReader, child: FrameWriter) -> Result<u64, String> {
    if !lane.claim() {
        return forward(reader, child);
    }
    let (mut reader, mut child, mut sent) = (reader, child, 0u64);
    loop {
        let back = lane.lend(reader, child);
        sent += back.sent;
        if let Some(why) = back.error {
            return Err(why);
        }
        (reader, child) = (back.reader, back.child);
        if let Some(rest) = back.pending {
            child.finish_frame(rest).map_err(|e| e.to_string())?;
        }
        if back.closed {
            return forward(reader, child).map(|rest| sent + rest);
        }
        while let Some(chunk) = reader.try_next_chunk() {
            child.write_data(&chunk).map_err(|e| e.to_string())?;
            sent += chunk.len() as u64;
        }
    }
}

/// Feeds a child from a re-read of the input (the server, when its ring no
/// longer holds the child's offset). Chunks are cut at the same boundaries as
/// the live stream: `chunking` is the live stream's.
pub fn forward_reader(
    mut input: Box<dyn Read + Send>,
    offset: u64,
    chunking: &Chunking,
    ring: &Ring,
    mut child: FrameWriter,
) -> Result<u64, String> {
    let mut sent = 0u64;
    let mut buf = Vec::new();
    loop {
        let chunk_size = chunking.at(offset + sent);
        fill(&mut input, &mut buf, chunk_size)
            .map_err(|e| format!("re-reading the input at {}: {e}", offset + sent))?;
        if buf.is_empty() {
            break;
        }
        child.write_data(&buf).map_err(|e| e.to_string())?;
        sent += buf.len() as u64;
        if buf.len() < chunk_size {
            break;
        }
    }
    let finish = ring.wait_finish();
    if let Finish::Complete(End { length, .. }) = &finish {
        if offset + sent != *length {
            let why = format!("the input changed: re-read {} bytes, the stream has {length}", offset + sent);
            let _ = child.stream().shutdown(Shutdown::Both);
            return Err(why);
        }
    }
    finish_child(child, finish).map(|()| sent)
}

fn finish_child(mut child: FrameWriter, finish: Finish) -> Result<(), String> {
    match finish {
        Finish::Complete(end) => {
            child.write_frame(&Frame::End(end)).map_err(|e| e.to_string())?;
            let _ = child.stream().shutdown(Shutdown::Write);
            let _ = child.stream().set_read_timeout(Some(CLOSE_WAIT));
            let mut rest = [0u8; 64];
            let _ = (&mut child.stream()).read(&mut rest);
            Ok(())
        }
        Finish::Failed(why) => {
            // The reason travels down the chain so every node reports the cause;
            // closing without an end frame is the failure signal even if this
            // frame is lost.
            let _ = child.write_frame(&Frame::Abort { reason: why.clone() });
            let _ = child.stream().shutdown(Shutdown::Both);
            Err(why)
        }
        Finish::Abandoned(why) => {
            let _ = child.stream().shutdown(Shutdown::Both);
            Err(why)
        }
    }
}
