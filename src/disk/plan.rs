//! The plan: everything a node needs to become a clone, sent by the golden
//! node in its own session before any data.
//!
//! ka-deploy sent a handful of loose files (fstab, fdisk commands, excludes,
//! the bootloader name) and each node's shell script made sense of them as it
//! went, so a bad file was found half-way through a disk. kacast sends one
//! versioned JSON document, and a node checks all of it — structure here,
//! against its own disks in [`super::apply`] — before it writes a byte.
//! `docs/PLAN.md` is the reference for the format.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use super::bootloader::Firmware;
use super::compression::Compression;
use super::desc::Desc;
use super::mkfs;
use super::prepare::valid_hostname;
use crate::protocol::validate_session;

/// The `format` field: tells a plan from any other JSON a node might be sent.
pub const PLAN_FORMAT: &str = "kacast-plan";

/// The version this kacast writes and reads. A node refuses other versions
/// rather than guess: a field it does not know could be one that protects a disk.
pub const PLAN_VERSION: u32 = 1;

/// Plans are a few KiB; anything much larger is not a plan, and a node reads it
/// into memory.
pub const MAX_PLAN_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub format: String,
    pub version: u32,
    /// The golden node's name, for the nodes' logs.
    pub golden: String,
    pub disks: Vec<PlanDisk>,
    /// In the golden fstab's order.
    pub filesystems: Vec<PlanFs>,
    #[serde(default)]
    pub excludes: Vec<Excluded>,
    #[serde(default)]
    pub raw: Vec<RawPartition>,
    pub bootloader: BootPlan,
    #[serde(default)]
    pub prepare: PreparePlan,
    /// Fresh filesystem UUIDs on every node (`--new-uuids`) instead of the
    /// golden ones; fstab, crypttab and grub.cfg references are rewritten.
    #[serde(default)]
    pub new_uuids: bool,
    /// The session carrying the tar stream of the filesystems (`None`: no
    /// filesystem to extract, only raw partitions).
    pub tree_session: Option<String>,
    /// How the tar stream is compressed: a recorded image travels as it is
    /// stored (a live golden node sends plain tar).
    #[serde(default)]
    pub tree_compression: Compression,
    /// Write the clone's /etc/fstab from the plan: a recorded image was not
    /// made for this layout, and its filesystems get new UUIDs.
    #[serde(default)]
    pub write_fstab: bool,
    /// What to boot when the clone has no grub.cfg of its own (a recorded
    /// image's kernel and initrd).
    #[serde(default)]
    pub boot_entry: Option<BootEntry>,
    /// Kadeploy-style post-install archives, each in its own session,
    /// extracted on the node and their script run with the clone mounted.
    #[serde(default)]
    pub postinstalls: Vec<PostinstallPlan>,
}

/// A kernel to boot, as paths inside the clone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootEntry {
    pub title: String,
    pub kernel: String,
    pub initrd: Option<String>,
    #[serde(default)]
    pub kernel_params: String,
}

/// A post-install archive and the script to run from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostinstallPlan {
    pub session: String,
    #[serde(default)]
    pub compression: Compression,
    /// Run from the extracted archive's directory, with
    /// `KADEPLOY_ENV_EXTRACTION_DIR` set to the clone's root (Kadeploy's contract).
    pub script: Option<String>,
}

/// One disk to partition, by the golden node's name for it (`sda`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanDisk {
    pub name: String,
    /// The desc text (`-p DISK FILE`, or the golden table rendered as a desc).
    pub desc: String,
    /// Where the desc came from, for error messages.
    pub origin: String,
}

/// One filesystem (or swap) of the golden fstab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFs {
    pub disk: String,
    pub partition: u32,
    /// ext4, xfs, btrfs, vfat, swap… (blkid's name).
    pub fstype: String,
    /// `None` for swap.
    pub mount_point: Option<String>,
    pub uuid: Option<String>,
    pub label: Option<String>,
    /// The fstab options, for mounting on the node (`defaults` when empty).
    #[serde(default)]
    pub options: String,
}

impl PlanFs {
    pub fn is_swap(&self) -> bool {
        self.fstype == "swap"
    }
}

/// `-x DIR`: sent empty, recreated with its mode and owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Excluded {
    pub path: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// `-D PART`: a partition sent as a raw image in its own session. A
