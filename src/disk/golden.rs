//! Reading the golden node into a [`Plan`]: ka-d.sh's survey of the disks,
//! fstab and mounts, done from the kernel's view rather than from names.
//!
//! Each fstab filesystem is found through what is really mounted at its mount
//! point (`/proc/self/mountinfo`, by device number), so `UUID=`, `LABEL=` and
//! `/dev/…` entries all resolve the same way and a stale fstab line is caught
//! here, on the golden node, instead of on every node of the rack.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::blockdev::{self, Disk, Mount};
use super::bootloader::Firmware;
use super::compression::Compression;
use super::desc::Desc;
use super::error::{DiskError, Result};
use super::fstab::{self, FstabEntry};
use super::plan::{
    BootKind, BootPlan, Excluded, Plan, PlanDisk, PlanFs, PreparePlan, RawPartition, PLAN_FORMAT,
    PLAN_VERSION,
};
use super::tar::tar_create_command;

/// What `kacast clone` (ka-d.sh) was asked to do.
#[derive(Debug, Clone)]
pub struct GoldenSpec {
    /// The golden system's root (`/` on a live golden node).
    pub root: PathBuf,
    /// `-p DISK DESC`: disk name (`sda` or `/dev/sda`) and desc file.
    pub descs: Vec<(String, PathBuf)>,
    /// `-X REGEX`: disks whose name matches are left out.
    pub leave_out: Option<String>,
    /// `-x DIR`: sent empty, recreated with mode and owner.
    pub excludes: Vec<PathBuf>,
    /// `-D PART`: partitions sent as raw images.
    pub raw: Vec<PathBuf>,
    /// `-r 'grub [options]'` or `none`.
    pub bootloader: String,
    /// Overrides the firmware the nodes boot with (default: UEFI when the
    /// golden node has an EFI system partition mounted).
    pub firmware: Option<Firmware>,
    pub new_uuids: bool,
    pub prepare: PreparePlan,
    /// Names of the install's sessions (see [`Sessions`]).
    pub sessions: Sessions,
    /// `--compress zstd[:LEVEL]`: the files' tar and the raw images go
    /// through multi-threaded zstd at this level on the golden node; relays
    /// forward the compressed bytes and each node decompresses for its own
    /// disk only.
    pub compress: Option<u32>,
    /// Raw images travel sparse: runs of zeros are not sent (`--no-sparse`
    /// turns it off).
    pub sparse: bool,
}

/// `tar … | zstd` under bash's pipefail, so that a failing tar fails the
/// stream instead of ending it early as if it were whole (`-T0`: every core
/// of the golden node compresses).
fn compressed(tar: &str, level: u32) -> String {
    // The tar command is a sequence (it judges tar's exit status): a subshell.
    let pipeline = format!("( {tar} ) | zstd -T0 -{level} -q -c");
    format!("bash -o pipefail -c {}", super::tar::sh_quote(&pipeline))
}

/// The install's sessions, ka-deploy's kainstall1, kainstall2, kainstallK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sessions {
    pub base: String,
}

impl Sessions {
    pub fn plan(&self) -> String {
        format!("{}1", self.base)
    }
    pub fn tree(&self) -> String {
        format!("{}2", self.base)
    }
    /// The k-th raw partition (from 0): `{base}3`, `{base}4`…
    pub fn raw(&self, k: usize) -> String {
        format!("{}{}", self.base, k + 3)
    }
    /// Where each node reports the end of its install (no data).
    pub fn end(&self) -> String {
        format!("{}-end", self.base)
    }
}

/// The plan and what the golden node streams for it.
#[derive(Debug, Clone)]
pub struct Golden {
    pub plan: Plan,
    /// Where the tar stream of the filesystems comes from.
    pub tree: Option<TreeSource>,
    /// Golden devices (or image files) of the raw partitions, in `plan.raw` order.
    pub raw_devices: Vec<PathBuf>,
    /// Post-install archives, in `plan.postinstalls` order.
    pub postinstall_files: Vec<PathBuf>,
}

