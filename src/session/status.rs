//! Live status and logs of an install's nodes, sent to the golden node.
//!
//! ka-deploy had each node run `send_status.pl` to a port the admin's
//! `status_node.pl` listened on, and `store_log.sh` copied logs around
//! afterwards. Here a node opens one more connection to the golden node's
//! control port (role [`Role::Status`], named after the install) at the start
//! and sends [`Status`] lines on it until it ends, across every session of
//! the install; the golden node keeps each node's log and last state in a log
//! directory that `kacast status` reads. Nothing listens on the node.
//!
//! Status is best effort: a node whose status connection breaks keeps
//! installing, buffers its lines and sends them when it gets through again.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::client::{connect_status, ClientConfig, ServerAddress};
use crate::connection::Connection;
use crate::error::{Error, IoContext, Result};
use crate::protocol::{Frame, NodeState, Status};

/// What `kacast status` shows of one node: kept in `DIR/NAME.json` beside the
/// node's log `DIR/NAME.log`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeView {
    pub name: String,
    /// The node's address as the golden node saw it.
    pub address: String,
    /// Its hardware addresses, from its first status line.
    pub macs: Vec<String>,
    /// `running`, `done`, `failed`, or `lost` (its status connection ended
    /// before it said done or failed).
    pub state: String,
    pub step: String,
    pub last: String,
    /// Seconds since the epoch of its last line.
    pub updated: u64,
    pub lines: u64,
}

impl NodeView {
    pub fn finished(&self) -> bool {
        matches!(self.state.as_str(), "done" | "failed" | "lost")
    }
}

/// The golden node's side: one per install, shared by its sessions' servers.
pub struct StatusBoard {
    install: String,
    dir: PathBuf,
    nodes: Mutex<BTreeMap<String, NodeView>>,
    changed: Condvar,
}

impl std::fmt::Debug for StatusBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusBoard").field("install", &self.install).field("dir", &self.dir).finish()
    }
}

impl StatusBoard {
    /// A board for the install whose sessions are named after `install`,
    /// keeping logs in `dir` (created). Logs of an earlier install of the
    /// same nodes are kept: new lines are appended.
    pub fn open(install: &str, dir: &Path) -> Result<Arc<StatusBoard>> {
        fs::create_dir_all(dir).context(|| format!("create log directory {}", dir.display()))?;
        Ok(Arc::new(StatusBoard {
            install: install.to_string(),
            dir: dir.to_path_buf(),
            nodes: Mutex::new(BTreeMap::new()),
            changed: Condvar::new(),
        }))
    }

