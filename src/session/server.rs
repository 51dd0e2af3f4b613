//! The golden node's side of a session: rendezvous, chain order, streaming,
//! failure repair and the report.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::client::{DEFAULT_TIMEOUT, HEARTBEAT};
use super::discovery::DiscoveryResponder;
use super::input::{open_input, Input};
use super::lobby::{heartbeat, serve_control, Lobby, LobbyState};
use super::order::{arrange, read_node_file, tree_parent, Candidate, Order};
use super::repair::{check_slow, check_stalls, declare_dead};
use super::report::{secs, NodeResult, SessionReport};
use super::stats::Stats;
use super::status::StatusBoard;
use crate::auth::Key;
use crate::chain::{
    pump, seal, ChildLink, ChunkSize, Chunking, Lane, Relay, RelayConfig, Reread, Ring, DEFAULT_BUFFER,
};
use crate::error::{Error, IoContext, Result};
use crate::net::wait_any;
use crate::protocol::{
    validate_session, Assign, Frame, DEFAULT_CONTROL_PORT, DISCOVERY_PORT, MAX_CONGESTION,
};

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
    /// `--chunk`: how the stream is cut into data frames.
    pub chunk: ChunkSize,
    pub bind: IpAddr,
    /// `None`: the well-known port when free, else any free port.
    pub control_port: Option<u16>,
    /// `None`: no discovery responder (nodes must be given `--server`).
    pub discovery_port: Option<u16>,
    /// The session key (`--key-file`): nodes must prove they hold it, and every
    /// frame is authenticated. Without one, anyone on the segment can join.
    pub key: Option<Key>,
    /// `--slow-after`: a node much slower than the rest for this long is taken
    /// out of the chain and fed on its own; `None` keeps every node in the chain.
    pub slow_after: Option<Duration>,
    /// `--max-rate`: bytes per second the server streams at most.
    pub max_rate: Option<u64>,
    /// A node silent or stalling the chain this long is declared dead and
    /// bypassed.
    pub timeout: Duration,
    /// Where nodes' status connections for this install go (`--log-dir`):
    /// shared by the install's sessions, so a node's status connection
    /// outlives the session it was opened in.
    pub status: Option<Arc<StatusBoard>>,
    /// `--congestion`: the TCP congestion control every hop of the chain
    /// sends with (the server's and each node's sockets to their children);
    /// `None` keeps each host's default.
    pub congestion: Option<String>,
}

/// The chain's default congestion control: loss-based, so a hop's link stays
/// full; BBR, the default of some hosts, idles every hop for its ProbeRTT
/// (see [`crate::net::set_congestion`]).
pub const DEFAULT_CONGESTION: &str = "cubic";

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
            chunk: ChunkSize::Auto,
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            control_port: None,
            discovery_port: Some(DISCOVERY_PORT),
            key: None,
            slow_after: Some(DEFAULT_SLOW_AFTER),
            max_rate: None,
            timeout: DEFAULT_TIMEOUT,
            status: None,
            congestion: Some(DEFAULT_CONGESTION.to_string()),
        }
    }

    /// A server for a rack on this one host (the demo, tests, a program driving
    /// its nodes in-process): loopback only, any free port, no broadcast.
    pub fn loopback(session: impl Into<String>) -> ServerConfig {
        let mut c = ServerConfig::new(session);
        c.bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
        c.control_port = Some(0);
        c.discovery_port = None;
        c
    }

    fn validate(&self) -> Result<()> {
        validate_session(&self.session).map_err(|e| Error::Config(e.to_string()))?;
        if !(1..=4).contains(&self.arity) {
            return Err(Error::Config(format!("--arity must be 1 to 4, not {}", self.arity)));
        }
        if self.nodes == Some(0) || self.min_nodes == 0 {
            return Err(Error::Config("-n and --min need at least 1 node".into()));
        }
        let largest = self.chunk.largest();
        if largest == 0 || largest > crate::protocol::MAX_DATA_PAYLOAD as usize {
            return Err(Error::Config(format!(
                "--chunk {largest} is out of range (at most {} bytes)",
                crate::protocol::MAX_DATA_PAYLOAD
            )));
        }
        if self.timeout.is_zero() {
            return Err(Error::Config("--timeout must be more than 0".into()));
        }
        // Checked here, not only at the command line: `Assign` carries at
        // most MAX_CONGESTION bytes, and a longer name would reach the nodes
        // cut short while the server used it whole.
        if let Some(name) = &self.congestion {
            if name.is_empty()
                || name.len() > MAX_CONGESTION
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(Error::Config(format!(
                    "--congestion {name:?}: not a TCP congestion control name (cubic, bbr, reno..., or system)"
                )));
            }
        }
        if self.buffer < 2 * largest {
            return Err(Error::Config(format!(
                "--buffer {} is smaller than two chunks ({} bytes)",
                self.buffer,
                2 * largest
            )));
        }
        Ok(())
    }
}

