//! Deploying a recorded image instead of a live golden node: a tarball (or a
//! raw partition image) described the way Kadeploy describes environments,
//! made into a plan for nodes partitioned from a desc.
//!
//! The image carries one filesystem (Kadeploy's deploy partition), so the
//! plan puts it on one partition of the desc (`--env-partition`, default the
//! first Linux one), formats every swap partition of the desc, writes the
//! clone's fstab (the image was not made for this layout) and, when the image
//! has no grub.cfg of its own, a boot entry for its kernel.

use std::fs;
use std::path::PathBuf;

use super::bootloader::Firmware;
use super::compression::Compression;
use super::desc::Desc;
use super::error::{DiskError, Result};
use super::golden::{Golden, Sessions, TreeSource};
use super::plan::{
    BootEntry, BootKind, BootPlan, Plan, PlanDisk, PlanFs, PostinstallPlan, PreparePlan, RawPartition,
    PLAN_FORMAT, PLAN_VERSION,
};
use super::types::PartType;

/// A recorded image and how to deploy it.
#[derive(Debug, Clone)]
pub struct RecordedImage {
    pub name: String,
    pub file: PathBuf,
    /// A tarball (`false`: a raw partition image, Kadeploy's dd kinds).
    pub tar: bool,
    pub compression: Compression,
    /// The filesystem to make for a tarball.
    pub filesystem: Option<String>,
    pub boot: Option<BootEntry>,
    /// Archive, its compression, the script to run from it.
    pub postinstalls: Vec<(PathBuf, Compression, Option<String>)>,
    /// `-p DISK DESC`: at least one; the image goes on the first.
    pub descs: Vec<(String, PathBuf)>,
    /// The partition of the first disk the image goes on.
    pub partition: Option<u32>,
    pub bootloader: BootKind,
    pub firmware: Option<Firmware>,
    pub prepare: PreparePlan,
    pub sessions: Sessions,
}

const LINUX_GUID: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
const LINUX_ROOT_GUID: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
const SWAP_GUID: &str = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F";

fn is_linux(t: &PartType) -> bool {
    match t {
        PartType::Mbr(code) => *code == 0x83,
        PartType::Gpt(g) => {
            g.as_str().eq_ignore_ascii_case(LINUX_GUID) || g.as_str().eq_ignore_ascii_case(LINUX_ROOT_GUID)
        }
    }
}

fn is_swap(t: &PartType) -> bool {
    match t {
        PartType::Mbr(code) => *code == 0x82,
        PartType::Gpt(g) => g.as_str().eq_ignore_ascii_case(SWAP_GUID),
    }
}