/// filesystem of the plan on the same partition travels this way instead of
/// in the tar stream: it is not formatted on the node, only written. The
/// golden node sends every FAT filesystem (the ESP) so: FAT has no owners,
/// modes or xattrs for tar to keep, a raw copy keeps its volume serial and
/// boot sector, and neither side needs a kernel that mounts FAT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPartition {
    pub disk: String,
    pub partition: u32,
    /// The image's size as sent: for a compressed image, a lower bound of
    /// what it needs on the node.
    pub bytes: u64,
    pub session: String,
    #[serde(default)]
    pub compression: Compression,
    /// Sent as a sparse image (`io::sparse`): runs of zeros are not on the
    /// wire, and the node makes them (holes, BLKZEROOUT). Plans from before
    /// sparse images lack it: plain bytes.
    #[serde(default)]
    pub sparse: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootKind {
    Grub,
    /// Leave the boot code as it is (ka's `-r none`).
    None,
}

/// `-r 'grub [options]'`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootPlan {
    pub kind: BootKind,
    /// The disk whose boot code is written (the one holding /boot).
    pub disk: Option<String>,
    /// `None`: the node decides (UEFI when the plan has an ESP).
    pub firmware: Option<Firmware>,
    /// Rebuild the clone's initramfs (ka's `-r 'grub --with=MODULE'`).
    #[serde(default)]
    pub rebuild_initramfs: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreparePlan {
    /// Node name (as it joins) → hostname to give it. Nodes not listed keep
    /// their own name as hostname when `hostname_from_node` is set.
    #[serde(default)]
    pub hostnames: BTreeMap<String, String>,
    #[serde(default)]
    pub hostname_from_node: bool,
    #[serde(default)]
    pub keep_ssh_host_keys: bool,
}

/// A plan that cannot be carried out, whatever the node: says which part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plan: {0}")]
pub struct PlanError(pub String);

fn bad<T>(msg: impl Into<String>) -> Result<T, PlanError> {
    Err(PlanError(msg.into()))
}

impl Plan {
    /// Decodes and checks a plan as received (see [`Plan::check`]).
    pub fn parse(bytes: &[u8]) -> Result<Plan, PlanError> {
        if bytes.len() > MAX_PLAN_BYTES {
            return bad(format!("{} bytes is too large for a plan (at most {MAX_PLAN_BYTES})", bytes.len()));
        }
        // The format and version first, so a newer plan says so instead of
        // failing on a field this kacast does not know.
        #[derive(Deserialize)]
        struct Head {
            format: Option<String>,
            version: Option<u32>,
        }
        let head: Head = serde_json::from_slice(bytes).map_err(|e| PlanError(format!("not JSON: {e}")))?;
        if head.format.as_deref() != Some(PLAN_FORMAT) {
            return bad(format!("not a kacast plan (\"format\" must be \"{PLAN_FORMAT}\")"));
        }
        match head.version {
            Some(PLAN_VERSION) => {}
            Some(v) if v > PLAN_VERSION => {
                return bad(format!(
                    "version {v} is newer than this kacast reads ({PLAN_VERSION}): upgrade the node's kacast"
                ))
            }
            v => return bad(format!("unknown version {v:?} (this kacast reads {PLAN_VERSION})")),
        }
        let plan: Plan = serde_json::from_slice(bytes).map_err(|e| PlanError(e.to_string()))?;
        plan.check()?;
        Ok(plan)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a plan always serialises")
    }

    /// The desc of each disk, parsed.
    pub fn descs(&self) -> Result<BTreeMap<&str, Desc>, PlanError> {
        self.disks
            .iter()
            .map(|d| {
                let desc = Desc::parse(&d.desc, &d.origin)
                    .map_err(|e| PlanError(format!("disk {}: {e}", d.name)))?;
                Ok((d.name.as_str(), desc))
            })
            .collect()
    }

