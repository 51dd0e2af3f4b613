//! The server's view of the session's nodes: who joined, where each sits in the
//! chain and how far each has got, kept up to date by each node's control
//! connection. The repairs live in [`super::repair`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::repair::{declare_dead, detach_at_parent, remove_from_chain};
use super::report::NodeResult;
use super::stats::Stats;
use super::status::StatusBoard;
use crate::auth::{self, Key};
use crate::chain::Relay;
use crate::connection::{Connection, FrameWriter};
use crate::error::{Error, IoContext, Result};
use crate::protocol::{Frame, Hello, Report, Role};

/// How long a new control connection may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A control write that blocks this long means the node is not reading: it
/// never holds up the server longer than this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct Lobby {
    pub state: Mutex<LobbyState>,
    pub changed: Condvar,
    pub session: String,
    pub stats: Arc<Stats>,
    pub timeout: Duration,
    pub key: Option<Key>,
    /// `--slow-after`: how long a node may be much slower than the rest before
    /// it is fed on its own; `None` never.
    pub slow_after: Option<Duration>,
    /// The install's status board, when nodes' status is kept.
    pub status: Option<Arc<StatusBoard>>,
}

#[derive(Default)]
pub(crate) struct LobbyState {
    pub members: Vec<Member>,
    next_id: u32,
    pub go: bool,
    pub started: bool,
    pub started_at: Option<Instant>,
    pub results: HashMap<u32, NodeResult>,
    /// Nodes that reported before the start instead of taking a place in the
    /// chain: a node that cannot use this stream (its disk failed to format, it
    /// refused the plan) or that only reports the end of its install. They count
    /// towards `-n`, so the server does not wait for them.
    pub withdrawn: Vec<NodeResult>,
    /// The server's own relay (chain position 0), once streaming.
    pub relay: Option<Arc<Relay>>,
    pub data_port: u16,
}

pub(crate) struct Member {
    pub id: u32,
    pub name: String,
    /// The node's data address (its IP as we see it, the port it announced).
    pub data: SocketAddr,
    /// Our own address on this node's control connection: where it reaches us.
    pub server_ip: IpAddr,
    pub writer: FrameWriter,
    /// 1-based chain position once started (0 before).
    pub pos: usize,
    /// Position of the current upstream (0: the server).
    pub parent: usize,
    /// No longer relays: declared dead, or failed to receive the stream.
    pub dead: bool,
    pub received: u64,
    pub written: u64,
    /// Since when its upstream has had data it has not taken (reset whenever
    /// it takes some): a starved node is not a stalled one.
    pub behind_since: Option<Instant>,
    /// Since when its sink has had data waiting without taking any.
    pub sink_behind_since: Option<Instant>,
    /// Last frame from the node: a silent node is judged by the heartbeat
    /// timeout, not by the stall rules.
    pub heard_at: Instant,
    /// Moving average of the fraction of time its sink is busy (not waiting).
    pub busy: f64,
    pub last_beat: Option<(Instant, u64)>,
    /// Since when it has looked much slower than the rest.
    pub slow_since: Option<Instant>,
    /// Taken out of the chain for slowness: fed by the server alone.
    pub solo: bool,
}

impl Lobby {
    pub fn lock(&self) -> MutexGuard<'_, LobbyState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn wait_timeout<'a>(
        &self,
        st: MutexGuard<'a, LobbyState>,
        t: Duration,
    ) -> MutexGuard<'a, LobbyState> {
        self.changed.wait_timeout(st, t).unwrap_or_else(|p| p.into_inner()).0
    }
}

impl LobbyState {
    pub fn index_of(&self, id: u32) -> Option<usize> {
        self.members.iter().position(|m| m.id == id)
    }

    pub fn at_pos(&self, pos: usize) -> Option<usize> {
        self.members.iter().position(|m| m.pos == pos)
    }

    /// Where member `i` gets the stream from: its parent node, or the server.
    pub fn upstream_of(&self, i: usize) -> SocketAddr {
        let m = &self.members[i];
        match self.at_pos(m.parent) {
            // A parent on the server's own host may have joined over loopback:
            // a child elsewhere reaches it where it reaches the server.
            Some(p) if m.parent != 0 => {
                let parent = self.members[p].data;
                if parent.ip().is_loopback() && !m.server_ip.is_loopback() {
                    SocketAddr::new(m.server_ip, parent.port())
                } else {
                    parent
                }
            }
            _ => SocketAddr::new(m.server_ip, self.data_port),
        }
    }

