//! The node's block devices: which disk, its size and partitions, whether it is
//! in use, wiping it, writing a partition table and making the kernel and
//! `/dev` show it, and finding file systems by UUID or label.
//!
//! kacast runs from an initrd with no udev: `/dev` is a devtmpfs (the kernel
//! makes the nodes) or a plain tmpfs (nobody does). So every path handed out
//! here is checked against sysfs and its node made (`mknod`) when missing or
//! stale, and `/dev/disk/by-*` links, which only udev makes, are resolved with
//! blkid instead. Nothing waits or polls: the kernel creates partitions
//! synchronously in BLKRRPART (or partx's BLKPG), so once that returns (and
//! `udevadm settle` if a udev runs) sysfs says what there is. BLKRRPART is
//! not enough everywhere: loop disks refuse it, and a kernel built without
//! the MBR or GPT parser finds nothing; partx parses the table itself then.

use std::ffi::{CString, OsString};
use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use tracing::{debug, warn};

use super::error::{DiskError, Result};
use super::layout::{Layout, SECTOR};
use super::tool;

/// sysfs `size` counts 512-byte units whatever the disk's logical sector size
/// (the kernel's `sector_t`), so 4Kn disks are not over- or under-counted.
const SYSFS_UNIT: u64 = 512;

/// Block devices by `MAJOR:MINOR`, each a link into /sys/devices.
const SYS_DEV_BLOCK: &str = "/sys/dev/block";

/// Block devices (disks and partitions) by kernel name.
const SYS_CLASS_BLOCK: &str = "/sys/class/block";

/// Nodes kacast creates: root only. udev would give `0660 root:disk`, but an
/// initrd need not have a `disk` group, and only root clones disks.
const NODE_MODE: libc::mode_t = 0o600;

/// A udev daemon is running when its control socket exists; then it may still
/// be renaming or linking nodes after a reread, and `udevadm settle` waits.
const UDEV_CONTROL: &str = "/run/udev/control";

/// `BLKRRPART` = `_IO(0x12, 95)` from linux/fs.h, which the libc crate lacks.
/// These architectures encode `_IO`'s "no data" direction as bit 29.
#[cfg(any(
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "sparc64"
))]
const BLKRRPART: libc::Ioctl = 0x2000_125f;
#[cfg(not(any(
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "sparc64"
)))]
const BLKRRPART: libc::Ioctl = 0x125f;

/// The tags blkid finds devices by, as fstab's first field spells them.
const TAGS: [&str; 4] = ["UUID", "LABEL", "PARTUUID", "PARTLABEL"];

/// What udev's `/dev/disk/by-*` directories stand for, as blkid tags.
const BY_DIRS: [(&str, &str); 4] = [
    ("/dev/disk/by-uuid/", "UUID"),
    ("/dev/disk/by-label/", "LABEL"),
    ("/dev/disk/by-partuuid/", "PARTUUID"),
    ("/dev/disk/by-partlabel/", "PARTLABEL"),
];

/// A whole disk of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Its node, symlinks resolved, so partitions are found next to it.
    pub path: PathBuf,
    /// The kernel's name (`sda`, `loop5`, `nvme0n1`): its sysfs directory.
    pub name: String,
    pub bytes: u64,
}

/// A disk or partition as the kernel knows it, with the node we use for it.
#[derive(Debug, Clone)]
struct Node {
    path: PathBuf,
    name: String,
    number: u32,
    dev: (u32, u32),
}

impl Disk {
    /// The whole disk at `path` (a node or a symlink to one).
    pub fn open(path: &Path) -> Result<Disk> {
        let sys = sys_dev(path, rdev(path)?)?;
        if sys.join("partition").exists() {
            return Err(DiskError::Other(format!("{} is a partition, not a whole disk", path.display())));
        }
        let sectors: u64 = read_number(&sys.join("size"))?;
        let path = fs::canonicalize(path).map_err(|e| io_at("resolving", path, e))?;
        Ok(Disk { path, name: kernel_name(&sys)?, bytes: sectors * SYSFS_UNIT })
    }

    /// The node of partition `n`: the kernel appends a `p` when the disk's name
    /// ends in a digit (`loop5p1`, `nvme0n1p1`), else just the number (`sda1`).
    pub fn partition_path(&self, n: u32) -> PathBuf {
        let file = self.path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        self.path.with_file_name(partition_name(&file, n))
    }