impl RecordedImage {
    /// The plan for this image, and what to stream.
    pub fn plan(&self) -> Result<Golden> {
        let other = |m: String| DiskError::Other(m);
        let Some((first, _)) = self.descs.first() else {
            return Err(other("a recorded image needs a desc for the nodes' disk (-p DISK DESC)".into()));
        };
        let first = first.trim_start_matches("/dev/").to_string();
        let mut disks = Vec::new();
        let mut first_desc = None;
        for (name, file) in &self.descs {
            let desc = Desc::from_file(file).map_err(|e| other(e.to_string()))?;
            if first_desc.is_none() {
                first_desc = Some(desc.clone());
            }
            let name = name.trim_start_matches("/dev/").to_string();
            disks.push(PlanDisk { name, desc: desc.to_string(), origin: file.display().to_string() });
        }
        let desc = first_desc.expect("at least one desc");
        let target = match self.partition {
            Some(n) => desc.partitions.iter().find(|p| p.number == n && !p.is_extended()),
            None => desc.partitions.iter().find(|p| is_linux(&p.ptype)),
        }
        .ok_or_else(|| match self.partition {
            Some(n) => other(format!("--env-partition {n}: the desc of {first} has no such partition")),
            None => {
                other(format!("the desc of {first} has no Linux partition for the image (--env-partition N)"))
            }
        })?;
        let bytes =
            fs::metadata(&self.file).map_err(|e| DiskError::io(self.file.display().to_string(), e))?.len();
        let mut filesystems = Vec::new();
        let mut raw = Vec::new();
        let mut tree_session = None;
        if self.tar {
            let fstype = self.filesystem.clone().ok_or_else(|| {
                other(format!("{}: a tarball image needs a filesystem type (filesystem: ext4)", self.name))
            })?;
            filesystems.push(fs(&first, target.number, &fstype, Some("/")));
            tree_session = Some(self.sessions.tree());
        } else {
            let session = self.sessions.raw(0);
            raw.push(RawPartition {
                disk: first.clone(),
                partition: target.number,
                bytes,
                session,
                compression: self.compression,
                sparse: false,
            });
        }
        for p in desc.partitions.iter().filter(|p| is_swap(&p.ptype)) {
            filesystems.push(fs(&first, p.number, "swap", None));
        }
        let postinstalls = self
            .postinstalls
            .iter()
            .enumerate()
            .map(|(i, (_, compression, script))| PostinstallPlan {
                session: self.sessions.raw(raw.len() + i),
                compression: *compression,
                script: script.clone(),
            })
            .collect();
        let plan = Plan {
            format: PLAN_FORMAT.into(),
            version: PLAN_VERSION,
            golden: format!("image {}", self.name),
            disks,
            filesystems,
            excludes: Vec::new(),
            raw,
            // A raw image brings its own boot arrangement, or none: GRUB is
            // only restored for a tarball, whose root the node mounts.
            bootloader: BootPlan {
                kind: if self.tar { self.bootloader } else { BootKind::None },
                disk: (self.tar && self.bootloader == BootKind::Grub).then(|| first.clone()),
                firmware: self.firmware.or(Some(Firmware::Bios)),
                rebuild_initramfs: false,
            },
            prepare: self.prepare.clone(),
            new_uuids: false,
            tree_session,
            tree_compression: if self.tar { self.compression } else { Compression::None },
            write_fstab: self.tar,
            boot_entry: self.boot.clone(),
            postinstalls,
        };
        plan.check().map_err(|e| other(format!("image {}: {e}", self.name)))?;
        Ok(Golden {
            tree: self.tar.then(|| TreeSource::File(self.file.clone())),
            raw_devices: if self.tar { Vec::new() } else { vec![self.file.clone()] },
            postinstall_files: self.postinstalls.iter().map(|(f, _, _)| f.clone()).collect(),
            plan,
        })
    }
}

fn fs(disk: &str, partition: u32, fstype: &str, mount_point: Option<&str>) -> PlanFs {
    PlanFs {
        disk: disk.into(),
        partition,
        fstype: fstype.into(),
        mount_point: mount_point.map(Into::into),
        uuid: None,
        label: None,
        options: if fstype == "swap" { "sw".into() } else { "defaults".into() },
    }
}

/// The clone's fstab for a plan: one line per filesystem by UUID, parents
/// first, `/` checked first at boot.
pub fn fstab_for(plan: &Plan, uuid_of: impl Fn(&PlanFs) -> Option<String>) -> String {
    let mut out = format!("# /etc/fstab written by kacast for {}\n", plan.golden);
    let mounted = plan.mount_order().into_iter().chain(plan.raw_mounts());
    let swaps = plan.filesystems.iter().filter(|f| f.is_swap());
    for f in mounted.chain(swaps) {
        let spec = uuid_of(f)
            .map(|u| format!("UUID={u}"))
            .unwrap_or_else(|| format!("# no UUID: {} {}", f.disk, f.partition));
        let (mp, pass) = match f.mount_point.as_deref() {
            Some("/") => ("/", 1),
            Some(m) => (m, 2),
            None => ("none", 0),
        };
        let options = if f.options.is_empty() { "defaults" } else { &f.options };
        out.push_str(&format!("{spec} {} {} {options} 0 {pass}\n", mp.replace(' ', "\\040"), f.fstype));
    }
    out
}

