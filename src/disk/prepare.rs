//! Making a freshly cloned root tree a node of its own.
//!
//! Once the golden node's tree is extracted under a root (`/mnt/kacast`), every
//! node is a byte-for-byte copy of the golden one: same NIC names pinned to the
//! golden MACs, same DHCP client identity, same machine id, same SSH host keys,
//! same hostname. ka-deploy's `ka_replication.sh` fixed some of it;
//! [`prepare_node`] fixes all of it, and [`rewrite_uuids`] makes the boot
//! configuration follow the fresh filesystem UUIDs of `--new-uuids`. Both
//! return what they did, for the node's log and the rack report.
//!
//! # What [`prepare_node`] does, and why each way
//!
//! 1. **Persistent NIC names**: removes `etc/udev/rules.d/70-persistent-net.rules`,
//!    which pins `eth0` to the golden's MAC so a node's NICs would come up as
//!    `eth1`…. `75-persistent-net-generator.rules` in `etc/udev/rules.d` is
//!    always **kept**: the generator itself lives in `lib/udev/rules.d`, so a
//!    file of that name in `etc` is the admin's override, and normally the
//!    documented way to *disable* the generator (a link to `/dev/null`);
//!    removing it would bring the renaming back on the node. `HWADDR=` lines
//!    of `etc/sysconfig/network-scripts/ifcfg-*` bind an interface to the
//!    golden's MAC the same way (the interface never comes up on a node): they
//!    are dropped, as virt-sysprep does.
//! 2. **DHCP client state**, so a node does not ask for the golden's address or
//!    present its identity: dhclient leases (`var/lib/dhcp/*.leases` except
//!    `dhcpd*.leases`, which is an ISC DHCP *server*'s lease database that
//!    dhcpd refuses to start without; everything in `var/lib/dhclient`),
//!    NetworkManager (`*.lease`, `internal-*`, and `secret_key`, from which it
//!    derives stable IPv6 addresses: shared, every node would take the same
//!    address; NetworkManager makes a new one), dhcpcd (`*.lease*`, and its
//!    `duid` and `secret`, in `var/lib/dhcpcd`, `var/lib/dhcpcd5` and
//!    `etc/dhcpcd.*`: dhcpcd sends the DUID as its DHCPv4 client id, so a
//!    shared one gets every node the same lease), systemd-networkd (files
//!    named `*lease*` in `var/lib/systemd/network`; its client leases live in
//!    `/run`, and it derives its DUID from the machine id, renewed below) and
//!    wicked (`lease-*`, `duid.xml`, `iaid.xml`). Directories are not entered.
//! 3. **Machine id**: a fresh random `etc/machine-id` (32 lowercase hex digits
//!    and a newline, with the version-4 bits systemd sets, never the golden's).
//!    An **empty** file, or one saying `uninitialized`, is systemd's "first
//!    boot" convention for images: it is kept so that the node's first boot
//!    generates the id and runs its first-boot units. A missing file stays
//!    missing (distributions without systemd have none). A regular
//!    `var/lib/dbus/machine-id` gets the same id; a symlink (normally to
//!    `/etc/machine-id`) is left alone; with a first-boot `etc/machine-id` a
//!    regular dbus copy is removed, since libdbus falls back to
//!    `/etc/machine-id` (and `dbus-uuidgen --ensure` recreates it).
//!    Random seeds (`var/lib/systemd/random-seed`, `var/lib/urandom/random-seed`,
//!    `var/lib/random-seed`, systemd-boot's `loader/random-seed` on the ESP)
//!    get fresh random bytes of the same length, so the nodes do not all start
//!    their entropy pool from the same seed.
//! 4. **SSH host keys** (only when the clone has `etc/ssh`): unless
//!    [`Prepare::keep_ssh_host_keys`], removes `ssh_host_*_key` and
//!    `ssh_host_*_key.pub` (host certificates are kept: re-signing them is the
//!    admin's CA's job) and generates new ones:
//!    - with the clone's own `usr/bin/ssh-keygen`, `chroot ROOT ssh-keygen -A`:
//!      it makes the key types and key file format the clone's sshd reads (a
//!      newer ssh-keygen writes private keys an old sshd cannot load). A
//!      clone's `/dev` is empty and ssh-keygen will not start without
//!      `/dev/null`, so `dev/null` and `dev/urandom` are created for the run
//!      when missing, and removed after it;
//!    - if that cannot run (not root, another architecture, a library or
//!      `/dev/urandom` missing in the clone), with this host's ssh-keygen:
//!      `ssh-keygen -A -f PREFIX` writes `PREFIX/etc/ssh/ssh_host_*` (checked
//!      with OpenSSH 9.2; older releases ignore `-f` with `-A`, which is
//!      detected: no key appears). PREFIX is a fresh directory inside the
//!      clone's `etc/ssh`, and the keys are then renamed into place, so a
//!      symlinked `etc/ssh` is never followed out of the root;
//!    - with no ssh-keygen in either, the keys stay removed and the report
//!      says sshd needs `ssh-keygen -A` before it can start (RHEL's
//!      `sshd-keygen` does that at boot, Debian's sshd does not).
//!
//!    Keys end `0600` (private) and `0644` (public) whatever the umask.
//! 5. **Hostname** (when [`Prepare::hostname`] is set, checked with
//!    [`valid_hostname`] before anything is changed): writes `etc/hostname`;
//!    in `etc/hosts` the names of every `127.0.1.1` line (Debian's line for
//!    the host's own name) become `FQDN SHORT` (or `NAME`), or such a line is
//!    appended. The golden's name (read from its `etc/hostname`) is also
//!    replaced on the other loopback lines (`127.*`, `::1`): left there, the
//!    node would resolve the golden's name to itself. Other addresses are the
//!    cluster's table and are left as they are.
//!
//! # Symlinks never lead out of the root
//!
//! The tree is the golden node's, and its absolute symlinks mean paths of the
//! golden system; followed as they are, `etc/hostname -> /etc/hostname.real`
//! would write into the *node's running system* (the initrd). Every path is
//! therefore resolved component by component as the node will resolve it
//! once booted: an absolute target starts again at ROOT, `..` stops at ROOT,
//! at most [`MAX_SYMLINKS`] links (the kernel's limit). On top of that:
//! - the files [`prepare_node`] writes (`etc/hostname`, `etc/hosts`,
//!   `etc/machine-id`, …) are replaced by a regular file when they are a
//!   symlink, never written through: their content must be what the node
//!   reads at boot, and a link's target may be on a tmpfs (`/run`) or on a
//!   file system that is not part of the clone. The report says so.
//! - removals remove the link, not its target, and never enter a directory
//!   reached through a link except by the in-root resolution above.
//! - [`rewrite_uuids`] follows links in-root instead: distributions link boot
//!   files on purpose (RHEL's `boot/grub2/grubenv -> ../efi/EFI/redhat/grubenv`)
//!   and the target is part of the clone; a dangling link is skipped.
//!
//! The tree is assumed not to change under us (nothing runs in it yet).
//! Refusing ROOT `/` keeps a mistaken call from renaming the running system.
//!
//! # Writing files
//!
//! Every file is written atomically: a new file in the same directory, then
//! `rename` over the old one, so a node losing power leaves the old or the new
//! file, never half of one. An existing file's mode, owner and extended
//! attributes (SELinux label, ACLs) are carried over; a new file gets the
//! mode its distribution uses (`0644`, `0444` for the machine id).
//!
//! # UUID references ([`rewrite_uuids`])
//!
//! Each old UUID is replaced by its new one in the files a boot reads
//! ([`UUID_FILES`]). A reference is a whole *token*, a maximal run of ASCII
//! letters, digits and `-`, compared without regard to case, so a UUID that
//! is a prefix of another, or the tail of a `luks-UUID` device-mapper name, is
//! never touched. New UUIDs are written in blkid's case: standard 36-character
//! UUIDs lowercase, anything else (vfat/exfat `ABCD-1234`, NTFS serials)
//! uppercase. A GRUB environment block (`grubenv`) keeps its 1024 bytes by
//! adjusting its `#` padding. Initramfs images embed UUIDs too (Debian's
//! `resume`, dracut's host-only root): they must be rebuilt after this.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsString};
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use super::error::{DiskError, Result};
use super::tool;