    /// The partitions the kernel has now, by number.
    pub fn partitions(&self) -> Result<Vec<(u32, PathBuf)>> {
        Ok(self.kernel_partitions()?.into_iter().map(|p| (p.number, p.path)).collect())
    }

    /// Every reason writing this disk would hurt the running system: it or a
    /// partition is mounted, an active swap, or under device-mapper or md.
    pub fn in_use(&self) -> Result<Vec<String>> {
        let mut nodes = vec![self.node()?];
        nodes.extend(self.kernel_partitions()?);
        let mounts = mounts()?;
        let swaps = swaps()?;
        let mut reasons = Vec::new();
        for node in &nodes {
            let shown = node.path.display();
            for m in
                mounts.iter().filter(|m| (m.major, m.minor) == node.dev || Path::new(&m.source) == node.path)
            {
                reasons.push(format!("{shown} is mounted on {}", m.mount_point.display()));
            }
            if swaps.contains(&node.dev) {
                reasons.push(format!("{shown} is an active swap"));
            }
            for holder in holders(&node.name)? {
                reasons.push(format!("{shown} is held by {holder}"));
            }
        }
        Ok(reasons)
    }

    /// Fails with [`DiskError::InUse`] if [`Disk::in_use`] finds any reason.
    pub fn ensure_unused(&self) -> Result<()> {
        let reasons = self.in_use()?;
        if reasons.is_empty() {
            return Ok(());
        }
        Err(DiskError::InUse { path: self.path.clone(), reasons })
    }

    /// Erases every signature: the file systems of the current partitions
    /// first (a new table at the same offsets would bring them back), then the
    /// disk's own (MBR, both GPTs, a file system on the whole disk). Leaves the
    /// kernel with no partitions. Refused while the disk is in use: `--force`
    /// would erase a mounted file system.
    pub fn wipe(&self) -> Result<()> {
        self.ensure_unused()?;
        let before = self.kernel_partitions()?;
        self.locked(|| {
            for part in &before {
                ensure_node(&part.path, part.dev)?;
                wipefs(&part.path)?;
            }
            wipefs(&self.path)?;
            self.rescan(&[])
        })?;
        self.publish(&before, &[])
    }

    /// Writes `layout` with sfdisk, erasing old signatures on the disk and in
    /// the new partitions, then makes the kernel and /dev show it. Refused
    /// while the disk is in use.
    pub fn write_table(&self, layout: &Layout) -> Result<()> {
        self.ensure_unused()?;
        let needed = layout.disk_sectors.saturating_mul(SECTOR);
        if needed > self.bytes {
            return Err(DiskError::Plan(format!(
                "the layout is for a disk of {needed} bytes but {} has {}",
                self.path.display(),
                self.bytes
            )));
        }
        let dev = path_str(&self.path)?;
        // The kernel is told by `rescan`, which knows how to reach a loop disk.
        let args =
            ["--no-reread", "--no-tell-kernel", "-q", "--wipe", "always", "--wipe-partitions", "always"];
        let script = layout.to_sfdisk_script();
        let numbers: Vec<u32> = layout.partitions.iter().map(|p| p.number).collect();
        let before = self.kernel_partitions()?;
        self.locked(|| {
            tool::run("sfdisk", &[&args[..], &[dev]].concat(), dev, Some(script.as_bytes()))?;
            self.rescan(&numbers)
        })?;
        self.publish(&before, &numbers)
    }

    /// Makes the kernel drop its old partitions and read the table on disk, and
    /// checks it now has exactly the partitions `expect`, each with a correct
    /// node in /dev (made if missing or stale; old nodes removed).
    pub fn reread(&self, expect: &[u32]) -> Result<()> {
        let before = self.kernel_partitions()?;
        self.locked(|| self.rescan(expect))?;
        self.publish(&before, expect)
    }