    pub fn install(&self) -> &str {
        &self.install
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, NodeView>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads one node's status connection until it ends (the server has
    /// already welcomed it).
    pub(crate) fn serve(&self, mut conn: Connection, name: &str) {
        let address = conn.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default();
        let _ = conn.set_read_timeout(None);
        loop {
            match conn.read_frame() {
                Ok(Some(Frame::Status(s))) => self.record(name, &address, s),
                Ok(Some(other)) => {
                    warn!("status of node '{name}': {}", conn.unexpected(&other, "on a status connection"));
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    debug!("status connection of node '{name}': {e}");
                    break;
                }
            }
        }
        let mut nodes = self.lock();
        if let Some(v) = nodes.get_mut(name).filter(|v| !v.finished()) {
            v.state = "lost".into();
            v.last = format!("status connection lost during '{}': {}", v.step, v.last);
            v.updated = now();
            self.save(v);
        }
        drop(nodes);
        self.changed.notify_all();
    }

    fn record(&self, name: &str, address: &str, s: Status) {
        let mut nodes = self.lock();
        let v = nodes.entry(name.to_string()).or_insert_with(|| NodeView {
            name: name.to_string(),
            address: address.to_string(),
            macs: Vec::new(),
            state: "running".into(),
            step: String::new(),
            last: String::new(),
            updated: 0,
            lines: 0,
        });
        v.address = address.to_string();
        v.updated = now();
        match s.state {
            NodeState::Hello => {
                v.macs = s.text.split_whitespace().map(str::to_ascii_lowercase).collect();
                v.state = "running".into();
                self.append(name, &format!("[hello] from {address}, hardware {}", s.text));
            }
            state => {
                v.state = match state {
                    NodeState::Done => "done",
                    NodeState::Failed => "failed",
                    _ => "running",
                }
                .into();
                v.step = s.step.clone();
                v.last = s.text.clone();
                v.lines += 1;
                self.append(name, &format!("[{}] {}", s.step, s.text));
            }
        }
        self.save(v);
        drop(nodes);
        self.changed.notify_all();
    }

    fn append(&self, name: &str, line: &str) {
        let path = self.dir.join(format!("{name}.log"));
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{} {line}", utc(now())));
        if let Err(e) = written {
            warn!("{}: {e}", path.display());
        }
    }

    /// `DIR/NAME.json`, replaced whole so that a reader never sees half of it.
    fn save(&self, v: &NodeView) {
        let path = self.dir.join(format!("{}.json", v.name));
        let tmp = self.dir.join(format!(".{}.json.tmp", v.name));
        let json = serde_json::to_vec_pretty(v).expect("a view serialises");
        if let Err(e) = fs::write(&tmp, json).and_then(|_| fs::rename(&tmp, &path)) {
            warn!("{}: {e}", path.display());
        }
    }

    /// The node's hardware addresses, as its first status line gave them.
    pub fn macs(&self, name: &str) -> Vec<String> {
        self.lock().get(name).map(|v| v.macs.clone()).unwrap_or_default()
    }

    pub fn views(&self) -> Vec<NodeView> {
        self.lock().values().cloned().collect()
    }

    /// Waits until each named node's status has ended (its last line may
    /// reach us just after its report), at most `within`.
    pub fn settle(&self, names: &[String], within: Duration) {
        let deadline = Instant::now() + within;
        let mut nodes = self.lock();
        loop {
            let pending = names.iter().any(|n| nodes.get(n).is_some_and(|v| !v.finished()));
            let left = deadline.saturating_duration_since(Instant::now());
            if !pending || left.is_zero() {
                return;
            }
            nodes = self.changed.wait_timeout(nodes, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

/// Every node's view kept in a log directory (`kacast status DIR`).
pub fn read_board(dir: &Path) -> Result<Vec<NodeView>> {
    let entries = fs::read_dir(dir).context(|| format!("read log directory {}", dir.display()))?;
    let mut views = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let text = fs::read(&path).context(|| format!("read {}", path.display()))?;
        let view: NodeView = serde_json::from_slice(&text)
            .map_err(|e| Error::Config(format!("{}: not a kacast node status: {e}", path.display())))?;
        views.push(view);
    }
    views.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(views)
}

/// The table `kacast status` prints.
pub fn render(views: &[NodeView], now_s: u64) -> String {
    let mut out = format!("{:<20} {:<8} {:<18} {:>6}  {}\n", "node", "state", "step", "ago", "last line");
    for v in views {
        let ago = format!("{}s", now_s.saturating_sub(v.updated));
        out.push_str(&format!("{:<20} {:<8} {:<18} {:>6}  {}\n", v.name, v.state, v.step, ago, v.last));
    }
    let count = |s: &str| views.iter().filter(|v| v.state == s).count();
    out.push_str(&format!(
        "{} nodes: {} done, {} running, {} failed, {} lost",
        views.len(),
        count("done"),
        count("running"),
        count("failed"),
        count("lost")
    ));
    out
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `2026-11-22T10:04:05Z`: log lines are read by people on several machines.
pub fn utc(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm), valid for any date after 1970.
    let z = days as i64 + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Lines a node keeps while its status connection is down: the whole log of
/// an install is a few hundred lines; past this the oldest are dropped.
const PENDING_MAX: usize = 10_000;
/// How often a node tries again to open its status connection: often, as
/// the golden node listens only while one of the install's sessions runs.
const RETRY: Duration = Duration::from_millis(250);
/// How long a node's last lines may take to leave once it is done.
const FLUSH: Duration = Duration::from_secs(5);

enum Msg {
    Line(Status),
    Finish,
}

/// The node's side: sends status lines from a thread of its own, so that a
/// slow or absent golden node never holds the install up.
pub struct StatusReporter {
    tx: Sender<Msg>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl StatusReporter {
    /// Starts reporting to the golden node at `server` for `install`, as the
    /// node `config.name` with `config.key`. `macs` open the status.
    pub fn start(
        config: &ClientConfig,
        server: SocketAddr,
        install: &str,
        macs: Vec<String>,
    ) -> StatusReporter {
        let mut c = config.clone();
        c.session = install.to_string();
        c.server = Some(ServerAddress { host: server.ip().to_string(), port: server.port() });
        c.tries = 1;
        c.wait = None;
        let (tx, rx) = mpsc::channel();
        let hello = Status { state: NodeState::Hello, step: String::new(), text: macs.join(" ") };
        let thread = thread::spawn(move || send_loop(&c, hello, &rx));
        StatusReporter { tx, thread: Mutex::new(Some(thread)) }
    }

    pub fn line(&self, state: NodeState, step: &str, text: &str) {
        let _ = self.tx.send(Msg::Line(Status { state, step: step.into(), text: text.into() }));
    }

    /// Sends the last line (done, or failed and why) and what is still
    /// pending, for at most a few seconds. Called before the node's last
    /// report, while the golden node still listens: once every node has
    /// reported it stops. Only the first call counts.
    pub fn finish(&self, result: &std::result::Result<(), String>) {
        let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
        match result {
            Ok(()) => self.line(NodeState::Done, "done", "this node is a clone of the golden node"),
            Err(why) => self.line(NodeState::Failed, "failed", why),
        }
        let _ = self.tx.send(Msg::Finish);
        let _ = t.join();
    }
}

impl Drop for StatusReporter {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Finish);
    }
}

fn send_loop(c: &ClientConfig, hello: Status, rx: &Receiver<Msg>) {
    let mut queue = Outbox::default();
    let mut conn: Option<Connection> = None;
    let mut next_try = Instant::now();
    let mut finishing: Option<Instant> = None;
    loop {
        let wait = match finishing {
            Some(_) => Duration::from_millis(200),
            None => RETRY,
        };
        let first = match rx.recv_timeout(wait) {
            Ok(msg) => Some(msg),
            Err(RecvTimeoutError::Disconnected) => Some(Msg::Finish),
            Err(RecvTimeoutError::Timeout) => None,
        };
        for msg in first.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            match msg {
                Msg::Line(s) => queue.push(s),
                Msg::Finish => {
                    finishing.get_or_insert_with(|| Instant::now() + FLUSH);
                }
            }
        }
        if conn.is_none() && Instant::now() >= next_try {
            next_try = Instant::now() + RETRY;
            match connect_status(c) {
                Ok(mut fresh) => match fresh.write_frame(&Frame::Status(hello.clone())) {
                    Ok(()) => conn = Some(fresh),
                    Err(e) => debug!("status connection: {e}"),
                },
                Err(e) => debug!("status connection to the golden node: {e}"),
            }
        }
        if let Some(live) = conn.as_mut() {
            while let Some(s) = queue.front() {
                if let Err(e) = live.write_frame(&Frame::Status(s.clone())) {
                    debug!("status connection lost: {e}");
                    conn = None;
                    break;
                }
                queue.pop();
            }
        }
        if let Some(deadline) = finishing {
            if queue.is_empty() || Instant::now() >= deadline {
                if !queue.is_empty() {
                    warn!("{} status lines not delivered to the golden node", queue.len());
                }
                return;
            }
            // Try again sooner while finishing.
            next_try = next_try.min(Instant::now() + Duration::from_millis(500));
        }
    }
}

/// The lines waiting for the status connection. The last word (done, or
/// failed and why) always leaves last: a line logged after it (the reporter's
/// own failed try to connect, the report to the next session) must not make
/// a finished node look running again, and then lost when its connection
/// closes.
#[derive(Default)]
struct Outbox {
    lines: VecDeque<Status>,
    last_word: Option<Status>,
}

impl Outbox {
    fn push(&mut self, s: Status) {
        if matches!(s.state, NodeState::Done | NodeState::Failed) {
            self.last_word = Some(s);
            return;
        }
        if self.lines.len() == PENDING_MAX {
            self.lines.pop_front();
        }
        self.lines.push_back(s);
    }

    fn front(&self) -> Option<&Status> {
        self.lines.front().or(self.last_word.as_ref())
    }

    fn pop(&mut self) {
        if self.lines.pop_front().is_none() {
            self.last_word = None;
        }
    }

    fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.last_word.is_none()
    }

    fn len(&self) -> usize {
        self.lines.len() + usize::from(self.last_word.is_some())
    }
}

/// This host's hardware addresses (every interface but loopback), so the
/// golden node can tell which PXE configuration is this node's.
pub fn local_macs() -> Vec<String> {
    let Ok(entries) = fs::read_dir("/sys/class/net") else { return Vec::new() };
    let mut macs: Vec<String> = entries
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path().join("address")).ok())
        .map(|a| a.trim().to_ascii_lowercase())
        .filter(|a| a.len() == 17 && a != "00:00:00:00:00:00")
        .collect();
    macs.sort();
    macs.dedup();
    macs
}

