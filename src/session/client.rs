//! A node's side of a session: find the server, join, take its place in the
//! chain, feed the local sink while relaying to its children, report.
//!
//! When its upstream breaks, the node waits for the server to say where to
//! resume (`Reattach`) and continues at the byte offset it has, so a dead node
//! costs its neighbours a reconnection, not the deployment.

use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::discovery::discover;
use crate::auth::{self, Key};
use crate::chain::{
    receive, ChildLink, Finish, Lane, Relay, RelayConfig, Ring, Sink, SinkGuard, SinkMeter, SinkOutcome,
    StreamReader, UpstreamError, DEFAULT_BUFFER,
};
use crate::connection::{Connection, FrameWriter};
use crate::error::{Error, IoContext, Result};
use crate::protocol::{
    is_other_session, validate_session, Assign, Frame, Hello, Report, Role, DEFAULT_CONTROL_PORT,
    DISCOVERY_PORT,
};

/// `--server HOST[:PORT]`, the port defaulting to the well-known control port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddress {
    pub host: String,
    pub port: u16,
}

impl std::str::FromStr for ServerAddress {
    type Err = Error;
    fn from_str(s: &str) -> Result<ServerAddress> {
        let bad = || {
            Error::Config(format!("invalid server address '{s}': expected HOST, HOST:PORT or [IPv6]:PORT"))
        };
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(addr.into());
        }
        if let Ok(ip) = s.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Ok(ServerAddress { host: ip.to_string(), port: DEFAULT_CONTROL_PORT });
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() => {
                Ok(ServerAddress { host: host.to_string(), port: port.parse().map_err(|_| bad())? })
            }
            Some(_) => Err(bad()),
            None if !s.is_empty() && !s.contains(char::is_whitespace) => {
                Ok(ServerAddress { host: s.to_string(), port: DEFAULT_CONTROL_PORT })
            }
            None => Err(bad()),
        }
    }
}

impl From<SocketAddr> for ServerAddress {
    fn from(addr: SocketAddr) -> ServerAddress {
        ServerAddress { host: addr.ip().to_string(), port: addr.port() }
    }
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub session: String,
    /// `None`: find the server by broadcast.
    pub server: Option<ServerAddress>,
    /// How this node appears in the chain and the report (default: hostname).
    pub name: String,
    pub sink: Sink,
    /// Attempts to find the server before giving up (ka-deploy's stage1 made 5).
    pub tries: u32,
    /// Time between attempts (and how long each broadcast waits for an answer).
    pub retry_interval: Duration,
    pub buffer: usize,
    /// Address and port to listen on for this node's children (port 0: any).
    pub bind: IpAddr,
    pub data_port: u16,
    pub discovery_port: u16,
    /// The session key (`--key-file`); the server must hold the same.
    pub key: Option<Key>,
    /// Silence from the server after which this node gives up and exits
    /// non-zero; also how long it waits to be reattached after losing its upstream.
    pub timeout: Duration,
    /// Keep trying to join for this long instead of `tries` times: an install's
    /// sessions run one after another, and a node done early with one waits for
    /// the server to start the next.
    pub wait: Option<Duration>,
}

impl ClientConfig {
    pub fn new(session: impl Into<String>, sink: Sink) -> ClientConfig {
        ClientConfig {
            session: session.into(),
            server: None,
            name: hostname(),
            sink,
            tries: 5,
            retry_interval: Duration::from_secs(1),
            buffer: DEFAULT_BUFFER,
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            data_port: 0,
            discovery_port: DISCOVERY_PORT,
            key: None,
            timeout: DEFAULT_TIMEOUT,
            wait: None,
        }
    }

    /// A node of a rack on this one host (see [`ServerConfig::loopback`]),
    /// joining the server at `server` as `name`.
    ///
    /// [`ServerConfig::loopback`]: super::ServerConfig::loopback
    pub fn loopback(session: impl Into<String>, server: SocketAddr, name: &str, sink: Sink) -> ClientConfig {
        let mut c = ClientConfig::new(session, sink);
        c.server = Some(server.into());
        c.name = name.to_string();
        c.bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
        c
    }
}

/// Default for `--timeout` on both sides: a few seconds, as Kascade's 3 s and
/// ka-deploy's 5 s ping; long enough for a busy node's heartbeat to get through.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a node reports progress (its heartbeat): often enough that a
/// `--timeout` of a few seconds sees many of them.
pub const HEARTBEAT: Duration = Duration::from_millis(250);