    /// Bytes the upstream of member `i` has: what it can offer.
    pub fn upstream_has(&self, i: usize, sent: u64) -> u64 {
        match self.at_pos(self.members[i].parent) {
            Some(p) if self.members[i].parent != 0 => self.members[p].received,
            _ => sent,
        }
    }

    /// Members whose upstream is chain position `pos` (0: the server) and that
    /// still relay, in chain order. The tree lives in each member's `parent`.
    pub fn children_of(&self, pos: usize) -> Vec<usize> {
        let mut children: Vec<usize> = (0..self.members.len())
            .filter(|&c| {
                let m = &self.members[c];
                m.parent == pos && m.pos > 0 && !m.dead
            })
            .collect();
        children.sort_by_key(|&c| self.members[c].pos);
        children
    }

    /// Placed in the chain, alive, and not yet reported: still receiving.
    pub fn in_stream(&self, m: &Member) -> bool {
        m.pos > 0 && !m.dead && !self.results.contains_key(&m.id)
    }

    pub fn all_reported(&self) -> bool {
        self.results.len() >= self.members.iter().filter(|m| m.pos > 0).count()
    }
}

/// One control connection, from hello to the end of the session.
pub(crate) fn serve_control(stream: TcpStream, lobby: &Lobby) -> Result<()> {
    let mut conn = Connection::new(stream)?;
    conn.set_read_timeout(Some(HELLO_TIMEOUT))?;
    let hello = match conn.read_frame() {
        Ok(Some(Frame::Hello(h))) => h,
        Ok(Some(other)) => {
            let e = conn.unexpected(&other, "instead of a hello");
            let _ = conn.write_frame(&Frame::Refuse { reason: e.to_string() });
            return Err(e);
        }
        Ok(None) => return Ok(()),
        Err(e) => {
            // Tell a kacast peer of another version why; garbage gets the same line.
            let _ = conn.write_frame(&Frame::Refuse { reason: e.to_string() });
            return Err(e);
        }
    };
    let Hello { session, name, role, data_port, nonce } = hello;
    if role == Role::Status {
        return serve_status(conn, lobby, &session, &name, nonce);
    }
    if session != lobby.session {
        let reason = crate::protocol::other_session(&lobby.session, &session);
        let _ = conn.write_frame(&Frame::Refuse { reason: reason.clone() });
        // A node early for the next session of an install: it will try again.
        debug!("node '{name}' refused: {reason}");
        return Ok(());
    }
    auth::accept(&mut conn, lobby.key.as_ref(), nonce)?;
    if role == Role::Go {
        let mut st = lobby.lock();
        st.go = true;
        if st.members.is_empty() {
            warn!("'go' received with no node joined yet: starting as soon as one joins");
        } else {
            info!("'go' received: starting with {} nodes", st.members.len());
        }
        drop(st);
        lobby.changed.notify_all();
        conn.write_frame(&Frame::Welcome { node_id: 0 })?;
        return Ok(());
    }
    if role == Role::Report {
        return report_only(&mut conn, lobby, &name);
    }
    let id = join(&mut conn, lobby, name.clone(), data_port)?;
    lobby.changed.notify_all();
    conn.set_read_timeout(Some(lobby.timeout))?;
    let outcome = loop {
        match conn.read_frame() {
            Ok(Some(Frame::Progress { received, written, idle_ms })) => {
                heard(lobby, id, received, written, idle_ms)
            }
            Ok(Some(Frame::Report(r))) => break Ok(r),
            Ok(Some(other)) => break Err(conn.unexpected(&other, "during the session").to_string()),
            Ok(None) => break Err("its control connection closed before its report".to_string()),
            Err(e) if e.is_timeout() => {
                break Err(format!("silent for {}s (no heartbeat)", lobby.timeout.as_secs_f64()))
            }
            Err(e) => break Err(format!("control connection lost: {e}")),
        }
    };
    let mut st = lobby.lock();
    if !st.started {
        st.members.retain(|m| m.id != id);
        lobby.stats.joined.store(st.members.len(), Ordering::Relaxed);
        let why = outcome.err().unwrap_or_else(|| "it reported before the start".into());
        info!("node '{name}' left before the start: {why}");
        return Ok(());
    }
    match outcome {
        Ok(report) => reported(&mut st, lobby, id, report),
        Err(why) => declare_dead(&mut st, lobby, id, why),
    }
    drop(st);
    lobby.changed.notify_all();
    // Stay connected: the node keeps relaying until the server says bye. Its
    // next frame (or end) needs no answer.
    let _ = conn.set_read_timeout(None);
    let _ = conn.read_frame();
    Ok(())
}

