//! Relays the ring to one child node.

use std::io::Read;
use std::net::Shutdown;
use std::time::Duration;

use super::ring::{Finish, Next, RingReader};
use crate::connection::FrameWriter;
use crate::protocol::Frame;

/// How long a child may take to close its side after the end frame. It closes as
/// soon as it has read the end frame, so this only bounds a broken child.
const CLOSE_WAIT: Duration = Duration::from_secs(30);

/// Sends every chunk, then the end frame, then waits for the child to close: its
/// close is the acknowledgement that every byte arrived. On failure the reader is
/// dropped (detached) so this child no longer holds back the others.
pub fn forward(mut reader: RingReader, mut child: FrameWriter) -> Result<u64, String> {
    let mut sent = 0u64;
    loop {
        match reader.next_chunk() {
            Next::Chunk(chunk) => {
                child.write_data(&chunk).map_err(|e| e.to_string())?;
                sent += chunk.len() as u64;
            }
            Next::Finished(Finish::Complete(end)) => {
                drop(reader);
                child
                    .write_frame(&Frame::End(end))
                    .map_err(|e| e.to_string())?;
                let _ = child.stream().shutdown(Shutdown::Write);
                let _ = child.stream().set_read_timeout(Some(CLOSE_WAIT));
                let mut rest = [0u8; 64];
                let _ = (&mut child.stream()).read(&mut rest);
                return Ok(sent);
            }
            Next::Finished(Finish::Failed(why)) => {
                // The reason travels down the chain so every node reports the cause,
                // not just "upstream closed"; closing without an end frame is the
                // failure signal even if this frame is lost.
                let _ = child.write_frame(&Frame::Abort {
                    reason: why.clone(),
                });
                let _ = child.stream().shutdown(Shutdown::Both);
                return Err(why);
            }
        }
    }
}
