//! The golden node's side of a session: rendezvous, chain order, streaming, report.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::discovery::DiscoveryResponder;
use super::order::{arrange, read_node_file, tree_parent, Candidate, Order};
use super::report::{secs, NodeResult, SessionReport};
use super::stats::Stats;
use crate::chain::{accept_children, pump, ChildLink, Ring, CHUNK_SIZE, DEFAULT_BUFFER};
use crate::connection::{Connection, FrameWriter};
use crate::error::{Error, IoContext, Result};
use crate::net::wait_readable;
use crate::protocol::{
    validate_session, Assign, Frame, Hello, Report, Role, DEFAULT_CONTROL_PORT, DISCOVERY_PORT,
};

/// Where the stream comes from.
pub enum Input {
    /// `-e CMD`: a shell command's stdout; a non-zero exit fails the stream.
    Command(String),
    /// `-i FILE`: a file or block device, whose size gives the progress bar an ETA.
    File(PathBuf),
    /// `-i -`
    Stdin,
    /// Any reader, for programs embedding the server.
    Reader(Box<dyn Read + Send>),
    /// A reader whose length is known, so progress can show an ETA.
    Sized(Box<dyn Read + Send>, u64),
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub session: String,
    /// `-n`: start as soon as this many nodes have joined.
    pub nodes: Option<usize>,
    /// `--min`: fewest nodes `--start-after` starts with.
    pub min_nodes: usize,
    /// `--start-after`: start this long after the server came up, given `--min` nodes.
    pub start_after: Option<Duration>,
    pub order: Order,
    /// `--arity`: children per node, 1 (a chain, best in practice) to 4.
    pub arity: usize,
    /// `--buffer`: bytes of stream held per process; bounds memory.
    pub buffer: usize,
    pub chunk_size: usize,
    pub bind: IpAddr,
    /// `None`: the well-known port when free, else any free port.
    pub control_port: Option<u16>,
    /// `None`: no discovery responder (nodes must be given `--server`).
    pub discovery_port: Option<u16>,
    /// How long a child may take to connect for the stream once told where.
    pub link_timeout: Duration,
}

impl ServerConfig {
    pub fn new(session: impl Into<String>) -> ServerConfig {
        ServerConfig {
            session: session.into(),
            nodes: None,
            min_nodes: 1,
            start_after: None,
            order: Order::Ip,
            arity: 1,
            buffer: DEFAULT_BUFFER,
            chunk_size: CHUNK_SIZE,
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            control_port: None,
            discovery_port: Some(DISCOVERY_PORT),
            link_timeout: Duration::from_secs(60),
        }
    }

    fn validate(&self) -> Result<()> {
        validate_session(&self.session).map_err(|e| Error::Config(e.to_string()))?;
        if !(1..=4).contains(&self.arity) {
            return Err(Error::Config(format!(
                "--arity must be 1 to 4, not {}",
                self.arity
            )));
        }
        if self.nodes == Some(0) || self.min_nodes == 0 {
            return Err(Error::Config("-n and --min need at least 1 node".into()));
        }
        if self.chunk_size == 0 || self.chunk_size > crate::protocol::MAX_DATA_PAYLOAD as usize {
            return Err(Error::Config(format!(
                "chunk size {} is out of range",
                self.chunk_size
            )));
        }
        if self.buffer < self.chunk_size {
            return Err(Error::Config(format!(
                "--buffer {} is smaller than one chunk ({} bytes)",
                self.buffer, self.chunk_size
            )));
        }
        Ok(())
    }
}

pub struct Server {
    config: ServerConfig,
    listed: Vec<String>,
    control: TcpListener,
    data: TcpListener,
    discovery: Option<DiscoveryResponder>,
    stats: Arc<Stats>,
    lobby: Arc<Lobby>,
}

struct Lobby {
    state: Mutex<LobbyState>,
    changed: Condvar,
}

#[derive(Default)]
struct LobbyState {
    members: Vec<Member>,
    next_id: u32,
    go: bool,
    started: bool,
    results: HashMap<u32, NodeResult>,
    progress: HashMap<u32, u64>,
    /// Chain position and address per node id, known from the start on.
    places: HashMap<u32, (usize, String)>,
    started_at: Option<Instant>,
}