    /// Everything that can be checked without the node's disks: names, descs,
    /// that every filesystem and raw partition is a real partition of its
    /// disk's desc and used once, mount points, excludes, the bootloader.
    pub fn check(&self) -> Result<(), PlanError> {
        let descs = self.descs()?;
        if self.disks.is_empty() {
            return bad("no disk to clone");
        }
        let mut names = BTreeSet::new();
        for d in &self.disks {
            check_name("disk name", &d.name)?;
            if !names.insert(d.name.as_str()) {
                return bad(format!("disk {} is listed twice", d.name));
            }
        }
        let mut used = BTreeSet::new();
        // A partition holds one filesystem and at most one raw image (which
        // then carries that filesystem).
        let mut use_partition = |disk: &str, n: u32, raw: bool, what: &str| -> Result<(), PlanError> {
            let Some(desc) = descs.get(disk) else {
                return bad(format!("{what} is on disk {disk}, which the plan does not partition"));
            };
            match desc.partitions.iter().find(|p| p.number == n) {
                None => {
                    return bad(format!("{what} is on {disk} partition {n}, which its desc does not have"))
                }
                Some(p) if p.is_extended() => {
                    return bad(format!("{what} is on {disk} partition {n}, the extended partition"))
                }
                Some(_) => {}
            }
            if !used.insert((disk.to_string(), n, raw)) {
                return bad(format!("{disk} partition {n} is used twice ({what})"));
            }
            Ok(())
        };
        let mut mount_points = BTreeSet::new();
        for fs in &self.filesystems {
            let what = match &fs.mount_point {
                Some(m) => format!("filesystem {m}"),
                None => format!("{} on {} partition {}", fs.fstype, fs.disk, fs.partition),
            };
            use_partition(&fs.disk, fs.partition, false, &what)?;
            if !mkfs::SUPPORTED.contains(&fs.fstype.as_str()) {
                return bad(format!(
                    "{what}: type '{}' is not one of {}",
                    fs.fstype,
                    mkfs::SUPPORTED.join(", ")
                ));
            }
            match (&fs.mount_point, fs.is_swap()) {
                (Some(_), true) => return bad(format!("{what}: a swap has no mount point")),
                (None, false) => return bad(format!("{what}: no mount point")),
                (Some(m), false) => {
                    check_path("mount point", m)?;
                    if !mount_points.insert(m.as_str()) {
                        return bad(format!("mount point {m} is used twice"));
                    }
                }
                (None, true) => {}
            }
        }
        if !mount_points.is_empty() && !mount_points.contains("/") {
            return bad("no filesystem is mounted on /");
        }
        let extracted = self.mount_order();
        if extracted.first().is_some_and(|f| f.mount_point.as_deref() != Some("/")) {
            return bad("/ travels as a raw image, but other filesystems are extracted into it");
        }
        if !extracted.is_empty() && self.tree_session.is_none() {
            return bad("filesystems but no session for their tar stream");
        }
        let mut sessions = BTreeSet::new();
        if let Some(s) = &self.tree_session {
            check_session(s)?;
            sessions.insert(s.as_str());
        }
        for r in &self.raw {
            use_partition(&r.disk, r.partition, true, &format!("raw image {}", r.session))?;
            check_session(&r.session)?;
            if !sessions.insert(r.session.as_str()) {
                return bad(format!("session {} is used twice", r.session));
            }
            if r.bytes == 0 {
                return bad(format!("raw image of {} partition {} is empty", r.disk, r.partition));
            }
        }
        for p in &self.postinstalls {
            check_session(&p.session)?;
            if !sessions.insert(p.session.as_str()) {
                return bad(format!("session {} is used twice", p.session));
            }
        }
        if let Some(b) = &self.boot_entry {
            check_path("boot entry kernel", &b.kernel)?;
            if let Some(i) = &b.initrd {
                check_path("boot entry initrd", i)?;
            }
        }
        for x in &self.excludes {
            check_path("excluded directory", &x.path)?;
            if x.path == "/" {
                return bad("excluded directory / would leave nothing to clone");
            }
            if x.mode > 0o7777 {
                return bad(format!(
                    "excluded directory {}: mode {:o} is not a permission mode",
                    x.path, x.mode
                ));
            }
        }
        if self.bootloader.kind == BootKind::Grub {
            match &self.bootloader.disk {
                Some(d) if names.contains(d.as_str()) => {}
                Some(d) => return bad(format!("bootloader disk {d} is not one the plan partitions")),
                None => return bad("bootloader grub without a disk"),
            }
            if !mount_points.contains("/") {
                return bad("bootloader grub needs a root filesystem");
            }
        }
        for (node, host) in &self.prepare.hostnames {
            if !valid_hostname(host) {
                return bad(format!("hostname '{host}' for node {node} is not a valid hostname"));
            }
        }
        Ok(())
    }

    /// The raw image carrying `fs`, if it travels raw.
    pub fn raw_of(&self, fs: &PlanFs) -> Option<&RawPartition> {
        self.raw.iter().find(|r| r.disk == fs.disk && r.partition == fs.partition)
    }

    /// The filesystems made on the node and filled from the tar stream, in
    /// mount order: parents before children (`/` before `/boot`), keeping
    /// fstab order among equals.
    pub fn mount_order(&self) -> Vec<&PlanFs> {
        self.by_depth(|f| !f.is_swap() && self.raw_of(f).is_none())
    }