/// A grub.cfg booting `entry` from the filesystem `root_uuid`, for a clone
/// that has none of its own.
pub fn grub_cfg(entry: &BootEntry, root_uuid: &str, boot_is_separate: bool) -> String {
    // With a separate /boot, GRUB sees the kernel at /vmlinuz, not /boot/vmlinuz.
    let path = |p: &str| match (boot_is_separate, p.strip_prefix("/boot/")) {
        (true, Some(rest)) => format!("/{rest}"),
        _ => p.to_string(),
    };
    let mut cfg = format!(
        "# written by kacast: the image had no grub.cfg\nset timeout=3\nset default=0\n\nmenuentry '{}' {{\n    search --no-floppy --fs-uuid --set=root {root_uuid}\n    linux {} root=UUID={root_uuid} ro {}\n",
        entry.title.replace('\'', ""),
        path(&entry.kernel),
        entry.kernel_params
    );
    if let Some(initrd) = &entry.initrd {
        cfg.push_str(&format!("    initrd {}\n", path(initrd)));
    }
    cfg.push_str("}\n");
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &std::path::Path, tar: bool) -> RecordedImage {
        let desc = dir.join("desc");
        fs::write(&desc, "swap 64\nlinux fill\n").unwrap();
        let file = dir.join("img.tar.zst");
        fs::write(&file, b"not really").unwrap();
        RecordedImage {
            name: "debian".into(),
            file,
            tar,
            compression: Compression::Zstd,
            filesystem: Some("ext4".into()),
            boot: Some(BootEntry {
                title: "debian".into(),
                kernel: "/vmlinuz".into(),
                initrd: Some("/initrd.img".into()),
                kernel_params: "quiet".into(),
            }),
            postinstalls: vec![(dir.join("post.tgz"), Compression::Gzip, Some("run.sh".into()))],
            descs: vec![("sda".into(), desc)],
            partition: None,
            bootloader: BootKind::Grub,
            firmware: None,
            prepare: PreparePlan::default(),
            sessions: Sessions { base: "k".into() },
        }
    }

    #[test]
    fn a_tarball_goes_on_the_first_linux_partition_with_the_swaps() {
        let dir = tempfile::tempdir().unwrap();
        let g = image(dir.path(), true).plan().unwrap();
        let p = &g.plan;
        assert_eq!(p.filesystem_at("/").unwrap().partition, 2);
        assert!(p.filesystems.iter().any(|f| f.is_swap() && f.partition == 1));
        assert_eq!((p.tree_compression, p.write_fstab), (Compression::Zstd, true));
        assert_eq!(p.postinstalls[0].session, "k3");
        assert_eq!(g.tree, Some(TreeSource::File(dir.path().join("img.tar.zst"))));
        let fstab = fstab_for(p, |f| Some(format!("u{}", f.partition)));
        assert!(
            fstab.contains("UUID=u2 / ext4 defaults 0 1\n") && fstab.contains("UUID=u1 none swap sw 0 0\n"),
            "{fstab}"
        );
    }

    #[test]
    fn a_raw_image_goes_on_its_partition_decompressed_by_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let mut img = image(dir.path(), false);
        img.partition = Some(2);
        let g = img.plan().unwrap();
        assert_eq!(g.plan.raw[0].partition, 2);
        assert_eq!(g.plan.raw[0].compression, Compression::Zstd);
        assert!(g.plan.tree_session.is_none() && g.tree.is_none());
        img.partition = Some(7);
        assert!(img.plan().unwrap_err().to_string().contains("--env-partition 7"));
    }

    #[test]
    fn grub_cfg_boots_the_image_kernel() {
        let e = BootEntry {
            title: "x".into(),
            kernel: "/boot/vmlinuz-6.1".into(),
            initrd: None,
            kernel_params: "console=ttyS0".into(),
        };
        let cfg = grub_cfg(&e, "1234", false);
        assert!(cfg.contains("linux /boot/vmlinuz-6.1 root=UUID=1234 ro console=ttyS0"), "{cfg}");
        assert!(grub_cfg(&e, "1234", true).contains("linux /vmlinuz-6.1 "));
    }
}