/// A node's status connection: handed to the install's status board, where
/// it lives on after this session.
fn serve_status(
    mut conn: Connection,
    lobby: &Lobby,
    install: &str,
    name: &str,
    nonce: Option<[u8; crate::protocol::NONCE_LEN]>,
) -> Result<()> {
    let Some(board) = lobby.status.as_ref().filter(|b| b.install() == install) else {
        let reason = format!("no status kept here for install '{install}'");
        let _ = conn.write_frame(&Frame::Refuse { reason: reason.clone() });
        debug!("node '{name}': {reason}");
        return Ok(());
    };
    auth::accept(&mut conn, lobby.key.as_ref(), nonce)?;
    conn.write_frame(&Frame::Welcome { node_id: 0 })?;
    board.serve(conn, name);
    Ok(())
}

/// A node that reports its result for this session without taking part in
/// the stream (see [`LobbyState::withdrawn`]).
fn report_only(conn: &mut Connection, lobby: &Lobby, name: &str) -> Result<()> {
    {
        let st = lobby.lock();
        if st.members.iter().any(|m| m.name == name) || st.withdrawn.iter().any(|w| w.name == name) {
            let reason = format!("a node named '{name}' has already joined session '{}'", lobby.session);
            let _ = conn.write_frame(&Frame::Refuse { reason: reason.clone() });
            return Err(Error::Refused(reason));
        }
    }
    conn.write_frame(&Frame::Welcome { node_id: 0 })?;
    conn.set_read_timeout(Some(lobby.timeout))?;
    let report = match conn.read_frame()? {
        Some(Frame::Report(r)) => r,
        Some(other) => return Err(conn.unexpected(&other, "instead of its report")),
        None => return Err(Error::Aborted(format!("node '{name}' left before its report"))),
    };
    let mut st = lobby.lock();
    withdraw(&mut st, name, conn.peer_addr().ok(), report);
    drop(st);
    lobby.changed.notify_all();
    Ok(())
}

fn withdraw(st: &mut LobbyState, name: &str, peer: Option<SocketAddr>, r: Report) {
    match &r.error {
        Some(why) => warn!("node '{name}' withdrew: {why}"),
        None => info!("node '{name}' reported without taking part in the stream"),
    }
    st.withdrawn.push(NodeResult {
        name: name.to_string(),
        address: peer.map(|a| a.ip().to_string()).unwrap_or_default(),
        position: 0,
        bytes: r.bytes,
        hash_ok: r.hash_ok,
        sink_status: r.sink_status,
        duration_s: r.duration_ms as f64 / 1000.0,
        error: r.error,
    });
}

fn join(conn: &mut Connection, lobby: &Lobby, name: String, data_port: u16) -> Result<u32> {
    let peer = conn.peer_addr().context(|| "peer address".into())?;
    let server_ip = conn.local_addr().context(|| "local address".into())?.ip();
    conn.stream().set_write_timeout(Some(WRITE_TIMEOUT)).context(|| "set write timeout".into())?;
    let mut st = lobby.lock();
    let refuse = if st.started {
        Some(format!("session '{}' has already started; late nodes are refused", lobby.session))
    } else if st.members.iter().any(|m| m.name == name) || st.withdrawn.iter().any(|w| w.name == name) {
        Some(format!("a node named '{name}' has already joined session '{}' (use --name)", lobby.session))
    } else {
        None
    };
    if let Some(reason) = refuse {
        drop(st);
        let _ = conn.write_frame(&Frame::Refuse { reason: reason.clone() });
        return Err(Error::Refused(reason));
    }
    st.next_id += 1;
    let id = st.next_id;
    conn.write_frame(&Frame::Welcome { node_id: id })?;
    let now = Instant::now();
    st.members.push(Member {
        id,
        name: name.clone(),
        data: SocketAddr::new(peer.ip(), data_port),
        server_ip,
        writer: conn.writer()?,
        pos: 0,
        parent: 0,
        dead: false,
        received: 0,
        written: 0,
        behind_since: None,
        sink_behind_since: None,
        heard_at: now,
        busy: 0.0,
        last_beat: None,
        slow_since: None,
        solo: false,
    });
    lobby.stats.joined.store(st.members.len(), Ordering::Relaxed);
    info!("node '{name}' joined from {} ({} joined)", peer.ip(), st.members.len());
    Ok(id)
}

