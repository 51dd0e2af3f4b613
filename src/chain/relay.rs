//! Serving this node's children on its data port, for the whole session.
//!
//! The children the server assigned get a ring reader reserved before they
//! connect, so no byte can be missed. Any other node of the session may connect
//! later with a byte offset: an orphan whose upstream died, reattached here by the
//! server. It is replayed from the ring's history when that still holds its
//! offset, from the `fallback` (the server re-reading its input) otherwise, or
//! refused so it asks the server instead.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tracing::{debug, info, warn};

use super::chunking::Chunking;
use super::forward::{forward, forward_reader, forward_through};
use super::lane::Lane;
use super::ring::{Ring, RingReader};
use crate::auth::{self, Key};
use crate::connection::Connection;
use crate::net::wait_any;
use crate::protocol::Frame;

/// A child expected on the data port and the ring reader reserved for it.
pub struct ChildLink {
    pub node_id: u32,
    pub reader: RingReader,
}

/// Re-reads the stream from a byte offset when the ring no longer holds it.
pub type Fallback = Arc<dyn Fn(u64) -> Option<Box<dyn Read + Send>> + Send + Sync>;

/// The server's way to feed a child its ring no longer holds: a re-read of
/// the input, cut at the live stream's chunk boundaries.
pub struct Reread {
    pub open: Fallback,
    pub chunking: Arc<Chunking>,
}

/// How the relay to one child ended: bytes sent, or why not.
pub type ChildOutcome = (u32, Result<u64, String>);

/// A connection that sends nothing within this time is not a kacast node (or is
/// broken); it is dropped.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Relay {
    shared: Arc<Shared>,
    wake: UnixStream,
    acceptor: Option<JoinHandle<()>>,
}

/// What a relay needs to know besides its ring and children.
pub struct RelayConfig {
    pub session: String,
    /// The server's way to re-read its input; `None` on nodes.
    pub fallback: Option<Reread>,
    /// The session key: children must prove they hold it.
    pub key: Option<Key>,
    /// The producer's cut-through to the first child that connects for the
    /// live stream.
    pub lane: Arc<Lane>,
    /// The TCP congestion control to send to children with (see
    /// [`crate::net::set_congestion`]); `None` keeps the host's default.
    pub congestion: Option<String>,
}

struct Shared {
    session: String,
    key: Option<Key>,
    ring: Arc<Ring>,
    fallback: Option<Reread>,
    lane: Arc<Lane>,
    congestion: Option<String>,
    /// The congestion control could not be set: said once, not per child.
    congestion_warned: AtomicBool,
    state: Mutex<RelayState>,
    stop: AtomicBool,
}