/// Default `--slow-after`: long enough that a node which merely hiccups (a
/// journal commit, a cache flush) stays in the chain.
pub const DEFAULT_SLOW_AFTER: Duration = Duration::from_secs(10);

pub struct Server {
    config: ServerConfig,
    listed: Vec<String>,
    control: TcpListener,
    data: TcpListener,
    discovery: Option<DiscoveryResponder>,
    lobby: Arc<Lobby>,
}

impl Server {
    /// Binds the control, data and discovery sockets, so that the addresses are
    /// known (and fixed) before any node is started.
    pub fn bind(config: ServerConfig) -> Result<Server> {
        config.validate()?;
        let listed = match &config.order {
            Order::File(path) => read_node_file(path)?,
            Order::List(names) => names.clone(),
            _ => Vec::new(),
        };
        let control = match config.control_port {
            Some(port) => TcpListener::bind((config.bind, port)).map_err(|e| {
                Error::Config(format!("cannot listen on control port {port}: {e} (another kacast session?)"))
            })?,
            None => match TcpListener::bind((config.bind, DEFAULT_CONTROL_PORT)) {
                Ok(l) => l,
                Err(e) => {
                    let l = TcpListener::bind((config.bind, 0)).context(|| "bind control port".into())?;
                    info!(
                        "control port {DEFAULT_CONTROL_PORT} is busy ({e}), probably another session: using port {}",
                        l.local_addr().map(|a| a.port()).unwrap_or(0)
                    );
                    l
                }
            },
        };
        let data = TcpListener::bind((config.bind, 0)).context(|| "bind data port".into())?;
        let control_port = control.local_addr().context(|| "control address".into())?.port();
        let discovery = match config.discovery_port {
            Some(port) => match DiscoveryResponder::start(&config.session, port, control_port, config.bind) {
                Ok(d) => Some(d),
                Err(e) => {
                    warn!("discovery disabled ({e}): nodes need --server HOST:{control_port}");
                    None
                }
            },
            None => None,
        };
        let lobby = Arc::new(Lobby {
            state: Mutex::new(LobbyState::default()),
            changed: Condvar::new(),
            session: config.session.clone(),
            stats: Arc::new(Stats::default()),
            timeout: config.timeout,
            key: config.key.clone(),
            slow_after: config.slow_after,
            status: config.status.clone(),
        });
        if config.key.is_none() && !config.bind.is_loopback() {
            warn!(
                "no --key-file: ANY host on this network segment can join session '{}' and receive the stream",
                config.session
            );
        }
        Ok(Server { config, listed, control, data, discovery, lobby })
    }

    pub fn control_addr(&self) -> SocketAddr {
        self.control.local_addr().expect("bound listener has an address")
    }

    pub fn session(&self) -> &str {
        &self.config.session
    }

