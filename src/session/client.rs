//! A node's side of a session: find the server, join, take its place in the
//! chain, feed the local sink while relaying to its children, report.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::discovery::discover;
use crate::chain::{
    accept_children, receive, ChildLink, Ring, Sink, SinkOutcome, StreamReader, DEFAULT_BUFFER,
};
use crate::connection::Connection;
use crate::error::{Error, IoContext, Result};
use crate::protocol::{
    validate_session, Assign, Frame, Hello, Report, Role, DEFAULT_CONTROL_PORT, DISCOVERY_PORT,
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
            Error::Config(format!(
                "invalid server address '{s}': expected HOST, HOST:PORT or [IPv6]:PORT"
            ))
        };
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(ServerAddress {
                host: addr.ip().to_string(),
                port: addr.port(),
            });
        }
        if let Ok(ip) = s.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Ok(ServerAddress {
                host: ip.to_string(),
                port: DEFAULT_CONTROL_PORT,
            });
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() => Ok(ServerAddress {
                host: host.to_string(),
                port: port.parse().map_err(|_| bad())?,
            }),
            Some(_) => Err(bad()),
            None if !s.is_empty() && !s.contains(char::is_whitespace) => Ok(ServerAddress {
                host: s.to_string(),
                port: DEFAULT_CONTROL_PORT,
            }),
            None => Err(bad()),
        }
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
    pub link_timeout: Duration,
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
            link_timeout: Duration::from_secs(60),
        }
    }
}

/// What one node did.
#[derive(Debug, Clone)]
pub struct ClientReport {
    pub name: String,
    pub position: u32,
    pub total: u32,
    pub outcome: SinkOutcome,
    pub duration: Duration,
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

/// Progress reports to the server this often: enough for a live display.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How long to wait for the server's acknowledgement of our report.
const BYE_TIMEOUT: Duration = Duration::from_secs(30);

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
        let listener = TcpListener::bind((config.bind, config.data_port))
            .context(|| format!("listen on data port {}", config.data_port))?;
        Ok(Client {
            config,
            listener,
            received: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Bytes received so far, for a progress display.
    pub fn received(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.received)
    }

    pub fn run(self) -> Result<ClientReport> {
        let c = &self.config;
        let data_port = self
            .listener
            .local_addr()
            .context(|| "data address".into())?
            .port();
        let (mut control, node_id) = join(c, Role::Node, data_port)?;
        info!(
            "joined session '{}' as '{}' via {}",
            c.session,
            c.name,
            control.peer()
        );
        let assign = match control.expect_frame("before the session started")? {
            Frame::Assign(a) => a,
            Frame::Abort { reason } => return Err(Error::Aborted(reason)),
            other => return Err(control.unexpected(&other, "while waiting for the start")),
        };
        let started = Instant::now();
        let Assign {
            index,
            total,
            upstream,
            children,
            ..
        } = assign;
        info!(
            "position {index}/{total}: upstream {upstream}, {} children",
            children.len()
        );

        let ring = Ring::new(c.buffer, children.len() + 1);
        let sink = {
            let (reader, sink) = (ring.reader(0), c.sink.clone());
            thread::spawn(move || sink.run(StreamReader::new(reader)))
        };
        let links: Vec<ChildLink> = children
            .iter()
            .enumerate()
            .map(|(i, id)| ChildLink {
                node_id: *id,
                reader: ring.reader(i + 1),
            })
            .collect();
        let relay = if links.is_empty() {
            None
        } else {
            let listener = self
                .listener
                .try_clone()
                .context(|| "clone data listener".into())?;
            let (session, timeout) = (c.session.clone(), c.link_timeout);
            Some(thread::spawn(move || {
                accept_children(&listener, &session, links, timeout)
            }))
        };
        let (stop_progress, ticker) = mpsc::channel::<()>();
        let progress = {
            let mut writer = control.writer()?;
            let received = Arc::clone(&self.received);
            thread::spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = ticker.recv_timeout(PROGRESS_EVERY)
                {
                    let bytes = received.load(Ordering::Relaxed);
                    if writer.write_frame(&Frame::Progress { bytes }).is_err() {
                        break;
                    }
                }
            })
        };

