//! A shell command's stdout as a `Read`, optionally fed from another reader
//! on its stdin: `tar` writing the tree, or `zstd` compressing a raw image.
//!
//! Its end is only an end when the command (and the feeding) succeeded: a
//! `tar` or `zstd` that fails half-way must fail the stream, not look like a
//! short but whole image.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::thread::{self, JoinHandle};

use tracing::{debug, warn};

pub struct Filter {
    child: Child,
    stdout: ChildStdout,
    cmd: String,
    feeder: Option<JoinHandle<io::Result<()>>>,
    stderr: Option<StderrTail>,
    waited: bool,
}

/// Lines of a command's stderr kept for its error: the last ones say why.
const STDERR_TAIL: usize = 5;

/// Reads a command's stderr as it comes (so it never blocks on a full pipe),
/// logs each line, and keeps the last few for the error that names it.
pub struct StderrTail(JoinHandle<VecDeque<String>>);

impl StderrTail {
    /// `label`: lines are logged as warnings under it; `None`: at debug level
    /// (a tool's banner, e2image's, is not news).
    pub fn collect(stderr: ChildStderr, label: Option<&'static str>) -> StderrTail {
        StderrTail(thread::spawn(move || {
            let mut tail = VecDeque::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                match label {
                    Some(label) => warn!("{label}: {line}"),
                    None => debug!("{line}"),
                }
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            tail
        }))
    }

    /// `: line | line`, or nothing; call once the command has exited.
    pub fn said(self) -> String {
        let tail: Vec<String> = self.0.join().unwrap_or_default().into();
        if tail.is_empty() {
            String::new()
        } else {
            format!(": {}", tail.join(" | "))
        }
    }
}

impl Filter {
    /// Starts `sh -c cmd` with `source` (or nothing) on its stdin.
    pub fn spawn(cmd: &str, source: Option<Box<dyn Read + Send>>) -> io::Result<Filter> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stdin(if source.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().expect("stdout was piped");
        let stderr = child.stderr.take().map(|e| StderrTail::collect(e, None));
        let feeder = source.map(|mut source| {
            let mut stdin = child.stdin.take().expect("stdin was piped");
            thread::spawn(move || {
                io::copy(&mut source, &mut stdin)?;
                stdin.flush()
            })
        });
        Ok(Filter { child, stdout, cmd: cmd.to_string(), feeder, stderr, waited: false })
    }

    /// At the end of stdout: the command's verdict first (a command that
    /// died explains the feeder's broken pipe), then the feeder's.
    fn judge(&mut self) -> io::Result<()> {
        self.waited = true;
        let status = self.child.wait()?;
        let fed =
            self.feeder.take().map(|h| h.join().unwrap_or_else(|_| Err(io::Error::other("feeder panicked"))));
        let said = self.stderr.take().map(StderrTail::said).unwrap_or_default();
        if !status.success() {
            return Err(io::Error::other(format!("`{}` failed ({status}){said}", self.cmd)));
        }
        match fed {
            Some(Err(e)) => Err(io::Error::new(e.kind(), format!("feeding `{}`: {e}", self.cmd))),
            _ => Ok(()),
        }
    }
}

impl Read for Filter {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stdout.read(buf)?;
        if n == 0 && !buf.is_empty() && !self.waited {
            self.judge()?;
        }
        Ok(n)
    }
}

impl Drop for Filter {
    fn drop(&mut self) {
        if !self.waited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // A feeder blocked on a full pipe gets EPIPE once the child is gone.
        if let Some(h) = self.feeder.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(mut f: Filter) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        f.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn a_command_transforms_its_source() {
        let source = Box::new(io::Cursor::new(b"abc".repeat(100_000)));
        let out = read_all(Filter::spawn("tr a-c x-z", Some(source)).unwrap()).unwrap();
        assert_eq!(out, b"xyz".repeat(100_000));
        assert_eq!(read_all(Filter::spawn("printf hi", None).unwrap()).unwrap(), b"hi");
    }

    #[test]
    fn a_failing_command_fails_the_stream() {
        let err =
            read_all(Filter::spawn("printf part; echo no space >&2; exit 3", None).unwrap()).unwrap_err();
        assert!(err.to_string().contains("exit status: 3): no space"), "{err}");
        // It stops reading early: its exit, not the feeder's broken pipe, is the news.
        let source = Box::new(io::Cursor::new(vec![7u8; 10 << 20]));
        let err =
            read_all(Filter::spawn("head -c 10 >/dev/null; exit 4", Some(source)).unwrap()).unwrap_err();
        assert!(err.to_string().contains("exit status: 4"), "{err}");
    }

    #[test]
    fn a_failing_source_fails_the_stream() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk read error"))
            }
        }
        let err = read_all(Filter::spawn("cat", Some(Box::new(Broken))).unwrap()).unwrap_err();
        assert!(err.to_string().contains("disk read error"), "{err}");
    }
}