    /// Runs `change` holding an exclusive BSD lock on the disk. udev honours
    /// it (systemd's block device locking): meanwhile it neither probes the
    /// disk and its partitions, which would make the kernel refuse to delete
    /// them (EBUSY), nor rereads the table itself.
    fn locked<T>(&self, change: impl FnOnce() -> Result<T>) -> Result<T> {
        let file = File::open(&self.path).map_err(|e| io_at("opening", &self.path, e))?;
        // SAFETY: flock on a descriptor that stays open until `file` drops.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_at("locking", &self.path, std::io::Error::last_os_error()));
        }
        let result = change();
        drop(file); // unlocks
        result
    }

    /// Has the kernel take the table on disk: BLKRRPART, else partx.
    fn rescan(&self, expect: &[u32]) -> Result<()> {
        if !self.kernel_reread(expect)? {
            self.partx_reread(expect.is_empty())?;
        }
        Ok(())
    }

    /// After a rescan (and the lock, which `udevadm settle` would wait on):
    /// checks the kernel has exactly `expect` and gives each a correct node.
    fn publish(&self, before: &[Node], expect: &[u32]) -> Result<()> {
        settle_udev(&self.path);
        let after = self.kernel_partitions()?;
        self.check_numbers(&after, expect)?;
        remove_stale_nodes(before, &after);
        after.iter().try_for_each(|p| ensure_node(&p.path, p.dev))
    }

    /// `sfdisk --json`: the table as it is on the disk.
    pub fn table_json(&self) -> Result<String> {
        table_json_of(&self.path)
    }

    /// Whether BLKRRPART left the kernel with the partitions `expect`. It
    /// fails on a loop disk without partscan (EINVAL) or with a partition open
    /// (EBUSY), and succeeds finding nothing when the kernel was built without
    /// the parser for the label (CONFIG_MSDOS_PARTITION, CONFIG_EFI_PARTITION).
    fn kernel_reread(&self, expect: &[u32]) -> Result<bool> {
        if let Err(e) = self.blkrrpart() {
            debug!("BLKRRPART on {}: {e}; using partx", self.path.display());
            return Ok(false);
        }
        let mut found: Vec<u32> = self.kernel_partitions()?.iter().map(|p| p.number).collect();
        let mut want = expect.to_vec();
        found.sort_unstable();
        want.sort_unstable();
        if found != want {
            debug!(
                "BLKRRPART on {} gave partitions {found:?}, not {want:?}; using partx",
                self.path.display()
            );
        }
        Ok(found == want)
    }

    fn blkrrpart(&self) -> std::io::Result<()> {
        // Read-only: enough for the ioctl, and closing it sends udev no event.
        let file = File::open(&self.path)?;
        // SAFETY: BLKRRPART takes no argument and the descriptor is open.
        if unsafe { libc::ioctl(file.as_raw_fd(), BLKRRPART) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// partx reads the table itself (libblkid) and adds partition by
    /// partition (BLKPG), which works where BLKRRPART does not. `partx -d`
    /// refuses a disk without partitions and `partx -a` one without a table
    /// (just wiped), so neither is asked then.
    fn partx_reread(&self, expect_none: bool) -> Result<()> {
        let dev = path_str(&self.path)?;
        if !self.kernel_partitions()?.is_empty() {
            tool::run("partx", &["-d", dev], dev, None)?;
        }
        match tool::run("partx", &["-a", dev], dev, None) {
            Err(e) if !expect_none => Err(e),
            _ => Ok(()),
        }
    }

    fn check_numbers(&self, found: &[Node], expect: &[u32]) -> Result<()> {
        if let Some(&n) = expect.iter().find(|&&n| !found.iter().any(|p| p.number == n)) {
            return Err(DiskError::Other(format!(
                "{}: the kernel has no partition {} after rereading the table of {}",
                self.partition_path(n).display(),
                n,
                self.path.display()
            )));
        }
        let extra: Vec<String> = found
            .iter()
            .filter(|p| !expect.contains(&p.number))
            .map(|p| p.path.display().to_string())
            .collect();
        if extra.is_empty() {
            return Ok(());
        }
        Err(DiskError::Other(format!(
            "{}: the kernel still has {} after rereading the table",
            self.path.display(),
            extra.join(", ")
        )))
    }

    fn node(&self) -> Result<Node> {
        let dev = read_dev(&Path::new(SYS_CLASS_BLOCK).join(&self.name))?;
        Ok(Node { path: self.path.clone(), name: self.name.clone(), number: 0, dev })
    }

    /// The partitions in sysfs: each has a directory under the disk's, with a
    /// `partition` file holding its number.
    fn kernel_partitions(&self) -> Result<Vec<Node>> {
        let dir = Path::new(SYS_CLASS_BLOCK).join(&self.name);
        let mut parts = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| io_at("listing", &dir, e))? {
            let sub = entry.map_err(|e| io_at("listing", &dir, e))?.path();
            if !sub.join("partition").exists() {
                continue;
            }
            let number: u32 = read_number(&sub.join("partition"))?;
            let name = sub.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            parts.push(Node { path: self.partition_path(number), name, number, dev: read_dev(&sub)? });
        }
        parts.sort_by_key(|p| p.number);
        Ok(parts)
    }
}