/// The tar stream: read live from the golden node, or a recorded image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeSource {
    /// A shell command writing it (tar of the golden filesystems).
    Command(String),
    /// A (compressed) tarball, sent as it is stored.
    File(PathBuf),
}

/// A golden filesystem found from its fstab line.
struct Found {
    entry: FstabEntry,
    device: PathBuf,
    disk: String,
    partition: u32,
}

/// Surveys the golden node. Everything is checked here, so a plan that leaves
/// the golden node is one every node can at least parse and place.
pub fn read_golden(spec: &GoldenSpec) -> Result<Golden> {
    // The admin's own files first: a typo in a desc is the likeliest error.
    let mut disks: BTreeMap<String, PlanDisk> = BTreeMap::new();
    for (name, file) in &spec.descs {
        let name = name.trim_start_matches("/dev/").to_string();
        let desc = Desc::from_file(file).map_err(|e| DiskError::Other(e.to_string()))?;
        let origin = file.display().to_string();
        disks.insert(name.clone(), PlanDisk { name, desc: desc.to_string(), origin });
    }
    let root = fs::canonicalize(&spec.root)
        .map_err(|e| DiskError::io(format!("golden root {}", spec.root.display()), e))?;
    let fstab_path = root.join("etc/fstab");
    let text =
        fs::read_to_string(&fstab_path).map_err(|e| DiskError::io(fstab_path.display().to_string(), e))?;
    let entries =
        fstab::parse(&text).map_err(|e| DiskError::Other(format!("{}: {e}", fstab_path.display())))?;
    let mounts = blockdev::mounts()?;
    let leave_out = match &spec.leave_out {
        Some(re) => Some(
            regex_lite::Regex::new(&format!("^(?:{re})$"))
                .map_err(|e| DiskError::Other(format!("-X '{re}' is not a valid regular expression: {e}")))?,
        ),
        None => None,
    };
    let left_out = |disk: &str| leave_out.as_ref().is_some_and(|re| re.is_match(disk));

    let mut found = Vec::new();
    for entry in entries {
        let Some(f) = locate(&root, entry, &mounts)? else { continue };
        if left_out(&f.disk) {
            warn!("{} on {} is left out (-X): not cloned", f.entry.mount_point, f.disk);
            continue;
        }
        found.push(f);
    }

    // Disks: those given a desc, those holding a filesystem, those of raw partitions.
    // -D partitions, then every FAT filesystem (see `RawPartition`).
    let fat = found.iter().filter(|f| f.entry.fstype == "vfat").map(|f| f.device.clone());
    let mut raw: Vec<RawPartition> = Vec::new();
    let mut raw_devices = Vec::new();
    for dev in spec.raw.iter().cloned().chain(fat) {
        let (disk, partition) = blockdev::locate_partition(&dev)?;
        let disk = kernel_name(&disk);
        if raw.iter().any(|r| r.disk == disk && r.partition == partition) {
            continue;
        }
        let bytes = device_bytes(&dev)?;
        let session = spec.sessions.raw(raw.len());
        let compression = if spec.compress.is_some() { Compression::Zstd } else { Compression::None };
        raw.push(RawPartition { disk, partition, bytes, session, compression, sparse: spec.sparse });
        raw_devices.push(dev);
    }
    let needed = found.iter().map(|f| f.disk.clone()).chain(raw.iter().map(|r| r.disk.clone()));
    for name in needed.collect::<Vec<_>>() {
        if !disks.contains_key(&name) {
            disks.insert(name.clone(), golden_table(&name)?);
        }
    }

    let mut filesystems = Vec::new();
    for f in &found {
        let probe = blockdev::probe(&f.device)?;
        let fstype = probe.fstype.clone().unwrap_or_else(|| f.entry.fstype.clone());
        let swap = f.entry.is_swap();
        filesystems.push(PlanFs {
            disk: f.disk.clone(),
            partition: f.partition,
            fstype: if swap { "swap".into() } else { fstype },
            mount_point: (!swap).then(|| f.entry.mount_point.clone()),
            uuid: probe.uuid,
            label: probe.label,
            options: f.entry.options.clone(),
        });
    }

    let excludes = spec.excludes.iter().map(|x| excluded(&root, x)).collect::<Result<Vec<_>>>()?;
    let bootloader = boot_plan(&spec.bootloader, spec.firmware, &filesystems)?;
    let tree_session = filesystems
        .iter()
        .any(|f| !f.is_swap() && !raw.iter().any(|r| r.disk == f.disk && r.partition == f.partition))
        .then(|| spec.sessions.tree());
    let plan = Plan {
        format: PLAN_FORMAT.into(),
        version: PLAN_VERSION,
        golden: crate::session::hostname(),
        disks: disks.into_values().collect(),
        filesystems,
        excludes,
        raw,
        bootloader,
        prepare: spec.prepare.clone(),
        new_uuids: spec.new_uuids,
        tree_session,
        tree_compression: if spec.compress.is_some() { Compression::Zstd } else { Compression::None },
        write_fstab: false,
        boot_entry: None,
        postinstalls: Vec::new(),
    };
    plan.check().map_err(|e| DiskError::Other(format!("the golden node gives an unusable {e}")))?;
    let tree = plan.tree_session.as_ref().map(|_| {
        let tar = tar_create_command(&root, &plan);
        TreeSource::Command(match spec.compress {
            Some(level) => compressed(&tar, level),
            None => tar,
        })
    });
    info!(
        "plan: {} disks, {} filesystems, {} raw partitions",
        plan.disks.len(),
        plan.filesystems.len(),
        plan.raw.len()
    );
    Ok(Golden { plan, tree, raw_devices, postinstall_files: Vec::new() })
}

