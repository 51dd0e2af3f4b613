//! Keyed sessions: who may join, and proof that every frame is genuine.
//!
//! Without a key, anyone on the network segment can join a session and receive
//! the stream (ka-deploy's situation, said loudly at start). With `--key-file` on
//! the server and the nodes (or `kacast.key=` on a node's kernel command line),
//! each connection starts with a challenge–response: the connector sends a fresh
//! nonce in its hello, the acceptor answers with its own nonce and a proof that
//! it holds the key, the connector answers with its proof. Both proofs and the
//! connection key are keyed BLAKE3 hashes over both nonces, so a recorded
//! handshake is worthless on a new connection. Every later frame is tagged with
//! the connection key ([`crate::connection`]). Nothing on the node listens for
//! commands: there is no remote-exec port (ka-deploy's send_status.pl had one).

use std::path::Path;

use crate::connection::{Connection, End};
use crate::error::{Error, Result};
use crate::protocol::{Frame, NONCE_LEN};

/// The session key, derived from a secret of any length.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<secret>)")
    }
}

const KEY_CONTEXT: &str = "kacast 2026-11 session key";

impl Key {
    /// Derives the key from a secret (the bytes of a key file, a passphrase).
    pub fn from_secret(secret: &[u8]) -> Result<Key> {
        if secret.is_empty() {
            return Err(Error::Config("the session key is empty".into()));
        }
        Ok(Key(blake3::derive_key(KEY_CONTEXT, secret)))
    }

    /// Reads a key file. One trailing newline is ignored, so `echo secret > f`
    /// and `kacast.key=secret` give the same key.
    pub fn from_file(path: &Path) -> Result<Key> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Config(format!("cannot read key file {}: {e}", path.display())))?;
        let secret = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        Key::from_secret(secret).map_err(|_| Error::Config(format!("key file {} is empty", path.display())))
    }

    /// `kacast.key=SECRET` from a kernel command line, for nodes booted by PXE.
    pub fn from_cmdline(cmdline: &str) -> Option<Result<Key>> {
        cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("kacast.key="))
            .map(|s| Key::from_secret(s.as_bytes()))
    }

    fn hash(&self, label: &[u8], connector: &[u8; NONCE_LEN], acceptor: &[u8; NONCE_LEN]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(label);
        h.update(connector);
        h.update(acceptor);
        *h.finalize().as_bytes()
    }
}

/// A fresh random nonce from the kernel.
pub fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    let mut got = 0;
    while got < n.len() {
        // SAFETY: writes at most the remaining length into our buffer.
        let r = unsafe { libc::getrandom(n[got..].as_mut_ptr().cast(), n.len() - got, 0) };
        if r > 0 {
            got += r as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            panic!("getrandom failed: {}", std::io::Error::last_os_error());
        }
    }
    n
}

/// Compares secrets (proofs, tags) without an early exit, so timing tells
/// nothing of how much of a forgery matched.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The acceptor's side, once it has read a hello carrying the connector's nonce
/// (`None`: the connector has no key). On success the connection is sealed.
pub fn accept(conn: &mut Connection, key: Option<&Key>, theirs: Option<[u8; NONCE_LEN]>) -> Result<()> {
    let (key, theirs) = match (key, theirs) {
        (None, None) => return Ok(()),
        (None, Some(_)) => {
            return refuse(conn, "this server has no key but the node has one: give both the same --key-file")
        }
        (Some(_), None) => {
            return refuse(conn, "this session requires a key: give the node the server's --key-file")
        }
        (Some(k), Some(n)) => (k, n),
    };
    let ours = nonce();
    let proof = key.hash(b"acceptor", &theirs, &ours);
    conn.write_frame(&Frame::Challenge { nonce: ours, proof })?;
    match conn.expect_frame("during the key handshake")? {
        Frame::Proof { proof } if same(&proof, &key.hash(b"connector", &theirs, &ours)) => {}
        Frame::Proof { .. } => {
            return refuse(conn, "authentication failed: wrong key, or a replayed handshake")
        }
        other => return Err(conn.unexpected(&other, "instead of a key proof")),
    }
    conn.seal(key.hash(b"connection", &theirs, &ours), End::Acceptor);
    Ok(())
}

/// The connector's side, after sending its hello with `ours` as nonce. Without a
/// key there is nothing to do (a keyed acceptor refuses us in its next frame).
pub fn connect(conn: &mut Connection, key: Option<&Key>, ours: [u8; NONCE_LEN]) -> Result<()> {
    let Some(key) = key else { return Ok(()) };
    let theirs = match conn.expect_frame("during the key handshake")? {
        Frame::Challenge { nonce, proof } if same(&proof, &key.hash(b"acceptor", &ours, &nonce)) => nonce,
        Frame::Challenge { .. } => {
            return Err(Error::Auth {
                peer: conn.peer().to_string(),
                why: "it does not hold this node's key (wrong key on one side, or an impostor)".into(),
            })
        }
        Frame::Refuse { reason } => return Err(Error::Refused(reason)),
        other => {
            return Err(Error::Auth {
                peer: conn.peer().to_string(),
                why: format!("it answered with {} instead of a key challenge: it has no key", other.kind()),
            })
        }
    };
    conn.write_frame(&Frame::Proof { proof: key.hash(b"connector", &ours, &theirs) })?;
    conn.seal(key.hash(b"connection", &ours, &theirs), End::Connector);
    Ok(())
}

fn refuse(conn: &mut Connection, reason: &str) -> Result<()> {
    let _ = conn.write_frame(&Frame::Refuse { reason: reason.to_string() });
    Err(Error::Refused(reason.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_files_and_cmdlines_agree() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "s3cret\n").unwrap();
        let from_file = Key::from_file(&p).unwrap();
        let from_cmdline = Key::from_cmdline("quiet kacast.key=s3cret root=/dev/ram").unwrap().unwrap();
        assert_eq!(from_file, from_cmdline);
        assert_ne!(from_file, Key::from_secret(b"other").unwrap());
        assert!(Key::from_cmdline("quiet").is_none());
        std::fs::write(&p, "").unwrap();
        assert!(Key::from_file(&p).unwrap_err().to_string().contains("is empty"));
        assert_eq!(format!("{from_file:?}"), "Key(<secret>)");
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(nonce(), nonce());
    }
}