/// What one node did.
#[derive(Debug, Clone)]
pub struct ClientReport {
    pub name: String,
    pub position: u32,
    pub total: u32,
    pub outcome: SinkOutcome,
    pub duration: Duration,
    /// The server's control address as this node reached it: where the rest
    /// of an install (its status connection) goes.
    pub server: SocketAddr,
}

impl ClientReport {
    pub fn ok(&self) -> bool {
        self.outcome.ok()
    }
}

pub struct Client {
    config: ClientConfig,
    listener: TcpListener,
    received: Arc<AtomicU64>,
}

impl Client {
    /// Validates the configuration and binds the data port, so the node can accept
    /// its children the moment it is told about them.
    pub fn bind(config: ClientConfig) -> Result<Client> {
        validate_session(&config.session).map_err(|e| Error::Config(e.to_string()))?;
        if config.name.is_empty() || config.name.len() > 255 {
            return Err(Error::Config("node name must be 1 to 255 bytes".into()));
        }
        if config.tries == 0 {
            return Err(Error::Config("--tries must be at least 1".into()));
        }
        if config.timeout.is_zero() {
            return Err(Error::Config("--timeout must be more than 0".into()));
        }
        let listener = TcpListener::bind((config.bind, config.data_port))
            .context(|| format!("listen on data port {}", config.data_port))?;
        Ok(Client { config, listener, received: Arc::new(AtomicU64::new(0)) })
    }

