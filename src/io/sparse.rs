//! Sparse images: a raw partition's runs of zeros are not sent, so a 20 GiB
//! partition holding 2 GiB costs about 2 GiB on the wire.
//!
//! The stream is a magic then records, all integers big-endian:
//!
//! | record | bytes | meaning |
//! |---|---|---|
//! | magic | `KCSPARS1` | once, first |
//! | data | `D`, u32 length, the bytes | the next `length` bytes of the image |
//! | zeros | `Z`, u64 length | the next `length` bytes are zero |
//! | end | `E`, u64 total | the image is `total` bytes; nothing follows |
//!
//! Offsets are implicit: the records cover the image in order, so a decoder
//! cannot be told to write anywhere but forward, and the end record's total
//! proves the stream whole (a truncated stream also fails the chain's hash).
//! The encoder is a `Read` adapter, the decoder a `Write` adapter over an
//! [`Extents`] target that decides how zeros are made (see `io::target`).

use std::io::{self, Read, Write};

pub const MAGIC: &[u8; 8] = b"KCSPARS1";
/// Zeros are found in whole blocks of this size: ext4's and most filesystems'
/// block, so a free block that `e2image` reports as zeros is skipped whole,
/// and every run of zeros starts and ends 4 KiB-aligned (what BLKZEROOUT and
/// hole punching want), except a short tail at the image's end.
pub const BLOCK: usize = 4096;
/// Largest data record, and what the encoder reads at a time: big enough that
/// the 5-byte header is noise, small enough to keep the pipeline moving.
pub const MAX_DATA: usize = 1 << 20;

const DATA: u8 = b'D';
const ZEROS: u8 = b'Z';
const END: u8 = b'E';

/// Where a decoded image goes. Records arrive in order, so `offset` only grows.
pub trait Extents {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// `len` bytes at `offset` must read back as zeros.
    fn zero(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// The image is complete at `total` bytes.
    fn finish(&mut self, total: u64) -> io::Result<()>;
}

/// Turns a raw image into a sparse stream.
pub struct SparseEncoder<R> {
    inner: R,
    buf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    /// Zeros seen but not yet written as a record: they may go on.
    pending_zeros: u64,
    total: u64,
    state: EncoderState,
}

#[derive(PartialEq, Eq)]
enum EncoderState {
    Start,
    Body,
    Done,
}

impl<R: Read> SparseEncoder<R> {
    pub fn new(inner: R) -> SparseEncoder<R> {
        SparseEncoder {
            inner,
            buf: vec![0; MAX_DATA],
            out: Vec::with_capacity(MAX_DATA + 64),
            out_pos: 0,
            pending_zeros: 0,
            total: 0,
            state: EncoderState::Start,
        }
    }

    /// Encodes the next piece of the image into `out`.
    fn refill(&mut self) -> io::Result<()> {
        self.out.clear();
        self.out_pos = 0;
        if self.state == EncoderState::Start {
            self.out.extend_from_slice(MAGIC);
            self.state = EncoderState::Body;
        }
        // Whole buffers, so blocks stay aligned to the image whatever sizes
        // the source's reads come in (a pipe from e2image).
        let n = read_full(&mut self.inner, &mut self.buf)?;
        if n == 0 {
            self.flush_zeros();
            self.out.push(END);
            self.out.extend_from_slice(&self.total.to_be_bytes());
            self.state = EncoderState::Done;
            return Ok(());
        }
        self.total += n as u64;
        let mut data_start = None;
        for start in (0..n).step_by(BLOCK) {
            let block = &self.buf[start..(start + BLOCK).min(n)];
            if is_zero(block) {
                if let Some(s) = data_start.take() {
                    push_data(&mut self.out, &self.buf[s..start]);
                }
                self.pending_zeros += block.len() as u64;
            } else if data_start.is_none() {
                self.flush_zeros();
                data_start = Some(start);
            }
        }
        if let Some(s) = data_start {
            push_data(&mut self.out, &self.buf[s..n]);
        }
        Ok(())
    }