fn heard(lobby: &Lobby, id: u32, received: u64, written: u64, idle_ms: u64) {
    let mut st = lobby.lock();
    let Some(i) = st.index_of(id) else { return };
    let now = Instant::now();
    let m = &mut st.members[i];
    if let Some((at, idle)) = m.last_beat {
        let span = now.duration_since(at).as_millis() as f64;
        if span > 0.0 {
            let busy = (1.0 - idle_ms.saturating_sub(idle) as f64 / span).clamp(0.0, 1.0);
            // About a second of memory (4 beats); `--slow-after` then asks that
            // the node stay saturated, so one slow write is not a slow node.
            m.busy = m.busy * 0.75 + busy * 0.25;
        }
    }
    m.last_beat = Some((now, idle_ms));
    m.heard_at = now;
    if received != m.received {
        m.received = received;
        m.behind_since = None;
    }
    if written != m.written {
        m.written = written;
        m.sink_behind_since = None;
    }
    if m.written < m.received {
        m.sink_behind_since.get_or_insert(now);
    } else {
        m.sink_behind_since = None;
    }
    let slowest = st.members.iter().filter(|m| st.in_stream(m)).map(|m| m.received).min();
    lobby.stats.slowest.store(slowest.unwrap_or(0), Ordering::Relaxed);
}

/// A node's own report. A node whose stream did not arrive whole stops relaying:
/// its children move up like a dead node's.
fn reported(st: &mut LobbyState, lobby: &Lobby, id: u32, r: Report) {
    let whole = r.hash_ok;
    record(st, &lobby.stats, id, r);
    if whole {
        detach_at_parent(st, id);
    } else {
        remove_from_chain(st, id);
    }
}

pub(crate) fn record(st: &mut LobbyState, stats: &Stats, id: u32, r: Report) {
    if st.results.contains_key(&id) {
        return;
    }
    let Some(i) = st.index_of(id) else { return };
    let m = &st.members[i];
    let result = NodeResult {
        name: m.name.clone(),
        address: m.data.to_string(),
        position: m.pos,
        bytes: r.bytes,
        hash_ok: r.hash_ok,
        sink_status: r.sink_status,
        duration_s: r.duration_ms as f64 / 1000.0,
        error: r.error,
    };
    if result.ok() {
        stats.done.fetch_add(1, Ordering::Relaxed);
        info!("node '{}' done: {} bytes verified", result.name, result.bytes);
    } else {
        stats.failed.fetch_add(1, Ordering::Relaxed);
        warn!("node '{}' failed: {}", result.name, result.error.as_deref().unwrap_or("hash mismatch"));
    }
    st.results.insert(id, result);
}

/// The server's heartbeat to every node, so nodes notice a dead server. A node
/// that cannot take even this is dead once the session has started.
pub(crate) fn heartbeat(st: &mut LobbyState, lobby: &Lobby) {
    let sent = lobby.stats.sent.load(Ordering::Relaxed);
    let mut failed = Vec::new();
    for m in st.members.iter_mut().filter(|m| !m.dead) {
        if let Err(e) = m.writer.write_frame(&Frame::Progress { received: sent, written: 0, idle_ms: 0 }) {
            failed.push((m.id, format!("cannot reach it on its control connection: {e}")));
        }
    }
    if st.started {
        for (id, why) in failed {
            declare_dead(st, lobby, id, why);
        }
    }
}
