//! The golden node's SSH host keys (step 4 of the module doc of [`super`]):
//! removed and made anew, by the clone's own ssh-keygen in a chroot (with the
//! `/dev` nodes it needs) or else by this host's, staged inside the clone's
//! `etc/ssh` so a symlinked directory never leads the keys out of the root.

use std::ffi::CString;
use std::fs::{self, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::atomic::TEMP_NAME_BYTES;
use super::random::{hex, random_bytes, random_error};
use super::safe_path::{list, Tree};
use crate::disk::error::{DiskError, Result};
use crate::disk::tool;

/// sshd refuses a private host key others can read; public keys are public.
const PRIVATE_KEY_MODE: u32 = 0o600;
const PUBLIC_KEY_MODE: u32 = 0o644;

/// The clone's own ssh-keygen, run in a chroot when present.
const CLONE_SSH_KEYGEN: &str = "usr/bin/ssh-keygen";

const SSH_DIR: &str = "etc/ssh";
const SSH_KEYGEN: &str = "ssh-keygen";

pub(super) fn renew_ssh_host_keys(tree: &Tree, keep: bool, log: &mut Vec<String>) -> Result<()> {
    let Some(dir) = tree.dir(SSH_DIR)? else { return Ok(()) };
    if keep {
        log.push("kept the golden node's SSH host keys, as asked".to_string());
        return Ok(());
    }
    let removed = remove_host_keys(tree, &dir)?;
    log.push(format!("removed {removed} SSH host key files of the golden node from {}", tree.show(&dir)));
    match generate_host_keys(tree, &dir, log)? {
        Some(by) => {
            let types = fix_key_modes(tree, &dir)?;
            log.push(format!("new SSH host keys ({}) made by {by}", types.join(", ")));
        }
        None => log.push(format!(
            "no ssh-keygen in the clone nor here: {} has no host keys until `ssh-keygen -A` runs at \
             first boot (RHEL's sshd-keygen does it; Debian's sshd will not start without keys)",
            tree.show(&dir)
        )),
    }
    Ok(())
}

/// `ssh_host_*_key` and its `.pub` (certificates are not keys).
fn is_host_key(name: &str) -> bool {
    name.starts_with("ssh_host_") && (name.ends_with("_key") || name.ends_with("_key.pub"))
}

fn remove_host_keys(tree: &Tree, dir: &Path) -> Result<usize> {
    let entries = list(dir).map_err(|e| DiskError::io(format!("reading {}", tree.show(dir)), e))?;
    let mut removed = 0;
    for (_, path) in entries.iter().filter(|(name, _)| is_host_key(name)) {
        fs::remove_file(path).map_err(|e| DiskError::io(format!("removing {}", tree.show(path)), e))?;
        removed += 1;
    }
    Ok(removed)
}

/// Makes new host keys in `dir`; who made them, `None` if nobody could.
fn generate_host_keys(tree: &Tree, dir: &Path, log: &mut Vec<String>) -> Result<Option<&'static str>> {
    if tree.file(CLONE_SSH_KEYGEN)?.is_some() {
        match keygen_in_chroot(tree, dir) {
            Ok(()) => return Ok(Some("the clone's ssh-keygen (chroot)")),
            Err(e) => {
                log.push(format!("the clone's ssh-keygen could not run in a chroot ({e}): using this host's"))
            }
        }
    }
    if !tool::exists(SSH_KEYGEN) {
        return Ok(None);
    }
    keygen_with_prefix(tree, dir)?;
    Ok(Some("this host's ssh-keygen"))
}

fn keygen_in_chroot(tree: &Tree, dir: &Path) -> Result<()> {
    tool::require("chroot", "run the clone's ssh-keygen")?;
    let devices = Devices::provide(tree)?;
    let mut cmd = Command::new("chroot");
    cmd.arg(tree.root).arg(format!("/{CLONE_SSH_KEYGEN}")).arg("-A").env("LC_ALL", "C");
    let ran = tool::run_command(cmd, "chroot ssh-keygen -A", &tree.root.display().to_string(), None);
    devices.remove(tree)?;
    ran?;
    if host_keys(tree, dir)?.is_empty() {
        return Err(DiskError::Other(format!("it made no key in {}", tree.show(dir))));
    }
    Ok(())
}