/// Finds the partition behind one fstab line, or `None` for lines that are not
/// a partition of a local disk (tmpfs, NFS, swap files, `noauto` lines not
/// mounted): those are not cloned, and their mount points travel as empty
/// directories in the tar stream.
fn locate(root: &Path, entry: FstabEntry, mounts: &[Mount]) -> Result<Option<Found>> {
    let device = if entry.is_swap() {
        match blockdev::resolve_spec(&entry.spec)? {
            Some(d) if is_block(&d) => d,
            _ => {
                info!("swap {} is not a partition (a swap file?): not cloned as a partition", entry.spec);
                return Ok(None);
            }
        }
    } else {
        let at =
            if entry.mount_point == "/" { root.to_path_buf() } else { root.join(&entry.mount_point[1..]) };
        match mounts.iter().rev().find(|m| m.mount_point == at) {
            Some(m) if m.major != 0 => blockdev::device_of(m.major, m.minor)?,
            Some(m) => {
                info!("{} ({}) is not on a disk: not cloned", entry.mount_point, m.fstype);
                return Ok(None);
            }
            // FAT travels raw, read from its partition: it need not be mounted.
            None if entry.fstype == "vfat" => match blockdev::resolve_spec(&entry.spec)? {
                Some(d) if is_block(&d) => d,
                _ => {
                    return Err(DiskError::Other(format!(
                        "fstab line {} ({}): no such partition",
                        entry.line, entry.spec
                    )))
                }
            },
            None if entry.has_option("noauto") => {
                warn!("{} (noauto) is not mounted: not cloned", entry.mount_point);
                return Ok(None);
            }
            None if !entry.spec.starts_with("UUID=")
                && !entry.spec.starts_with("LABEL=")
                && !entry.spec.starts_with("/dev/")
                && !entry.spec.starts_with("PART") =>
            {
                info!("{} ({}) is not a local disk: not cloned", entry.mount_point, entry.spec);
                return Ok(None);
            }
            None => {
                return Err(DiskError::Other(format!(
                "fstab line for {} ({}) is not mounted at {}: mount it so it can be read, or remove the line",
                entry.mount_point,
                entry.spec,
                at.display()
            )))
            }
        }
    };
    let (disk, partition) = match blockdev::locate_partition(&device) {
        Ok(found) => found,
        Err(e) => {
            warn!("{} ({}) is not on a partition, not cloned: {e}", entry.mount_point, device.display());
            return Ok(None);
        }
    };
    Ok(Some(Found { entry, device, disk: kernel_name(&disk), partition }))
}

