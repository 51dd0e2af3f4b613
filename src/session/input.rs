//! Where the server's stream comes from, and how to read it again from an offset
//! when a node resumes after the server's buffer has moved on.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;

use crate::chain::Fallback;
use crate::error::{IoContext, Result};

/// Where the stream comes from.
pub enum Input {
    /// `-e CMD`: a shell command's stdout; a non-zero exit fails the stream.
    Command(String),
    /// `-i FILE`: a file or block device, whose size gives the progress bar an ETA
    /// and which can be re-read for a node that fell behind the buffer.
    File(PathBuf),
    /// `-i -`
    Stdin,
    /// Any reader, for programs embedding the server.
    Reader(Box<dyn Read + Send>),
    /// A reader whose length is known, so progress can show an ETA.
    Sized(Box<dyn Read + Send>, u64),
}

pub(crate) struct Opened {
    pub reader: Box<dyn Read + Send>,
    pub len: Option<u64>,
    /// Set when the input can be read again from any offset.
    pub reread: Option<Fallback>,
}

pub(crate) fn open_input(input: Input) -> Result<Opened> {
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
            Opened {
                reader: Box::new(CommandOutput { child, stdout, cmd, waited: false }),
                len: None,
                reread: None,
            }
        }
        Input::File(path) => {
            let f = File::open(&path).context(|| format!("open input {}", path.display()))?;
            let meta = f.metadata().ok();
            let len = meta.as_ref().filter(|m| m.is_file()).map(|m| m.len());
            let reread: Fallback = Arc::new(move |offset| {
                let mut f = File::open(&path).ok()?;
                f.seek(SeekFrom::Start(offset)).ok()?;
                Some(Box::new(f) as Box<dyn Read + Send>)
            });
            Opened { reader: Box::new(f), len, reread: Some(reread) }
        }
        Input::Stdin => Opened { reader: Box::new(io::stdin()), len: None, reread: None },
        Input::Reader(r) => Opened { reader: r, len: None, reread: None },
        Input::Sized(r, len) => Opened { reader: r, len: Some(len), reread: None },
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
                return Err(io::Error::other(format!("input command `{}` failed ({status})", self.cmd)));
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
