//! `kacast demo`: a whole rack on loopback in one process. A server streams
//! generated data to N clients, each writing its copy to a file; then every copy
//! is read back and checked against the source hash.

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::thread;

use crate::chain::Sink;
use crate::error::{Error, IoContext, Result};
use crate::session::{Client, ClientConfig, Input, Server, ServerConfig, SessionReport, Stats};

/// Deterministic incompressible bytes (xorshift64*), generated at several GB/s so
/// the demo and the benchmark measure the chain, not the generator.
pub struct Pattern {
    state: u64,
    left: u64,
}

impl Pattern {
    pub fn new(seed: u64, len: u64) -> Pattern {
        Pattern { state: seed | 1, left: len }
    }
}

impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        for word in buf[..n].chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let v = self.state.wrapping_mul(0x2545F4914F6CDD1D).to_le_bytes();
            word.copy_from_slice(&v[..word.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

pub struct DemoConfig {
    pub nodes: usize,
    pub size: u64,
    pub arity: usize,
    pub buffer: usize,
    /// Where the nodes' copies go; a temporary directory (removed) when `None`.
    pub dir: Option<PathBuf>,
}

pub struct DemoOutcome {
    pub report: SessionReport,
    /// Per node: its copy re-read from disk matched the source hash.
    pub verified: Vec<(String, bool)>,
    pub dir: PathBuf,
}

/// Builds the rack, hands the server's live stats to `watch` (a progress
/// display, run on its own thread), runs the session and verifies the copies.
/// `watch` gets a receiver that disconnects when the session is over.
pub fn run(
    config: DemoConfig,
    watch: impl FnOnce(Arc<Stats>, mpsc::Receiver<()>) + Send + 'static,
) -> Result<DemoOutcome> {
    if config.nodes == 0 {
        return Err(Error::Config("the demo needs at least one node".into()));
    }
    let (_tmp, dir) = match &config.dir {
        Some(d) => {
            std::fs::create_dir_all(d).context(|| format!("create {}", d.display()))?;
            (None, d.clone())
        }
        None => {
            let t = TempDir::new()?;
            let p = t.0.clone();
            (Some(t), p)
        }
    };
    let mut sc = ServerConfig::loopback("demo");
    sc.nodes = Some(config.nodes);
    sc.arity = config.arity;
    sc.buffer = config.buffer;
    let server = Server::bind(sc)?;
    let addr = server.control_addr();
    let stats = server.stats();
    let width = config.nodes.to_string().len().max(2);
    let clients: Vec<_> = (1..=config.nodes)
        .map(|i| {
            let name = format!("node{i:0width$}");
            let mut cc =
                ClientConfig::loopback("demo", addr, &name, Sink::File(dir.join(format!("{name}.img"))));
            cc.buffer = config.buffer;
            let client = Client::bind(cc)?;
            Ok(thread::spawn(move || client.run()))
        })
        .collect::<Result<_>>()?;
    let (done, watching) = mpsc::channel();
    let watcher = thread::spawn(move || watch(stats, watching));
    let report =
        server.run(Input::Sized(Box::new(Pattern::new(0x6b61_6361_7374, config.size)), config.size))?;
    for c in clients {
        let _ = c.join();
    }
    drop(done);
    let _ = watcher.join();
    let verified = report
        .nodes
        .iter()
        .map(|n| {
            let path = dir.join(format!("{}.img", n.name));
            let ok = match (&report.hash, hash_file(&path)) {
                (Some(want), Ok(got)) => *want == got,
                _ => false,
            };
            (n.name.clone(), ok)
        })
        .collect();
    Ok(DemoOutcome { report, verified, dir })
}

fn hash_file(path: &PathBuf) -> io::Result<String> {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path)?)?;
    Ok(h.finalize().to_hex().to_string())
}

/// How this process's temporary directories begin: named for the process, so
/// that [`remove_temp_dirs`] finds its own and no one else's.
fn temp_prefix() -> String {
    format!("kacast-demo-{}-", std::process::id())
}

/// Removes the temporary directories this process's demos made, and returns
/// them: for a signal, which leaves the demo no time to drop them.
pub fn remove_temp_dirs() -> Vec<PathBuf> {
    let prefix = temp_prefix();
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        // A node may create its file during the first pass: a second one
        // takes it.
        .filter(|p| std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_dir_all(p)).is_ok())
        .collect()
}

/// A directory removed on drop (std has none; tempfile is a test dependency).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        let base = std::env::temp_dir();
        for i in 0..1000u32 {
            let p = base.join(format!("{}{i}", temp_prefix()));
            match std::fs::create_dir(&p) {
                Ok(()) => return Ok(TempDir(p)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).context(|| format!("create {}", p.display())),
            }
        }
        Err(Error::Config("cannot create a temporary directory".into()))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