fn is_block(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

fn kernel_name(dev: &Path) -> String {
    dev.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// A golden disk without a desc: its own table, as ka-d.sh used `sfdisk -d`.
fn golden_table(name: &str) -> Result<PlanDisk> {
    let disk = Disk::open(Path::new(&format!("/dev/{name}")))?;
    let json = disk.table_json()?;
    let desc =
        Desc::from_sfdisk_json(&json).map_err(|e| DiskError::Other(format!("table of {name}: {e}")))?;
    Ok(PlanDisk { name: name.into(), desc: desc.to_string(), origin: format!("golden table of /dev/{name}") })
}

fn device_bytes(dev: &Path) -> Result<u64> {
    let mut f = fs::File::open(dev).map_err(|e| DiskError::io(dev.display().to_string(), e))?;
    f.seek(SeekFrom::End(0)).map_err(|e| DiskError::io(format!("size of {}", dev.display()), e))
}

fn excluded(root: &Path, dir: &Path) -> Result<Excluded> {
    let path = dir.to_string_lossy().trim_end_matches('/').to_string();
    if !path.starts_with('/') {
        return Err(DiskError::Other(format!("-x {path}: give the directory as an absolute path")));
    }
    let meta =
        fs::symlink_metadata(root.join(&path[1..])).map_err(|e| DiskError::io(format!("-x {path}"), e))?;
    if !meta.is_dir() {
        return Err(DiskError::Other(format!("-x {path}: not a directory")));
    }
    Ok(Excluded { path, mode: meta.mode() & 0o7777, uid: meta.uid(), gid: meta.gid() })
}

fn boot_plan(spec: &str, firmware: Option<Firmware>, filesystems: &[PlanFs]) -> Result<BootPlan> {
    let mut words = spec.split_whitespace();
    let kind = match words.next() {
        Some("grub") | Some("grub2") => BootKind::Grub,
        Some("none") | None => BootKind::None,
        Some(other) => {
            return Err(DiskError::Other(format!(
                "-r {other}: kacast restores grub, or leaves the disk as is with none"
            )))
        }
    };
    let options: Vec<&str> = words.collect();
    let holding = |mp: &str| filesystems.iter().find(|f| f.mount_point.as_deref() == Some(mp));
    let esp = ["/boot/efi", "/efi"].into_iter().find_map(holding).filter(|f| f.fstype == "vfat");
    let boot = holding("/boot").or_else(|| holding("/"));
    Ok(BootPlan {
        kind,
        disk: (kind == BootKind::Grub).then(|| boot.map(|f| f.disk.clone())).flatten(),
        firmware: firmware.or(Some(if esp.is_some() { Firmware::Uefi } else { Firmware::Bios })),
        rebuild_initramfs: !options.is_empty(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_follow_ka_names() {
        let s = Sessions { base: "kainstall".into() };
        assert_eq!(
            (s.plan(), s.tree(), s.raw(0), s.raw(1)),
            ("kainstall1".into(), "kainstall2".into(), "kainstall3".into(), "kainstall4".into())
        );
    }

    #[test]
    fn bootloader_spec() {
        let fs = |mp: &str, t: &str| PlanFs {
            disk: "sda".into(),
            partition: 1,
            fstype: t.into(),
            mount_point: Some(mp.into()),
            uuid: None,
            label: None,
            options: String::new(),
        };
        let b = boot_plan("grub --with=ata_piix", None, &[fs("/", "ext4")]).unwrap();
        assert_eq!(
            (b.kind, b.firmware, b.rebuild_initramfs, b.disk.as_deref()),
            (BootKind::Grub, Some(Firmware::Bios), true, Some("sda"))
        );
        let b = boot_plan("grub", None, &[fs("/", "ext4"), fs("/boot/efi", "vfat")]).unwrap();
        assert_eq!(b.firmware, Some(Firmware::Uefi));
        assert_eq!(boot_plan("none", None, &[]).unwrap().kind, BootKind::None);
        assert!(boot_plan("lilo", None, &[]).unwrap_err().to_string().contains("lilo"));
    }
}
