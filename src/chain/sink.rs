//! What a node does with its own copy of the stream.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;

use tracing::warn;

use super::stream::{StreamReader, Verdict};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// `-e CMD`: a shell command fed the stream on its stdin (`tar -C /mnt -x`).
    Command(String),
    /// `--to-dir DIR`: a tar stream unpacked in-process.
    Dir(PathBuf),
    /// `--to-file PATH`: the raw bytes, to a file or a block device.
    File(PathBuf),
    /// Receive, verify and relay only (benchmarks, relays without a disk).
    Discard,
}

/// The node's local result: the stream verdict plus what the sink made of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkOutcome {
    pub bytes: u64,
    pub hash_ok: bool,
    /// Exit status of the command sink, when it exited normally.
    pub status: Option<i32>,
    pub error: Option<String>,
}

impl SinkOutcome {
    pub fn ok(&self) -> bool {
        self.hash_ok && self.error.is_none()
    }
}

impl std::fmt::Display for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sink::Command(c) => write!(f, "command `{c}`"),
            Sink::Dir(d) => write!(f, "directory {}", d.display()),
            Sink::File(p) => write!(f, "file {}", p.display()),
            Sink::Discard => f.write_str("discard"),
        }
    }
}

/// Lets the node kill its sink command (and everything it started) when the
/// node is cut off: a hung `tar` must not outlive the agent that ran it.
#[derive(Debug, Clone, Default)]
pub struct SinkGuard(Arc<Mutex<Option<i32>>>);

impl SinkGuard {
    pub fn kill(&self) {
        if let Some(pgid) = self.0.lock().unwrap_or_else(|p| p.into_inner()).take() {
            // SAFETY: signals the process group the sink command leads.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }

    fn set(&self, pgid: Option<i32>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = pgid;
    }
}

impl Sink {
    /// Feeds the whole stream to the sink. Whatever the sink does, the stream is
    /// read to its end (a failed sink must not stall the children) and verified.
    pub fn run(&self, stream: StreamReader) -> SinkOutcome {
        self.run_guarded(stream, &SinkGuard::default())
    }

    /// As [`Sink::run`], with a guard that can kill the sink command.
    pub fn run_guarded(&self, mut stream: StreamReader, guard: &SinkGuard) -> SinkOutcome {
        let (status, sink_error) = match self {
            Sink::Command(cmd) => run_command(cmd, &mut stream, guard),
            Sink::Dir(dir) => (None, unpack(dir, &mut stream).err()),
            Sink::File(path) => (None, write_file(path, &mut stream).err()),
            Sink::Discard => (None, None),
        };
        let Verdict { bytes, hash_ok, error } = stream.verdict();
        // A broken stream explains a failing sink better than the sink's own error.
        let error = match (error, sink_error) {
            (Some(e), _) => Some(e),
            (None, Some(e)) => Some(format!("{self}: {e}")),
            (None, None) => None,
        };
        SinkOutcome { bytes, hash_ok, status, error }
    }
}

/// Lines of the command's stderr kept for the report: the last ones say why.
const STDERR_TAIL: usize = 5;

fn run_command(cmd: &str, stream: &mut StreamReader, guard: &SinkGuard) -> (Option<i32>, Option<String>) {
    let spawned = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a guard can kill whatever the command started.
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return (None, Some(format!("cannot start: {e}"))),
    };
    guard.set(Some(child.id() as i32));
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let stderr = child.stderr.take().map(|err| {
        let tail = Arc::clone(&tail);
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                warn!("sink: {line}");
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                if t.len() == STDERR_TAIL {
                    t.pop_front();
                }
                t.push_back(line);
            }
        })
    });
    let mut stdin = child.stdin.take().expect("stdin was piped");
    let mut write_error = None;
    while let Some(chunk) = stream.next_chunk() {
        if let Err(e) = stdin.write_all(&chunk) {
            write_error = Some(e);
            break;
        }
    }
    drop(stdin);
    let status = child.wait();
    guard.set(None);
    if let Some(h) = stderr {
        let _ = h.join();
    }
    let tail: Vec<String> = tail.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect();
    let said = if tail.is_empty() { String::new() } else { format!(": {}", tail.join(" | ")) };
    match status {
        Ok(s) if s.success() && write_error.is_none() => (Some(0), None),
        Ok(s) => match s.code() {
            Some(code) if code != 0 => (Some(code), Some(format!("exited with status {code}{said}"))),
            Some(code) => (
                Some(code),
                Some(format!(
                    "stopped reading its input early ({}){said}",
                    write_error.expect("checked above")
                )),
            ),
            None => (None, Some(format!("killed by a signal ({s}){said}"))),
        },
        Err(e) => (None, Some(format!("cannot wait for it: {e}"))),
    }
}

fn unpack(dir: &PathBuf, stream: &mut StreamReader) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create it: {e}"))?;
    let mut archive = tar::Archive::new(stream);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    // Numeric owners only mean something when we may chown, i.e. as root.
    // SAFETY: geteuid has no preconditions.
    archive.set_preserve_ownerships(unsafe { libc::geteuid() } == 0);
    archive.unpack(dir).map_err(|e| format!("unpacking the tar stream failed: {e}"))
}

fn write_file(path: &PathBuf, stream: &mut StreamReader) -> Result<(), String> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| format!("cannot open: {e}"))?;
    // A regular file is replaced; a block device is written over from its start.
    if file.metadata().map(|m| m.is_file()).unwrap_or(false) {
        file.set_len(0).map_err(|e| format!("cannot truncate: {e}"))?;
    }
    while let Some(chunk) = stream.next_chunk() {
        file.write_all(&chunk).map_err(|e| format!("write failed after {} bytes: {e}", stream.bytes()))?;
    }
    file.sync_all().map_err(|e| format!("flushing to disk failed: {e}"))
}
