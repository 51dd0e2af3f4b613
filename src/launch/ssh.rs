//! Running a command on a node through the user's connector (`ssh …`), and
//! keeping the last lines it prints.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tracing::debug;

use super::LaunchError;

/// Lines of a remote command's stdout and stderr kept for the report: the
/// last ones say why it failed (`ssh: connect to host n3 port 22: …`).
pub(crate) const TAIL_LINES: usize = 10;
/// Longer lines are cut: a command printing binary data must not fill memory.
const MAX_LINE: usize = 2000;
/// How long to wait for the output pipes to close once the connector exited:
/// something it started (a ProxyCommand) may hold them open forever.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// Poll interval while waiting for a connector with a deadline.
const POLL: Duration = Duration::from_millis(10);

/// The local command running `remote` on `node`: `sh -c 'exec CONNECTOR "$@"'`.
/// The connector is a shell string (as Kadeploy's `-S` is), so its own quoting
/// and variables work; `exec` makes the connector the process we hold, so
/// killing it really kills the ssh client.
pub(crate) fn connector_command(connector: &str, node: &str, remote: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!("exec {connector} \"$@\"")).arg("kacast-connector").arg(node).arg(remote);
    cmd
}

/// The last lines of one output stream, collected by a thread.
pub(crate) struct Drain {
    lines: Arc<Mutex<VecDeque<String>>>,
    /// Disconnected when the thread is done (EOF or read error).
    done: mpsc::Receiver<()>,
}

impl Drain {
    /// Reads `from` to its end on a thread, logging each line for `node`.
    pub(crate) fn start(from: impl Read + Send + 'static, node: &str, stream: &'static str) -> Drain {
        let lines = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let (tx, done) = mpsc::channel::<()>();
        let kept = Arc::clone(&lines);
        let node = node.to_string();
        thread::spawn(move || {
            let _tx = tx;
            read_lines(from, |line| {
                debug!(node = %node, stream, "{line}");
                let mut l = kept.lock().unwrap_or_else(|p| p.into_inner());
                if l.len() == TAIL_LINES {
                    l.pop_front();
                }
                l.push_back(line);
            });
        });
        Drain { lines, done }
    }

    /// The lines kept, once the stream ended or `DRAIN_GRACE` passed.
    pub(crate) fn finish(self) -> Vec<String> {
        let _ = self.done.recv_timeout(DRAIN_GRACE);
        let mut l = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        l.drain(..).collect()
    }
}

/// Calls `each` with every line of `from` (without its `\n` or `\r`), cut at
/// `MAX_LINE` bytes, decoded lossily; a last line without `\n` counts.
fn read_lines(mut from: impl Read, mut each: impl FnMut(String)) {
    let mut line = Vec::new();
    let mut buf = [0u8; 8192];
    let mut emit = |line: &mut Vec<u8>| {
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        each(String::from_utf8_lossy(line).into_owned());
        line.clear();
    };
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                emit(&mut line);
            } else if line.len() < MAX_LINE {
                line.push(b);
            }
        }
    }
    if !line.is_empty() {
        emit(&mut line);
    }
}

/// A connector process with its output being drained.
pub(crate) struct Running {
    pub(crate) child: Child,
    pub(crate) stdin: Option<ChildStdin>,
    pub(crate) stdout: Drain,
    pub(crate) stderr: Drain,
}

/// Starts `remote` on `node`; stdin, stdout and stderr are pipes.
pub(crate) fn spawn(node: &str, connector: &str, remote: &str) -> Result<Running, LaunchError> {
    let mut child = connector_command(connector, node, remote)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| LaunchError::Spawn {
            node: node.to_string(),
            connector: connector.to_string(),
            source,
        })?;
    let stdin = child.stdin.take();
    let stdout = Drain::start(child.stdout.take().expect("stdout is piped"), node, "stdout");
    let stderr = Drain::start(child.stderr.take().expect("stderr is piped"), node, "stderr");
    Ok(Running { child, stdin, stdout, stderr })
}

/// How a short remote command (probe, copy) ended.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: Vec<String>,
    pub(crate) stderr: Vec<String>,
}

impl Finished {
    /// `exited with status 255: ssh: connect to host n3 port 22: No route to host`.
    pub(crate) fn describe(&self) -> String {
        describe(Some(self.status), &self.stderr)
    }
}