/// Symlinks followed while resolving one path: the kernel's limit (`ELOOP`
/// after 40), so a path the node can open is one we can resolve.
pub const MAX_SYMLINKS: usize = 40;

/// RFC 1123 / RFC 1035: a whole name, without a trailing dot, fits in 253
/// characters, and a label in 63.
pub const HOSTNAME_MAX: usize = 253;
const LABEL_MAX: usize = 63;

/// Debian's address for the host's own name in `/etc/hosts`, so it resolves
/// without a network (and apart from `localhost` on 127.0.0.1).
const OWN_ADDRESS: &str = "127.0.1.1";

/// A machine id is 128 random bits (`sd_id128_t`).
const MACHINE_ID_BYTES: usize = 16;

/// Modes systemd (`machine-id`) and the distributions (`hostname`, `hosts`)
/// create these files with, for when the clone has none or a symlink.
const MACHINE_ID_MODE: u32 = 0o444;
const CONFIG_MODE: u32 = 0o644;

/// sshd refuses a private host key others can read; public keys are public.
const PRIVATE_KEY_MODE: u32 = 0o600;
const PUBLIC_KEY_MODE: u32 = 0o644;

/// A random seed is a secret: systemd keeps it `0600`.
const SEED_MODE: u32 = 0o600;

/// Random seeds are a few hundred bytes (systemd: the pool size, 512); a
/// larger file gets this many fresh bytes, more would add nothing.
const RANDOM_SEED_MAX: u64 = 4096;

/// Bytes of randomness in temporary names: unguessable and unique enough for
/// a directory nobody else writes into.
const TEMP_NAME_BYTES: usize = 6;

/// The rules file udev's generator wrote with the golden's MACs.
const PERSISTENT_NET_RULES: &str = "etc/udev/rules.d/70-persistent-net.rules";

/// RHEL-family interface configurations, whose `HWADDR=` binds to one MAC.
const IFCFG_DIR: &str = "etc/sysconfig/network-scripts";

/// The clone's own ssh-keygen, run in a chroot when present.
const CLONE_SSH_KEYGEN: &str = "usr/bin/ssh-keygen";

/// Random seed files, refreshed when present (see the module doc).
const RANDOM_SEEDS: &[&str] = &[
    "var/lib/systemd/random-seed",
    "var/lib/urandom/random-seed",
    "var/lib/random-seed",
    "boot/efi/loader/random-seed",
    "efi/loader/random-seed",
];

/// vfat's `ABCD-1234` is the shortest UUID blkid prints; a shorter "UUID"
/// would match ordinary numbers in a configuration file.
const UUID_MIN_LEN: usize = 9;

/// A GRUB environment block is exactly this long, padded with `#`.
const GRUBENV_SIZE: usize = 1024;
const GRUBENV_HEADER: &[u8] = b"# GRUB Environment Block\n";

/// The files that name file systems by UUID at boot, `*` matching within one
/// path component (names starting with `.` excepted).
pub const UUID_FILES: &[&str] = &[
    "etc/fstab",
    "etc/crypttab",
    "etc/default/grub",
    "etc/default/grub.d/*.cfg",
    "etc/initramfs-tools/conf.d/resume",
    "etc/kernel/cmdline",
    "boot/grub/grub.cfg",
    "boot/grub2/grub.cfg",
    "boot/efi/EFI/*/grub.cfg",
    "boot/grub/grubenv",
    "boot/grub2/grubenv",
    "boot/efi/EFI/*/grubenv",
    "boot/loader/entries/*.conf",
    "boot/efi/loader/entries/*.conf",
    "efi/loader/entries/*.conf",
];

/// What makes a cloned tree a distinct node (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct Prepare {
    /// `None`: `etc/hostname` and `etc/hosts` are left as they are.
    pub hostname: Option<String>,
    /// Keep the golden node's SSH host keys (default: new ones).
    pub keep_ssh_host_keys: bool,
}

/// Makes the tree under `root` a node of its own; returns one line per thing
/// done, for the node's log and report. Checks the hostname before changing
/// anything.
pub fn prepare_node(root: &Path, p: &Prepare) -> Result<Vec<String>> {
    if let Some(name) = &p.hostname {
        check_hostname(name)?;
    }
    let tree = Tree::system(root)?;
    let mut log = Vec::new();
    drop_persistent_net(&tree, &mut log)?;
    drop_mac_bindings(&tree, &mut log)?;
    drop_dhcp_state(&tree, &mut log)?;
    renew_machine_id(&tree, &mut log)?;
    renew_random_seeds(&tree, &mut log)?;
    renew_ssh_host_keys(&tree, p.keep_ssh_host_keys, &mut log)?;
    if let Some(name) = &p.hostname {
        set_hostname(&tree, name, &mut log)?;
    }
    Ok(log)
}

/// Whether `name` is a valid host name: dot-separated RFC 1123 labels (1–63
/// letters, digits or `-`, not starting or ending with `-`), at most 253
/// characters in all.
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty() && name.len() <= HOSTNAME_MAX && name.split('.').all(valid_label)
}

fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= LABEL_MAX
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn check_hostname(name: &str) -> Result<()> {
    if valid_hostname(name) {
        return Ok(());
    }
    Err(DiskError::Other(format!(
        "'{name}' is not a valid hostname: dot-separated labels of 1-{LABEL_MAX} letters, digits \
         or '-' (not first or last), at most {HOSTNAME_MAX} characters"
    )))
}

/// Replaces each old UUID of `map` (old, new) by its new one in the clone's
/// [`UUID_FILES`] (see the module doc); returns the files changed, each once,
/// by its real path under `root` (symlinks resolved in-root). The ESP must be
/// mounted at `root/boot/efi` (or `root/efi`) for its files to be seen.
pub fn rewrite_uuids(root: &Path, map: &[(String, String)]) -> Result<Vec<PathBuf>> {
    let map = UuidMap::new(map)?;
    let tree = Tree::new(root)?;
    let mut seen = HashSet::new();
    let mut changed = Vec::new();
    for pattern in UUID_FILES {
        for path in tree.expand(pattern)? {
            if seen.insert(path.clone()) && rewrite_file(&tree, &path, &map)? {
                changed.push(path);
            }
        }
    }
    Ok(changed)
}

// ---------------------------------------------------------------------------
// The tree, resolved in-root

/// The clone's root; every path in it is resolved the way the node will
/// resolve it once booted, so never outside (see the module doc).
struct Tree<'a> {
    root: &'a Path,
}

impl<'a> Tree<'a> {
    /// Any directory but the running system's root.
    fn new(root: &'a Path) -> Result<Tree<'a>> {
        let real = fs::canonicalize(root).map_err(|e| DiskError::io(root.display().to_string(), e))?;
        if real == Path::new("/") {
            return Err(DiskError::Other(format!(
                "{}: refusing to prepare the running system's root",
                root.display()
            )));
        }
        if !real.is_dir() {
            return Err(DiskError::Other(format!("{}: not a directory", root.display())));
        }
        Ok(Tree { root })
    }

    /// As [`Tree::new`], for a whole system tree: one with an `etc`.
    fn system(root: &'a Path) -> Result<Tree<'a>> {
        let tree = Tree::new(root)?;
        if tree.dir("etc")?.is_none() {
            return Err(DiskError::Other(format!("{}: no etc/, not a system tree", root.display())));
        }
        Ok(tree)
    }

    /// `rel` resolved under the root with chroot semantics: every symlink
    /// followed (the last one only with `follow_last`), an absolute target
    /// restarting at the root, `..` stopping there. Components that do not
    /// exist are kept as they are, so the result may not exist.
    fn resolve(&self, rel: impl AsRef<Path>, follow_last: bool) -> Result<PathBuf> {
        let rel = rel.as_ref();
        let mut todo: Vec<Step> = steps(rel);
        let mut done = self.root.to_path_buf();
        let mut depth = 0usize;
        let mut links = 0usize;
        while let Some(step) = todo.pop() {
            let name = match step {
                Step::Up => {
                    if depth > 0 {
                        done.pop();
                        depth -= 1;
                    }
                    continue;
                }
                Step::Name(name) => name,
            };
            let next = done.join(&name);
            let follow = follow_last || !todo.is_empty();
            let is_link = fs::symlink_metadata(&next).is_ok_and(|m| m.file_type().is_symlink());
            if !(follow && is_link) {
                done = next;
                depth += 1;
                continue;
            }
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(DiskError::Other(format!(
                    "{}: more than {MAX_SYMLINKS} symbolic links",
                    self.show(&self.root.join(rel))
                )));
            }
            let target = fs::read_link(&next).map_err(|e| DiskError::io(self.show(&next), e))?;
            if target.is_absolute() {
                done = self.root.to_path_buf();
                depth = 0;
            }
            todo.extend(steps(&target));
        }
        Ok(done)
    }

    /// `rel` resolved, if it is a directory.
    fn dir(&self, rel: impl AsRef<Path>) -> Result<Option<PathBuf>> {
        let path = self.resolve(rel, true)?;
        Ok(fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()).then_some(path))
    }