    /// Bytes received so far, for a progress display.
    pub fn received(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.received)
    }

    pub fn run(self) -> Result<ClientReport> {
        let c = &self.config;
        let data_port = self.listener.local_addr().context(|| "data address".into())?.port();
        let (mut control, node_id) = join(c, Role::Node, data_port)?;
        info!("joined session '{}' as '{}' via {}", c.session, c.name, control.peer());
        let server = control.peer_addr().context(|| "server address".into())?;
        let meter = Arc::new(SinkMeter::default());
        let writer = Arc::new(Mutex::new(control.writer()?));
        let heartbeat = Heartbeat::start(Arc::clone(&writer), Arc::clone(&self.received), Arc::clone(&meter));

        control.set_read_timeout(Some(c.timeout))?;
        let assign = loop {
            match control.read_frame() {
                Ok(Some(Frame::Assign(a))) => break a,
                Ok(Some(Frame::Progress { .. })) => {}
                Ok(Some(Frame::Abort { reason })) => return Err(Error::Aborted(reason)),
                Ok(Some(other)) => return Err(control.unexpected(&other, "while waiting for the start")),
                Ok(None) => {
                    return Err(Error::Aborted("the server closed the session before it started".into()))
                }
                Err(e) => return Err(lost(e, c.timeout)),
            }
        };
        let started = Instant::now();
        let Assign { index, total, upstream, children, source, congestion, .. } = assign;
        info!("position {index}/{total}: upstream {upstream}, {} children", children.len());

        let ring = Ring::new(c.buffer, children.len() + 1);
        let guard = SinkGuard::default();
        let sink = {
            let (reader, sink, meter, guard) =
                (ring.reader(0), c.sink.clone(), Arc::clone(&meter), guard.clone());
            thread::spawn(move || sink.run_guarded(StreamReader::metered(reader, meter), &guard))
        };
        let links: Vec<ChildLink> = children
            .iter()
            .enumerate()
            .map(|(i, id)| ChildLink { node_id: *id, reader: ring.reader(i + 1) })
            .collect();
        let listener = self.listener.try_clone().context(|| "clone data listener".into())?;
        let lane = Arc::new(Lane::new());
        let relay = Arc::new(
            Relay::start(
                listener,
                Arc::clone(&ring),
                links,
                RelayConfig {
                    session: c.session.clone(),
                    fallback: None,
                    key: c.key.clone(),
                    lane: Arc::clone(&lane),
                    congestion,
                },
            )
            .context(|| "start relay".into())?,
        );
        let orders = Orders::new();
        let control_thread = {
            let (orders, relay, timeout) = (Arc::clone(&orders), Arc::clone(&relay), c.timeout);
            let (ring, guard, lane) = (Arc::clone(&ring), guard.clone(), Arc::clone(&lane));
            thread::spawn(move || {
                follow_server(control, &orders, &relay, timeout);
                if let Some(e) = orders.fatal() {
                    // Unblock everything: the stream, the relay, a hung sink.
                    ring.finish(Finish::Abandoned(e.to_string()));
                    lane.cut();
                    guard.kill();
                }
            })
        };

        let finish = self.stream(node_id, upstream, source, &ring, &lane, &orders);
        lane.close();
        ring.finish(finish.clone());
        if let Some(reason) = orders.fatal() {
            // Declared dead or cut off: the sink may be hung; kill it, do not wait.
            guard.kill();
            heartbeat.stop();
            return Err(reason);
        }
        let outcome = sink.join().unwrap_or_else(|_| SinkOutcome {
            bytes: 0,
            hash_ok: false,
            status: None,
            error: Some("sink thread panicked".into()),
        });
        heartbeat.stop();
        let duration = started.elapsed();
        let report = Report {
            bytes: outcome.bytes,
            hash_ok: outcome.hash_ok,
            sink_status: outcome.status,
            duration_ms: duration.as_millis() as u64,
            error: outcome.error.clone(),
        };
        lock(&writer).write_frame(&Frame::Report(report))?;
        // Keep relaying (an orphan may still be replayed from here) until the
        // server ends the session.
        let ended = orders.wait_end();
        let _ = control_thread.join();
        if let Ok(relay) = Arc::try_unwrap(relay) {
            for (child, r) in relay.stop() {
                if let Err(e) = r {
                    debug!("relay to child node {child} ended: {e}");
                }
            }
        }
        if let Some(why) = ended {
            warn!("{why}");
        }
        Ok(ClientReport { name: c.name.clone(), position: index, total, outcome, duration, server })
    }

    /// Reports this node's result for the session without taking part in the
    /// stream: `Err(why)` withdraws a node that cannot use it (the server stops
    /// waiting for it and lists it ko), `Ok` reports a step done without data
    /// (the end of an install).
    pub fn report_only(self, result: std::result::Result<(), String>) -> Result<()> {
        let c = &self.config;
        let (mut control, _) = join(c, Role::Report, 0)?;
        let error = result.err();
        let report = Report { bytes: 0, hash_ok: error.is_none(), sink_status: None, duration_ms: 0, error };
        control.write_frame(&Frame::Report(report))?;
        // The server closes the connection once the report is recorded.
        control.set_read_timeout(Some(c.timeout))?;
        match control.read_frame() {
            Ok(None) => Ok(()),
            Ok(Some(other)) => Err(control.unexpected(&other, "after a report")),
            Err(e) => Err(lost(e, c.timeout)),
        }
    }

    /// Receives the whole stream into the ring, reattaching wherever the server
    /// says when the upstream breaks. Returns how the stream ended for this node.
    fn stream(
        &self,
        node_id: u32,
        first: SocketAddr,
        source: SocketAddr,
        ring: &Ring,
        lane: &Lane,
        orders: &Orders,
    ) -> Finish {
        let c = &self.config;
        let mut target = first;
        // The (upstream, offset) of the last immediate retry, so a dead upstream
        // is retried once, not forever.
        let mut retried = None;
        loop {
            if let Some(e) = orders.fatal() {
                return Finish::Abandoned(e.to_string());
            }
            let offset = self.received.load(Ordering::Relaxed);
            let result = match Connection::connect(target, Duration::from_secs(5)) {
                Ok(mut up) => {
                    orders.set_upstream(up.stream().try_clone().ok());
                    let nonce = c.key.as_ref().map(|_| auth::nonce());
                    let hello = Frame::DataHello { session: c.session.clone(), node_id, offset, nonce };
                    let greeted = up.write_frame(&hello).and_then(|()| {
                        up.set_read_timeout(Some(c.timeout))?;
                        auth::connect(&mut up, c.key.as_ref(), nonce.unwrap_or_default())?;
                        up.set_read_timeout(None)
                    });
                    match greeted {
                        Ok(()) => receive(&mut up, ring, lane, &self.received),
                        Err(Error::Refused(why)) => Err(UpstreamError::Refused(why)),
                        Err(e) => Err(UpstreamError::Broken(e.to_string())),
                    }
                }
                Err(e) => Err(UpstreamError::Broken(format!("cannot reach upstream {target}: {e}"))),
            };
            orders.set_upstream(None);
            match result {
                Ok(end) => return Finish::Complete(end),
                Err(UpstreamError::Aborted(why)) => return Finish::Failed(why),
                Err(UpstreamError::Refused(why)) if target != source => {
                    info!("{target} no longer holds byte {offset} ({why}): resuming from the server");
                    target = source;
                }
                Err(UpstreamError::Refused(why)) => {
                    return Finish::Abandoned(format!("the server refused: {why}"))
                }
                Err(UpstreamError::Broken(why)) => {
                    if let Some(next) = orders.take_redirect() {
                        target = next;
                        continue;
                    }
                    // A connection cut between two live nodes: try the same
                    // upstream once more before waiting for the server.
                    if retried != Some((target, offset)) {
                        retried = Some((target, offset));
                        warn!("{why}; reconnecting");
                        continue;
                    }
                    warn!("{why}; waiting to be reattached");
                    // The server normally redirects within its timeout; after
                    // twice that, resume from the server on our own.
                    target = match orders.wait_redirect(c.timeout * 2) {
                        Some(next) => next,
                        None if orders.fatal().is_none() => source,
                        None => continue,
                    };
                }
            }
            info!("resuming at byte {} from {target}", self.received.load(Ordering::Relaxed));
        }
    }
}

