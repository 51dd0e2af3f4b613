//! Carrying out a plan on a node: ka_replication.sh, in three steps with a
//! check before the first.
//!
//! 1. [`check`]: the whole plan against this node's disks and tools. Nothing
//!    is written; a refusal leaves every disk as it was.
//! 2. [`prepare_disks`]: wipe, partition, make the filesystems (keeping the
//!    golden UUIDs and labels unless the plan asks for new ones), mount them
//!    under the target root in order.
//! 3. After the streams: [`Mounted::finish`] recreates excluded directories,
//!    rewrites UUID references, makes the node distinct and restores the
//!    bootloader; dropping [`Mounted`] unmounts everything.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::blockdev::{self, Disk};
use super::bootloader::{self, Firmware, GrubTarget};
use super::error::{DiskError, Result};
use super::layout::Layout;
use super::mkfs;
use super::mount::{c_path, unmount};
use super::plan::{BootKind, Plan, PlanFs};
use super::prepare::{self, Prepare};
use super::tool;
use super::types::{Guid, Label, PartType};

/// The GPT type of the partition BIOS grub embeds its core image in.
const BIOS_BOOT_GUID: &str = "21686148-6449-6E6F-744E-656564454649";
use crate::size::human;

/// Where a plan's disk names land on this node: `sda` is `/dev/sda` unless
/// mapped (`--disk sda=/dev/vdb`) — a rack's disks need not be named like the
/// golden node's.
#[derive(Debug, Clone, Default)]
pub struct DiskMap(pub BTreeMap<String, PathBuf>);

impl DiskMap {
    pub fn device(&self, name: &str) -> PathBuf {
        self.0.get(name).cloned().unwrap_or_else(|| PathBuf::from(format!("/dev/{name}")))
    }

    /// Parses one `NAME=DEVICE` argument.
    pub fn add(&mut self, arg: &str) -> Result<()> {
        match arg.split_once('=') {
            Some((name, dev)) if !name.is_empty() && dev.starts_with('/') => {
                self.0.insert(name.trim_start_matches("/dev/").to_string(), dev.into());
                Ok(())
            }
            _ => {
                Err(DiskError::Other(format!("--disk '{arg}': expected NAME=/dev/DEVICE, e.g. sda=/dev/vdb")))
            }
        }
    }
}

/// A plan found feasible on this node.
#[derive(Debug)]
pub struct Checked {
    pub plan: Plan,
    pub root: PathBuf,
    pub disks: BTreeMap<String, (Disk, Layout)>,
    pub firmware: Firmware,
    /// This node's hostname, when the plan sets one.
    pub hostname: Option<String>,
}

/// Checks the whole plan on this node, writing nothing: every disk exists, is
/// not in use and is large enough for its desc; every tool is installed; every
/// UUID and label can be given; the bootloader has what it needs.
pub fn check(plan: Plan, map: &DiskMap, root: &Path, node: &str) -> Result<Checked> {
    plan.check().map_err(|e| DiskError::Plan(e.0))?;
    let descs = plan.descs().map_err(|e| DiskError::Plan(e.0))?;
    tool::require("sfdisk", "partition the disks")?;
    tool::require("wipefs", "wipe old signatures")?;
    if plan.tree_session.is_some() {
        tool::require("tar", "extract the filesystems")?;
    }
    let mut disks = BTreeMap::new();
    for (name, desc) in &descs {
        let dev = map.device(name);
        let disk = Disk::open(&dev)?;
        disk.ensure_unused()?;
        let layout = desc.layout(disk.bytes).map_err(|e| {
            DiskError::Plan(format!("disk {name} ({}, {}): {e}", dev.display(), human(disk.bytes)))
        })?;
        disks.insert(name.to_string(), (disk, layout));
    }
    for fs in plan.filesystems.iter().filter(|f| plan.raw_of(f).is_none()) {
        // With --new-uuids the node makes its own, so only the type and label matter.
        let uuid = if plan.new_uuids { None } else { fs.uuid.as_deref() };
        mkfs::check(&fs.fstype, uuid, fs.label.as_deref())
            .map_err(|e| DiskError::Plan(format!("{}: {e}", describe(fs))))?;
    }
    for r in &plan.raw {
        let (_, layout) = &disks[&r.disk];
        let placed =
            layout.partitions.iter().find(|p| p.number == r.partition).expect("checked by Plan::check");
        let room = placed.size * super::layout::SECTOR;
        if room < r.bytes {
            return Err(DiskError::Plan(format!(
                "raw image of {} partition {} is {} but the partition is {} on this node",
                r.disk,
                r.partition,
                human(r.bytes),
                human(room)
            )));
        }
    }
    check_root(root)?;
    let firmware = plan.bootloader.firmware.unwrap_or(if esp(&plan).is_some() {
        Firmware::Uefi
    } else {
        Firmware::Bios
    });
    if plan.bootloader.kind == BootKind::Grub {
        check_bootloader(&plan, &disks, firmware)?;
    }
    let hostname = plan
        .prepare
        .hostnames
        .get(node)
        .cloned()
        .or_else(|| plan.prepare.hostname_from_node.then(|| node.to_string()));
    if let Some(h) = &hostname {
        if !prepare::valid_hostname(h) {
            return Err(DiskError::Plan(format!("node name '{h}' is not a valid hostname")));
        }
    }
    Ok(Checked { plan, root: root.to_path_buf(), disks, firmware, hostname })
}