struct Member {
    id: u32,
    name: String,
    /// The node's data address (its IP as we see it, the port it announced).
    data: SocketAddr,
    /// Our own address on this node's control connection: where it reaches us.
    server_ip: IpAddr,
    writer: FrameWriter,
}

impl Lobby {
    fn lock(&self) -> MutexGuard<'_, LobbyState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Server {
    /// Binds the control, data and discovery sockets, so that the addresses are
    /// known (and fixed) before any node is started.
    pub fn bind(config: ServerConfig) -> Result<Server> {
        config.validate()?;
        let listed = match &config.order {
            Order::File(path) => read_node_file(path)?,
            _ => Vec::new(),
        };
        let control = match config.control_port {
            Some(port) => TcpListener::bind((config.bind, port)).map_err(|e| {
                Error::Config(format!(
                    "cannot listen on control port {port}: {e} (another kacast session?)"
                ))
            })?,
            None => match TcpListener::bind((config.bind, DEFAULT_CONTROL_PORT)) {
                Ok(l) => l,
                Err(e) => {
                    let l = TcpListener::bind((config.bind, 0))
                        .context(|| "bind control port".into())?;
                    info!(
                        "control port {DEFAULT_CONTROL_PORT} is busy ({e}), probably another session: using port {}",
                        l.local_addr().map(|a| a.port()).unwrap_or(0)
                    );
                    l
                }
            },
        };
        let data = TcpListener::bind((config.bind, 0)).context(|| "bind data port".into())?;
        let control_port = control
            .local_addr()
            .context(|| "control address".into())?
            .port();
        let discovery = match config.discovery_port {
            Some(port) => match DiscoveryResponder::start(&config.session, port, control_port) {
                Ok(d) => Some(d),
                Err(e) => {
                    warn!("discovery disabled ({e}): nodes need --server HOST:{control_port}");
                    None
                }
            },
            None => None,
        };
        Ok(Server {
            config,
            listed,
            control,
            data,
            discovery,
            stats: Arc::new(Stats::default()),
            lobby: Arc::new(Lobby {
                state: Mutex::new(LobbyState::default()),
                changed: Condvar::new(),
            }),
        })
    }