    fn flush_zeros(&mut self) {
        if self.pending_zeros > 0 {
            self.out.push(ZEROS);
            self.out.extend_from_slice(&self.pending_zeros.to_be_bytes());
            self.pending_zeros = 0;
        }
    }
}

fn push_data(out: &mut Vec<u8>, data: &[u8]) {
    out.push(DATA);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

impl<R: Read> Read for SparseEncoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.out_pos == self.out.len() {
            if self.state == EncoderState::Done {
                return Ok(0);
            }
            self.refill()?;
        }
        let n = buf.len().min(self.out.len() - self.out_pos);
        buf[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
        self.out_pos += n;
        Ok(n)
    }
}

/// Reads until `buf` is full or the source ends.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Sixteen bytes at a time, stopping at the first non-zero: this runs over
/// every byte of every raw partition.
fn is_zero(block: &[u8]) -> bool {
    let mut words = block.chunks_exact(16);
    words.by_ref().all(|w| u128::from_ne_bytes(w.try_into().expect("16 bytes")) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}

/// Turns a sparse stream back into an image on an [`Extents`] target.
pub struct SparseDecoder<T> {
    target: T,
    /// Bytes of the stream consumed so far, for errors that say where.
    at: u64,
    /// Offset in the image of the next record.
    offset: u64,
    /// The magic or the record header being read, and how much of it is in.
    header: [u8; 9],
    have: usize,
    state: DecoderState,
    /// Bytes of data written to the target, and of zeros it was told to make.
    pub written: u64,
    pub zeros: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecoderState {
    Magic,
    Header,
    /// Inside a data record, with this many bytes to go.
    Data(u64),
    Ended,
}

impl<T: Extents> SparseDecoder<T> {
    pub fn new(target: T) -> SparseDecoder<T> {
        SparseDecoder {
            target,
            at: 0,
            offset: 0,
            header: [0; 9],
            have: 0,
            state: DecoderState::Magic,
            written: 0,
            zeros: 0,
        }
    }

    /// Checks that the stream was whole and finishes the target.
    pub fn finish(mut self) -> io::Result<T> {
        if self.state != DecoderState::Ended {
            return Err(bad(format!(
                "sparse image ends early: no end record after {} bytes of stream ({} bytes of image)",
                self.at, self.offset
            )));
        }
        self.target.finish(self.offset)?;
        Ok(self.target)
    }

    /// Bytes the header being read needs in all.
    fn header_len(&self) -> io::Result<usize> {
        match (self.state, self.header[0]) {
            (DecoderState::Magic, _) => Ok(MAGIC.len()),
            (_, DATA) => Ok(5),
            (_, ZEROS | END) => Ok(9),
            (_, other) => Err(bad(format!(
                "sparse image: unknown record type 0x{other:02x} at stream byte {}",
                self.at - self.have as u64
            ))),
        }
    }

    /// Acts on a complete header.
    fn header_done(&mut self) -> io::Result<()> {
        let start = self.at - self.have as u64;
        self.have = 0;
        let field = |n: usize| self.header[1..=n].iter().fold(0u64, |v, &b| v << 8 | u64::from(b));
        self.state = match (self.state, self.header[0]) {
            (DecoderState::Magic, _) if self.header[..8] == MAGIC[..] => DecoderState::Header,
            (DecoderState::Magic, _) => {
                return Err(bad("not a kacast sparse image (no KCSPARS1 magic at stream byte 0)".into()))
            }
            (_, DATA) => match field(4) {
                0 => DecoderState::Header,
                len if len <= MAX_DATA as u64 => DecoderState::Data(len),
                len => {
                    return Err(bad(format!(
                        "sparse image: data record of {len} bytes at stream byte {start}"
                    )))
                }
            },
            (_, ZEROS) => {
                let len = field(8);
                let end = self.offset.checked_add(len);
                let end = end
                    .ok_or_else(|| bad(format!("sparse image: zero run at stream byte {start} overflows")))?;
                self.target.zero(self.offset, len)?;
                self.zeros += len;
                self.offset = end;
                DecoderState::Header
            }
            _ => {
                let total = field(8);
                if total != self.offset {
                    return Err(bad(format!(
                        "sparse image: the end record at stream byte {start} says {total} bytes, the records made {}",
                        self.offset
                    )));
                }
                DecoderState::Ended
            }
        };
        Ok(())
    }
}

impl<T: Extents> Write for SparseDecoder<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() {
            match self.state {
                DecoderState::Magic | DecoderState::Header => {
                    if self.have == 0 {
                        self.header[0] = rest[0];
                    }
                    let want = self.header_len()? - self.have;
                    let take = want.min(rest.len());
                    self.header[self.have..self.have + take].copy_from_slice(&rest[..take]);
                    self.have += take;
                    self.at += take as u64;
                    rest = &rest[take..];
                    if take == want {
                        self.header_done()?;
                    }
                }
                DecoderState::Data(left) => {
                    let take = left.min(rest.len() as u64) as usize;
                    self.target.write_at(self.offset, &rest[..take])?;
                    self.offset += take as u64;
                    self.written += take as u64;
                    self.at += take as u64;
                    rest = &rest[take..];
                    let left = left - take as u64;
                    self.state = if left == 0 { DecoderState::Header } else { DecoderState::Data(left) };
                }
                DecoderState::Ended => {
                    return Err(bad(format!(
                        "sparse image: bytes after the end record, at stream byte {}",
                        self.at
                    )));
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image in memory that records what it was told.
    #[derive(Default)]
    struct Memory {
        image: Vec<u8>,
        /// Filled with 0xAA where nothing was written: zeros must be made.
        zero_calls: Vec<(u64, u64)>,
        finished: Option<u64>,
    }

    impl Extents for Memory {
        fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
            let end = offset as usize + data.len();
            if self.image.len() < end {
                self.image.resize(end, 0xAA);
            }
            self.image[offset as usize..end].copy_from_slice(data);
            Ok(())
        }
        fn zero(&mut self, offset: u64, len: u64) -> io::Result<()> {
            let end = (offset + len) as usize;
            if self.image.len() < end {
                self.image.resize(end, 0xAA);
            }
            self.image[offset as usize..end].fill(0);
            self.zero_calls.push((offset, len));
            Ok(())
        }
        fn finish(&mut self, total: u64) -> io::Result<()> {
            self.image.resize(total as usize, 0xAA);
            self.finished = Some(total);
            Ok(())
        }
    }

    fn encode(image: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        // A source that hands out odd-sized pieces, like a pipe.
        struct Dribble<'a>(&'a [u8]);
        impl Read for Dribble<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(7777);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        SparseEncoder::new(Dribble(image)).read_to_end(&mut out).unwrap();
        out
    }

    fn decode(stream: &[u8], piece: usize) -> io::Result<Memory> {
        let mut d = SparseDecoder::new(Memory::default());
        for p in stream.chunks(piece) {
            d.write_all(p)?;
        }
        d.finish()
    }

    /// A pseudo-random image of data blocks, zero blocks and zero runs
    /// inside blocks (which must travel as data).
    fn sample(seed: u64, blocks: usize, tail: usize) -> Vec<u8> {
        let mut x = seed;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut image = Vec::new();
        for _ in 0..blocks {
            let kind = next() % 4;
            let mut block: Vec<u8> = (0..BLOCK).map(|_| next() as u8).collect();
            match kind {
                0 | 1 => block.fill(0),
                2 => block[..BLOCK - 1].fill(0),
                _ => {}
            }
            image.extend(block);
        }
        image.extend((0..tail).map(|_| next() as u8 | 1));
        image
    }

    #[test]
    fn images_survive_the_round_trip_whatever_the_pieces() {
        for (seed, blocks, tail) in
            [(1, 700, 0), (2, 300, 100), (3, 1, 0), (4, 0, 5), (5, 0, 0), (6, 600, 4095)]
        {
            let image = sample(seed, blocks, tail);
            let stream = encode(&image);
            for piece in [1, 3, 4096, 65536, 1 << 21] {
                let got = decode(&stream, piece).unwrap();
                assert_eq!(got.finished, Some(image.len() as u64));
                assert!(got.image == image, "seed {seed}, pieces of {piece}: image differs");
            }
        }
    }

    #[test]
    fn zeros_cost_a_record_not_their_size() {
        let mut image = vec![0u8; 64 << 20];
        image[10 << 20..(10 << 20) + 5].copy_from_slice(b"hello");
        let last = image.len() - 1;
        image[last] = 1;
        let stream = encode(&image);
        // Two data blocks, three zero runs, magic and end.
        assert!(stream.len() < 2 * BLOCK + 100, "{} bytes", stream.len());
        let got = decode(&stream, 1 << 16).unwrap();
        assert!(got.image == image);
        // Zero runs span the encoder's reads: one record each, not one per MiB.
        assert_eq!(got.zero_calls.len(), 2, "{:?}", got.zero_calls);
        assert_eq!(got.zero_calls[0], (0, 10 << 20));
    }

    #[test]
    fn broken_streams_say_what_and_where() {
        let image = sample(9, 50, 10);
        let stream = encode(&image);
        let err = |s: &[u8]| decode(s, 4096).err().map(|e| e.to_string()).unwrap_or_default();

        assert!(
            err(&stream[..stream.len() - 1]).contains("ends early"),
            "{}",
            err(&stream[..stream.len() - 1])
        );
        assert!(err(b"KCSPARS2").contains("magic"));
        let mut tail = stream.clone();
        tail.push(0);
        assert!(err(&tail).contains("after the end record"), "{}", err(&tail));
        let mut unknown = MAGIC.to_vec();
        unknown.push(b'Q');
        assert!(err(&unknown).contains("unknown record type 0x51 at stream byte 8"), "{}", err(&unknown));
        let mut huge = MAGIC.to_vec();
        huge.push(DATA);
        huge.extend((MAX_DATA as u32 + 1).to_be_bytes());
        assert!(err(&huge).contains("data record of 1048577 bytes at stream byte 8"), "{}", err(&huge));
        let mut short = MAGIC.to_vec();
        short.push(END);
        short.extend(5u64.to_be_bytes());
        assert!(err(&short).contains("says 5 bytes, the records made 0"), "{}", err(&short));
    }
}