/// Reads the server's orders for the rest of the session.
fn follow_server(mut control: Connection, orders: &Orders, relay: &Relay, timeout: Duration) {
    let _ = control.set_read_timeout(Some(timeout));
    loop {
        match control.read_frame() {
            Ok(Some(Frame::Progress { .. })) => {}
            Ok(Some(Frame::Reattach { upstream })) => {
                info!("the server reattaches this node to {upstream}");
                orders.redirect(upstream);
            }
            Ok(Some(Frame::Detach { node_id })) => relay.detach(node_id),
            Ok(Some(Frame::Bye)) => return orders.end(None),
            Ok(Some(Frame::Abort { reason })) => return orders.end(Some(Error::Aborted(reason))),
            Ok(Some(other)) => {
                return orders.end(Some(control.unexpected(&other, "during the session")));
            }
            Ok(None) => {
                return orders.end(Some(Error::Aborted("the server closed the control connection".into())))
            }
            Err(e) => return orders.end(Some(lost(e, timeout))),
        }
    }
}

fn lost(e: Error, timeout: Duration) -> Error {
    if e.is_timeout() {
        Error::Aborted(format!("no word from the server for {}s: giving up", timeout.as_secs_f64()))
    } else {
        Error::Aborted(format!("lost the server: {e}"))
    }
}

/// What the server has told this node, shared between the thread reading the
/// control connection and the one receiving the stream.
struct Orders {
    state: Mutex<OrdersState>,
    changed: Condvar,
}

#[derive(Default)]
struct OrdersState {
    redirect: Option<SocketAddr>,
    /// The current upstream socket, cut when the server redirects us.
    upstream: Option<TcpStream>,
    ended: bool,
    fatal: Option<String>,
}

impl Orders {
    fn new() -> Arc<Orders> {
        Arc::new(Orders { state: Mutex::new(OrdersState::default()), changed: Condvar::new() })
    }

    fn lock(&self) -> MutexGuard<'_, OrdersState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_upstream(&self, s: Option<TcpStream>) {
        self.lock().upstream = s;
    }

    fn redirect(&self, to: SocketAddr) {
        let mut st = self.lock();
        st.redirect = Some(to);
        if let Some(s) = st.upstream.take() {
            let _ = s.shutdown(Shutdown::Both);
        }
        drop(st);
        self.changed.notify_all();
    }

    fn take_redirect(&self) -> Option<SocketAddr> {
        self.lock().redirect.take()
    }

    fn wait_redirect(&self, limit: Duration) -> Option<SocketAddr> {
        let st = self.lock();
        let (mut st, _) = self
            .changed
            .wait_timeout_while(st, limit, |s| s.redirect.is_none() && s.fatal.is_none() && !s.ended)
            .unwrap_or_else(|p| p.into_inner());
        st.redirect.take()
    }

    /// The session is over for this node: `Bye`, or a fatal error.
    fn end(&self, fatal: Option<Error>) {
        let mut st = self.lock();
        st.ended = true;
        st.fatal = fatal.map(|e| e.to_string());
        if st.fatal.is_some() {
            if let Some(s) = st.upstream.take() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        drop(st);
        self.changed.notify_all();
    }

    fn fatal(&self) -> Option<Error> {
        self.lock().fatal.clone().map(Error::Aborted)
    }

    /// Waits for the end of the session; returns the fatal reason, if any.
    fn wait_end(&self) -> Option<String> {
        let st = self.lock();
        let st = self.changed.wait_while(st, |s| !s.ended).unwrap_or_else(|p| p.into_inner());
        st.fatal.clone()
    }
}

/// The node's heartbeat: progress to the server every [`HEARTBEAT`].
struct Heartbeat {
    stop: mpsc::Sender<()>,
    thread: thread::JoinHandle<()>,
}

