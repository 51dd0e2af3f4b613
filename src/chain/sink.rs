//! What a node does with its own copy of the stream.

use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};

use super::image::{self, ImageSink};
use super::stream::{StreamReader, Verdict};
use crate::io::StderrTail;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// `-e CMD`: a shell command fed the stream on its stdin (`tar -C /mnt -x`).
    Command(String),
    /// `--to-dir DIR`: a tar stream unpacked in-process.
    Dir(PathBuf),
    /// `--to-file PATH`: the raw bytes, to a file or a block device.
    File(PathBuf),
    /// A raw image to its partition, decompressed and decoded on the way.
    Image(ImageSink),
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
            Sink::Image(i) => write!(f, "{i}"),
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
            Sink::File(path) => image::write(&ImageSink::plain(path), &mut stream, guard),
            Sink::Image(image) => image::write(image, &mut stream, guard),
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

fn run_command(cmd: &str, stream: &mut StreamReader, guard: &SinkGuard) -> (Option<i32>, Option<String>) {
    let mut command = match SinkCommand::spawn(cmd, Stdio::null(), guard) {
        Ok(c) => c,
        Err(e) => return (None, Some(e)),
    };
    let write_error = command.feed(stream);
    command.finish(write_error, guard)
}

/// A sink's shell command: fed the stream on its stdin, in its own process
/// group so a guard can kill whatever it started, its stderr logged.
pub(super) struct SinkCommand {
    pub child: Child,
    stdin: Option<ChildStdin>,
    stderr: Option<StderrTail>,
}

impl SinkCommand {
    pub fn spawn(cmd: &str, stdout: Stdio, guard: &SinkGuard) -> Result<SinkCommand, String> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start: {e}"))?;
        guard.set(Some(child.id() as i32));
        let stderr = child.stderr.take().map(|e| StderrTail::collect(e, Some("sink")));
        let stdin = child.stdin.take();
        Ok(SinkCommand { child, stdin, stderr })
    }

    /// Writes the stream to the command until it ends or the command stops
    /// reading; then closes its stdin.
    pub fn feed(&mut self, stream: &mut StreamReader) -> Option<io::Error> {
        let mut stdin = self.stdin.take().expect("fed once");
        while let Some(chunk) = stream.next_chunk() {
            if let Err(e) = stdin.write_all(&chunk) {
                return Some(e);
            }
        }
        None
    }

    /// Waits for the command: its exit code, and what went wrong if anything.
    pub fn finish(
        mut self,
        write_error: Option<io::Error>,
        guard: &SinkGuard,
    ) -> (Option<i32>, Option<String>) {
        drop(self.stdin.take());
        let status = self.child.wait();
        guard.set(None);
        let said = self.stderr.take().map(StderrTail::said).unwrap_or_default();
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