        let stream_result = Connection::connect(upstream, Duration::from_secs(10))
            .and_then(|mut up| {
                up.write_frame(&Frame::DataHello {
                    session: c.session.clone(),
                    node_id,
                    offset: 0,
                })?;
                Ok(up)
            })
            .map_err(|e| format!("cannot reach upstream {upstream}: {e}"))
            .and_then(|mut up| receive(&mut up, &ring, &self.received));
        if let Err(why) = &stream_result {
            ring.finish(crate::chain::Finish::Failed(why.clone()));
        }
        let outcome = sink.join().unwrap_or_else(|_| SinkOutcome {
            bytes: 0,
            hash_ok: false,
            status: None,
            error: Some("sink thread panicked".into()),
        });
        if let Some(relay) = relay {
            for (child, r) in relay.join().unwrap_or_default() {
                if let Err(e) = r {
                    warn!("relay to child node {child} failed: {e}");
                }
            }
        }
        let _ = stop_progress.send(());
        let _ = progress.join();
        let duration = started.elapsed();
        let report = Report {
            bytes: outcome.bytes,
            hash_ok: outcome.hash_ok,
            sink_status: outcome.status,
            duration_ms: duration.as_millis() as u64,
            error: outcome.error.clone(),
        };
        control.write_frame(&Frame::Report(report))?;
        control.set_read_timeout(Some(BYE_TIMEOUT))?;
        match control.read_frame() {
            Ok(Some(Frame::Bye)) => {}
            Ok(other) => debug!("no bye from the server ({other:?})"),
            Err(e) => warn!("server did not acknowledge the report: {e}"),
        }
        Ok(ClientReport {
            name: c.name.clone(),
            position: index,
            total,
            outcome,
            duration,
        })
    }
}

/// Finds the server (by `--server` or broadcast, `tries` times) and says hello.
/// Returns the control connection and the node id the server gave us.
fn join(c: &ClientConfig, role: Role, data_port: u16) -> Result<(Connection, u32)> {
    for attempt in 1..=c.tries {
        let last = attempt == c.tries;
        let found = match &c.server {
            Some(addr) => resolve(addr),
            None => discover(&c.session, c.discovery_port, c.retry_interval)?
                .ok_or_else(|| "no answer to the broadcast".into()),
        };
        let addr = match found {
            Ok(a) => a,
            Err(why) => {
                warn!(
                    "kacast server for session '{}' not found (try {attempt}/{}): {why}",
                    c.session, c.tries
                );
                if !last && c.server.is_some() {
                    thread::sleep(c.retry_interval);
                }
                continue;
            }
        };
        let mut conn = match Connection::connect(addr, Duration::from_secs(5)) {
            Ok(conn) => conn,
            Err(e) => {
                warn!(
                    "kacast server for session '{}' not reachable (try {attempt}/{}): {e}",
                    c.session, c.tries
                );
                if !last {
                    thread::sleep(c.retry_interval);
                }
                continue;
            }
        };
        conn.write_frame(&Frame::Hello(Hello {
            session: c.session.clone(),
            name: c.name.clone(),
            role,
            data_port,
        }))?;
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        return match conn.expect_frame("instead of answering the hello")? {
            Frame::Welcome { node_id } => {
                conn.set_read_timeout(None)?;
                Ok((conn, node_id))
            }
            Frame::Refuse { reason } => Err(Error::Refused(reason)),
            other => Err(conn.unexpected(&other, "instead of a welcome")),
        };
    }
    Err(Error::NoServer {
        session: c.session.clone(),
        tries: c.tries,
    })
}

fn resolve(addr: &ServerAddress) -> std::result::Result<SocketAddr, String> {
    (addr.host.as_str(), addr.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", addr.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", addr.host))
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
