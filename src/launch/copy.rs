//! Copying the agent binary to a node that lacks it (Kascade copies itself the
//! same way), under a name derived from its content.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::info;

use super::{script, ssh, LaunchConfig, LaunchError};

/// Where copies go on the nodes. Every node has it and it is writable; a node
/// mounting it `noexec` cannot run the copy (the agent's start then fails
/// with the remote shell's "Permission denied").
pub const COPY_DIR: &str = "/tmp";

/// The local agent's identity: content hash (16 hex digits of BLAKE3) and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Image {
    pub(crate) hash: String,
    pub(crate) size: u64,
}

impl Image {
    /// `/tmp/kacast-<hash>`: the same bytes always get the same name, so a copy
    /// made by an earlier or a concurrent run is reused, and a different
    /// build never runs under the wrong name.
    pub(crate) fn remote_path(&self) -> String {
        format!("{COPY_DIR}/kacast-{}", self.hash)
    }
}

/// (path, device, inode, size, mtime seconds and nanoseconds) of a file hashed before.
type ImageKey = (PathBuf, u64, u64, u64, i64, i64);

/// Hashes of local agents already read: starting 200 agents reads the binary
/// once, not 200 times. Keyed by the file's identity and mtime, so a rebuilt
/// binary is hashed again.
fn cache() -> &'static Mutex<HashMap<ImageKey, Image>> {
    static CACHE: OnceLock<Mutex<HashMap<ImageKey, Image>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The hash and size of the local agent at `path`.
pub(crate) fn image(path: &Path) -> std::io::Result<Image> {
    let meta = std::fs::metadata(path)?;
    let key = (path.to_path_buf(), meta.dev(), meta.ino(), meta.size(), meta.mtime(), meta.mtime_nsec());
    if let Some(img) = cache().lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(img.clone());
    }
    let mut hasher = blake3::Hasher::new();
    let size = hasher.update_reader(File::open(path)?)?.count();
    let img = Image { hash: hasher.finalize().to_hex()[..16].to_string(), size };
    cache().lock().unwrap_or_else(|p| p.into_inner()).insert(key, img.clone());
    Ok(img)
}

/// Unique across masters and runs: part of the temporary name of a copy.
fn nonce() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{:x}{:x}{:x}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed), nanos)
}

/// What to run on `node`: the installed agent when `cfg.agent_path` is there,
/// else the copy, made now if it is missing. Returns the remote path and
/// whether this call copied it.
pub(crate) fn ensure(node: &str, cfg: &LaunchConfig) -> Result<(String, bool), LaunchError> {
    let img = image(&cfg.local_agent).map_err(|source| LaunchError::LocalAgent {
        node: node.to_string(),
        path: cfg.local_agent.clone(),
        source,
    })?;
    let remote = img.remote_path();
    let probe_error =
        |detail: String| LaunchError::Probe { node: node.to_string(), agent: cfg.agent_path.clone(), detail };
    let probed =
        ssh::run(node, &cfg.connector, &script::probe(&cfg.agent_path, &remote), None, cfg.setup_timeout)
            .map_err(probe_error)?;
    let answer = probed.stdout.iter().rev().find_map(|l| l.trim().strip_prefix(script::PROBE_TAG));
    match answer {
        _ if !probed.status.success() => Err(probe_error(probed.describe())),
        Some(script::PROBE_INSTALLED) => Ok((cfg.agent_path.clone(), false)),
        Some(script::PROBE_COPIED) => Ok((remote, false)),
        Some(script::PROBE_ABSENT) => {
            info!(node, agent = %cfg.agent_path, copy = %remote, "agent not installed: copying it");
            let copy_error =
                |detail: String| LaunchError::Copy { node: node.to_string(), remote: remote.clone(), detail };
            let input = File::open(&cfg.local_agent).map_err(|source| LaunchError::LocalAgent {
                node: node.to_string(),
                path: cfg.local_agent.clone(),
                source,
            })?;
            let copied = ssh::run(
                node,
                &cfg.connector,
                &script::copy(&remote, img.size, &nonce()),
                Some(input),
                cfg.setup_timeout,
            )
            .map_err(copy_error)?;
            if !copied.status.success() {
                return Err(copy_error(copied.describe()));
            }
            Ok((remote, true))
        }
        _ => Err(probe_error(format!("unexpected answer from the remote shell: {:?}", probed.stdout))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_hash_names_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, b"agent bytes").unwrap();
        let img = image(&a).unwrap();
        assert_eq!(img.size, 11);
        assert_eq!(img.hash, &blake3::hash(b"agent bytes").to_hex()[..16]);
        assert_eq!(img.remote_path(), format!("/tmp/kacast-{}", img.hash));
        // A rewritten file is hashed again (its size changed, so its key did).
        std::fs::write(&a, b"other agent bytes").unwrap();
        assert_ne!(image(&a).unwrap().hash, img.hash);
    }
}