fn describe(fs: &PlanFs) -> String {
    match &fs.mount_point {
        Some(m) => format!("filesystem {m} ({} partition {})", fs.disk, fs.partition),
        None => format!("{} on {} partition {}", fs.fstype, fs.disk, fs.partition),
    }
}

fn esp(plan: &Plan) -> Option<&PlanFs> {
    ["/boot/efi", "/efi"].into_iter().find_map(|m| plan.filesystem_at(m)).filter(|f| f.fstype == "vfat")
}

/// The target root must not already hold mounts: they would be hidden, or
/// written over.
fn check_root(root: &Path) -> Result<()> {
    if !root.is_absolute() {
        return Err(DiskError::Other(format!("target root {} must be an absolute path", root.display())));
    }
    let inside: Vec<String> = blockdev::mounts()?
        .into_iter()
        .filter(|m| m.mount_point.starts_with(root))
        .map(|m| m.mount_point.display().to_string())
        .collect();
    if inside.is_empty() {
        Ok(())
    } else {
        Err(DiskError::Other(format!(
            "target root {} already has mounts: {}",
            root.display(),
            inside.join(", ")
        )))
    }
}

fn check_bootloader(plan: &Plan, disks: &BTreeMap<String, (Disk, Layout)>, firmware: Firmware) -> Result<()> {
    let name = plan.bootloader.disk.as_deref().expect("checked by Plan::check");
    let (_, layout) = &disks[name];
    match firmware {
        Firmware::Uefi if esp(plan).is_none() => Err(DiskError::Plan(
            "UEFI boot needs an EFI system partition mounted on /boot/efi or /efi (vfat)".into(),
        )),
        Firmware::Bios if layout.label == Label::Gpt && bios_boot(layout).is_none() => Err(DiskError::Plan(
            format!("BIOS boot from the GPT disk {name} needs a bios-boot partition for grub's core image"),
        )),
        _ => Ok(()),
    }
    .and_then(|()| {
        let tools: &[&str] = match firmware {
            Firmware::Bios => &["grub-mkimage"],
            Firmware::Uefi => &["grub-mkimage"],
        };
        // The clone's own grub-install is preferred; the stage2's tools are the
        // fallback, and the only way on a loop device.
        for t in tools {
            tool::require(t, "restore the bootloader")?;
        }
        Ok(())
    })
}

fn bios_boot(layout: &Layout) -> Option<(u64, u64)> {
    let bios = PartType::Gpt(Guid::parse(BIOS_BOOT_GUID).expect("a valid GUID"));
    layout.partitions.iter().find(|p| p.ptype == bios).map(|p| (p.start, p.size))
}

/// A node whose disks are partitioned, formatted and mounted under the root.
/// Dropping it unmounts everything (children first).
#[derive(Debug)]
pub struct Mounted {
    pub checked: Checked,
    /// Mount points in mount order.
    mounts: Vec<PathBuf>,
    /// Golden UUID → the node's, when the plan asks for new UUIDs.
    pub new_uuids: Vec<(String, String)>,
    /// The UUID each filesystem got, by (disk, partition).
    uuids: BTreeMap<(String, u32), String>,
    /// New serials of FAT filesystems that travel raw, written once they are.
    serials: Vec<(PathBuf, String)>,
    /// The ESP, when it travels raw and this kernel cannot mount FAT: the
    /// bootloader then writes into it with mtools.
    esp_unmounted: Option<PathBuf>,
    /// Where each post-install archive was extracted, in plan order.
    pub postinstall_dirs: Vec<PathBuf>,
}