/// The device nodes ssh-keygen opens, as `(name, major, minor)`: every
/// OpenSSH tool opens `/dev/null` first thing, and OpenSSL before 1.1.1
/// reads `/dev/urandom`. A clone's `/dev` is empty (a devtmpfs at boot).
const CHROOT_DEVICES: [(&str, u32, u32); 2] = [("null", 1, 3), ("urandom", 1, 9)];

/// Anyone may read and write both, as on every system.
const CHROOT_DEVICE_MODE: libc::mode_t = 0o666;

/// The device nodes (and `dev` itself) created in the clone for a chroot,
/// removed afterwards so the clone is left as it came.
struct Devices {
    made: Vec<PathBuf>,
}

impl Devices {
    fn provide(tree: &Tree) -> Result<Devices> {
        let mut devices = Devices { made: Vec::new() };
        let dev = tree.resolve("dev", true)?;
        if fs::symlink_metadata(&dev).is_err() {
            fs::create_dir(&dev).map_err(|e| DiskError::io(format!("creating {}", tree.show(&dev)), e))?;
            devices.made.push(dev.clone());
        }
        for (name, major, minor) in CHROOT_DEVICES {
            let node = dev.join(name);
            if fs::symlink_metadata(&node).is_ok() {
                continue;
            }
            if let Err(e) = mknod_char(&node, major, minor) {
                let _ = devices.remove(tree);
                return Err(DiskError::io(format!("creating {}", tree.show(&node)), e));
            }
            devices.made.push(node);
        }
        Ok(devices)
    }

    /// Nodes first, then `dev` if it was made: the reverse of creation.
    fn remove(self, tree: &Tree) -> Result<()> {
        for path in self.made.iter().rev() {
            let removed = if path.is_dir() { fs::remove_dir(path) } else { fs::remove_file(path) };
            removed.map_err(|e| DiskError::io(format!("removing {}", tree.show(path)), e))?;
        }
        Ok(())
    }
}

fn mknod_char(path: &Path, major: u32, minor: u32) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a NUL-terminated path; mknod has no other preconditions.
    let rc = unsafe {
        libc::mknod(c_path.as_ptr(), libc::S_IFCHR | CHROOT_DEVICE_MODE, libc::makedev(major, minor))
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // mknod's mode went through the umask.
    fs::set_permissions(path, Permissions::from_mode(CHROOT_DEVICE_MODE))
}

/// Host ssh-keygen with `-A -f PREFIX`, PREFIX a fresh directory in `dir`,
/// then the keys renamed into `dir` (see the module doc of [`super`]).
fn keygen_with_prefix(tree: &Tree, dir: &Path) -> Result<()> {
    let suffix = hex(&random_bytes(TEMP_NAME_BYTES).map_err(random_error)?);
    let prefix = dir.join(format!(".kacast-keygen-{suffix}"));
    let staging = prefix.join(SSH_DIR);
    let created = fs::create_dir(&prefix).and_then(|()| fs::create_dir_all(&staging));
    let result = created
        .map_err(|e| DiskError::io(format!("creating {}", tree.show(&staging)), e))
        .and_then(|()| run_keygen_prefix(tree, &prefix, &staging, dir));
    let _ = fs::remove_dir_all(&prefix);
    result
}

fn run_keygen_prefix(tree: &Tree, prefix: &Path, staging: &Path, dir: &Path) -> Result<()> {
    let mut cmd = Command::new(SSH_KEYGEN);
    cmd.arg("-A").arg("-f").arg(prefix).env("LC_ALL", "C");
    tool::run_command(cmd, "ssh-keygen -A -f", &tree.show(prefix), None)?;
    let made = list(staging).map_err(|e| DiskError::io(format!("reading {}", tree.show(staging)), e))?;
    let keys: Vec<_> = made.into_iter().filter(|(name, _)| is_host_key(name)).collect();
    if keys.is_empty() {
        return Err(DiskError::Tool {
            tool: SSH_KEYGEN.into(),
            target: tree.show(prefix),
            detail: "made no key under the -f prefix (an OpenSSH that ignores -f with -A?)".into(),
        });
    }
    for (name, path) in keys {
        let to = dir.join(&name);
        fs::rename(&path, &to)
            .map_err(|e| DiskError::io(format!("moving a new key to {}", tree.show(&to)), e))?;
    }
    Ok(())
}

