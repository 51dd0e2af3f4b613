//! What can go wrong while planning and applying a clone on a node.
//!
//! Every variant names the device, file or tool involved: an admin reading the
//! report of a rack must know which node, which disk and which step.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// An external tool (sfdisk, mkfs.*, grub-install…) failed.
    #[error("{tool} failed on {target}: {detail}")]
    Tool { tool: String, target: String, detail: String },
    /// A tool the step needs is not installed (on the node, or in the stage2).
    #[error("'{tool}' is not installed, needed to {purpose}")]
    MissingTool { tool: String, purpose: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a block device", path.display())]
    NotBlockDevice { path: PathBuf },
    #[error("{}: no such disk", path.display())]
    NoSuchDisk { path: PathBuf },
    /// The disk (or one of its partitions) is mounted, a swap, or held by
    /// device-mapper/md: writing to it would destroy a running system.
    #[error("{} is in use: {}", path.display(), reasons.join("; "))]
    InUse { path: PathBuf, reasons: Vec<String> },
    /// The plan cannot be carried out on this node (checked before any write).
    #[error("plan refused: {0}")]
    Plan(String),
    /// Anything else about the node's state that stops a step, said plainly.
    #[error("{0}")]
    Other(String),
}

impl DiskError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> DiskError {
        DiskError::Io { what: what.into(), source }
    }
}

pub type Result<T, E = DiskError> = std::result::Result<T, E>;
