//! The server's producer: the input (a command's stdout, a file, stdin) cut into
//! chunks, hashed, and pushed into the ring.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::chunking::Chunking;
use super::lane::Lane;
use super::ring::{Finish, Ring};
use crate::protocol::End;

/// Reads `input` to its end into `ring` in the chunks `chunking` says, counting
/// bytes into `sent` and writing each chunk to the `lane`'s child. Returns the
/// end frame or why it stopped, and leaves the ring open: the caller records
/// the verdict first and then [`seal`]s the ring, so that no node can report
/// before the verdict is known.
pub fn pump(
    input: impl Read,
    ring: &Ring,
    lane: &Lane,
    chunking: &Chunking,
    sent: &AtomicU64,
) -> Result<End, String> {
    // Re-reads waiting for a decision the stream never took go on, even if
    // cutting panics.
    let _settle = Settle(chunking);
    cut(input, ring, lane, chunking, sent)
}

struct Settle<'a>(&'a Chunking);

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        self.0.settle();
    }
}

fn cut(
    mut input: impl Read,
    ring: &Ring,
    lane: &Lane,
    chunking: &Chunking,
    sent: &AtomicU64,
) -> Result<End, String> {
    let mut hasher = blake3::Hasher::new();
    let mut length = 0u64;
    loop {
        let chunk_size = chunking.next(length);
        let mut buf = ring.alloc(chunk_size);
        match fill(&mut input, &mut buf, chunk_size) {
            Ok(()) => {}
            Err(e) => {
                return Err(format!("reading the input failed after {length} bytes: {e}"));
            }
        }
        if buf.is_empty() {
            break;
        }
        hasher.update(&buf);
        length += buf.len() as u64;
        let full = buf.len() == chunk_size;
        let Ok(held_back) = ring.push(buf) else {
            return Err("every node has left the chain".to_string());
        };
        chunking.pushed(length, held_back, Instant::now());
        sent.store(length, Ordering::Relaxed);
        lane.drive();
        if !full {
            break;
        }
    }
    Ok(End { length, hash: *hasher.finalize().as_bytes() })
}

/// Ends the ring with the verdict of [`pump`].
pub fn seal(ring: &Ring, verdict: &Result<End, String>) {
    ring.finish(match verdict {
        Ok(end) => Finish::Complete(*end),
        Err(why) => Finish::Failed(why.clone()),
    });
}

/// Fills `buf` up to `size` bytes, stopping early only at end of input. Pipes hand
/// out 64 KiB at a time; full chunks keep frames few and large.
pub(crate) fn fill(input: &mut impl Read, buf: &mut Vec<u8>, size: usize) -> io::Result<()> {
    buf.resize(size, 0);
    let mut got = 0;
    while got < size {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                buf.truncate(got);
                return Err(e);
            }
        }
    }
    buf.truncate(got);
    Ok(())
}