    /// The filesystems that travel raw and have a mount point (the ESP),
    /// mounted once written, for the bootloader.
    pub fn raw_mounts(&self) -> Vec<&PlanFs> {
        self.by_depth(|f| !f.is_swap() && self.raw_of(f).is_some())
    }

    fn by_depth(&self, keep: impl Fn(&PlanFs) -> bool) -> Vec<&PlanFs> {
        let mut fss: Vec<&PlanFs> = self.filesystems.iter().filter(|f| keep(f)).collect();
        fss.sort_by_key(|f| f.mount_point.as_deref().map(depth).unwrap_or(0));
        fss
    }

    /// The filesystem mounted at `mount_point`, if any.
    pub fn filesystem_at(&self, mount_point: &str) -> Option<&PlanFs> {
        self.filesystems.iter().find(|f| f.mount_point.as_deref() == Some(mount_point))
    }

    /// The filesystem holding `path`: the one with the longest mount point
    /// that is a prefix of it.
    pub fn filesystem_of(&self, path: &str) -> Option<&PlanFs> {
        self.mount_order().into_iter().rev().find(|f| {
            let m = f.mount_point.as_deref().unwrap_or_default();
            m == "/" || path == m || path.starts_with(&format!("{m}/"))
        })
    }
}

fn depth(path: &str) -> usize {
    Path::new(path).components().filter(|c| matches!(c, Component::Normal(_))).count()
}

/// A name that becomes a device path on the node: no `/`, no `..`.
fn check_name(what: &str, name: &str) -> Result<(), PlanError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        bad(format!("{what} '{name}' must be 1 to 64 letters, digits, '.', '_' or '-'"))
    }
}

/// Absolute and normal: the node joins it to its target root, so `..` or a
/// relative path would write outside it.
fn check_path(what: &str, path: &str) -> Result<(), PlanError> {
    let p = Path::new(path);
    let normal = p.is_absolute()
        && p.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && (path == "/" || !path.ends_with('/'))
        && !path.contains("//")
        && !path.contains('\0');
    if normal {
        Ok(())
    } else {
        bad(format!("{what} '{path}' must be an absolute path without '.', '..' or '//'"))
    }
}