    pub fn control_addr(&self) -> SocketAddr {
        self.control
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn session(&self) -> &str {
        &self.config.session
    }

    /// Live counters for a progress display.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// Runs the session to its end: waits for the nodes, streams `input` through
    /// the chain and collects every node's report.
    pub fn run(self, input: Input) -> Result<SessionReport> {
        let (reader, total) = open_input(input)?;
        self.stats
            .total
            .store(total.unwrap_or(0), Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let control = self
                .control
                .try_clone()
                .context(|| "clone control listener".into())?;
            let (lobby, stats, stop) = (
                Arc::clone(&self.lobby),
                Arc::clone(&self.stats),
                Arc::clone(&stop),
            );
            let session = self.config.session.clone();
            thread::spawn(move || accept_control(control, session, lobby, stats, stop))
        };
        info!(
            "session '{}' waiting for {} on control port {}",
            self.config.session,
            match self.config.nodes {
                Some(n) => format!("{n} nodes"),
                None => "nodes".into(),
            },
            self.control_addr().port()
        );
        let result = self.stream(reader, total);
        stop.store(true, Ordering::Relaxed);
        let _ = acceptor.join();
        drop(self.discovery);
        result
    }

    fn wait_for_start(&self) -> MutexGuard<'_, LobbyState> {
        let up = Instant::now();
        let mut st = self.lobby.lock();
        loop {
            let joined = st.members.len();
            let enough = self.config.nodes.is_some_and(|n| joined >= n);
            let go = st.go && joined >= 1;
            let timer = self
                .config
                .start_after
                .is_some_and(|t| up.elapsed() >= t && joined >= self.config.min_nodes);
            if enough || go || timer {
                return st;
            }
            st = match self.config.start_after {
                Some(t) if up.elapsed() < t => {
                    self.lobby
                        .changed
                        .wait_timeout(st, t - up.elapsed())
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                _ => self
                    .lobby
                    .changed
                    .wait(st)
                    .unwrap_or_else(|p| p.into_inner()),
            };
        }
    }

    fn stream(&self, input: Box<dyn Read + Send>, total: Option<u64>) -> Result<SessionReport> {
        let mut st = self.wait_for_start();
        st.started = true;
        let started_at = Instant::now();
        st.started_at = Some(started_at);
        let candidates: Vec<Candidate> = st
            .members
            .iter()
            .map(|m| Candidate {
                name: m.name.clone(),
                ip: m.data.ip(),
                port: m.data.port(),
            })
            .collect();
        let (order, unlisted) = arrange(&candidates, &self.config.order, &self.listed);
        if !unlisted.is_empty() {
            warn!(
                "nodes not in the node file go last: {}",
                unlisted.join(", ")
            );
        }
        let n = order.len();
        let arity = self.config.arity;
        let data_port = self
            .data
            .local_addr()
            .context(|| "data address".into())?
            .port();
        let children_of = |pos: usize| -> Vec<usize> {
            (pos * arity + 1..=pos * arity + arity)
                .filter(|c| *c <= n)
                .collect()
        };
        let ids: Vec<u32> = order.iter().map(|&i| st.members[i].id).collect();
        let id_at = |pos: usize| ids[pos - 1];
        let mut assigns = Vec::new();
        for pos in 1..=n {
            let m = &st.members[order[pos - 1]];
            let parent = tree_parent(pos, arity);
            let upstream = match parent {
                0 => SocketAddr::new(m.server_ip, data_port),
                p => st.members[order[p - 1]].data,
            };
            let children = children_of(pos).into_iter().map(id_at).collect();
            assigns.push((
                m.id,
                Assign {
                    index: pos as u32,
                    total: n as u32,
                    upstream,
                    children,
                    stream_len: total,
                },
            ));
        }
        let places: HashMap<u32, (usize, String)> = order
            .iter()
            .enumerate()
            .map(|(i, &m)| (st.members[m].id, (i + 1, st.members[m].data.to_string())))
            .collect();
        st.places = places;
        let chain: Vec<String> = order.iter().map(|&i| st.members[i].name.clone()).collect();
        info!(
            "session '{}' starting with {n} nodes: {}",
            self.config.session,
            chain.join(" -> ")
        );
        self.stats.nodes.store(n, Ordering::Relaxed);
        self.stats.started.store(true, Ordering::Relaxed);
        let mut failed_sends = Vec::new();
        for (id, assign) in assigns {
            let m = st
                .members
                .iter_mut()
                .find(|m| m.id == id)
                .expect("member exists");
            if let Err(e) = m.writer.write_frame(&Frame::Assign(assign)) {
                failed_sends.push((id, format!("could not be told its place in the chain: {e}")));
            }
        }
        for (id, why) in failed_sends {
            record_failure(&mut st, &self.stats, id, why);
        }
        let server_children: Vec<u32> = children_of(0).into_iter().map(id_at).collect();
        drop(st);
        self.lobby.changed.notify_all();

        let ring = Ring::new(self.config.buffer, server_children.len());
        let links: Vec<ChildLink> = server_children
            .iter()
            .enumerate()
            .map(|(i, id)| ChildLink {
                node_id: *id,
                reader: ring.reader(i),
            })
            .collect();
        let data = self
            .data
            .try_clone()
            .context(|| "clone data listener".into())?;
        let (session, link_timeout) = (self.config.session.clone(), self.config.link_timeout);
        let relay = thread::spawn(move || accept_children(&data, &session, links, link_timeout));
        let source = {
            let (ring, stats, chunk) = (
                Arc::clone(&ring),
                Arc::clone(&self.stats),
                self.config.chunk_size,
            );
            thread::spawn(move || {
                let r = pump(input, &ring, chunk, &stats.sent);
                (r, Instant::now())
            })
        };
        let (source_result, source_done) = source
            .join()
            .unwrap_or_else(|_| (Err("source thread panicked".into()), Instant::now()));
        if let Err(e) = &source_result {
            warn!("{e}");
        }
        for (id, r) in relay.join().unwrap_or_default() {
            if let Err(e) = r {
                debug!("relay to node {id} ended: {e}");
            }
        }
        let mut st = self.lobby.lock();
        while st.results.len() < n {
            st = self
                .lobby
                .changed
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
        let last_report = Instant::now();
        let mut nodes: Vec<NodeResult> = st.results.values().cloned().collect();
        nodes.sort_by_key(|r| r.position);
        let (bytes, hash, source_error) = match source_result {
            Ok(end) => (
                end.length,
                Some(blake3::Hash::from(end.hash).to_hex().to_string()),
                None,
            ),
            Err(e) => (self.stats.sent.load(Ordering::Relaxed), None, Some(e)),
        };
        Ok(SessionReport {
            session: self.config.session.clone(),
            bytes,
            hash,
            source_error,
            transfer_s: secs(source_done - started_at),
            pipeline_emptied_s: secs(last_report.saturating_duration_since(source_done)),
            nodes,
        })
    }
}

fn open_input(input: Input) -> Result<(Box<dyn Read + Send>, Option<u64>)> {
    Ok(match input {
        Input::Command(cmd) => {
            let mut child = Command::new("sh")
                .arg("-c")
                .arg(&cmd)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .context(|| format!("start input command `{cmd}`"))?;
            let stdout = child.stdout.take().expect("stdout was piped");
            (
                Box::new(CommandOutput {
                    child,
                    stdout,
                    cmd,
                    waited: false,
                }),
                None,
            )
        }
        Input::File(path) => {
            let f = File::open(&path).context(|| format!("open input {}", path.display()))?;
            let len = f.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
            (Box::new(f), len)
        }
        Input::Stdin => (Box::new(io::stdin()), None),
        Input::Reader(r) => (r, None),
        Input::Sized(r, len) => (r, Some(len)),
    })
}

/// A command's stdout whose end is only an end when the command succeeded: a
/// `tar` that fails half-way must fail the stream, not look like a short image.
struct CommandOutput {
    child: Child,
    stdout: ChildStdout,
    cmd: String,
    waited: bool,
}

impl Read for CommandOutput {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stdout.read(buf)?;
        if n == 0 && !self.waited {
            self.waited = true;
            let status = self.child.wait()?;
            if !status.success() {
                return Err(io::Error::other(format!(
                    "input command `{}` failed ({status})",
                    self.cmd
                )));
            }
        }
        Ok(n)
    }
}

impl Drop for CommandOutput {
    fn drop(&mut self) {
        if !self.waited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How long a new control connection may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the acceptor checks whether the session is over.
const STOP_CHECK: Duration = Duration::from_millis(200);

fn accept_control(
    listener: TcpListener,
    session: String,
    lobby: Arc<Lobby>,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        if !wait_readable(listener.as_raw_fd(), STOP_CHECK) {
            continue;
        }
        let Ok((stream, addr)) = listener.accept() else {
            continue;
        };
        let (session, lobby, stats) = (session.clone(), Arc::clone(&lobby), Arc::clone(&stats));
        thread::spawn(move || {
            if let Err(e) = serve_control(stream, &session, &lobby, &stats) {
                warn!("control connection from {addr}: {e}");
            }
        });
    }
}

/// One control connection, from hello to report.
fn serve_control(stream: TcpStream, session: &str, lobby: &Lobby, stats: &Stats) -> Result<()> {
    let mut conn = Connection::new(stream)?;
    conn.set_read_timeout(Some(HELLO_TIMEOUT))?;
    let hello = match conn.read_frame() {
        Ok(Some(Frame::Hello(h))) => h,
        Ok(Some(other)) => {
            let e = conn.unexpected(&other, "instead of a hello");
            let _ = conn.write_frame(&Frame::Refuse {
                reason: e.to_string(),
            });
            return Err(e);
        }
        Ok(None) => return Ok(()),
        Err(e) => {
            // Tell a kacast peer of another version why; garbage gets the same line.
            let _ = conn.write_frame(&Frame::Refuse {
                reason: e.to_string(),
            });
            return Err(e);
        }
    };
    let Hello {
        session: theirs,
        name,
        role,
        data_port,
    } = hello;
    if theirs != session {
        let reason = format!("this server runs session '{session}', not '{theirs}'");
        let _ = conn.write_frame(&Frame::Refuse {
            reason: reason.clone(),
        });
        return Err(Error::Refused(reason));
    }
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
    let peer = conn.peer_addr().context(|| "peer address".into())?;
    let server_ip = conn.local_addr().context(|| "local address".into())?.ip();
    let id = {
        let mut st = lobby.lock();
        let refuse = if st.started {
            Some(format!(
                "session '{session}' has already started; late nodes are refused"
            ))
        } else if st.members.iter().any(|m| m.name == name) {
            Some(format!(
                "a node named '{name}' has already joined session '{session}' (use --name)"
            ))
        } else {
            None
        };
        if let Some(reason) = refuse {
            drop(st);
            let _ = conn.write_frame(&Frame::Refuse {
                reason: reason.clone(),
            });
            return Err(Error::Refused(reason));
        }
        st.next_id += 1;
        let id = st.next_id;
        conn.write_frame(&Frame::Welcome { node_id: id })?;
        st.members.push(Member {
            id,
            name: name.clone(),
            data: SocketAddr::new(peer.ip(), data_port),
            server_ip,
            writer: conn.writer()?,
        });
        stats.joined.store(st.members.len(), Ordering::Relaxed);
        info!(
            "node '{name}' joined from {} ({} joined)",
            peer.ip(),
            st.members.len()
        );
        id
    };
    lobby.changed.notify_all();
    conn.set_read_timeout(None)?;
    let outcome = loop {
        match conn.read_frame() {
            Ok(Some(Frame::Progress { bytes })) => {
                let mut st = lobby.lock();
                st.progress.insert(id, bytes);
                let done: Vec<u32> = st.results.keys().copied().collect();
                let slowest = st
                    .progress
                    .iter()
                    .filter(|(k, _)| !done.contains(k))
                    .map(|(_, v)| *v)
                    .min();
                stats.slowest.store(slowest.unwrap_or(0), Ordering::Relaxed);
            }
            Ok(Some(Frame::Report(r))) => break Ok(r),
            Ok(Some(other)) => {
                break Err(conn.unexpected(&other, "during the session").to_string())
            }
            Ok(None) => break Err("control connection closed before its report".to_string()),
            Err(e) => break Err(format!("control connection lost: {e}")),
        }
    };
    let mut st = lobby.lock();
    if !st.started {
        st.members.retain(|m| m.id != id);
        stats.joined.store(st.members.len(), Ordering::Relaxed);
        info!("node '{name}' left before the start");
        return Ok(());
    }
    match outcome {
        Ok(report) => {
            record(&mut st, stats, id, report);
            drop(st);
            let _ = conn.write_frame(&Frame::Bye);
        }
        Err(why) => record_failure(&mut st, stats, id, why),
    }
    lobby.changed.notify_all();
    Ok(())
}

fn record(st: &mut LobbyState, stats: &Stats, id: u32, r: Report) {
    if st.results.contains_key(&id) {
        return;
    }
    let Some(name) = st
        .members
        .iter()
        .find(|m| m.id == id)
        .map(|m| m.name.clone())
    else {
        return;
    };
    let (position, address) = st.places.get(&id).cloned().unwrap_or((0, String::new()));
    let result = NodeResult {
        name,
        address,
        position,
        bytes: r.bytes,
        hash_ok: r.hash_ok,
        sink_status: r.sink_status,
        duration_s: r.duration_ms as f64 / 1000.0,
        error: r.error,
    };
    if result.ok() {
        stats.done.fetch_add(1, Ordering::Relaxed);
        info!(
            "node '{}' done: {} bytes verified",
            result.name, result.bytes
        );
    } else {
        stats.failed.fetch_add(1, Ordering::Relaxed);
        warn!(
            "node '{}' failed: {}",
            result.name,
            result.error.as_deref().unwrap_or("hash mismatch")
        );
    }
    st.results.insert(id, result);
}

fn record_failure(st: &mut LobbyState, stats: &Stats, id: u32, why: String) {
    let bytes = st.progress.get(&id).copied().unwrap_or(0);
    let duration_ms = st
        .started_at
        .map(|t| t.elapsed().as_millis() as u64)
        .unwrap_or(0);
    record(
        st,
        stats,
        id,
        Report {
            bytes,
            hash_ok: false,
            sink_status: None,
            duration_ms,
            error: Some(why),
        },
    );
}