impl Heartbeat {
    fn start(writer: Arc<Mutex<FrameWriter>>, received: Arc<AtomicU64>, meter: Arc<SinkMeter>) -> Heartbeat {
        let (stop, ticker) = mpsc::channel::<()>();
        let thread = thread::spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = ticker.recv_timeout(HEARTBEAT) {
                let frame = Frame::Progress {
                    received: received.load(Ordering::Relaxed),
                    written: meter.taken.load(Ordering::Relaxed),
                    idle_ms: meter.idle_ms.load(Ordering::Relaxed),
                };
                if lock(&writer).write_frame(&frame).is_err() {
                    break;
                }
            }
        });
        Heartbeat { stop, thread }
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Returns the control connection and the node id the server gave us.
fn join(c: &ClientConfig, role: Role, data_port: u16) -> Result<(Connection, u32)> {
    let deadline = c.wait.map(|w| Instant::now() + w);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let last = match deadline {
            Some(d) => Instant::now() >= d,
            None => attempt >= c.tries,
        };
        let tries = match deadline {
            Some(_) => "until its start".to_string(),
            None => format!("{attempt}/{}", c.tries),
        };
        let found = match &c.server {
            Some(addr) => resolve(addr),
            None => discover(&c.session, c.discovery_port, c.retry_interval)?
                .ok_or_else(|| "no answer to the broadcast".into()),
        };
        let addr = match found {
            Ok(a) => a,
            Err(why) => {
                if deadline.is_none() || attempt == 1 {
                    warn!("kacast server for session '{}' not found (try {tries}): {why}", c.session);
                }
                if last {
                    break;
                }
                if c.server.is_some() {
                    thread::sleep(c.retry_interval);
                }
                continue;
            }
        };
        let mut conn = match Connection::connect(addr, Duration::from_secs(5)) {
            Ok(conn) => conn,
            Err(e) => {
                if deadline.is_none() || attempt == 1 {
                    warn!("kacast server for session '{}' not reachable (try {tries}): {e}", c.session);
                }
                if last {
                    break;
                }
                thread::sleep(c.retry_interval);
                continue;
            }
        };
        let answer = hello(&mut conn, c, role, data_port);
        // Between two sessions of an install the previous server may close
        // a connection it had just accepted: try again, as for a refusal.
        let answer = match answer {
            Err(e @ (Error::Io { .. } | Error::Closed { .. })) if deadline.is_some() && !last => {
                debug!("server between sessions ({e}): waiting for session '{}'", c.session);
                thread::sleep(c.retry_interval);
                continue;
            }
            other => other?,
        };
        return match answer {
            Frame::Welcome { node_id } => {
                conn.set_read_timeout(None)?;
                Ok((conn, node_id))
            }
            // The server is still on the previous session of an install.
            Frame::Refuse { reason } if deadline.is_some() && !last && is_other_session(&reason) => {
                debug!("{reason}: waiting for session '{}'", c.session);
                thread::sleep(c.retry_interval);
                continue;
            }
            Frame::Refuse { reason } => Err(Error::Refused(reason)),
            other => Err(conn.unexpected(&other, "instead of a welcome")),
        };
    }
    Err(Error::NoServer { session: c.session.clone(), tries: attempt })
}

/// Says hello (proving the key, if any) and returns the server's answer.
fn hello(conn: &mut Connection, c: &ClientConfig, role: Role, data_port: u16) -> Result<Frame> {
    let nonce = c.key.as_ref().map(|_| auth::nonce());
    conn.write_frame(&Frame::Hello(Hello {
        session: c.session.clone(),
        name: c.name.clone(),
        role,
        data_port,
        nonce,
    }))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    auth::connect(conn, c.key.as_ref(), nonce.unwrap_or_default())?;
    conn.expect_frame("instead of answering the hello")
}

fn resolve(addr: &ServerAddress) -> std::result::Result<SocketAddr, String> {
    (addr.host.as_str(), addr.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", addr.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", addr.host))
}

/// A node's status connection for the install named `config.session`
/// (see [`super::status`]), welcomed and ready for status lines.
pub(crate) fn connect_status(config: &ClientConfig) -> Result<Connection> {
    join(config, Role::Status, 0).map(|(conn, _)| conn)
}

/// `kacast go`: tells the server of `session` to start with the nodes it has.
pub fn go(config: &ClientConfig) -> Result<()> {
    join(config, Role::Go, 0).map(|_| ())
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates or truncates.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "node".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