fn check_session(name: &str) -> Result<(), PlanError> {
    validate_session(name).map_err(|e| PlanError(e.to_string()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Plan {
        Plan {
            format: PLAN_FORMAT.into(),
            version: PLAN_VERSION,
            golden: "golden".into(),
            disks: vec![PlanDisk {
                name: "sda".into(),
                desc: "linux 200\nswap 32\nextended fill\nlogical linux 64\nlogical linux fill\n".into(),
                origin: "desc".into(),
            }],
            filesystems: vec![
                fs(1, "ext4", Some("/")),
                fs(2, "swap", None),
                fs(6, "btrfs", Some("/home")),
                fs(5, "ext4", Some("/boot")),
            ],
            excludes: vec![Excluded { path: "/tmp".into(), mode: 0o1777, uid: 0, gid: 0 }],
            raw: vec![],
            bootloader: BootPlan {
                kind: BootKind::Grub,
                disk: Some("sda".into()),
                firmware: None,
                rebuild_initramfs: false,
            },
            prepare: PreparePlan::default(),
            new_uuids: false,
            tree_session: Some("kainstall2".into()),
            tree_compression: Compression::None,
            write_fstab: false,
            boot_entry: None,
            postinstalls: vec![],
        }
    }

    fn fs(partition: u32, fstype: &str, mount_point: Option<&str>) -> PlanFs {
        PlanFs {
            disk: "sda".into(),
            partition,
            fstype: fstype.into(),
            mount_point: mount_point.map(Into::into),
            uuid: None,
            label: None,
            options: "defaults".into(),
        }
    }

    fn refused(plan: &Plan) -> String {
        Plan::parse(plan.to_json().as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn a_plan_round_trips_through_json() {
        let plan = sample();
        assert_eq!(Plan::parse(plan.to_json().as_bytes()).unwrap(), plan);
    }

    #[test]
    fn mount_order_puts_parents_first() {
        let plan = sample();
        let order: Vec<_> = plan.mount_order().iter().map(|f| f.mount_point.clone().unwrap()).collect();
        assert_eq!(order, ["/", "/home", "/boot"]);
        assert_eq!(plan.filesystem_of("/boot/grub/grub.cfg").unwrap().partition, 5);
        assert_eq!(plan.filesystem_of("/bootx").unwrap().partition, 1);
        assert_eq!(plan.filesystem_of("/etc").unwrap().partition, 1);
    }

    #[test]
    fn a_filesystem_with_a_raw_image_travels_raw() {
        let mut plan = sample();
        plan.raw.push(RawPartition {
            disk: "sda".into(),
            partition: 5,
            bytes: 9,
            session: "k3".into(),
            compression: Compression::None,
            sparse: false,
        });
        let plan = Plan::parse(plan.to_json().as_bytes()).unwrap();
        let tar: Vec<_> = plan.mount_order().iter().map(|f| f.partition).collect();
        assert_eq!(tar, [1, 6]);
        assert_eq!(plan.raw_mounts().len(), 1);
        assert_eq!(plan.raw_of(plan.filesystem_at("/boot").unwrap()).unwrap().session, "k3");
    }

    #[test]
    fn the_fuzzer_seeds_are_valid_plans() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/plan");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let plan = Plan::parse(&std::fs::read(&path).unwrap());
            assert!(plan.is_ok(), "{}: {:?}", path.display(), plan.err());
            seen += 1;
        }
        assert!(seen >= 2);
    }

    #[test]
    fn other_formats_and_versions_are_named() {
        let e = Plan::parse(br#"{"format":"kacast-plan","version":9}"#).unwrap_err().to_string();
        assert!(e.contains("version 9 is newer"), "{e}");
        let e = Plan::parse(br#"{"hello":1}"#).unwrap_err().to_string();
        assert!(e.contains("not a kacast plan"), "{e}");
        let e = Plan::parse(b"\x00garbage").unwrap_err().to_string();
        assert!(e.contains("not JSON"), "{e}");
        let mut json: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        json["surprise"] = 1.into();
        let e = Plan::parse(json.to_string().as_bytes()).unwrap_err().to_string();
        assert!(e.contains("surprise"), "{e}");
    }

    #[test]
    fn bad_plans_say_what_is_wrong() {
        type Change = Box<dyn Fn(&mut Plan)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|p| p.filesystems[0].partition = 9), "does not have"),
            (Box::new(|p| p.filesystems[0].partition = 3), "extended partition"),
            (Box::new(|p| p.filesystems[1].partition = 1), "used twice"),
            (Box::new(|p| p.filesystems[2].mount_point = Some("/".into())), "mount point / is used twice"),
            (Box::new(|p| p.filesystems[2].mount_point = Some("/home/../etc".into())), "absolute path"),
            (Box::new(|p| p.filesystems[2].mount_point = Some("home".into())), "absolute path"),
            (
                Box::new(|p| p.filesystems[0].mount_point = Some("/srv".into())),
                "no filesystem is mounted on /",
            ),
            (Box::new(|p| p.filesystems[1].mount_point = Some("/swap".into())), "a swap has no mount point"),
            (Box::new(|p| p.filesystems[2].fstype = "ntfs".into()), "'ntfs' is not one of"),
            (Box::new(|p| p.filesystems[2].disk = "sdb".into()), "does not partition"),
            (Box::new(|p| p.disks[0].desc = "linux 10\nbogus 5\n".into()), "desc:2: unknown partition type"),
            (Box::new(|p| p.disks[0].name = "../sda".into()), "disk name"),
            (Box::new(|p| p.disks.push(p.disks[0].clone())), "listed twice"),
            (Box::new(|p| p.excludes[0].path = "/".into()), "nothing to clone"),
            (Box::new(|p| p.excludes[0].mode = 0o170000), "not a permission mode"),
            (Box::new(|p| p.bootloader.disk = Some("sdz".into())), "bootloader disk sdz"),
            (Box::new(|p| p.tree_session = Some("bad name".into())), "session"),
            (
                Box::new(|p| {
                    let r = RawPartition {
                        disk: "sda".into(),
                        partition: 5,
                        bytes: 9,
                        session: "k3".into(),
                        compression: Compression::None,
                        sparse: false,
                    };
                    p.raw.push(r.clone());
                    p.raw.push(RawPartition { session: "k4".into(), ..r });
                }),
                "used twice",
            ),
            (Box::new(|p| drop(p.prepare.hostnames.insert("n1".into(), "bad_host!".into()))), "hostname"),
            (
                Box::new(|p| {
                    p.raw.push(RawPartition {
                        disk: "sda".into(),
                        partition: 1,
                        bytes: 9,
                        session: "k3".into(),
                        compression: Compression::None,
                        sparse: false,
                    })
                }),
                "/ travels as a raw image",
            ),
        ];
        for (change, want) in cases {
            let mut plan = sample();
            change(&mut plan);
            let e = refused(&plan);
            assert!(e.contains(want), "wanted '{want}' in: {e}");
        }
    }
}
