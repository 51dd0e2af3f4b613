//! A node's producer: data frames from the upstream connection into the ring.

use std::sync::atomic::{AtomicU64, Ordering};

use super::lane::Lane;
use super::ring::Ring;
use crate::connection::Connection;
use crate::protocol::{End, Frame, Kind};

/// Why receiving from an upstream stopped before the end frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamError {
    /// The upstream does not hold our offset any more: ask the server instead.
    Refused(String),
    /// The stream failed at its source: nothing to retry.
    Aborted(String),
    /// The connection broke or the upstream misbehaved: it may be dead, and the
    /// server will say where to reattach.
    Broken(String),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Refused(why) => write!(f, "upstream refused: {why}"),
            UpstreamError::Aborted(why) => write!(f, "the stream failed upstream: {why}"),
            UpstreamError::Broken(why) => f.write_str(why),
        }
    }
}

/// Receives data frames into the ring until the end frame, continuing the
/// stream at `received` bytes (the upstream was asked for that offset), and
/// writing each chunk to the `lane`'s child. The ring is not finished here: on
/// a broken upstream the caller may reattach elsewhere.
pub fn receive(
    upstream: &mut Connection,
    ring: &Ring,
    lane: &Lane,
    received: &AtomicU64,
) -> Result<End, UpstreamError> {
    let peer = upstream.peer().to_string();
    let broken = |length: u64, e: &dyn std::fmt::Display| {
        UpstreamError::Broken(format!("upstream {peer} failed at byte {length}: {e}"))
    };
    loop {
        let length = received.load(Ordering::Relaxed);
        let header = match upstream.read_header() {
            Ok(Some(h)) => h,
            Ok(None) => {
                return Err(UpstreamError::Broken(format!(
                    "upstream {} closed the stream at byte {length}, before its end",
                    upstream.peer()
                )))
            }
            Err(e) => return Err(broken(length, &e)),
        };
        if header.kind == Kind::Data {
            let mut buf = ring.alloc(header.len as usize);
            upstream.read_payload(header, &mut buf).map_err(|e| broken(length, &e))?;
            let n = buf.len() as u64;
            ring.push(buf).map_err(|_| UpstreamError::Aborted("this node's ring was closed".into()))?;
            received.store(length + n, Ordering::Relaxed);
            lane.drive();
            continue;
        }
        let mut payload = Vec::new();
        upstream.read_payload(header, &mut payload).map_err(|e| broken(length, &e))?;
        return match Frame::parse_payload(header.kind, &payload) {
            Ok(Frame::End(end)) if end.length == length => Ok(end),
            Ok(Frame::End(end)) => Err(UpstreamError::Broken(format!(
                "upstream {} ended the stream at {} bytes but sent {length}",
                upstream.peer(),
                end.length
            ))),
            Ok(Frame::Abort { reason }) => Err(UpstreamError::Aborted(reason)),
            Ok(Frame::Refuse { reason }) => Err(UpstreamError::Refused(reason)),
            Ok(other) => Err(UpstreamError::Broken(format!(
                "upstream {} sent an unexpected {} frame in the stream",
                upstream.peer(),
                other.kind()
            ))),
            Err(e) => Err(broken(length, &e)),
        };
    }
}