/// `sfdisk --json` of `dev`, which may also be a disk image: `kacast desc`
/// reads golden disks and their images alike.
pub fn table_json_of(dev: &Path) -> Result<String> {
    let d = path_str(dev)?;
    tool::run("sfdisk", &["--json", d], d, None)
}

/// The kernel's name of partition `n` of disk `disk` (block/partitions/core.c).
fn partition_name(disk: &str, n: u32) -> String {
    let sep = if disk.ends_with(|c: char| c.is_ascii_digit()) { "p" } else { "" };
    format!("{disk}{sep}{n}")
}

fn wipefs(dev: &Path) -> Result<()> {
    let d = path_str(dev)?;
    tool::run("wipefs", &["--all", "--force", d], d, None).map(drop)
}

/// Waits for a running udev to finish with the new partitions. A settle that
/// times out is not fatal: sysfs, checked next, is what counts.
fn settle_udev(disk: &Path) {
    if Path::new(UDEV_CONTROL).exists() && tool::exists("udevadm") {
        if let Err(e) = tool::run("udevadm", &["settle"], &disk.display().to_string(), None) {
            warn!("{e}");
        }
    }
}

/// Removes the nodes of partitions that are gone: on a tmpfs /dev nobody
/// else would, and a later step could take them for the new ones.
fn remove_stale_nodes(before: &[Node], after: &[Node]) {
    for old in before.iter().filter(|o| !after.iter().any(|n| n.path == o.path)) {
        if node_matches(&old.path, old.dev) {
            if let Err(e) = fs::remove_file(&old.path) {
                warn!("cannot remove {}, a partition that is gone: {e}", old.path.display());
            }
        }
    }
}

/// Whether `path` is a block node for `dev`.
fn node_matches(path: &Path, dev: (u32, u32)) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_block_device() && split_dev(m.rdev()) == dev)
}

/// Makes `path` a block node for `dev`, replacing whatever else is there.
fn ensure_node(path: &Path, dev: (u32, u32)) -> Result<()> {
    if node_matches(path, dev) {
        return Ok(());
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(io_at("removing stale", path, e)),
        _ => {}
    }
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| DiskError::Other(format!("bad path {path:?}")))?;
    // SAFETY: c_path is a NUL-terminated string that outlives the call.
    let rc = unsafe { libc::mknod(c_path.as_ptr(), libc::S_IFBLK | NODE_MODE, libc::makedev(dev.0, dev.1)) };
    if rc == 0 {
        debug!("created {} ({}:{})", path.display(), dev.0, dev.1);
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    // devtmpfs may have made it meanwhile: then it is right.
    if node_matches(path, dev) {
        return Ok(());
    }
    Err(DiskError::io(format!("creating {} ({}:{})", path.display(), dev.0, dev.1), e))
}

/// The devices holding `name` (device-mapper, md, bcache…).
fn holders(name: &str) -> Result<Vec<String>> {
    let dir = Path::new(SYS_CLASS_BLOCK).join(name).join("holders");
    let entries = match fs::read_dir(&dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        r => r.map_err(|e| io_at("listing", &dir, e))?,
    };
    entries
        .map(|e| Ok(e.map_err(|e| io_at("listing", &dir, e))?.file_name().to_string_lossy().into_owned()))
        .collect()
}

/// The devices of the active swaps.
fn swaps() -> Result<Vec<(u32, u32)>> {
    let text = fs::read_to_string("/proc/swaps").map_err(|e| DiskError::io("reading /proc/swaps", e))?;
    Ok(parse_swaps(&text).iter().filter_map(|p| rdev(p).ok()).collect())
}

/// The file names of /proc/swaps (the first column, after its header).
fn parse_swaps(text: &str) -> Vec<PathBuf> {
    text.lines().skip(1).filter_map(|l| l.split_whitespace().next()).map(unescape_octal).collect()
}

/// A file system's identity, as blkid reads it from the device itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    pub fstype: Option<String>,
    pub uuid: Option<String>,
    pub label: Option<String>,
    /// The GPT partition's own UUID (or the MBR's `PTUUID-NN`).
    pub partuuid: Option<String>,
}

