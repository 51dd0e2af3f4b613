//! A node's producer: data frames from the upstream connection into the ring.

use std::sync::atomic::{AtomicU64, Ordering};

use super::ring::{Finish, Ring};
use crate::connection::Connection;
use crate::protocol::{End, Frame, Kind};

/// Receives the stream until its end frame. Any failure (a closed or broken
/// connection, a malformed frame) is stored in the ring so the local sink and the
/// children learn of it, and returned.
pub fn receive(
    upstream: &mut Connection,
    ring: &Ring,
    received: &AtomicU64,
) -> Result<End, String> {
    let result = receive_frames(upstream, ring, received);
    match &result {
        Ok(end) => ring.finish(Finish::Complete(*end)),
        Err(why) => ring.finish(Finish::Failed(why.clone())),
    }
    result
}

fn receive_frames(
    upstream: &mut Connection,
    ring: &Ring,
    received: &AtomicU64,
) -> Result<End, String> {
    let mut length = 0u64;
    loop {
        let header = match upstream.read_header() {
            Ok(Some(h)) => h,
            Ok(None) => {
                return Err(format!(
                    "upstream {} closed the stream after {length} bytes, before its end",
                    upstream.peer()
                ))
            }
            Err(e) => return Err(format!("upstream failed after {length} bytes: {e}")),
        };
        match header.kind {
            Kind::Data => {
                let mut buf = ring.alloc(header.len as usize);
                upstream
                    .read_payload(header, &mut buf)
                    .map_err(|e| format!("upstream failed after {length} bytes: {e}"))?;
                length += buf.len() as u64;
                ring.push(buf)
                    .map_err(|_| "every reader of this node has gone".to_string())?;
                received.store(length, Ordering::Relaxed);
            }
            _ => {
                let mut payload = Vec::new();
                upstream
                    .read_payload(header, &mut payload)
                    .map_err(|e| e.to_string())?;
                return match Frame::parse_payload(header.kind, &payload) {
                    Ok(Frame::End(end)) => Ok(end),
                    Ok(Frame::Abort { reason }) => {
                        Err(format!("the stream failed upstream: {reason}"))
                    }
                    Ok(other) => Err(format!(
                        "upstream {} sent an unexpected {} frame in the stream",
                        upstream.peer(),
                        other.kind()
                    )),
                    Err(e) => Err(format!("upstream {}: {e}", upstream.peer())),
                };
            }
        }
    }
}
