//! The library's error type. Messages name the peer, file or setting involved,
//! because they end up in a sysadmin's terminal in the middle of a deployment.

use std::io;

use thiserror::Error;

use crate::protocol::ProtocolError;

#[derive(Debug, Error)]
pub enum Error {
    #[error("{context}: {err}")]
    Io { context: String, err: io::Error },
    #[error("{peer}: {err}")]
    Protocol { peer: String, err: ProtocolError },
    #[error("{peer} closed the connection {during}")]
    Closed { peer: String, during: &'static str },
    #[error("{peer} sent an unexpected {got} frame {during}")]
    Unexpected { peer: String, got: &'static str, during: &'static str },
    #[error("{peer}: authentication failed: {why}")]
    Auth { peer: String, why: String },
    #[error("server refused: {0}")]
    Refused(String),
    #[error("session aborted by the server: {0}")]
    Aborted(String),
    #[error("no kacast server answered for session '{session}' after {tries} tries")]
    NoServer { session: String, tries: u32 },
    #[error("{0}")]
    Config(String),
    #[error("stream failed: {0}")]
    Stream(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A read timed out: the peer was silent for the timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Io { err, .. } if crate::net::is_timeout(err))
    }
}

/// Attaches a description of what was being done to an I/O error.
pub(crate) trait IoContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|err| Error::Io { context: what(), err })
    }
}
