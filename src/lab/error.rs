use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum LabError {
    /// What this machine lacks for a virtual rack, all of it at once.
    #[error("this machine cannot run the virtual rack:\n  {}", .0.join("\n  "))]
    Missing(Vec<String>),
    #[error("{step}: {why}")]
    Step { step: String, why: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

impl LabError {
    pub fn step(step: impl Into<String>, why: impl std::fmt::Display) -> LabError {
        LabError::Step { step: step.into(), why: why.to_string() }
    }
}

pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> LabError + '_ {
    move |source| LabError::Io { path: path.to_path_buf(), source }
}