/// What is on `dev`, read from the device (`blkid -p`: no cache, which could
/// describe what was there before a wipe). Nothing found is all `None`.
pub fn probe(dev: &Path) -> Result<Probe> {
    fs::metadata(dev).map_err(|e| io_at("probing", dev, e))?;
    let d = path_str(dev)?;
    Ok(blkid(&["-p", "-o", "export", d], d)?.map(|out| parse_export(&out)).unwrap_or_default())
}

/// `blkid -o export`: `KEY=value` lines, with `\` before special characters.
fn parse_export(text: &str) -> Probe {
    let mut probe = Probe::default();
    for (key, value) in text.lines().filter_map(|l| l.split_once('=')) {
        let slot = match key {
            "TYPE" => &mut probe.fstype,
            "UUID" => &mut probe.uuid,
            "LABEL" => &mut probe.label,
            "PART_ENTRY_UUID" => &mut probe.partuuid,
            _ => continue,
        };
        *slot = Some(unescape_backslash(value));
    }
    probe
}

fn unescape_backslash(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' { chars.next().unwrap_or('\\') } else { c });
    }
    out
}

/// Runs blkid; `None` when it exits 2, its "nothing found".
fn blkid(args: &[&str], target: &str) -> Result<Option<String>> {
    match tool::run("blkid", args, target, None) {
        Ok(out) => Ok(Some(out)),
        Err(DiskError::Tool { detail, .. })
            if detail == "exit status 2" || detail.starts_with("exit status 2:") =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// One mounted file system, from /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The device it is on (`0:NN` for file systems without one, like btrfs).
    pub major: u32,
    pub minor: u32,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
    /// Mounted read-only (`ro` in the mount's or the superblock's options).
    pub read_only: bool,
}

/// What is mounted in this process's namespace.
pub fn mounts() -> Result<Vec<Mount>> {
    let path = "/proc/self/mountinfo";
    parse_mountinfo(&fs::read_to_string(path).map_err(|e| DiskError::io(format!("reading {path}"), e))?)
}

/// Parses mountinfo (proc(5)): `ID PARENT MAJ:MIN ROOT POINT OPTIONS
/// [OPTIONAL…] - FSTYPE SOURCE SUPEROPTIONS`, paths with `\040`-style escapes.
pub fn parse_mountinfo(text: &str) -> Result<Vec<Mount>> {
    text.lines().filter(|l| !l.trim().is_empty()).map(parse_mountinfo_line).collect()
}

fn parse_mountinfo_line(line: &str) -> Result<Mount> {
    let bad = || DiskError::Other(format!("malformed /proc/self/mountinfo line: {line}"));
    let fields: Vec<&str> = line.split(' ').collect();
    let (major, minor) = fields.get(2).and_then(|d| parse_dev(d)).ok_or_else(bad)?;
    let mount_point = unescape_octal(fields.get(4).ok_or_else(bad)?);
    let dash = fields.iter().skip(6).position(|f| *f == "-").ok_or_else(bad)? + 6;
    let fstype = fields.get(dash + 1).ok_or_else(bad)?.to_string();
    let source = unescape_octal(fields.get(dash + 2).ok_or_else(bad)?).to_string_lossy().into_owned();
    let ro = |options: Option<&&str>| options.is_some_and(|o| o.split(',').any(|o| o == "ro"));
    let read_only = ro(fields.get(5)) || ro(fields.get(dash + 3));
    Ok(Mount { major, minor, mount_point, fstype, source, read_only })
}

/// Undoes the kernel's `\ooo` escapes of space, tab, newline and backslash.
fn unescape_octal(s: &str) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape_codes(s, "\\", 3, 8)))
}

