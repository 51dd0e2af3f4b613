//! A raw image's way onto a node's disk: through its decompressor (a
//! command), then decoded if sparse, then to the partition or image file.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::thread;

use tracing::info;

use super::sink::{SinkCommand, SinkGuard};
use super::stream::StreamReader;
use crate::io::sparse::{Extents, SparseDecoder};
use crate::io::target::{DiskTarget, TargetStats};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSink {
    /// The partition (or image file) written from its start.
    pub path: PathBuf,
    /// The stream is a sparse image (`io::sparse`).
    pub sparse: bool,
    /// A filter from stdin to stdout (`zstd -dc`) the stream goes through first.
    pub decompress: Option<String>,
}

impl ImageSink {
    /// The stream's bytes as they are.
    pub fn plain(path: &Path) -> ImageSink {
        ImageSink { path: path.to_path_buf(), sparse: false, decompress: None }
    }
}

impl std::fmt::Display for ImageSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "image {}", self.path.display())?;
        match (&self.decompress, self.sparse) {
            (Some(d), true) => write!(f, " (`{d}`, sparse)"),
            (Some(d), false) => write!(f, " (`{d}`)"),
            (None, true) => write!(f, " (sparse)"),
            (None, false) => Ok(()),
        }
    }
}

/// The decoded bytes' last stage: as they come, or as a sparse image.
enum Writer {
    Plain { target: DiskTarget, offset: u64 },
    Sparse(SparseDecoder<DiskTarget>),
}

impl Writer {
    fn finish(self) -> io::Result<TargetStats> {
        match self {
            Writer::Plain { mut target, offset } => {
                target.finish(offset)?;
                Ok(target.stats)
            }
            Writer::Sparse(decoder) => Ok(decoder.finish()?.stats),
        }
    }
}

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Writer::Plain { target, offset } => {
                target.write_at(*offset, buf)?;
                *offset += buf.len() as u64;
                Ok(buf.len())
            }
            Writer::Sparse(d) => d.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes the stream as `sink` says: the command's exit code when there is a
/// decompressor, and what went wrong. The stream is left for the caller to
/// drain and verify.
pub(super) fn write(
    sink: &ImageSink,
    stream: &mut StreamReader,
    guard: &SinkGuard,
) -> (Option<i32>, Option<String>) {
    let target = match DiskTarget::open(&sink.path) {
        Ok(t) => t,
        Err(e) => return (None, Some(format!("cannot open {}: {e}", sink.path.display()))),
    };
    let mut writer = if sink.sparse {
        Writer::Sparse(SparseDecoder::new(target))
    } else {
        Writer::Plain { target, offset: 0 }
    };
    let (status, written) = match &sink.decompress {
        None => {
            let mut fed = Ok(());
            while let Some(chunk) = stream.next_chunk() {
                if let Err(e) = writer.write_all(&chunk) {
                    fed = Err(e);
                    break;
                }
            }
            (None, fed.and_then(|()| writer.finish()))
        }
        Some(cmd) => match through(cmd, writer, stream, guard) {
            Ok(done) => done,
            Err(e) => return (None, Some(e)),
        },
    };
    match written {
        Ok(stats) => {
            info!("{sink}: {stats}");
            (status, None)
        }
        Err(e) => (status, Some(format!("{e} (after {} bytes of stream)", stream.bytes()))),
    }
}

/// Feeds the stream to the decompressor while a thread writes its output.
/// The image's own error (a full partition, a broken sparse record) comes
/// before the command's, which only sees its pipe close.
type Through = (Option<i32>, io::Result<TargetStats>);

fn through(
    cmd: &str,
    mut writer: Writer,
    stream: &mut StreamReader,
    guard: &SinkGuard,
) -> Result<Through, String> {
    let mut command = SinkCommand::spawn(cmd, Stdio::piped(), guard)?;
    let mut out = command.child.stdout.take().expect("stdout was piped");
    let drain = thread::spawn(move || -> io::Result<TargetStats> {
        io::copy(&mut out, &mut writer)?;
        writer.finish()
    });
    let write_error = command.feed(stream);
    let (status, command_error) = command.finish(write_error, guard);
    let written = drain.join().unwrap_or_else(|_| Err(io::Error::other("the image writer panicked")));
    Ok(match (written, command_error) {
        (Err(e), _) => (status, Err(e)),
        (Ok(_), Some(e)) => (status, Err(io::Error::other(format!("`{cmd}` {e}")))),
        (Ok(stats), None) => (status, Ok(stats)),
    })
}