/// Status lines from the node's own log: every `info!` and above of the
/// install, sent through whichever reporter is current.
pub struct StatusLayer;

/// The reporter log lines go to, and the step they are in.
type Forward = Option<(Sender<Msg>, String)>;

static CURRENT: OnceLock<Mutex<Forward>> = OnceLock::new();

fn current() -> MutexGuard<'static, Forward> {
    CURRENT.get_or_init(|| Mutex::new(None)).lock().unwrap_or_else(|p| p.into_inner())
}

impl StatusReporter {
    /// Makes this reporter the one [`StatusLayer`] sends log lines to, with
    /// `step` as their step until the next call.
    pub fn forward_logs(&self, step: &str) {
        *current() = Some((self.tx.clone(), step.to_string()));
    }

    pub fn stop_forwarding() {
        *current() = None;
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for StatusLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() > tracing::Level::INFO {
            return;
        }
        // Never log from here (the subscriber would call us again).
        let Some((tx, step)) = current().clone() else { return };
        let mut text = String::new();
        event.record(&mut MessageOf(&mut text));
        if event.metadata().level() <= &tracing::Level::WARN {
            text = format!("{}: {text}", event.metadata().level());
        }
        let _ = tx.send(Msg::Line(Status { state: NodeState::Running, step, text }));
    }
}