/// Replaces every `intro` followed by `digits` digits in `radix` with the
/// byte they spell; anything else is kept as it is.
fn unescape_codes(s: &str, intro: &str, digits: usize, radix: u32) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let code = s
            .get(i + intro.len()..i + intro.len() + digits)
            .filter(|d| b[i..].starts_with(intro.as_bytes()) && d.chars().all(|c| c.is_digit(radix)));
        match code.and_then(|d| u8::from_str_radix(d, radix).ok()) {
            Some(byte) => {
                out.push(byte);
                i += intro.len() + digits;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

/// The node of device `major:minor`, `/dev/` + its kernel DEVNAME, made if
/// missing or stale.
pub fn device_of(major: u32, minor: u32) -> Result<PathBuf> {
    let sys = Path::new(SYS_DEV_BLOCK).join(format!("{major}:{minor}"));
    let uevent = sys.join("uevent");
    let text = fs::read_to_string(&uevent).map_err(|e| io_at("reading", &uevent, e))?;
    let name = text
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .ok_or_else(|| DiskError::Other(format!("{}: no DEVNAME", uevent.display())))?;
    let path = Path::new("/dev").join(name);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| io_at("creating", dir, e))?;
    }
    ensure_node(&path, (major, minor))?;
    Ok(path)
}

/// The whole disk a partition is on and its number, from sysfs, where a
/// partition's directory sits in its disk's.
pub fn locate_partition(dev: &Path) -> Result<(PathBuf, u32)> {
    let sys = sys_dev(dev, rdev(dev)?)?;
    if !sys.join("partition").exists() {
        return Err(DiskError::Other(format!("{} is not a partition", dev.display())));
    }
    let number: u32 = read_number(&sys.join("partition"))?;
    let real = fs::canonicalize(&sys).map_err(|e| io_at("resolving", &sys, e))?;
    let parent = real.parent().ok_or_else(|| DiskError::Other(format!("{}: no parent", real.display())))?;
    let (major, minor) = read_dev(parent)?;
    Ok((device_of(major, minor)?, number))
}

/// The device whose `tag` (UUID, LABEL, PARTUUID, PARTLABEL) is `value`, read
/// from the devices themselves (no blkid cache, which may be stale). Makes
/// the missing nodes of all block devices first, so that blkid sees them.
pub fn find_by_tag(tag: &str, value: &str) -> Result<Option<PathBuf>> {
    if !TAGS.contains(&tag) {
        return Err(DiskError::Other(format!("unknown tag '{tag}' (one of {})", TAGS.join(", "))));
    }
    ensure_all_nodes()?;
    let spec = format!("{tag}={value}");
    let out = blkid(&["-c", "/dev/null", "-l", "-o", "device", "-t", &spec], &spec)?;
    Ok(out
        .and_then(|o| o.lines().next().map(|l| PathBuf::from(l.trim())))
        .filter(|p| !p.as_os_str().is_empty()))
}

/// Gives every block device the kernel has a node: blkid scans only the
/// devices it finds a node for, so on a tmpfs /dev it would miss the rest.
fn ensure_all_nodes() -> Result<()> {
    let dir = Path::new(SYS_CLASS_BLOCK);
    for entry in fs::read_dir(dir).map_err(|e| io_at("listing", dir, e))? {
        let (major, minor) = read_dev(&entry.map_err(|e| io_at("listing", dir, e))?.path())?;
        device_of(major, minor)?;
    }
    Ok(())
}

/// What fstab's first field names, parsed.
#[derive(Debug, PartialEq, Eq)]
enum Spec {
    Tag(&'static str, String),
    Path(PathBuf),
    /// `proc`, `tmpfs`, `server:/export`: no block device.
    None,
}

fn parse_spec(spec: &str) -> Spec {
    let spec = spec.trim();
    for tag in TAGS {
        if let Some(value) = spec.strip_prefix(tag).and_then(|r| r.strip_prefix('=')) {
            let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
            return Spec::Tag(tag, value.to_string());
        }
    }
    for (dir, tag) in BY_DIRS {
        if let Some(value) = spec.strip_prefix(dir) {
            return Spec::Tag(tag, unescape_udev(value));
        }
    }
    if spec.starts_with('/') {
        Spec::Path(unescape_octal(spec))
    } else {
        Spec::None
    }
}

/// udev writes unsafe characters of link names as `\xHH` (a space: `\x20`).
fn unescape_udev(s: &str) -> String {
    String::from_utf8_lossy(&unescape_codes(s, "\\x", 2, 16)).into_owned()
}

/// The device an fstab first field names: a tag, a `/dev/disk/by-*` link
/// (looked up by tag, as no udev made the links), or a path. `None` when no
/// such device is here, or the field names none (`proc`, `tmpfs`).
pub fn resolve_spec(spec: &str) -> Result<Option<PathBuf>> {
    match parse_spec(spec) {
        Spec::Tag(tag, value) => find_by_tag(tag, &value),
        Spec::Path(path) => match fs::canonicalize(&path) {
            Ok(real) => Ok(Some(real)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_at("resolving", &path, e)),
        },
        Spec::None => Ok(None),
    }
}

/// The major and minor numbers of the block device node `path`.
pub fn rdev(path: &Path) -> Result<(u32, u32)> {
    let meta = match fs::metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(DiskError::NoSuchDisk { path: path.into() }),
        r => r.map_err(|e| io_at("examining", path, e))?,
    };
    if !meta.file_type().is_block_device() {
        return Err(DiskError::NotBlockDevice { path: path.into() });
    }
    Ok(split_dev(meta.rdev()))
}