/// Wipes, partitions and formats every disk of the plan, then mounts the
/// filesystems under the root. `phase` is told each step as it starts.
pub fn prepare_disks(c: Checked, phase: &mut dyn FnMut(&str)) -> Result<Mounted> {
    for (name, (disk, layout)) in &c.disks {
        phase(&format!("partitioning {name} ({})", disk.path.display()));
        disk.wipe()?;
        disk.write_table(layout)?;
    }
    let mut new_uuids = Vec::new();
    let mut uuids = BTreeMap::new();
    let mut serials = Vec::new();
    for fs in &c.plan.filesystems {
        let (disk, _) = &c.disks[&fs.disk];
        let dev = disk.partition_path(fs.partition);
        let uuid = match (&fs.uuid, c.plan.new_uuids) {
            (Some(old), true) if c.plan.raw_of(fs).is_none() || fs.fstype == "vfat" => {
                let new = mkfs::new_uuid(&fs.fstype);
                new_uuids.push((old.clone(), new.clone()));
                Some(new)
            }
            // A filesystem the golden node did not name by UUID (a recorded
            // image's) gets one, so fstab and GRUB can find it.
            (None, _) if c.plan.raw_of(fs).is_none() => Some(mkfs::new_uuid(&fs.fstype)),
            (old, _) => old.clone(),
        };
        if let Some(u) = &uuid {
            uuids.insert((fs.disk.clone(), fs.partition), u.clone());
        }
        if c.plan.raw_of(fs).is_some() {
            // Written from its raw image later; only a new serial to set then.
            if let Some(new) = uuid.filter(|u| Some(u) != fs.uuid.as_ref()) {
                serials.push((dev, new));
            }
            continue;
        }
        phase(&format!("formatting {} as {}", dev.display(), fs.fstype));
        mkfs::make(&dev, &fs.fstype, uuid.as_deref(), fs.label.as_deref())?;
    }
    let mut m = Mounted {
        checked: c,
        mounts: Vec::new(),
        new_uuids,
        uuids,
        serials,
        esp_unmounted: None,
        postinstall_dirs: Vec::new(),
    };
    let order: Vec<PlanFs> = m.checked.plan.mount_order().into_iter().cloned().collect();
    for fs in order {
        let mp = fs.mount_point.as_deref().expect("mount_order has no swap");
        let dir = m.target(mp);
        let dev = m.checked.disks[&fs.disk].0.partition_path(fs.partition);
        phase(&format!("mounting {} on {}", dev.display(), dir.display()));
        fs::create_dir_all(&dir).map_err(|e| DiskError::io(format!("create {}", dir.display()), e))?;
        mount(&dev, &dir, &fs.fstype)?;
        m.mounts.push(dir);
    }
    Ok(m)
}

/// The target path of an absolute path of the clone.
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

fn mount(dev: &Path, dir: &Path, fstype: &str) -> Result<()> {
    // Two filesystems with one UUID cannot both be mounted under XFS; the
    // golden node's may be mounted on this very host (tests, a node cloned
    // from itself), and the clone's UUID is the golden one on purpose.
    let data = if fstype == "xfs" { "nouuid" } else { "" };
    super::mount::mount(dev, dir, fstype, data)
}