    /// Live counters for a progress display.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.lobby.stats)
    }

    /// Runs the session to its end: waits for the nodes, streams `input` through
    /// the chain, repairs it around failed nodes and collects every node's report.
    pub fn run(self, input: Input) -> Result<SessionReport> {
        let opened = open_input(input)?;
        self.lobby.stats.total.store(opened.len.unwrap_or(0), Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        // Poked at the end so the acceptor stops at once, not at its next poll.
        let (woken, wake) = UnixStream::pair().context(|| "create a wake-up pipe".into())?;
        let acceptor = {
            let control = self.control.try_clone().context(|| "clone control listener".into())?;
            let (lobby, stop) = (Arc::clone(&self.lobby), Arc::clone(&stop));
            thread::spawn(move || accept_control(control, woken, lobby, stop))
        };
        let monitor = {
            let (lobby, stop) = (Arc::clone(&self.lobby), Arc::clone(&stop));
            thread::spawn(move || monitor(&lobby, &stop))
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
        let result = self.stream(opened);
        stop.store(true, Ordering::Relaxed);
        self.lobby.changed.notify_all();
        let _ = (&wake).write(&[1]);
        let _ = acceptor.join();
        let _ = monitor.join();
        drop(self.discovery);
        result
    }

    fn stream(&self, input: super::input::Opened) -> Result<SessionReport> {
        let mut st = self.wait_for_start();
        st.started = true;
        let started_at = Instant::now();
        st.started_at = Some(started_at);
        let chunking = Arc::new(Chunking::new(self.config.chunk, self.config.buffer));
        if st.members.is_empty() {
            // Every node reported without a place in the chain: nothing to stream.
            info!("session '{}': no node takes the stream", self.config.session);
            return Ok(SessionReport {
                session: self.config.session.clone(),
                bytes: 0,
                hash: None,
                source_error: None,
                transfer_s: 0.0,
                pipeline_emptied_s: 0.0,
                chunks: chunking.report(),
                nodes: std::mem::take(&mut st.withdrawn),
            });
        }
        let candidates: Vec<Candidate> = st
            .members
            .iter()
            .map(|m| Candidate { name: m.name.clone(), ip: m.data.ip(), port: m.data.port() })
            .collect();
        let (order, unlisted) = arrange(&candidates, &self.config.order, &self.listed);
        if !unlisted.is_empty() {
            warn!("nodes not in the node file go last: {}", unlisted.join(", "));
        }
        let n = order.len();
        let arity = self.config.arity;
        st.data_port = self.data.local_addr().context(|| "data address".into())?.port();
        for (i, &m) in order.iter().enumerate() {
            let member = &mut st.members[m];
            member.pos = i + 1;
            member.parent = tree_parent(i + 1, arity);
        }
        let chain: Vec<String> = order.iter().map(|&i| st.members[i].name.clone()).collect();
        info!("session '{}' starting with {n} nodes: {}", self.config.session, chain.join(" -> "));

        let server_children: Vec<u32> = st.children_of(0).into_iter().map(|m| st.members[m].id).collect();
        let ring = Ring::new(self.config.buffer, server_children.len());
        if input.reread.is_some() {
            ring.rereadable();
        }
        let links = server_children
            .iter()
            .enumerate()
            .map(|(i, id)| ChildLink { node_id: *id, reader: ring.reader(i) })
            .collect();
        let data = self.data.try_clone().context(|| "clone data listener".into())?;
        let lane = Arc::new(Lane::new());
        let relay_config = RelayConfig {
            session: self.config.session.clone(),
            fallback: input.reread.map(|open| Reread { open, chunking: Arc::clone(&chunking) }),
            key: self.config.key.clone(),
            lane: Arc::clone(&lane),
            congestion: self.config.congestion.clone(),
        };
        let relay = Relay::start(data, Arc::clone(&ring), links, relay_config)
            .context(|| "start the server's relay".into())?;
        let relay = Arc::new(relay);
        st.relay = Some(Arc::clone(&relay));
        let stats = &self.lobby.stats;
        stats.nodes.store(n, Ordering::Relaxed);
        stats.started.store(true, Ordering::Relaxed);

        let mut failed = Vec::new();
        for (i, &m) in order.iter().enumerate() {
            let children = st.children_of(i + 1).into_iter().map(|c| st.members[c].id).collect();
            let member = &st.members[m];
            let assign = Assign {
                index: (i + 1) as u32,
                total: n as u32,
                upstream: st.upstream_of(m),
                children,
                source: SocketAddr::new(member.server_ip, st.data_port),
                stream_len: input.len,
                congestion: self.config.congestion.clone(),
            };
            let id = member.id;
            if let Err(e) = st.members[m].writer.write_frame(&Frame::Assign(assign)) {
                failed.push((id, format!("could not be told its place in the chain: {e}")));
            }
        }
        for (id, why) in failed {
            declare_dead(&mut st, &self.lobby, id, why);
        }
        drop(st);
        self.lobby.changed.notify_all();

        let source = {
            let (ring, stats, chunking) = (Arc::clone(&ring), Arc::clone(stats), Arc::clone(&chunking));
            let reader = match self.config.max_rate {
                Some(rate) => Box::new(crate::io::Throttle::new(input.reader, rate)),
                None => input.reader,
            };
            let (verdict_tx, verdict_rx) = mpsc::channel();
            thread::spawn(move || {
                let verdict = pump(reader, &ring, &lane, &chunking, &stats.sent);
                lane.close();
                // Sent before the ring ends: every report comes after it.
                let _ = verdict_tx.send((verdict.clone(), Instant::now()));
                seal(&ring, &verdict);
            });
            verdict_rx
        };
        let mut st = self.lobby.lock();
        while !st.all_reported() {
            st = self.lobby.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        let last_report = Instant::now();
        let mut nodes: Vec<NodeResult> = st.results.values().cloned().collect();
        nodes.sort_by_key(|r| r.position);
        nodes.append(&mut st.withdrawn);
        // Release the nodes: they kept relaying until now for late orphans.
        for m in st.members.iter_mut() {
            let _ = m.writer.write_frame(&Frame::Bye);
        }
        st.relay = None;
        drop(st);
        ring.close();
        if let Ok(relay) = Arc::try_unwrap(relay) {
            relay.stop();
        }
        // A source still running (every node failed early) is left to end on its own.
        let (source_result, source_done) = match source.try_recv() {
            Ok(verdict) => verdict,
            Err(mpsc::TryRecvError::Empty) => (Err("the stream was not read to its end".into()), last_report),
            Err(mpsc::TryRecvError::Disconnected) => (Err("the source thread panicked".into()), last_report),
        };
        if let Err(e) = &source_result {
            warn!("{e}");
        }
        let (bytes, hash, source_error) = match source_result {
            Ok(end) => (end.length, Some(blake3::Hash::from(end.hash).to_hex().to_string()), None),
            Err(e) => (stats.sent.load(Ordering::Relaxed), None, Some(e)),
        };
        Ok(SessionReport {
            session: self.config.session.clone(),
            bytes,
            hash,
            source_error,
            transfer_s: secs(source_done.saturating_duration_since(started_at)),
            pipeline_emptied_s: secs(last_report.saturating_duration_since(source_done)),
            chunks: chunking.report(),
            nodes,
        })
    }

    fn wait_for_start(&self) -> std::sync::MutexGuard<'_, LobbyState> {
        let up = Instant::now();
        let mut st = self.lobby.lock();
        loop {
            let joined = st.members.len() + st.withdrawn.len();
            let enough = self.config.nodes.is_some_and(|n| joined >= n);
            let go = st.go && joined >= 1;
            let timer =
                self.config.start_after.is_some_and(|t| up.elapsed() >= t && joined >= self.config.min_nodes);
            if enough || go || timer {
                return st;
            }
            st = match self.config.start_after {
                Some(t) if up.elapsed() < t => self.lobby.wait_timeout(st, t - up.elapsed()),
                _ => self.lobby.changed.wait(st).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }
}

/// How often the acceptor checks whether the session is over, should a wake-up
/// be lost.
const STOP_CHECK: Duration = Duration::from_millis(200);

fn accept_control(listener: TcpListener, woken: UnixStream, lobby: Arc<Lobby>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if wait_any(&[listener.as_raw_fd(), woken.as_raw_fd()], STOP_CHECK) != Some(0) {
            continue;
        }
        let Ok((stream, addr)) = listener.accept() else { continue };
        let lobby = Arc::clone(&lobby);
        thread::spawn(move || {
            if let Err(e) = serve_control(stream, &lobby) {
                warn!("control connection from {addr}: {e}");
            }
        });
    }
}

/// Heartbeats to the nodes and, once streaming, the watch for stalled nodes.
fn monitor(lobby: &Lobby, stop: &AtomicBool) {
    let mut st = lobby.lock();
    while !stop.load(Ordering::Relaxed) {
        st = lobby.wait_timeout(st, HEARTBEAT);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // As often as the nodes beat, so a node's `--timeout` may be short.
        heartbeat(&mut st, lobby);
        if st.started && st.relay.is_some() {
            check_stalls(&mut st, lobby);
            check_slow(&mut st, lobby);
        }
        lobby.changed.notify_all();
    }
}