fn split_dev(rdev: u64) -> (u32, u32) {
    (libc::major(rdev), libc::minor(rdev))
}

/// `/sys/dev/block/MAJ:MIN` of the node `path`; a node whose device the
/// kernel does not have (a disk pulled, a stale node) is an error.
fn sys_dev(path: &Path, (major, minor): (u32, u32)) -> Result<PathBuf> {
    let sys = Path::new(SYS_DEV_BLOCK).join(format!("{major}:{minor}"));
    if sys.exists() {
        return Ok(sys);
    }
    Err(DiskError::Other(format!("{}: the kernel has no block device {major}:{minor}", path.display())))
}

/// The kernel name of a sysfs device: its directory's name.
fn kernel_name(sys: &Path) -> Result<String> {
    let real = fs::canonicalize(sys).map_err(|e| io_at("resolving", sys, e))?;
    Ok(real.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default())
}

/// The `MAJ:MIN` in the `dev` file of sysfs directory `dir`.
fn read_dev(dir: &Path) -> Result<(u32, u32)> {
    let file = dir.join("dev");
    let text = fs::read_to_string(&file).map_err(|e| io_at("reading", &file, e))?;
    parse_dev(text.trim())
        .ok_or_else(|| DiskError::Other(format!("{}: not MAJ:MIN: {text:?}", file.display())))
}