struct MessageOf<'a>(&'a mut String);

impl tracing::field::Visit for MessageOf<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_word_leaves_last() {
        let line = |state, text: &str| Status { state, step: "plan".into(), text: text.into() };
        let mut out = Outbox::default();
        out.push(line(NodeState::Running, "checking"));
        out.push(line(NodeState::Failed, "plan refused"));
        out.push(line(NodeState::Running, "server not reachable"));
        assert_eq!(out.len(), 3);
        let mut sent = Vec::new();
        while let Some(s) = out.front() {
            sent.push(s.text.clone());
            out.pop();
        }
        assert_eq!(sent, ["checking", "server not reachable", "plan refused"]);
        assert!(out.is_empty());
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_795_003_445), "2026-11-18T12:04:05Z");
    }

    #[test]
    fn render_counts_states() {
        let v = |name: &str, state: &str| NodeView {
            name: name.into(),
            address: "10.0.0.2".into(),
            macs: vec![],
            state: state.into(),
            step: "kainstall2".into(),
            last: "extracting".into(),
            updated: 90,
            lines: 3,
        };
        let out = render(&[v("n1", "done"), v("n2", "lost"), v("n3", "running")], 100);
        assert!(out.contains("n2                   lost"), "{out}");
        assert!(out.ends_with("3 nodes: 1 done, 1 running, 0 failed, 1 lost"), "{out}");
        assert!(out.contains("10s"), "{out}");
    }
}
