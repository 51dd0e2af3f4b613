//! `--max-rate`: caps how fast the server reads its input, so a deployment can
//! share a production network (udpcast's `--max-bitrate`, which ka-deploy lacked).

use std::io::{self, Read};
use std::time::{Duration, Instant};

pub struct Throttle<R> {
    inner: R,
    bytes_per_sec: u64,
    start: Option<Instant>,
    read: u64,
}

/// Reads are cut to this size so the rate holds over short spans too.
const SLICE: usize = 64 * 1024;

impl<R: Read> Throttle<R> {
    pub fn new(inner: R, bytes_per_sec: u64) -> Throttle<R> {
        Throttle { inner, bytes_per_sec: bytes_per_sec.max(1), start: None, read: 0 }
    }
}

impl<R: Read> Read for Throttle<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let start = *self.start.get_or_insert_with(Instant::now);
        // Wait until the bytes already read are due at the configured rate.
        let due = Duration::from_secs_f64(self.read as f64 / self.bytes_per_sec as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let n = buf.len().min(SLICE);
        let got = self.inner.read(&mut buf[..n])?;
        self.read += got as u64;
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_pass_unchanged_and_no_faster_than_the_rate() {
        let data: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
        let start = Instant::now();
        let mut out = Vec::new();
        Throttle::new(&data[..], 1_000_000).read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        // The last slice starts once 236 KB are due at 1 MB/s.
        assert!(start.elapsed() >= Duration::from_millis(230), "{:?}", start.elapsed());
    }
}