fn parse_dev(s: &str) -> Option<(u32, u32)> {
    let (major, minor) = s.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

fn read_number<T: std::str::FromStr>(file: &Path) -> Result<T> {
    let text = fs::read_to_string(file).map_err(|e| io_at("reading", file, e))?;
    text.trim().parse().map_err(|_| DiskError::Other(format!("{}: not a number: {text:?}", file.display())))
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().ok_or_else(|| DiskError::Other(format!("{}: not a UTF-8 path", path.display())))
}

fn io_at(doing: &str, path: &Path, e: std::io::Error) -> DiskError {
    DiskError::io(format!("{doing} {}", path.display()), e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(path: &str) -> Disk {
        let name = Path::new(path).file_name().unwrap().to_string_lossy().into_owned();
        Disk { path: path.into(), name, bytes: 0 }
    }

    #[test]
    fn partition_paths_follow_the_kernel_naming() {
        assert_eq!(disk("/dev/sda").partition_path(1), Path::new("/dev/sda1"));
        assert_eq!(disk("/dev/vdb").partition_path(12), Path::new("/dev/vdb12"));
        assert_eq!(disk("/dev/loop5").partition_path(1), Path::new("/dev/loop5p1"));
        assert_eq!(disk("/dev/nvme0n1").partition_path(3), Path::new("/dev/nvme0n1p3"));
        assert_eq!(disk("/dev/mmcblk0").partition_path(2), Path::new("/dev/mmcblk0p2"));
        assert_eq!(disk("/dev/cciss/c0d0").partition_path(1), Path::new("/dev/cciss/c0d0p1"));
    }

    const MOUNTINFO: &str = "\
22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/mapper/root rw
36 22 259:3 / /mnt/my\\040disk\\011x rw master:1 shared:5 - vfat /dev/loop5p1 rw,fmask=0022
40 22 0:45 / /srv rw - tmpfs tmp\\134fs rw
41 22 7:3 / /ro ro,noatime - ext4 /dev/loop3 rw
42 22 7:4 / /ro2 rw,noatime - ext4 /dev/loop4 ro,errors=remount-ro
";

    #[test]
    fn mountinfo_is_parsed_with_escapes_and_optional_fields() {
        let m = parse_mountinfo(MOUNTINFO).unwrap();
        assert_eq!(m.len(), 5);
        let ro: Vec<bool> = m.iter().map(|m| m.read_only).collect();
        assert_eq!(ro, [false, false, false, true, true]);
        assert_eq!((m[0].major, m[0].minor, m[0].fstype.as_str()), (253, 1, "ext4"));
        assert_eq!(m[0].source, "/dev/mapper/root");
        assert_eq!(m[1].mount_point, Path::new("/mnt/my disk\tx"));
        assert_eq!((m[1].major, m[1].minor), (259, 3));
        assert_eq!((m[1].fstype.as_str(), m[1].source.as_str()), ("vfat", "/dev/loop5p1"));
        assert_eq!(m[2].source, "tmp\\fs");
        assert_eq!(m[2].mount_point, Path::new("/srv"));
    }

    #[test]
    fn malformed_mountinfo_is_refused() {
        for bad in ["1 2 x:y / / rw - ext4 /dev/a rw", "1 2 8:1 / / rw ext4 /dev/a rw", "1 2 8:1"] {
            let e = parse_mountinfo(bad).unwrap_err().to_string();
            assert!(e.contains("malformed") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn blkid_export_is_parsed_and_unescaped() {
        let out = "DEVNAME=/dev/loop0p1\nLABEL=my\\ \\$disk\nUUID=8b4f-66\nTYPE=ext4\n\
                   PART_ENTRY_NAME=EFI\\ system\nPART_ENTRY_UUID=bc0a-37\n";
        let p = parse_export(out);
        assert_eq!(
            p,
            Probe {
                fstype: Some("ext4".into()),
                uuid: Some("8b4f-66".into()),
                label: Some("my $disk".into()),
                partuuid: Some("bc0a-37".into()),
            }
        );
        assert_eq!(parse_export("PTTYPE=gpt\nPTUUID=x\n"), Probe::default());
    }

    #[test]
    fn only_complete_escapes_are_decoded() {
        assert_eq!(unescape_octal("a\\134b\\12\\+12\\"), Path::new("a\\b\\12\\+12\\"));
        assert_eq!(unescape_udev("x\\x4\\xzz\\x41"), "x\\x4\\xzzA");
    }

    #[test]
    fn swaps_names_are_unescaped() {
        let text =
            "Filename\tType\tSize\tUsed\tPriority\n/dev/sda2 partition 1 0 -2\n/swap\\040file file 1 0 -3\n";
        assert_eq!(parse_swaps(text), vec![PathBuf::from("/dev/sda2"), PathBuf::from("/swap file")]);
    }

    #[test]
    fn fstab_specs_become_tags_or_paths() {
        assert_eq!(parse_spec("UUID=ab-12"), Spec::Tag("UUID", "ab-12".into()));
        assert_eq!(parse_spec("LABEL=\"my root\""), Spec::Tag("LABEL", "my root".into()));
        assert_eq!(parse_spec("PARTUUID=0a-01"), Spec::Tag("PARTUUID", "0a-01".into()));
        assert_eq!(parse_spec("PARTLABEL=EFI"), Spec::Tag("PARTLABEL", "EFI".into()));
        assert_eq!(parse_spec("/dev/disk/by-uuid/ab-12"), Spec::Tag("UUID", "ab-12".into()));
        assert_eq!(parse_spec("/dev/disk/by-label/my\\x20root"), Spec::Tag("LABEL", "my root".into()));
        assert_eq!(parse_spec("/dev/disk/by-partlabel/EFI"), Spec::Tag("PARTLABEL", "EFI".into()));
        assert_eq!(parse_spec("/dev/sda1"), Spec::Path("/dev/sda1".into()));
        assert_eq!(parse_spec("proc"), Spec::None);
        assert_eq!(parse_spec("server:/export"), Spec::None);
    }

    #[test]
    fn unknown_tags_are_refused() {
        let e = find_by_tag("SERIAL", "x").unwrap_err().to_string();
        assert!(e.contains("SERIAL"), "{e}");
    }

    #[test]
    fn non_devices_are_not_disks() {
        assert!(matches!(rdev(Path::new("/proc/self/mountinfo")), Err(DiskError::NotBlockDevice { .. })));
        assert!(matches!(rdev(Path::new("/nonexistent/kacast")), Err(DiskError::NoSuchDisk { .. })));
        assert_eq!(resolve_spec("tmpfs").unwrap(), None);
        assert_eq!(resolve_spec("/nonexistent/kacast").unwrap(), None);
    }
}