#[derive(Default)]
struct RelayState {
    /// Reserved readers of assigned children that have not connected yet.
    pending: HashMap<u32, RingReader>,
    /// Sockets of children being served, to cut them off on `detach`.
    active: HashMap<u32, TcpStream>,
    /// Children detached by the server: refused if they come back.
    detached: Vec<u32>,
    /// Slow nodes fed on their own: never from the ring, which they would
    /// hold back, but from a re-read of the input.
    solo: Vec<u32>,
    threads: Vec<JoinHandle<Option<ChildOutcome>>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, RelayState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Relay {
    pub fn start(
        listener: TcpListener,
        ring: Arc<Ring>,
        children: Vec<ChildLink>,
        config: RelayConfig,
    ) -> std::io::Result<Relay> {
        let (woken, wake) = UnixStream::pair()?;
        let shared = Arc::new(Shared {
            session: config.session,
            ring,
            fallback: config.fallback,
            key: config.key,
            lane: config.lane,
            congestion: config.congestion,
            congestion_warned: AtomicBool::new(false),
            state: Mutex::new(RelayState {
                pending: children.into_iter().map(|c| (c.node_id, c.reader)).collect(),
                ..Default::default()
            }),
            stop: AtomicBool::new(false),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || accept_loop(listener, woken, shared))
        };
        Ok(Relay { shared, wake, acceptor: Some(acceptor) })
    }

    /// Stops serving `node_id` (dead, or done): its reserved reader is released
    /// and its connection cut, so it no longer holds back the others.
    pub fn detach(&self, node_id: u32) {
        let mut st = self.shared.lock();
        st.detached.push(node_id);
        if st.pending.remove(&node_id).is_some() {
            debug!("released the reserved stream of node {node_id}");
        }
        if let Some(s) = st.active.remove(&node_id) {
            info!("cutting off child node {node_id}");
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Serves `node_id` on its own from now on (see [`RelayState::solo`]).
    pub fn solo(&self, node_id: u32) {
        let mut st = self.shared.lock();
        st.detached.retain(|id| *id != node_id);
        st.solo.push(node_id);
    }

    /// Stops accepting and waits for the relays in progress; returns each
    /// child's outcome.
    pub fn stop(mut self) -> Vec<ChildOutcome> {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = (&self.wake).write(&[1]);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let threads = std::mem::take(&mut self.shared.lock().threads);
        let mut out: Vec<_> = threads.into_iter().filter_map(|h| h.join().ok().flatten()).collect();
        let pending: Vec<u32> = self.shared.lock().pending.drain().map(|(id, _)| id).collect();
        out.extend(pending.into_iter().map(|id| (id, Err("never connected for the stream".to_string()))));
        out
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = (&self.wake).write(&[1]);
    }
}

fn accept_loop(listener: TcpListener, mut woken: UnixStream, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        match wait_any(&[listener.as_raw_fd(), woken.as_raw_fd()], Duration::from_secs(3600)) {
            Some(0) => {}
            Some(_) => {
                let _ = woken.read(&mut [0u8; 64]);
                continue;
            }
            None => continue,
        }
        let Ok((stream, addr)) = listener.accept() else { continue };
        let s = Arc::clone(&shared);
        let handle = thread::spawn(move || {
            serve_child(stream, &s).map_err(|e| warn!("data connection from {addr}: {e}")).ok().flatten()
        });
        shared.lock().threads.push(handle);
    }
}

/// One child connection: handshake, then relay from its offset.
fn serve_child(stream: TcpStream, shared: &Shared) -> Result<Option<ChildOutcome>, String> {
    let mut conn = Connection::new(stream).map_err(|e| e.to_string())?;
    let _ = conn.set_read_timeout(Some(HELLO_TIMEOUT));
    let (node_id, offset, nonce) = match conn.read_frame() {
        Ok(Some(Frame::DataHello { session, node_id, offset, nonce })) if session == shared.session => {
            (node_id, offset, nonce)
        }
        Ok(Some(Frame::DataHello { session, .. })) => {
            return Err(format!("is for session '{session}', not '{}': dropped", shared.session))
        }
        Ok(Some(other)) => return Err(format!("unexpected {} frame: dropped", other.kind())),
        Ok(None) => return Ok(None),
        Err(e) => return Err(format!("{e}: dropped")),
    };
    auth::accept(&mut conn, shared.key.as_ref(), nonce)
        .map_err(|e| format!("node {node_id}: {e}: dropped"))?;
    let _ = conn.set_read_timeout(None);
    if let Some(cc) = &shared.congestion {
        if let Err(e) = crate::net::set_congestion(conn.stream(), cc) {
            if !shared.congestion_warned.swap(true, Ordering::Relaxed) {
                warn!("cannot send with TCP congestion control '{cc}' ({e}): keeping this host's default");
            }
        }
    }
    let mut writer = conn.writer().map_err(|e| e.to_string())?;
    let socket = conn.stream().try_clone().map_err(|e| e.to_string())?;
    let reader = {
        let mut st = shared.lock();
        if st.detached.contains(&node_id) {
            drop(st);
            let _ = writer.write_frame(&Frame::Refuse {
                reason: format!("node {node_id} was detached from this relay"),
            });
            return Ok(None);
        }
        st.active.insert(node_id, socket);
        let solo = st.solo.contains(&node_id);
        match st.pending.remove(&node_id) {
            // The assigned child, from the start: the lane may carry it.
            Some(r) if offset == 0 && !solo => Some((r, true)),
            reserved => {
                drop(reserved);
                drop(st);
                match (solo, &shared.fallback) {
                    // Re-read for it below: it must not hold back the ring.
                    (true, Some(_)) => None,
                    (true, None) => shared.ring.attach_weak_at(offset).map(|r| (r, false)),
                    (false, _) => shared.ring.attach_at(offset).map(|r| (r, false)),
                }
            }
        }
    };
    let result = match reader {
        Some((r, lendable)) => {
            debug!("child node {node_id} connected at offset {offset}");
            if lendable {
                forward_through(&shared.lane, r, writer)
            } else {
                forward(r, writer)
            }
        }
        None => match shared.fallback.as_ref().and_then(|f| Some((f, (f.open)(offset)?))) {
            Some((reread, input)) => {
                info!("node {node_id} resumes at offset {offset}, no longer buffered: re-reading the input");
                forward_reader(input, offset, &reread.chunking, &shared.ring, writer)
            }
            None => {
                let reason = format!("offset {offset} is no longer buffered here");
                debug!("node {node_id}: {reason}");
                let _ = writer.write_frame(&Frame::Refuse { reason: reason.clone() });
                Err(reason)
            }
        },
    };
    shared.lock().active.remove(&node_id);
    Ok(Some((node_id, result)))
}
