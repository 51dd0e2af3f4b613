//! Where the server's stream comes from, and how to read it again from an offset
//! when a node resumes after the server's buffer has moved on.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use crate::chain::Fallback;
use crate::error::{IoContext, Result};
use crate::io::Filter;

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
    /// A reader that can be made again and gives the same bytes each time (a
    /// sparse raw image), so a node behind the buffer can be served again.
    Reopen(Reopen),
}

/// Opens an [`Input::Reopen`] from its start.
pub type Reopen = Arc<dyn Fn() -> io::Result<Box<dyn Read + Send>> + Send + Sync>;

pub(crate) struct Opened {
    pub reader: Box<dyn Read + Send>,
    pub len: Option<u64>,
    /// Set when the input can be read again from any offset.
    pub reread: Option<Fallback>,
}

pub(crate) fn open_input(input: Input) -> Result<Opened> {
    Ok(match input {
        Input::Command(cmd) => {
            let filter = Filter::spawn(&cmd, None).context(|| format!("start input command `{cmd}`"))?;
            Opened { reader: Box::new(filter), len: None, reread: None }
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
        Input::Reopen(open) => {
            let reader = open().context(|| "open input".to_string())?;
            let reread: Fallback = Arc::new(move |offset| {
                let mut r = open().ok()?;
                // Deterministic, so the bytes before `offset` are the ones sent.
                let skipped = io::copy(&mut (&mut r).take(offset), &mut io::sink()).ok()?;
                (skipped == offset).then_some(r)
            });
            Opened { reader, len: None, reread: Some(reread) }
        }
    })
}
