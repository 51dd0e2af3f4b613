//! The golden node's side of a raw image: which bytes are read, and how they
//! travel (sparse, compressed).
//!
//! An ext2/3/4 filesystem that is not mounted read-write is read through
//! `e2image -ra`, which reads only the blocks the filesystem uses and gives
//! zeros for the others without touching the disk; anything else (the ESP's
//! FAT, a partition of unknown contents) is read whole. Either way the sparse
//! encoder then drops every block of zeros, so the wire carries about what
//! the filesystem holds. A filesystem mounted read-write is read whole: its
//! image could be inconsistent either way, and e2image refuses it.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{info, warn};

use crate::boot::stage2::find_tool;
use crate::disk::blockdev;
use crate::disk::tar::sh_quote;
use crate::io::sparse::SparseEncoder;
use crate::io::Filter;
use crate::session::Input;

/// How the golden node reads one raw partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawSource {
    /// `e2image -ra`: the used blocks, zeros for the rest.
    UsedBlocks,
    /// Every byte of the device.
    Whole,
}

/// The session input for the raw image of `device` (a partition, or an image
/// file): sparse or byte for byte, compressed on the fly with zstd at `level`
/// (a recorded image's files are already compressed, and are sent as they are).
pub fn image_input(device: PathBuf, sparse: bool, level: Option<u32>) -> Input {
    if !sparse && level.is_none() {
        return Input::File(device);
    }
    let source = if sparse { read_source(&device) } else { RawSource::Whole };
    info!(
        "raw image of {}: {}{}",
        device.display(),
        match (&source, sparse) {
            (RawSource::UsedBlocks, _) => "used blocks (e2image), sparse",
            (RawSource::Whole, true) => "every block read, sparse",
            (RawSource::Whole, false) => "every byte",
        },
        level.map(|l| format!(", zstd level {l}")).unwrap_or_default()
    );
    Input::Reopen(Arc::new(move || open(&device, &source, sparse, level)))
}

fn open(
    device: &Path,
    source: &RawSource,
    sparse: bool,
    level: Option<u32>,
) -> io::Result<Box<dyn Read + Send>> {
    let bytes: Box<dyn Read + Send> = match source {
        RawSource::UsedBlocks => {
            Box::new(Filter::spawn(&format!("e2image -ra {} -", sh_quote(&device.to_string_lossy())), None)?)
        }
        RawSource::Whole => Box::new(File::open(device)?),
    };
    let bytes: Box<dyn Read + Send> = if sparse { Box::new(SparseEncoder::new(bytes)) } else { bytes };
    Ok(match level {
        Some(l) => Box::new(Filter::spawn(&format!("zstd -T0 -{l} -q -c"), Some(bytes))?),
        None => bytes,
    })
}

/// Used blocks for ext2/3/4 when e2image is there and the filesystem is not
/// mounted read-write; every block otherwise.
pub fn read_source(device: &Path) -> RawSource {
    let fstype = blockdev::probe(device).ok().and_then(|p| p.fstype).unwrap_or_default();
    if !matches!(fstype.as_str(), "ext2" | "ext3" | "ext4") {
        return RawSource::Whole;
    }
    if find_tool("e2image").is_none() {
        warn!("{}: e2image not found: every block is read (zeros are still not sent)", device.display());
        return RawSource::Whole;
    }
    let mounted_rw = blockdev::rdev(device).ok().is_some_and(|dev| {
        blockdev::mounts().unwrap_or_default().iter().any(|m| (m.major, m.minor) == dev && !m.read_only)
    });
    if mounted_rw {
        warn!(
            "{} is mounted read-write: its raw image may be inconsistent; every block is read",
            device.display()
        );
        return RawSource::Whole;
    }
    RawSource::UsedBlocks
}