/// The host key files of `dir` (regular files only).
fn host_keys(tree: &Tree, dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries = list(dir).map_err(|e| DiskError::io(format!("reading {}", tree.show(dir)), e))?;
    Ok(entries
        .into_iter()
        .filter(|(name, path)| is_host_key(name) && fs::symlink_metadata(path).is_ok_and(|m| m.is_file()))
        .collect())
}

/// Sets the modes sshd wants on every host key; returns the key types.
fn fix_key_modes(tree: &Tree, dir: &Path) -> Result<Vec<String>> {
    let mut types = Vec::new();
    for (name, path) in host_keys(tree, dir)? {
        let public = name.ends_with(".pub");
        let mode = if public { PUBLIC_KEY_MODE } else { PRIVATE_KEY_MODE };
        fs::set_permissions(&path, Permissions::from_mode(mode))
            .map_err(|e| DiskError::io(format!("setting the mode of {}", tree.show(&path)), e))?;
        if !public {
            let kind = name.trim_start_matches("ssh_host_").trim_end_matches("key").trim_end_matches('_');
            types.push(if kind.is_empty() { "rsa1".to_string() } else { kind.to_string() });
        }
    }
    Ok(types)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::super::safe_path::names;
    use super::super::test_util::{is_root, mode, read, system, write};
    use super::super::{prepare_node, Prepare};
    use super::*;

    /// Fake golden keys; returns their names.
    fn golden_keys(r: &Path) -> Vec<String> {
        let names: Vec<String> = ["rsa", "ed25519"]
            .iter()
            .flat_map(|t| [format!("ssh_host_{t}_key"), format!("ssh_host_{t}_key.pub")])
            .collect();
        for name in &names {
            write(r, &format!("etc/ssh/{name}"), "GOLDEN KEY\n");
        }
        write(r, "etc/ssh/sshd_config", "PermitRootLogin no\n");
        write(r, "etc/ssh/ssh_host_ed25519_key-cert.pub", "CERT\n");
        names
    }

    fn assert_new_keys(r: &Path) {
        let ssh = r.join("etc/ssh");
        let mut privates = 0;
        for name in names(&ssh).unwrap() {
            assert!(!name.starts_with('.'), "leftover {name}");
            if !is_host_key(&name) {
                continue;
            }
            let path = ssh.join(&name);
            assert_ne!(fs::read_to_string(&path).unwrap(), "GOLDEN KEY\n", "{name}");
            if name.ends_with(".pub") {
                assert_eq!(mode(&path), 0o644, "{name}");
            } else {
                assert_eq!(mode(&path), 0o600, "{name}");
                assert!(fs::read_to_string(&path).unwrap().contains("PRIVATE KEY"), "{name}");
                assert!(ssh.join(format!("{name}.pub")).exists(), "{name}");
                privates += 1;
            }
        }
        assert!(privates >= 2, "only {privates} keys");
        assert_eq!(read(r, "etc/ssh/sshd_config"), "PermitRootLogin no\n");
        assert_eq!(read(r, "etc/ssh/ssh_host_ed25519_key-cert.pub"), "CERT\n");
    }

    #[test]
    fn ssh_host_keys_are_regenerated_by_this_hosts_ssh_keygen() {
        if !tool::exists(SSH_KEYGEN) {
            return crate::testing::skip("no ssh-keygen on this host");
        }
        let root = system();
        let r = root.path();
        golden_keys(r);
        let log = prepare_node(r, &Prepare::default()).unwrap();
        assert_new_keys(r);
        assert!(log.iter().any(|l| l.contains("removed 4 SSH host key files")), "{log:?}");
        assert!(log.iter().any(|l| l.contains("this host's ssh-keygen")), "{log:?}");
    }

    #[test]
    fn ssh_host_keys_are_not_written_through_a_linked_etc_ssh() {
        if !tool::exists(SSH_KEYGEN) {
            return crate::testing::skip("no ssh-keygen on this host");
        }
        let root = system();
        let outside = tempfile::tempdir().unwrap();
        let r = root.path();
        let abs = outside.path().join("ssh");
        fs::create_dir(&abs).unwrap();
        symlink(&abs, r.join("etc/ssh")).unwrap();
        let inside = r.join(abs.strip_prefix("/").unwrap());
        fs::create_dir_all(&inside).unwrap();
        prepare_node(r, &Prepare::default()).unwrap();
        assert!(names(&abs).unwrap().is_empty(), "keys leaked out of the root");
        assert!(names(&inside).unwrap().iter().any(|n| n == "ssh_host_ed25519_key"));
    }

    /// Copies `program` and the libraries ldd lists into `root`, so it runs
    /// in a chroot; false if ldd cannot tell.
    fn install_in_chroot(root: &Path, program: &str) -> bool {
        let Ok(out) = Command::new("ldd").arg(program).output() else { return false };
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let libs = text.split_whitespace().filter(|w| w.starts_with('/')).map(str::to_string);
        for file in libs.chain([program.to_string()]) {
            let to = root.join(file.trim_start_matches('/'));
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            if fs::copy(&file, &to).is_err() {
                return false;
            }
        }
        out.status.success()
    }

    #[test]
    fn ssh_host_keys_are_regenerated_by_the_clones_ssh_keygen() {
        let host = "/usr/bin/ssh-keygen";
        if !is_root() || !Path::new(host).exists() || !tool::exists("chroot") {
            return crate::testing::skip(&format!(
                "needs root, chroot and {host} to build a clone that runs ssh-keygen"
            ));
        }
        let root = system();
        let r = root.path();
        if !install_in_chroot(r, host) {
            return crate::testing::skip("ldd could not list ssh-keygen's libraries");
        }
        write(r, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n");
        write(r, "etc/group", "root:x:0:\n");
        golden_keys(r);
        let log = prepare_node(r, &Prepare::default()).unwrap();
        assert_new_keys(r);
        assert!(log.iter().any(|l| l.contains("the clone's ssh-keygen (chroot)")), "{log:?}");
        assert!(!log.iter().any(|l| l.contains("could not run")), "{log:?}");
        assert!(!r.join("dev").exists(), "the chroot's device nodes are removed");
    }

    #[test]
    fn a_clone_ssh_keygen_that_cannot_run_falls_back_to_this_hosts() {
        if !tool::exists(SSH_KEYGEN) {
            return crate::testing::skip("no ssh-keygen on this host");
        }
        let root = system();
        let r = root.path();
        golden_keys(r);
        write(r, CLONE_SSH_KEYGEN, "not a program for this machine\n");
        fs::set_permissions(r.join(CLONE_SSH_KEYGEN), Permissions::from_mode(0o755)).unwrap();
        let log = prepare_node(r, &Prepare::default()).unwrap();
        assert_new_keys(r);
        assert!(log.iter().any(|l| l.contains("could not run in a chroot")), "{log:?}");
        assert!(log.iter().any(|l| l.contains("this host's ssh-keygen")), "{log:?}");
        assert!(!r.join("dev").exists(), "the chroot's device nodes are removed");
    }

    #[test]
    fn ssh_host_keys_can_be_kept_and_need_etc_ssh() {
        let root = system();
        let r = root.path();
        let keys = golden_keys(r);
        let log = prepare_node(r, &Prepare { keep_ssh_host_keys: true, ..Prepare::default() }).unwrap();
        for name in keys {
            assert_eq!(read(r, &format!("etc/ssh/{name}")), "GOLDEN KEY\n");
        }
        assert!(log.iter().any(|l| l.contains("kept")), "{log:?}");

        let bare = system();
        let log = prepare_node(bare.path(), &Prepare::default()).unwrap();
        assert!(!bare.path().join("etc/ssh").exists());
        assert!(!log.iter().any(|l| l.contains("SSH")), "{log:?}");
    }
}