    /// `rel` resolved, if it is a regular file.
    fn file(&self, rel: impl AsRef<Path>) -> Result<Option<PathBuf>> {
        let path = self.resolve(rel, true)?;
        Ok(fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()).then_some(path))
    }

    /// The contents of `rel` (through symlinks, in-root), if a regular file.
    fn read(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        match self.file(rel)? {
            Some(path) => fs::read(&path).map(Some).map_err(|e| DiskError::io(self.show(&path), e)),
            None => Ok(None),
        }
    }

    /// Writes `rel` atomically; a symlink there is replaced by the file,
    /// never written through (see the module doc).
    fn replace(&self, rel: &str, data: &[u8], mode_if_new: u32, log: &mut Vec<String>) -> Result<()> {
        let path = self.resolve(rel, false)?;
        let link = fs::symlink_metadata(&path)
            .is_ok_and(|m| m.file_type().is_symlink())
            .then(|| fs::read_link(&path).unwrap_or_default());
        write_atomic(&path, data, mode_if_new)
            .map_err(|e| DiskError::io(format!("writing {}", self.show(&path)), e))?;
        if let Some(target) = link {
            log.push(format!(
                "{} was a symlink to {}: replaced by a regular file, not written through",
                self.show(&path),
                target.display()
            ));
        }
        Ok(())
    }

    /// Removes the entry `rel` (the link itself if it is one) unless it is a
    /// directory; whether there was one.
    fn remove(&self, rel: &str) -> Result<bool> {
        let path = self.resolve(rel, false)?;
        match fs::symlink_metadata(&path) {
            Ok(m) if !m.is_dir() => {
                fs::remove_file(&path)
                    .map_err(|e| DiskError::io(format!("removing {}", self.show(&path)), e))?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The names of the non-directory entries of directory `rel`
    /// (resolved), sorted; none when it is not there.
    fn entries(&self, rel: &str) -> Result<Vec<String>> {
        let Some(dir) = self.dir(rel)? else { return Ok(Vec::new()) };
        let entries = list(&dir).map_err(|e| DiskError::io(format!("reading {}", self.show(&dir)), e))?;
        Ok(entries.into_iter().map(|(name, _)| name).collect())
    }

    /// The regular files matching `pattern` (`*` within a component), resolved.
    fn expand(&self, pattern: &str) -> Result<Vec<PathBuf>> {
        let mut rels = vec![PathBuf::new()];
        for part in pattern.split('/') {
            if !part.contains('*') {
                rels.iter_mut().for_each(|r| r.push(part));
                continue;
            }
            let mut next = Vec::new();
            for rel in &rels {
                let Some(dir) = self.dir(rel)? else { continue };
                let names =
                    names(&dir).map_err(|e| DiskError::io(format!("reading {}", self.show(&dir)), e))?;
                next.extend(names.into_iter().filter(|n| glob(part, n)).map(|n| rel.join(n)));
            }
            rels = next;
        }
        rels.iter().filter_map(|rel| self.file(rel).transpose()).collect()
    }

    /// `path` as the node will see it: `/etc/hostname`.
    fn show(&self, path: &Path) -> String {
        match path.strip_prefix(self.root) {
            Ok(rel) => format!("/{}", rel.display()),
            Err(_) => path.display().to_string(),
        }
    }
}

/// One step of a path walk.
enum Step {
    Up,
    Name(OsString),
}

/// The steps of `path`, last first (so `pop` gives the next).
fn steps(path: &Path) -> Vec<Step> {
    let mut steps: Vec<Step> = path
        .components()
        .filter_map(|c| match c {
            Component::ParentDir => Some(Step::Up),
            Component::Normal(name) => Some(Step::Name(name.to_os_string())),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    steps.reverse();
    steps
}

/// Every name in `dir`, sorted, so reports and tests are stable.
fn names(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// The entries of `dir` that are not directories (links not followed), sorted.
fn list(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            out.push((entry.file_name().to_string_lossy().into_owned(), entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// One `*` in `pattern` matches any run of characters (all [`UUID_FILES`]
/// need); hidden names only match a pattern that starts with `.`, as in the
/// shell.
fn glob(pattern: &str, name: &str) -> bool {
    if name.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    match pattern.split_once('*') {
        Some((head, tail)) => {
            name.len() >= head.len() + tail.len() && name.starts_with(head) && name.ends_with(tail)
        }
        None => pattern == name,
    }
}

// ---------------------------------------------------------------------------
// Atomic writes

/// Writes `data` to `path` through a new file in the same directory renamed
/// over it, keeping an existing regular file's mode, owner and extended
/// attributes (a new file, or one replacing a symlink, gets `mode_if_new`).
fn write_atomic(path: &Path, data: &[u8], mode_if_new: u32) -> io::Result<()> {
    let old = fs::symlink_metadata(path).ok().filter(|m| m.is_file());
    let temp = temp_name(path)?;
    // create_new: never opens something already there, a symlink included.
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp)?;
    let result =
        fill(&mut file, path, old.as_ref(), data, mode_if_new).and_then(|()| fs::rename(&temp, path));
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Fills the new file: the data, then the old file's extended attributes,
/// owner and mode; synced, so the rename never exposes an empty file.
fn fill(
    file: &mut File,
    path: &Path,
    old: Option<&fs::Metadata>,
    data: &[u8],
    mode_if_new: u32,
) -> io::Result<()> {
    file.write_all(data)?;
    let mode = match old {
        Some(old) => {
            copy_xattrs(path, file)?;
            let mine = file.metadata()?;
            if (mine.uid(), mine.gid()) != (old.uid(), old.gid()) {
                std::os::unix::fs::fchown(&*file, Some(old.uid()), Some(old.gid()))?;
            }
            old.mode() & 0o7777
        }
        None => mode_if_new,
    };
    // After chown, which clears set-id bits.
    file.set_permissions(Permissions::from_mode(mode))?;
    file.sync_all()
}

/// `.NAME.kacast-RANDOM` next to `path`: hidden, and never a name in use.
fn temp_name(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    Ok(path.with_file_name(format!(".{name}.kacast-{}", hex(&random_bytes(TEMP_NAME_BYTES)?))))
}

/// Copies every extended attribute of `from` (not followed) to `to`: SELinux
/// labels and ACLs must survive the rewrite. A file system without extended
/// attributes has none to copy.
fn copy_xattrs(from: &Path, to: &File) -> io::Result<()> {
    let path = CString::new(from.as_os_str().as_bytes())?;
    // SAFETY: the buffer is `len` bytes long; the path is NUL-terminated.
    let list = xattr_read(|buf, len| unsafe { libc::llistxattr(path.as_ptr(), buf.cast(), len) })?;
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = CString::new(name)?;
        // SAFETY: as above.
        let value =
            xattr_read(|buf, len| unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.cast(), len) })?;
        // SAFETY: `value` is valid for its length; the fd is open.
        let r =
            unsafe { libc::fsetxattr(to.as_raw_fd(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
        if r != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("copying attribute {}: {e}", name.to_string_lossy()),
            ));
        }
    }
    Ok(())
}

/// Calls a `*getxattr`/`*listxattr` function with a buffer of the size it
/// asks for (again if the attribute grew meanwhile). Unsupported: empty.
fn xattr_read(call: impl Fn(*mut u8, usize) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let size = call(std::ptr::null_mut(), 0);
        if size < 0 {
            return unsupported_is_empty(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize];
        let got = call(buf.as_mut_ptr(), buf.len());
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return unsupported_is_empty(e);
        }
    }
}

fn unsupported_is_empty(e: io::Error) -> io::Result<Vec<u8>> {
    match e.raw_os_error() {
        Some(libc::ENOTSUP) | Some(libc::ENODATA) => Ok(Vec::new()),
        _ => Err(e),
    }
}

/// `n` random bytes from the kernel.
fn random_bytes(n: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        // SAFETY: writes at most the remaining length into our buffer.
        let r = unsafe { libc::getrandom(buf[got..].as_mut_ptr().cast(), n - got, 0) };
        if r >= 0 {
            got += r as usize;
        } else {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
    Ok(buf)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_error(e: io::Error) -> DiskError {
    DiskError::io("reading random bytes from the kernel", e)
}

// ---------------------------------------------------------------------------
// 1 and 2. NIC names and DHCP client state

fn drop_persistent_net(tree: &Tree, log: &mut Vec<String>) -> Result<()> {
    if tree.remove(PERSISTENT_NET_RULES)? {
        log.push(format!("removed /{PERSISTENT_NET_RULES} (NIC names pinned to the golden's MACs)"));
    }
    Ok(())
}

/// Drops `HWADDR=` from every `ifcfg-*`.
fn drop_mac_bindings(tree: &Tree, log: &mut Vec<String>) -> Result<()> {
    for name in tree.entries(IFCFG_DIR)? {
        if !name.starts_with("ifcfg-") {
            continue;
        }
        let rel = format!("{IFCFG_DIR}/{name}");
        let Some(path) = tree.file(&rel)? else { continue };
        let text = fs::read(&path).map_err(|e| DiskError::io(tree.show(&path), e))?;
        if let Some(kept) = without_hwaddr(&text) {
            tree.replace(&rel, &kept, CONFIG_MODE, log)?;
            log.push(format!("removed HWADDR (the golden's MAC) from {}", tree.show(&path)));
        }
    }
    Ok(())
}

/// `text` without its `HWADDR=` lines, if it had any.
fn without_hwaddr(text: &[u8]) -> Option<Vec<u8>> {
    let is_hwaddr = |line: &[u8]| line.trim_ascii_start().starts_with(b"HWADDR=");
    let lines: Vec<&[u8]> = text.split_inclusive(|&b| b == b'\n').collect();
    lines
        .iter()
        .any(|l| is_hwaddr(l))
        .then(|| lines.into_iter().filter(|l| !is_hwaddr(l)).flatten().copied().collect())
}

/// Files of one directory that hold a DHCP client's state.
struct Sweep {
    dir: &'static str,
    what: &'static str,
    matches: fn(&str) -> bool,
}

/// See the module doc for why each, and why not more.
const DHCP_STATE: &[Sweep] = &[
    Sweep {
        dir: "var/lib/dhcp",
        what: "DHCP lease",
        matches: |n| n.ends_with(".leases") && !n.starts_with("dhcpd"),
    },
    Sweep { dir: "var/lib/dhclient", what: "dhclient state", matches: |_| true },
    Sweep {
        dir: "var/lib/NetworkManager",
        what: "NetworkManager lease or secret",
        matches: |n| n.ends_with(".lease") || n.starts_with("internal-") || n == "secret_key",
    },
    Sweep { dir: "var/lib/dhcpcd", what: "dhcpcd lease or identity", matches: dhcpcd_state },
    Sweep { dir: "var/lib/dhcpcd5", what: "dhcpcd lease or identity", matches: dhcpcd_state },
    Sweep { dir: "etc", what: "dhcpcd identity", matches: |n| n == "dhcpcd.duid" || n == "dhcpcd.secret" },
    Sweep {
        dir: "var/lib/systemd/network",
        what: "systemd-networkd lease",
        matches: |n| n.contains("lease"),
    },
    Sweep {
        dir: "var/lib/wicked",
        what: "wicked lease or identity",
        matches: |n| n.starts_with("lease-") || n == "duid.xml" || n == "iaid.xml",
    },
];

fn dhcpcd_state(name: &str) -> bool {
    name.contains(".lease") || name == "duid" || name == "secret"
}

fn drop_dhcp_state(tree: &Tree, log: &mut Vec<String>) -> Result<()> {
    for sweep in DHCP_STATE {
        for name in tree.entries(sweep.dir)? {
            let rel = format!("{}/{name}", sweep.dir);
            if (sweep.matches)(&name) && tree.remove(&rel)? {
                log.push(format!("removed /{rel} ({})", sweep.what));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. Machine id and random seeds

const MACHINE_ID: &str = "etc/machine-id";
const DBUS_MACHINE_ID: &str = "var/lib/dbus/machine-id";

/// What the clone's `etc/machine-id` became.
enum MachineId {
    /// There was none: the dbus copy, if regular, gets this fresh id.
    Missing(String),
    /// Empty or `uninitialized`: the first boot makes one.
    FirstBoot,
    Renewed(String),
}

fn renew_machine_id(tree: &Tree, log: &mut Vec<String>) -> Result<()> {
    let golden = tree.read(MACHINE_ID)?;
    let golden_id = golden.as_deref().map(|g| String::from_utf8_lossy(g).trim().to_ascii_lowercase());
    let state = match golden_id.as_deref() {
        None => {
            log.push(format!("no /{MACHINE_ID} in the clone: left so"));
            MachineId::Missing(fresh_machine_id("")?)
        }
        Some("") | Some("uninitialized") => {
            log.push(format!(
                "/{MACHINE_ID} is the first-boot placeholder: kept, the node's first boot makes the id"
            ));
            MachineId::FirstBoot
        }
        Some(golden) => {
            let id = fresh_machine_id(golden)?;
            tree.replace(MACHINE_ID, format!("{id}\n").as_bytes(), MACHINE_ID_MODE, log)?;
            log.push(format!("new machine id {id} in /{MACHINE_ID}"));
            MachineId::Renewed(id)
        }
    };
    renew_dbus_machine_id(tree, &state, log)
}

fn renew_dbus_machine_id(tree: &Tree, state: &MachineId, log: &mut Vec<String>) -> Result<()> {
    let path = tree.resolve(DBUS_MACHINE_ID, false)?;
    let Ok(meta) = fs::symlink_metadata(&path) else { return Ok(()) };
    if meta.file_type().is_symlink() {
        log.push(format!("/{DBUS_MACHINE_ID} is a symlink: left as is"));
        return Ok(());
    }
    if !meta.is_file() {
        return Ok(());
    }
    match state {
        MachineId::Missing(id) | MachineId::Renewed(id) => {
            tree.replace(DBUS_MACHINE_ID, format!("{id}\n").as_bytes(), MACHINE_ID_MODE, log)?;
            log.push(format!("machine id {id} in /{DBUS_MACHINE_ID}"));
        }
        MachineId::FirstBoot => {
            tree.remove(DBUS_MACHINE_ID)?;
            log.push(format!(
                "removed /{DBUS_MACHINE_ID}: dbus reads /{MACHINE_ID} once the first boot made it"
            ));
        }
    }
    Ok(())
}

/// 32 lowercase hex digits of a random version-4 id, as systemd makes them,
/// different from `golden`.
fn fresh_machine_id(golden: &str) -> Result<String> {
    loop {
        let mut b = random_bytes(MACHINE_ID_BYTES).map_err(random_error)?;
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let id = hex(&b);
        if id != golden {
            return Ok(id);
        }
    }
}

fn renew_random_seeds(tree: &Tree, log: &mut Vec<String>) -> Result<()> {
    for rel in RANDOM_SEEDS {
        let path = tree.resolve(rel, false)?;
        let Some(len) = fs::symlink_metadata(&path).ok().filter(|m| m.is_file()).map(|m| m.len()) else {
            continue;
        };
        let seed = random_bytes(len.clamp(1, RANDOM_SEED_MAX) as usize).map_err(random_error)?;
        tree.replace(rel, &seed, SEED_MODE, log)?;
        log.push(format!("new random seed in /{rel}"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 4. SSH host keys

const SSH_DIR: &str = "etc/ssh";
const SSH_KEYGEN: &str = "ssh-keygen";

fn renew_ssh_host_keys(tree: &Tree, keep: bool, log: &mut Vec<String>) -> Result<()> {
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
/// then the keys renamed into `dir` (see the module doc).
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

// ---------------------------------------------------------------------------
// 5. Hostname

const HOSTNAME: &str = "etc/hostname";
const HOSTS: &str = "etc/hosts";

/// For a clone without `etc/hosts`: the loopback lines every distribution has.
const DEFAULT_HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";

fn set_hostname(tree: &Tree, name: &str, log: &mut Vec<String>) -> Result<()> {
    let golden = tree.read(HOSTNAME)?.map(|g| String::from_utf8_lossy(&g).trim().to_string());
    tree.replace(HOSTNAME, format!("{name}\n").as_bytes(), CONFIG_MODE, log)?;
    log.push(format!("hostname {name} in /{HOSTNAME}"));
    let hosts = tree.read(HOSTS)?.unwrap_or_else(|| DEFAULT_HOSTS.as_bytes().to_vec());
    let edit = edit_hosts(&hosts, name, golden.as_deref());
    tree.replace(HOSTS, &edit.text, CONFIG_MODE, log)?;
    let how = if edit.replaced { "names on the 127.0.1.1 line replaced" } else { "127.0.1.1 line appended" };
    log.push(format!("/{HOSTS}: {how} ({})", Names::new(name).line()));
    if edit.renamed > 0 {
        log.push(format!("/{HOSTS}: the golden's name replaced on {} other loopback line(s)", edit.renamed));
    }
    Ok(())
}

/// The names of the node's own line: `FQDN SHORT`, or just `NAME`.
struct Names<'a> {
    full: &'a str,
    short: &'a str,
}

impl<'a> Names<'a> {
    fn new(name: &'a str) -> Names<'a> {
        Names { full: name, short: first_label(name) }
    }

    fn line(&self) -> String {
        if self.full == self.short {
            self.short.to_string()
        } else {
            format!("{} {}", self.full, self.short)
        }
    }
}

fn first_label(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

struct HostsEdit {
    text: Vec<u8>,
    /// A 127.0.1.1 line was there (else one was appended).
    replaced: bool,
    /// Other loopback lines where the golden's name was replaced.
    renamed: usize,
}

/// `hosts` with the node's own line for `name` (see the module doc);
/// `golden` is the golden's hostname. Lines that are not UTF-8 are kept.
fn edit_hosts(hosts: &[u8], name: &str, golden: Option<&str>) -> HostsEdit {
    let names = Names::new(name);
    let golden = golden.map(first_label).filter(|g| !g.is_empty() && !g.eq_ignore_ascii_case("localhost"));
    let mut edit = HostsEdit { text: Vec::with_capacity(hosts.len() + 64), replaced: false, renamed: 0 };
    for line in hosts.split_inclusive(|&b| b == b'\n') {
        let body_len = line.strip_suffix(b"\n").map_or(line.len(), <[u8]>::len);
        let (body, eol) = line.split_at(body_len);
        match std::str::from_utf8(body).ok().and_then(|l| edit_hosts_line(l, &names, golden)) {
            Some(HostsLine::Own(new)) => {
                edit.replaced = true;
                edit.text.extend_from_slice(new.as_bytes());
            }
            Some(HostsLine::Renamed(new)) => {
                edit.renamed += 1;
                edit.text.extend_from_slice(new.as_bytes());
            }
            None => edit.text.extend_from_slice(body),
        }
        edit.text.extend_from_slice(eol);
    }
    if !edit.replaced {
        if !edit.text.is_empty() && !edit.text.ends_with(b"\n") {
            edit.text.push(b'\n');
        }
        edit.text.extend_from_slice(format!("{OWN_ADDRESS}\t{}\n", names.line()).as_bytes());
    }
    edit
}

enum HostsLine {
    Own(String),
    Renamed(String),
}

/// The new text of one hosts line, if it changes.
fn edit_hosts_line(line: &str, names: &Names, golden: Option<&str>) -> Option<HostsLine> {
    let (body, comment) = line.split_at(line.find('#').unwrap_or(line.len()));
    let mut fields = body.split_whitespace();
    let address = fields.next()?;
    let rebuilt = |names: &str| match comment {
        "" => format!("{address}\t{names}"),
        _ => format!("{address}\t{names} {comment}"),
    };
    if address == OWN_ADDRESS {
        return Some(HostsLine::Own(rebuilt(&names.line())));
    }
    let golden = golden?;
    if !(address.starts_with("127.") || address == "::1") {
        return None;
    }
    let old: Vec<&str> = fields.collect();
    let mut new: Vec<&str> = Vec::with_capacity(old.len());
    for token in &old {
        let renamed = if !first_label(token).eq_ignore_ascii_case(golden) {
            token
        } else if token.contains('.') {
            names.full
        } else {
            names.short
        };
        if !new.contains(&renamed) {
            new.push(renamed);
        }
    }
    (new != old).then(|| HostsLine::Renamed(rebuilt(&new.join(" "))))
}

// ---------------------------------------------------------------------------
// UUID rewriting

/// Old UUID (lowercase) → new UUID (in blkid's case).
struct UuidMap(HashMap<Vec<u8>, Vec<u8>>);

impl UuidMap {
    fn new(pairs: &[(String, String)]) -> Result<UuidMap> {
        let mut map = HashMap::new();
        for (old, new) in pairs {
            for uuid in [old, new] {
                if !is_uuid_token(uuid) {
                    return Err(DiskError::Other(format!(
                        "'{uuid}' is not a file system UUID (at least {UUID_MIN_LEN} hex digits and '-')"
                    )));
                }
            }
            let new = blkid_case(new).into_bytes();
            match map.insert(old.to_ascii_lowercase().into_bytes(), new.clone()) {
                Some(other) if other != new => {
                    return Err(DiskError::Other(format!("UUID {old} is mapped to two new UUIDs")));
                }
                _ => {}
            }
        }
        Ok(UuidMap(map))
    }

    fn get(&self, token: &[u8]) -> Option<&[u8]> {
        self.0.get(&token.to_ascii_lowercase()).map(Vec::as_slice)
    }
}

/// Hex digits and `-`, as long as a vfat serial at least: what blkid prints
/// for any file system.
fn is_uuid_token(s: &str) -> bool {
    s.len() >= UUID_MIN_LEN && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// Lowercase for a standard 8-4-4-4-12 UUID, uppercase otherwise (vfat,
/// exfat, NTFS serials), as blkid prints them.
fn blkid_case(uuid: &str) -> String {
    let standard = uuid.len() == 36
        && uuid.bytes().enumerate().all(|(i, b)| matches!(i, 8 | 13 | 18 | 23) == (b == b'-'));
    if standard {
        uuid.to_ascii_lowercase()
    } else {
        uuid.to_ascii_uppercase()
    }
}

/// Bytes a UUID reference is made of; a token is a maximal run of them.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

/// `text` with every whole token found in `map` replaced; `None` if none was.
fn replace_uuids(text: &[u8], map: &UuidMap) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut changed = false;
    let mut i = 0;
    while i < text.len() {
        let len = text[i..].iter().take_while(|&&b| is_token_byte(b)).count();
        if len == 0 {
            out.push(text[i]);
            i += 1;
            continue;
        }
        let token = &text[i..i + len];
        match map.get(token) {
            Some(new) => {
                changed |= new != token;
                out.extend_from_slice(new);
            }
            None => out.extend_from_slice(token),
        }
        i += len;
    }
    changed.then_some(out)
}

/// Rewrites one file (already resolved); whether it changed.
fn rewrite_file(tree: &Tree, path: &Path, map: &UuidMap) -> Result<bool> {
    let old = fs::read(path).map_err(|e| DiskError::io(tree.show(path), e))?;
    let Some(mut new) = replace_uuids(&old, map) else { return Ok(false) };
    if path.file_name().is_some_and(|n| n == "grubenv") {
        new = refit_grubenv(tree, path, &old, new)?;
    }
    write_atomic(path, &new, CONFIG_MODE)
        .map_err(|e| DiskError::io(format!("writing {}", tree.show(path)), e))?;
    Ok(true)
}

/// A GRUB environment block stays [`GRUBENV_SIZE`] bytes: the `#` padding
/// after its last line absorbs the change. Anything else is left as is.
fn refit_grubenv(tree: &Tree, path: &Path, old: &[u8], new: Vec<u8>) -> Result<Vec<u8>> {
    if old.len() != GRUBENV_SIZE || !old.starts_with(GRUBENV_HEADER) {
        return Ok(new);
    }
    let body = new.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if body > GRUBENV_SIZE {
        return Err(DiskError::Other(format!(
            "{}: the new UUIDs do not fit in the {GRUBENV_SIZE}-byte GRUB environment block",
            tree.show(path)
        )));
    }
    let mut block = new[..body].to_vec();
    block.resize(GRUBENV_SIZE, b'#');
    Ok(block)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn read(root: &Path, rel: &str) -> String {
        fs::read_to_string(root.join(rel)).unwrap()
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    /// A minimal system tree: an `etc`, nothing else.
    fn system() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        dir
    }

    fn prepare(root: &Path) -> Vec<String> {
        prepare_node(root, &Prepare { keep_ssh_host_keys: true, ..Prepare::default() }).unwrap()
    }

    fn is_machine_id(s: &str) -> bool {
        s.len() == 33
            && s.ends_with('\n')
            && s[..32].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }

    #[test]
    fn hostnames() {
        for good in ["node01", "n", "node-01.rack.example.org", "1rack", "NODE01", &"a".repeat(63)] {
            assert!(valid_hostname(good), "{good}");
        }
        let long = ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(62)].join(".");
        assert_eq!(long.len(), 254);
        for bad in [
            "",
            "-node",
            "node-",
            "node_01",
            "node..rack",
            "node.",
            ".node",
            "nöde",
            "a b",
            &"a".repeat(64),
            &long,
        ] {
            assert!(!valid_hostname(bad), "{bad}");
        }
        assert!(valid_hostname(&long[1..]));
    }

    #[test]
    fn persistent_net_rules_go_the_generator_override_stays() {
        let root = system();
        let r = root.path();
        write(
            r,
            PERSISTENT_NET_RULES,
            "SUBSYSTEM==\"net\", ATTR{address}==\"52:54:00:aa:bb:cc\", NAME=\"eth0\"\n",
        );
        symlink("/dev/null", r.join("etc/udev/rules.d/75-persistent-net-generator.rules")).unwrap();
        write(r, "etc/udev/rules.d/99-local.rules", "# mine\n");
        write(
            r,
            "etc/sysconfig/network-scripts/ifcfg-eth0",
            "DEVICE=eth0\nHWADDR=52:54:00:aa:bb:cc\nONBOOT=yes\n",
        );
        write(r, "etc/sysconfig/network-scripts/keep-me", "HWADDR=52:54:00:aa:bb:cc\n");
        let log = prepare(r);
        assert!(!r.join(PERSISTENT_NET_RULES).exists());
        assert!(fs::symlink_metadata(r.join("etc/udev/rules.d/75-persistent-net-generator.rules")).is_ok());
        assert!(r.join("etc/udev/rules.d/99-local.rules").exists());
        assert_eq!(read(r, "etc/sysconfig/network-scripts/ifcfg-eth0"), "DEVICE=eth0\nONBOOT=yes\n");
        assert_eq!(read(r, "etc/sysconfig/network-scripts/keep-me"), "HWADDR=52:54:00:aa:bb:cc\n");
        assert!(log.iter().any(|l| l.contains("70-persistent-net.rules")), "{log:?}");
        assert!(log.iter().any(|l| l.contains("HWADDR")), "{log:?}");
    }

    #[test]
    fn dhcp_state_goes_the_rest_stays() {
        let root = system();
        let r = root.path();
        let gone = [
            "var/lib/dhcp/dhclient.leases",
            "var/lib/dhcp/dhclient.eth0.leases",
            "var/lib/dhcp/dhclient6.leases",
            "var/lib/dhclient/dhclient-0f1e-eth0.lease",
            "var/lib/dhclient/dhclient.leases",
            "var/lib/NetworkManager/dhclient-0f1e-eth0.lease",
            "var/lib/NetworkManager/internal-0f1e-eth0.lease",
            "var/lib/NetworkManager/internal-0f1e-eth0",
            "var/lib/NetworkManager/secret_key",
            "var/lib/dhcpcd/dhcpcd-eth0.lease",
            "var/lib/dhcpcd/eth0.lease6",
            "var/lib/dhcpcd/duid",
            "var/lib/dhcpcd5/eth0.lease",
            "etc/dhcpcd.duid",
            "var/lib/systemd/network/eth0.lease",
            "var/lib/wicked/lease-eth0-dhcp-ipv4.xml",
            "var/lib/wicked/duid.xml",
        ];
        let kept = [
            "var/lib/dhcp/dhcpd.leases",
            "var/lib/dhcp/dhcpd6.leases",
            "var/lib/dhcp/README",
            "var/lib/NetworkManager/timestamps",
            "var/lib/NetworkManager/NetworkManager.state",
            "var/lib/dhcpcd/dhcpcd.conf.sample",
            "var/lib/wicked/README",
            "etc/dhcpcd.conf",
        ];
        for rel in gone.iter().chain(&kept) {
            write(r, rel, "x\n");
        }
        write(r, "var/lib/dhclient/sub/keep.lease", "x\n");
        let log = prepare(r);
        for rel in gone {
            assert!(!r.join(rel).exists(), "{rel} should be gone");
            assert!(log.iter().any(|l| l.contains(rel)), "{rel} not reported: {log:?}");
        }
        for rel in kept {
            assert!(r.join(rel).exists(), "{rel} should stay");
        }
        assert!(r.join("var/lib/dhclient/sub/keep.lease").exists(), "directories are not entered");
    }

    #[test]
    fn a_lease_directory_linked_out_of_the_root_is_resolved_inside() {
        let root = system();
        let outside = tempfile::tempdir().unwrap();
        let r = root.path();
        write(outside.path(), "dhclient.leases", "the running system's lease\n");
        fs::create_dir_all(r.join("var/lib")).unwrap();
        symlink(outside.path(), r.join("var/lib/dhcp")).unwrap();
        // The same absolute path inside the clone is the one the node sees.
        let inside = r.join(outside.path().strip_prefix("/").unwrap());
        fs::create_dir_all(&inside).unwrap();
        fs::write(inside.join("dhclient.leases"), "the clone's lease\n").unwrap();
        let log = prepare(r);
        assert!(outside.path().join("dhclient.leases").exists());
        assert!(!inside.join("dhclient.leases").exists(), "{log:?}");
    }

    #[test]
    fn machine_id_is_renewed_everywhere_it_is_a_file() {
        let root = system();
        let r = root.path();
        let golden = "0123456789abcdef0123456789abcdef\n";
        write(r, MACHINE_ID, golden);
        fs::set_permissions(r.join(MACHINE_ID), Permissions::from_mode(0o444)).unwrap();
        write(r, DBUS_MACHINE_ID, golden);
        let log = prepare(r);
        let id = read(r, MACHINE_ID);
        assert!(is_machine_id(&id), "{id:?}");
        assert_ne!(id, golden);
        assert_eq!(&id[12..13], "4", "version 4, as systemd makes them");
        assert_eq!(read(r, DBUS_MACHINE_ID), id);
        assert_eq!(mode(&r.join(MACHINE_ID)), 0o444);
        assert!(log.iter().any(|l| l.contains(id.trim())), "{log:?}");
        // Another node, another id (0444: replaced, not rewritten in place).
        fs::remove_file(r.join(MACHINE_ID)).unwrap();
        write(r, MACHINE_ID, golden);
        prepare(r);
        let again = read(r, MACHINE_ID);
        assert!(is_machine_id(&again) && again != id && again != golden);
    }

    #[test]
    fn first_boot_machine_id_stays_empty_and_the_dbus_link_stays() {
        for placeholder in ["", "uninitialized\n"] {
            let root = system();
            let r = root.path();
            write(r, MACHINE_ID, placeholder);
            fs::create_dir_all(r.join("var/lib/dbus")).unwrap();
            symlink("/etc/machine-id", r.join(DBUS_MACHINE_ID)).unwrap();
            prepare(r);
            assert_eq!(read(r, MACHINE_ID), placeholder);
            assert_eq!(fs::read_link(r.join(DBUS_MACHINE_ID)).unwrap(), Path::new("/etc/machine-id"));
        }
    }

    #[test]
    fn first_boot_machine_id_drops_a_dbus_copy() {
        let root = system();
        let r = root.path();
        write(r, MACHINE_ID, "");
        write(r, DBUS_MACHINE_ID, "0123456789abcdef0123456789abcdef\n");
        prepare(r);
        assert_eq!(read(r, MACHINE_ID), "");
        assert!(fs::symlink_metadata(r.join(DBUS_MACHINE_ID)).is_err());
    }

    #[test]
    fn without_etc_machine_id_a_dbus_copy_gets_a_fresh_id() {
        let root = system();
        let r = root.path();
        let golden = "0123456789abcdef0123456789abcdef\n";
        write(r, DBUS_MACHINE_ID, golden);
        prepare(r);
        assert!(!r.join(MACHINE_ID).exists());
        let id = read(r, DBUS_MACHINE_ID);
        assert!(is_machine_id(&id) && id != golden, "{id:?}");
    }

    #[test]
    fn random_seeds_are_renewed_with_their_length() {
        let root = system();
        let r = root.path();
        let golden = vec![7u8; 512];
        write(r, "var/lib/systemd/random-seed", "");
        fs::write(r.join("var/lib/systemd/random-seed"), &golden).unwrap();
        fs::set_permissions(r.join("var/lib/systemd/random-seed"), Permissions::from_mode(0o600)).unwrap();
        prepare(r);
        let seed = fs::read(r.join("var/lib/systemd/random-seed")).unwrap();
        assert_eq!(seed.len(), 512);
        assert_ne!(seed, golden);
        assert_eq!(mode(&r.join("var/lib/systemd/random-seed")), 0o600);
        assert!(!r.join("var/lib/urandom/random-seed").exists(), "no seed is created");
    }

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
            eprintln!("skipped: no ssh-keygen on this host");
            return;
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
            eprintln!("skipped: no ssh-keygen on this host");
            return;
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
            eprintln!("skipped: needs root, chroot and {host} to build a clone that runs ssh-keygen");
            return;
        }
        let root = system();
        let r = root.path();
        if !install_in_chroot(r, host) {
            eprintln!("skipped: ldd could not list ssh-keygen's libraries");
            return;
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
            eprintln!("skipped: no ssh-keygen on this host");
            return;
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

    fn named(name: &str) -> Prepare {
        Prepare { hostname: Some(name.into()), keep_ssh_host_keys: true }
    }

    #[test]
    fn hostname_replaces_the_127_0_1_1_line() {
        let root = system();
        let r = root.path();
        write(r, HOSTNAME, "golden\n");
        write(
            r,
            HOSTS,
            "127.0.0.1\tlocalhost golden\n127.0.1.1\tgolden.rack.example golden # me\n\
             10.0.0.1\tgolden.rack.example golden\n::1 localhost ip6-localhost\n",
        );
        fs::set_permissions(r.join(HOSTS), Permissions::from_mode(0o640)).unwrap();
        let log = prepare_node(r, &named("node07.rack.example")).unwrap();
        assert_eq!(read(r, HOSTNAME), "node07.rack.example\n");
        assert_eq!(
            read(r, HOSTS),
            "127.0.0.1\tlocalhost node07\n127.0.1.1\tnode07.rack.example node07 # me\n\
             10.0.0.1\tgolden.rack.example golden\n::1 localhost ip6-localhost\n"
        );
        assert_eq!(mode(&r.join(HOSTS)), 0o640);
        assert!(log.iter().any(|l| l.contains("replaced")), "{log:?}");
    }

    #[test]
    fn hostname_appends_a_127_0_1_1_line() {
        let root = system();
        let r = root.path();
        write(r, HOSTS, "127.0.0.1 localhost\n10.0.0.1 admin");
        prepare_node(r, &named("node07")).unwrap();
        assert_eq!(read(r, HOSTNAME), "node07\n");
        assert_eq!(read(r, HOSTS), "127.0.0.1 localhost\n10.0.0.1 admin\n127.0.1.1\tnode07\n");

        let bare = system();
        prepare_node(bare.path(), &named("node07")).unwrap();
        assert!(read(bare.path(), HOSTS).starts_with("127.0.0.1\tlocalhost\n"));
        assert!(read(bare.path(), HOSTS).ends_with("\n127.0.1.1\tnode07\n"));
    }

    #[test]
    fn a_golden_named_localhost_keeps_localhost() {
        let edit = edit_hosts(b"127.0.0.1 localhost\n", "node07", Some("localhost"));
        assert_eq!(String::from_utf8(edit.text).unwrap(), "127.0.0.1 localhost\n127.0.1.1\tnode07\n");
        assert_eq!(edit.renamed, 0);
    }

    #[test]
    fn an_invalid_hostname_is_named_and_nothing_changes() {
        let root = system();
        let r = root.path();
        write(r, PERSISTENT_NET_RULES, "x\n");
        let e = prepare_node(r, &named("bad_host")).unwrap_err().to_string();
        assert!(e.contains("'bad_host'"), "{e}");
        assert!(r.join(PERSISTENT_NET_RULES).exists());
    }

    #[test]
    fn symlinks_out_of_the_root_are_replaced_not_written_through() {
        let root = system();
        let outside = tempfile::tempdir().unwrap();
        let r = root.path();
        let golden = "0123456789abcdef0123456789abcdef\n";
        // Each link's absolute target exists outside (the running system)
        // and inside the clone (what the node would see).
        let inside = r.join(outside.path().strip_prefix("/").unwrap());
        fs::create_dir_all(&inside).unwrap();
        for (rel, text) in
            [(HOSTNAME, "golden\n"), (HOSTS, "127.0.0.1 localhost golden\n"), (MACHINE_ID, golden)]
        {
            let name = rel.replace('/', "-");
            fs::write(outside.path().join(&name), format!("outside {text}")).unwrap();
            fs::write(inside.join(&name), text).unwrap();
            symlink(outside.path().join(&name), r.join(rel)).unwrap();
        }
        let log = prepare_node(r, &named("node07")).unwrap();
        for (name, text) in [("etc-hostname", "golden\n"), ("etc-hosts", "127.0.0.1 localhost golden\n")] {
            assert_eq!(fs::read_to_string(outside.path().join(name)).unwrap(), format!("outside {text}"));
            assert_eq!(fs::read_to_string(inside.join(name)).unwrap(), text);
        }
        assert_eq!(
            fs::read_to_string(outside.path().join("etc-machine-id")).unwrap(),
            format!("outside {golden}")
        );
        for rel in [HOSTNAME, HOSTS, MACHINE_ID] {
            assert!(fs::symlink_metadata(r.join(rel)).unwrap().is_file(), "{rel}");
        }
        assert_eq!(read(r, HOSTNAME), "node07\n");
        // Read in-root: the golden's name came from the clone's own target.
        assert_eq!(read(r, HOSTS), "127.0.0.1\tlocalhost node07\n127.0.1.1\tnode07\n");
        let id = read(r, MACHINE_ID);
        assert!(is_machine_id(&id) && id != golden, "{id:?}");
        assert_eq!(log.iter().filter(|l| l.contains("was a symlink")).count(), 3, "{log:?}");
    }

    #[test]
    fn resolution_stays_in_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let tree = Tree::new(r).unwrap();
        fs::create_dir_all(r.join("usr/lib")).unwrap();
        fs::create_dir(r.join("etc")).unwrap();
        symlink("/usr/lib", r.join("lib")).unwrap();
        symlink("../../../../../../../../etc", r.join("usr/up")).unwrap();
        symlink("loop", r.join("loop")).unwrap();
        assert_eq!(tree.resolve("lib/x", true).unwrap(), r.join("usr/lib/x"));
        assert_eq!(tree.resolve("usr/up/hosts", true).unwrap(), r.join("etc/hosts"));
        assert_eq!(tree.resolve("../../etc", true).unwrap(), r.join("etc"));
        assert_eq!(tree.resolve("lib", false).unwrap(), r.join("lib"));
        let e = tree.resolve("loop/x", true).unwrap_err().to_string();
        assert!(e.contains("symbolic links"), "{e}");
    }

    #[test]
    fn the_running_system_and_non_trees_are_refused() {
        let e = prepare_node(Path::new("/"), &Prepare::default()).unwrap_err().to_string();
        assert!(e.contains("running system"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = prepare_node(empty.path(), &Prepare::default()).unwrap_err().to_string();
        assert!(e.contains("not a system tree"), "{e}");
        assert!(rewrite_uuids(Path::new("/"), &[]).is_err());
    }

    fn map(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    const ROOT_OLD: &str = "0a1b2c3d-1111-4222-8333-444455556666";
    const ROOT_NEW: &str = "9F8E7D6C-AAAA-4BBB-8CCC-DDDDEEEEFFFF";
    const ESP_OLD: &str = "1234-ABCD";
    const ESP_NEW: &str = "5678-ef01";

    #[test]
    fn uuids_are_rewritten_as_whole_tokens_in_blkid_case() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let fstab = format!(
            "UUID={ROOT_OLD} / ext4 defaults 0 1\n\
             UUID={ROOT_OLD}7 /data xfs defaults 0 2\n\
             # UUID=x{ROOT_OLD}\n\
             UUID={} /boot/efi vfat umask=0077 0 1\n\
             /dev/mapper/luks-{ROOT_OLD} /srv ext4 defaults 0 2\n",
            ESP_OLD.to_lowercase()
        );
        write(r, "etc/fstab", &fstab);
        fs::set_permissions(r.join("etc/fstab"), Permissions::from_mode(0o640)).unwrap();
        write(
            r,
            "boot/efi/EFI/debian/grub.cfg",
            &format!("search.fs_uuid {} root\n", ROOT_OLD.to_uppercase()),
        );
        write(r, "boot/loader/entries/x.conf", &format!("options root=UUID={ROOT_OLD} ro\n"));
        write(r, "boot/loader/entries/.hidden.conf", &format!("options root=UUID={ROOT_OLD}\n"));
        write(r, "boot/grub/grub.cfg", "menuentry 'no uuids here' {}\n");
        let changed = rewrite_uuids(r, &map(&[(ROOT_OLD, ROOT_NEW), (ESP_OLD, ESP_NEW)])).unwrap();
        let new = ROOT_NEW.to_lowercase();
        assert_eq!(
            read(r, "etc/fstab"),
            format!(
                "UUID={new} / ext4 defaults 0 1\n\
                 UUID={ROOT_OLD}7 /data xfs defaults 0 2\n\
                 # UUID=x{ROOT_OLD}\n\
                 UUID=5678-EF01 /boot/efi vfat umask=0077 0 1\n\
                 /dev/mapper/luks-{ROOT_OLD} /srv ext4 defaults 0 2\n"
            )
        );
        assert_eq!(mode(&r.join("etc/fstab")), 0o640);
        assert_eq!(read(r, "boot/efi/EFI/debian/grub.cfg"), format!("search.fs_uuid {new} root\n"));
        assert_eq!(read(r, "boot/loader/entries/x.conf"), format!("options root=UUID={new} ro\n"));
        assert!(read(r, "boot/loader/entries/.hidden.conf").contains(ROOT_OLD));
        let mut expected: Vec<PathBuf> =
            ["etc/fstab", "boot/efi/EFI/debian/grub.cfg", "boot/loader/entries/x.conf"]
                .map(|p| r.join(p))
                .into();
        let mut changed = changed;
        changed.sort();
        expected.sort();
        assert_eq!(changed, expected);
        assert!(names(&r.join("etc")).unwrap().iter().all(|n| !n.starts_with('.')), "temporary files left");
    }

    #[test]
    fn uuid_maps_apply_at_once() {
        // A→B and B→A swap, never A→B→A.
        let a = "11111111-1111-4111-8111-111111111111";
        let b = "22222222-2222-4222-8222-222222222222";
        let m = UuidMap::new(&map(&[(a, b), (b, a)])).unwrap();
        let text = format!("{a} {b}");
        assert_eq!(replace_uuids(text.as_bytes(), &m).unwrap(), format!("{b} {a}").into_bytes());
        assert!(replace_uuids(b"nothing", &m).is_none());
        assert!(UuidMap::new(&map(&[("not-a-uuid!", b)])).is_err());
        assert!(UuidMap::new(&map(&[("1234", b)])).is_err(), "would match any 1234");
        assert!(UuidMap::new(&map(&[(a, b), (&a.to_uppercase(), "33333333-3333-4333-8333-333333333333")]))
            .is_err());
    }

    #[test]
    fn grubenv_keeps_its_size_through_a_linked_path() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let body = format!("# GRUB Environment Block\nkernelopts=root=UUID={ESP_OLD} ro\n");
        let mut env = body.into_bytes();
        env.resize(GRUBENV_SIZE, b'#');
        write(r, "boot/efi/EFI/redhat/grubenv", "");
        fs::write(r.join("boot/efi/EFI/redhat/grubenv"), &env).unwrap();
        fs::create_dir_all(r.join("boot/grub2")).unwrap();
        symlink("../efi/EFI/redhat/grubenv", r.join("boot/grub2/grubenv")).unwrap();
        let longer = "0a1b2c3d-1111-4222-8333-444455556666";
        let changed = rewrite_uuids(r, &map(&[(ESP_OLD, longer)])).unwrap();
        assert_eq!(changed, vec![r.join("boot/efi/EFI/redhat/grubenv")], "once, at its target");
        assert!(fs::symlink_metadata(r.join("boot/grub2/grubenv")).unwrap().file_type().is_symlink());
        let new = fs::read(r.join("boot/efi/EFI/redhat/grubenv")).unwrap();
        assert_eq!(new.len(), GRUBENV_SIZE);
        let text = String::from_utf8(new).unwrap();
        let body = format!("# GRUB Environment Block\nkernelopts=root=UUID={longer} ro\n");
        assert!(text.starts_with(&body) && text[body.len()..].bytes().all(|b| b == b'#'), "{text}");
    }

    #[test]
    fn uuid_files_linked_out_of_the_root_are_not_touched() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let r = root.path();
        let target = outside.path().join("fstab");
        fs::write(&target, format!("UUID={ROOT_OLD} / ext4 defaults 0 1\n")).unwrap();
        fs::create_dir(r.join("etc")).unwrap();
        symlink(&target, r.join("etc/fstab")).unwrap();
        assert!(rewrite_uuids(r, &map(&[(ROOT_OLD, ROOT_NEW)])).unwrap().is_empty());
        assert!(fs::read_to_string(&target).unwrap().contains(ROOT_OLD));
    }

    #[test]
    fn rewrites_keep_owner_and_extended_attributes() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let path = r.join("etc/crypttab");
        write(r, "etc/crypttab", &format!("data UUID={ROOT_OLD} none luks\n"));
        let owner = if is_root() { Some((1234, 5678)) } else { None };
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
        }
        let cpath = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: NUL-terminated strings and a buffer of the given length.
        let set =
            unsafe { libc::setxattr(cpath.as_ptr(), c"user.kacast".as_ptr(), b"kept".as_ptr().cast(), 4, 0) };
        if set != 0 {
            eprintln!("extended attributes not checked: {}", io::Error::last_os_error());
        }
        rewrite_uuids(r, &map(&[(ROOT_OLD, ROOT_NEW)])).unwrap();
        assert!(read(r, "etc/crypttab").contains(&ROOT_NEW.to_lowercase()));
        let meta = fs::metadata(&path).unwrap();
        if let Some((uid, gid)) = owner {
            assert_eq!((meta.uid(), meta.gid()), (uid, gid));
        }
        if set == 0 {
            let value = xattr_read(|buf, len| unsafe {
                // SAFETY: as above.
                libc::lgetxattr(cpath.as_ptr(), c"user.kacast".as_ptr(), buf.cast(), len)
            })
            .unwrap();
            assert_eq!(value, b"kept");
        }
    }
}