/// Gives `path` the modification time in `was`.
fn set_mtime(path: &Path, was: &fs::Metadata) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let c = c_path(path).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let times = [
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        libc::timespec { tv_sec: was.mtime(), tv_nsec: was.mtime_nsec() },
    ];
    // SAFETY: a valid path and two timespecs, as utimensat expects.
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Mounted {
    pub fn target(&self, path: &str) -> PathBuf {
        under(&self.checked.root, path)
    }

    /// The node device a raw image is written to.
    pub fn raw_device(&self, disk: &str, partition: u32) -> PathBuf {
        self.checked.disks[disk].0.partition_path(partition)
    }

    /// Everything after the streams: excluded directories, UUID references,
    /// node identity, bootloader. Returns what was done, for the node's log.
    pub fn finish(&mut self, phase: &mut dyn FnMut(&str)) -> Result<Vec<String>> {
        let mut done = self.mount_raw(phase)?;
        let plan = &self.checked.plan;
        for x in &plan.excludes {
            let dir = self.target(&x.path);
            // Creating it changes its parent's mtime, which tar had restored.
            let parent = dir.parent().map(|p| (p.to_path_buf(), fs::metadata(p)));
            fs::create_dir_all(&dir).map_err(|e| DiskError::io(format!("recreate {}", x.path), e))?;
            if let Some((p, Ok(meta))) = parent {
                set_mtime(&p, &meta).map_err(|e| DiskError::io(format!("mtime of {}", p.display()), e))?;
            }
            fs::set_permissions(&dir, fs::Permissions::from_mode(x.mode))
                .and_then(|()| chown(&dir, Some(x.uid), Some(x.gid)))
                .map_err(|e| DiskError::io(format!("mode/owner of {}", x.path), e))?;
            done.push(format!("recreated {} empty (mode {:o}, owner {}:{})", x.path, x.mode, x.uid, x.gid));
        }
        if !self.new_uuids.is_empty() {
            phase("rewriting UUID references");
            let changed = prepare::rewrite_uuids(&self.checked.root, &self.new_uuids)?;
            done.extend(changed.iter().map(|p| format!("new UUIDs written in {}", p.display())));
        }
        if plan.write_fstab {
            let fstab =
                super::recorded::fstab_for(plan, |f| self.uuids.get(&(f.disk.clone(), f.partition)).cloned());
            let path = self.target("/etc/fstab");
            fs::create_dir_all(self.target("/etc")).map_err(|e| DiskError::io("create /etc", e))?;
            fs::write(&path, fstab).map_err(|e| DiskError::io(format!("write {}", path.display()), e))?;
            done.push("wrote /etc/fstab for this layout".into());
        }
        // Raw images only: no system tree of ours to make distinct.
        if !plan.mount_order().is_empty() {
            phase("preparing the node (machine-id, ssh keys, leases, hostname)");
            let hostname = self.checked.hostname.clone();
            let p = Prepare { hostname, keep_ssh_host_keys: plan.prepare.keep_ssh_host_keys };
            done.extend(prepare::prepare_node(&self.checked.root, &p)?);
        }
        for (p, dir) in plan.postinstalls.iter().zip(&self.postinstall_dirs) {
            if let Some(script) = &p.script {
                phase(&format!("running post-install {script}"));
                done.push(self.run_postinstall(script, dir)?);
            }
        }
        if plan.bootloader.kind == BootKind::Grub {
            self.write_boot_entry(&mut done)?;
            phase("restoring the bootloader");
            done.extend(self.restore_grub()?);
        }
        Ok(done)
    }

    /// Kadeploy's post-install contract: the script runs from its archive's
    /// directory with `KADEPLOY_ENV_EXTRACTION_DIR` naming the clone's root.
    fn run_postinstall(&self, script: &str, dir: &Path) -> Result<String> {
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c").arg(script).current_dir(dir);
        cmd.env("KADEPLOY_ENV_EXTRACTION_DIR", &self.checked.root)
            .env("KADEPLOY_PREPOST_EXTRACTION_DIR", dir);
        tool::run_command(cmd, "post-install script", script, None)?;
        Ok(format!("post-install `{script}` ran"))
    }

    /// A recorded image without a grub.cfg gets one booting its kernel.
    fn write_boot_entry(&self, done: &mut Vec<String>) -> Result<()> {
        let plan = &self.checked.plan;
        let (Some(entry), Some(root)) = (&plan.boot_entry, plan.filesystem_at("/")) else { return Ok(()) };
        let cfg = self.target("/boot/grub/grub.cfg");
        if cfg.exists() {
            return Ok(());
        }
        let boot = plan.filesystem_of("/boot/grub").unwrap_or(root);
        let uuid = self.uuids.get(&(boot.disk.clone(), boot.partition)).cloned().unwrap_or_default();
        let text = super::recorded::grub_cfg(entry, &uuid, boot.mount_point.as_deref() == Some("/boot"));
        fs::create_dir_all(self.target("/boot/grub")).map_err(|e| DiskError::io("create /boot/grub", e))?;
        fs::write(&cfg, text).map_err(|e| DiskError::io(format!("write {}", cfg.display()), e))?;
        done.push(format!("wrote /boot/grub/grub.cfg booting {}", entry.kernel));
        Ok(())
    }

    fn restore_grub(&self) -> Result<Vec<String>> {
        let plan = &self.checked.plan;
        let name = plan.bootloader.disk.as_deref().expect("checked by Plan::check");
        let (disk, layout) = &self.checked.disks[name];
        let boot = plan.filesystem_of("/boot/grub").expect("checked: a root filesystem exists");
        let boot_uuid = self.uuids.get(&(boot.disk.clone(), boot.partition)).cloned().ok_or_else(|| {
            DiskError::Plan(format!("{} has no UUID for grub to find it by", describe(boot)))
        })?;
        let esp_dir = match &self.esp_unmounted {
            Some(_) => None,
            None => esp(plan).and_then(|f| f.mount_point.as_deref()).map(|m| self.target(m)),
        };
        let target = GrubTarget {
            root: &self.checked.root,
            disk: &disk.path,
            label: layout.label,
            first_partition_start: layout.partitions.iter().map(|p| p.start).min().unwrap_or(0),
            bios_boot: bios_boot(layout),
            boot_fs_uuid: &boot_uuid,
            boot_is_separate: boot.mount_point.as_deref() == Some("/boot"),
            boot_fstype: &boot.fstype,
            esp: esp_dir.as_deref(),
            esp_device: self.esp_unmounted.as_deref(),
        };
        // New UUIDs are also baked into the clone's initramfs (resume device,
        // dracut's host-only root): rebuild it when the clone can.
        let can_rebuild = ["usr/sbin/update-initramfs", "usr/bin/dracut", "sbin/update-initramfs"]
            .iter()
            .any(|t| self.checked.root.join(t).exists());
        let rebuild = plan.bootloader.rebuild_initramfs || (plan.new_uuids && can_rebuild);
        bootloader::restore(&target, self.checked.firmware, rebuild)
    }

    /// Sets new FAT serials and mounts the filesystems that came as raw
    /// images (the ESP), for the UUID rewrite and the bootloader. A kernel
    /// without FAT (some stage2 kernels, containers) leaves the ESP unmounted:
    /// the bootloader then writes into it with mtools.
    fn mount_raw(&mut self, phase: &mut dyn FnMut(&str)) -> Result<Vec<String>> {
        let mut done = Vec::new();
        for (dev, serial) in std::mem::take(&mut self.serials) {
            super::fat::set_serial(&dev, &serial)?;
            done.push(format!("new volume serial {serial} on {}", dev.display()));
        }
        let raw: Vec<PlanFs> = self.checked.plan.raw_mounts().into_iter().cloned().collect();
        for fs in raw {
            let mp = fs.mount_point.as_deref().expect("raw_mounts have a mount point");
            let dir = self.target(mp);
            let dev = self.checked.disks[&fs.disk].0.partition_path(fs.partition);
            phase(&format!("mounting {} on {}", dev.display(), dir.display()));
            fs::create_dir_all(&dir).map_err(|e| DiskError::io(format!("create {}", dir.display()), e))?;
            match mount(&dev, &dir, &fs.fstype) {
                Ok(()) => self.mounts.push(dir),
                Err(DiskError::Io { source, .. }) if source.raw_os_error() == Some(libc::ENODEV) => {
                    warn!("this kernel cannot mount {}: {} stays unmounted", fs.fstype, dev.display());
                    done.push(format!(
                        "{mp} ({}) not mounted: this kernel has no {}",
                        dev.display(),
                        fs.fstype
                    ));
                    if esp(&self.checked.plan)
                        .is_some_and(|e| e.partition == fs.partition && e.disk == fs.disk)
                    {
                        self.esp_unmounted = Some(dev);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Unmounts now (children first), reporting the first failure.
    pub fn unmount_all(&mut self) -> Result<()> {
        // SAFETY: sync has no preconditions; flush before the node reboots.
        unsafe { libc::sync() };
        let mut first = None;
        while let Some(dir) = self.mounts.pop() {
            if let Err(e) = unmount(&dir) {
                warn!("cannot unmount {}: {e}", dir.display());
                first.get_or_insert(DiskError::io(format!("unmount {}", dir.display()), e));
            }
        }
        match first {
            None => {
                info!("all filesystems unmounted");
                Ok(())
            }
            Some(e) => Err(e),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = self.unmount_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_map() {
        let mut m = DiskMap::default();
        m.add("sda=/dev/vdb").unwrap();
        m.add("/dev/sdb=/dev/loop7").unwrap();
        assert_eq!(m.device("sda"), Path::new("/dev/vdb"));
        assert_eq!(m.device("sdb"), Path::new("/dev/loop7"));
        assert_eq!(m.device("sdc"), Path::new("/dev/sdc"));
        assert!(m.add("sda").unwrap_err().to_string().contains("NAME=/dev/DEVICE"));
        assert!(m.add("sda=vdb").is_err());
    }
}
