//! Accepting this node's children on its data port.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::forward::forward;
use super::ring::RingReader;
use crate::connection::Connection;
use crate::net::wait_any;
use crate::protocol::Frame;

/// A child expected on the data port and the ring reader reserved for it: the
/// reader exists before the child connects, so no byte can be missed.
pub struct ChildLink {
    pub node_id: u32,
    pub reader: RingReader,
}

/// A child that sends nothing within this time after connecting is not a kacast
/// node (or is broken); its connection is dropped.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts the expected children until all have connected or `timeout` passes,
/// relays the stream to each, and returns each child's outcome once every relay
/// has ended. Connections that are not an expected child of this session are
/// logged and dropped; they never disturb the others.
pub fn accept_children(
    listener: &TcpListener,
    session: &str,
    links: Vec<ChildLink>,
    timeout: Duration,
) -> Vec<(u32, Result<u64, String>)> {
    let ids: Vec<u32> = links.iter().map(|l| l.node_id).collect();
    let waiting: Arc<Mutex<HashMap<u32, RingReader>>> = Arc::new(Mutex::new(
        links.into_iter().map(|l| (l.node_id, l.reader)).collect(),
    ));
    let mut relays = Vec::new();
    let deadline = Instant::now() + timeout;
    // Handshake threads poke this pair when they claim a child, so the loop
    // notices at once that nobody is left to wait for.
    let Ok((mut woken, wake)) = UnixStream::pair() else {
        return Vec::new();
    };
    let wake = Arc::new(wake);
    while !waiting.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match wait_any(&[listener.as_raw_fd(), woken.as_raw_fd()], left) {
            None => break,
            Some(1) => {
                let _ = woken.read(&mut [0u8; 64]);
                continue;
            }
            Some(_) => {}
        }
        let Ok((stream, addr)) = listener.accept() else {
            continue;
        };
        let waiting = Arc::clone(&waiting);
        let wake = Arc::clone(&wake);
        let session = session.to_string();
        relays.push(thread::spawn(move || -> Option<(u32, Result<u64, String>)> {
            let mut conn = match Connection::new(stream) {
                Ok(c) => c,
                Err(e) => {
                    warn!("data connection from {addr}: {e}");
                    return None;
                }
            };
            let _ = conn.set_read_timeout(Some(HELLO_TIMEOUT));
            let node_id = match conn.read_frame() {
                Ok(Some(Frame::DataHello { session: s, node_id, offset: 0 })) if s == session => node_id,
                Ok(Some(Frame::DataHello { session: s, .. })) if s != session => {
                    warn!("data connection from {addr} is for session '{s}', not '{session}': dropped");
                    return None;
                }
                Ok(Some(other)) => {
                    warn!("data connection from {addr}: unexpected {} frame: dropped", other.kind());
                    return None;
                }
                Ok(None) => return None,
                Err(e) => {
                    warn!("data connection dropped: {e}");
                    return None;
                }
            };
            let claimed = waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(&node_id);
            let _ = (&*wake).write(&[1]);
            let Some(reader) = claimed else {
                warn!("data connection from {addr} claims node {node_id}, which is not an awaited child: dropped");
                return None;
            };
            let _ = conn.set_read_timeout(None);
            debug!("child node {node_id} connected from {addr}");
            let writer = match conn.writer() {
                Ok(w) => w,
                Err(e) => return Some((node_id, Err(e.to_string()))),
            };
            Some((node_id, forward(reader, writer)))
        }));
    }
    // Children that never came: release their readers so the others go on.
    let missing: Vec<u32> = waiting
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain()
        .map(|(id, _)| id)
        .collect();
    let mut results: Vec<(u32, Result<u64, String>)> = missing
        .into_iter()
        .map(|id| {
            (
                id,
                Err(format!(
                    "did not connect for the stream within {}s",
                    timeout.as_secs()
                )),
            )
        })
        .collect();
    results.extend(relays.into_iter().filter_map(|h| h.join().ok().flatten()));
    results.sort_by_key(|r| ids.iter().position(|i| *i == r.0));
    results
}