/// Why a command ended badly, in one line: its status and its last stderr lines.
pub(crate) fn describe(status: Option<ExitStatus>, stderr: &[String]) -> String {
    use std::os::unix::process::ExitStatusExt;
    let how = match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exited with status {c}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None) => format!("ended: {s}"),
        },
        None => "could not be waited for".to_string(),
    };
    let said: Vec<&str> = stderr.iter().map(|l| l.trim()).filter(|l| !l.is_empty()).collect();
    if said.is_empty() {
        how
    } else {
        format!("{how}: {}", said.join(" | "))
    }
}

/// Runs `remote` on `node` to its end, feeding it `input` (then EOF), killing
/// it after `timeout`: an ssh that hangs on a half-dead node must not hang the
/// launch. The error says what went wrong with the connector itself.
pub(crate) fn run(
    node: &str,
    connector: &str,
    remote: &str,
    input: Option<File>,
    timeout: Duration,
) -> Result<Finished, String> {
    let mut running = spawn(node, connector, remote).map_err(|e| e.to_string())?;
    let stdin = running.stdin.take();
    let feeder: Option<JoinHandle<()>> = match (input, stdin) {
        (Some(mut file), Some(mut stdin)) => Some(thread::spawn(move || {
            // A failed write (the remote side quit) shows in its exit status.
            let _ = io::copy(&mut file, &mut stdin);
            let _ = stdin.flush();
        })),
        // No input: EOF at once.
        (_, stdin) => {
            drop(stdin);
            None
        }
    };
    let deadline = Instant::now() + timeout;
    let status = loop {
        match running.child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = running.child.kill();
                let _ = running.child.wait();
                let stderr = running.stderr.finish();
                let said =
                    if stderr.is_empty() { String::new() } else { format!(": {}", stderr.join(" | ")) };
                return Err(format!("no answer within {} s, connector killed{said}", timeout.as_secs()));
            }
            Ok(None) => thread::sleep(POLL),
            Err(e) => {
                let _ = running.child.kill();
                return Err(format!("cannot wait for the connector: {e}"));
            }
        }
    };
    if let Some(f) = feeder {
        // The connector is gone, so its stdin is closed: the copy ends now.
        let _ = f.join();
    }
    Ok(Finished { status, stdout: running.stdout.finish(), stderr: running.stderr.finish() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_cut_and_kept() {
        let mut got = Vec::new();
        let long = "x".repeat(MAX_LINE + 50);
        let text = format!("a\r\nb\n\n{long}\nlast");
        read_lines(text.as_bytes(), |l| got.push(l));
        assert_eq!(got.len(), 5);
        assert_eq!(got[0], "a");
        assert_eq!(got[1], "b");
        assert_eq!(got[2], "");
        assert_eq!(got[3].len(), MAX_LINE);
        assert_eq!(got[4], "last");
    }

    #[test]
    fn describe_names_status_and_stderr() {
        use std::os::unix::process::ExitStatusExt;
        let st = ExitStatus::from_raw(255 << 8);
        let err = vec!["ssh: connect to host n3 port 22: No route to host".to_string(), " ".to_string()];
        assert_eq!(
            describe(Some(st), &err),
            "exited with status 255: ssh: connect to host n3 port 22: No route to host"
        );
        assert_eq!(describe(Some(ExitStatus::from_raw(9)), &[]), "killed by signal 9");
    }

    /// A connector is any shell command taking `NODE REMOTE_CMD`: here a fake
    /// one that ignores the node and runs the command locally.
    #[test]
    fn run_feeds_input_and_collects_output() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        std::fs::write(&input, "one\ntwo\n").unwrap();
        let fake = dir.path().join("fake-ssh");
        std::fs::write(&fake, "#!/bin/sh\nshift\nexec sh -c \"$1\"\n").unwrap();
        // Run by `sh`, not executed: exec'ing a file just written races with
        // forks in other test threads (ETXTBSY).
        let fake = format!("sh {}", fake.display());
        let fake = fake.as_str();
        let done = run(
            "n1",
            fake,
            "wc -l; echo bye >&2; exit 3",
            Some(File::open(&input).unwrap()),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(done.status.code(), Some(3));
        assert_eq!(done.stdout, vec!["2".to_string()]);
        assert_eq!(done.describe(), "exited with status 3: bye");
        let slow = run("n1", fake, "sleep 30", None, Duration::from_millis(200)).unwrap_err();
        assert!(slow.contains("no answer within"), "{slow}");
    }
}
