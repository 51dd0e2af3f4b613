//! `kacast::disk::blockdev` on real block devices: loop devices over sparse
//! image files this test creates (and detaches), so no other disk is touched.
//! Needs root and util-linux (losetup, sfdisk, partx, wipefs, blkid) plus
//! mkfs.ext4 and mount; otherwise the tests skip.

mod common;

use common::disks::sh;

use std::fs::{self, File};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use kacast::disk::blockdev::{self, Disk, Probe};
use kacast::disk::{Desc, DiskError, Label};
use tempfile::TempDir;

/// Big enough for the descs below (16 + 8 + 10 MiB and the fills), small
/// enough to stay sparse and quick.
const IMAGE_BYTES: u64 = 64 << 20;

/// ka-deploy's classic layout: primaries, an extended partition, logicals.
const MBR_DESC: &str = "linux 16\nswap 8\nextended fill\nlogical linux 10\nlogical linux fill\n";

const GPT_DESC: &str = "label gpt\nesp 8\nlinux fill\n";

const TOOLS: [&str; 8] = ["losetup", "sfdisk", "partx", "wipefs", "blkid", "mkfs.ext4", "mount", "umount"];

/// Why these tests cannot run here, if they cannot.
fn cannot_run() -> Option<String> {
    if !common::is_root() {
        return Some("needs root to attach loop devices".into());
    }
    TOOLS.iter().find_map(|t| common::missing_tool(t))
}

/// A loop device over a sparse image in a temporary directory; detached (its
/// partitions dropped first) when dropped.
struct Loop {
    dev: PathBuf,
    _dir: TempDir,
    /// Dropped last, once the device is detached.
    _serial: MutexGuard<'static, ()>,
}

/// The tests take turns: blkid's scan (find_by_tag) opens every partition of
/// the machine, and the kernel refuses to delete an open partition (EBUSY),
/// so one test's lookup could fail another's repartitioning.
static SERIAL: Mutex<()> = Mutex::new(());

impl Loop {
    /// `-P` sets the partscan flag, with which the kernel itself reads the
    /// table (BLKRRPART works); without it only partx can add partitions.
    fn attach_with(flags: &[&str]) -> Result<Loop, String> {
        let serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let image = dir.path().join("disk.img");
        File::create(&image).and_then(|f| f.set_len(IMAGE_BYTES)).map_err(|e| e.to_string())?;
        let dev = sh("losetup", &[flags, &["-f", "--show", image.to_str().unwrap()]].concat())?;
        Ok(Loop { dev: PathBuf::from(dev.trim()), _dir: dir, _serial: serial })
    }

    fn disk(&self) -> Disk {
        Disk::open(&self.dev).expect("the loop device opens")
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let dev = self.dev.to_str().unwrap();
        let _ = sh("partx", &["-d", dev]);
        if let Err(e) = sh("losetup", &["-d", dev]) {
            eprintln!("cannot detach {dev}: {e}");
        }
    }
}

/// A file system mounted on a temporary directory, unmounted when dropped.
struct Mounted {
    dir: TempDir,
    mounted: bool,
}

impl Mounted {
    fn new(dev: &Path) -> Mounted {
        let dir = tempfile::tempdir().unwrap();
        sh("mount", &[dev.to_str().unwrap(), dir.path().to_str().unwrap()]).unwrap();
        Mounted { dir, mounted: true }
    }

    fn unmount(&mut self) {
        sh("umount", &[self.dir.path().to_str().unwrap()]).unwrap();
        self.mounted = false;
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted {
            let _ = sh("umount", &[self.dir.path().to_str().unwrap()]);
        }
    }
}

/// Attaches a loop device, or says why the test is skipped.
macro_rules! loop_or_skip {
    ($($flag:expr),*) => {{
        if let Some(why) = cannot_run() {
            return common::skip(&why);
        }
        match Loop::attach_with(&[$($flag),*]) {
            Ok(l) => l,
            Err(why) => return common::skip(&format!("cannot attach a loop device: {why}")),
        }
    }};
}

fn write(disk: &Disk, desc: &str) -> Desc {
    let desc = Desc::parse(desc, "t").unwrap();
    disk.write_table(&desc.layout(disk.bytes).unwrap()).expect("the table is written");
    desc
}

/// The `MAJ:MIN` the kernel gives partition `name`.
fn sysfs_dev(name: &str) -> (u32, u32) {
    let text = fs::read_to_string(format!("/sys/class/block/{name}/dev")).unwrap();
    let (major, minor) = text.trim().split_once(':').unwrap();
    (major.parse().unwrap(), minor.parse().unwrap())
}

fn numbers(disk: &Disk) -> Vec<u32> {
    disk.partitions().unwrap().into_iter().map(|(n, _)| n).collect()
}

/// Every partition of `disk` has a block node with the kernel's numbers.
fn assert_nodes_match_kernel(disk: &Disk) {
    for (n, path) in disk.partitions().unwrap() {
        assert_eq!(path, disk.partition_path(n));
        let meta = fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(meta.file_type().is_block_device(), "{}", path.display());
        let name = format!("{}p{n}", disk.name);
        assert_eq!(blockdev::rdev(&path).unwrap(), sysfs_dev(&name), "{}", path.display());
    }
}

/// Where the first partition starts: layouts align it to 1 MiB.
const P1_OFFSET: u64 = 1 << 20;

/// blkid finds no signature at `offset` of `dev`: what was in a partition is
/// gone, not merely the table pointing at it.
fn assert_nothing_at(dev: &Path, offset: u64) {
    let status = Command::new("blkid")
        .args(["-p", "-O", &offset.to_string(), dev.to_str().unwrap()])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2), "blkid -p -O {offset} {} found something", dev.display());
}

fn mkfs_ext4(dev: &Path, label: &str) {
    sh("mkfs.ext4", &["-q", "-F", "-L", label, dev.to_str().unwrap()]).unwrap();
}

#[test]
fn open_gives_the_kernel_name_and_size() {
    let lo = loop_or_skip!();
    let disk = lo.disk();
    assert_eq!(disk.path, lo.dev);
    assert_eq!(disk.name, lo.dev.file_name().unwrap().to_str().unwrap());
    assert_eq!(disk.bytes, IMAGE_BYTES);
    assert_eq!(disk.partitions().unwrap(), vec![]);
    let (major, minor) = blockdev::rdev(&lo.dev).unwrap();
    assert_eq!(blockdev::device_of(major, minor).unwrap(), lo.dev);
    assert_eq!(disk.in_use().unwrap(), Vec::<String>::new());
    disk.ensure_unused().unwrap();
}

#[test]
fn mbr_with_logicals_shows_every_partition_in_dev() {
    let lo = loop_or_skip!();
    let disk = lo.disk();
    let desc = write(&disk, MBR_DESC);
    assert_eq!(numbers(&disk), vec![1, 2, 3, 5, 6]);
    assert_nodes_match_kernel(&disk);

    let dumped = Desc::from_sfdisk_json(&disk.table_json().unwrap()).unwrap();
    assert_eq!(dumped.label, Label::Dos);
    let summary = |d: &Desc| d.partitions.iter().map(|p| (p.number, p.logical, p.ptype.clone())).collect();
    let (got, want): (Vec<_>, Vec<_>) = (summary(&dumped), summary(&desc));
    assert_eq!(got, want);

    let p5 = disk.partition_path(5);
    assert_eq!(blockdev::locate_partition(&p5).unwrap(), (lo.dev.clone(), 5));
    match Disk::open(&disk.partition_path(1)) {
        Err(DiskError::Other(m)) => {
            assert_eq!(m, format!("{}p1 is a partition, not a whole disk", lo.dev.display()))
        }
        other => panic!("open of a partition gave {other:?}"),
    }
    let e = blockdev::locate_partition(&lo.dev).unwrap_err().to_string();
    assert!(e.contains("is not a partition") && e.contains(lo.dev.to_str().unwrap()), "{e}");
}

#[test]
fn a_file_system_is_probed_found_guarded_and_wiped() {
    let lo = loop_or_skip!();
    let disk = lo.disk();
    write(&disk, MBR_DESC);
    let p1 = disk.partition_path(1);
    mkfs_ext4(&p1, "kacast root");

    let probe = blockdev::probe(&p1).unwrap();
    assert_eq!(probe.fstype.as_deref(), Some("ext4"));
    assert_eq!(probe.label.as_deref(), Some("kacast root"));
    let uuid = probe.uuid.clone().expect("ext4 has a UUID");
    assert!(probe.partuuid.as_deref().is_some_and(|u| u.ends_with("-01")), "{probe:?}");
    assert_eq!(blockdev::probe(&disk.partition_path(5)).unwrap().fstype, None, "sfdisk wiped p5");

    assert_eq!(blockdev::find_by_tag("UUID", &uuid).unwrap(), Some(p1.clone()));
    // blkid scans only devices with a node: find_by_tag makes the missing ones.
    fs::remove_file(&p1).unwrap();
    assert_eq!(blockdev::find_by_tag("UUID", &uuid).unwrap(), Some(p1.clone()));
    assert!(fs::metadata(&p1).unwrap().file_type().is_block_device());
    assert_eq!(blockdev::resolve_spec(&format!("UUID={uuid}")).unwrap(), Some(p1.clone()));
    assert_eq!(blockdev::resolve_spec(&format!("/dev/disk/by-uuid/{uuid}")).unwrap(), Some(p1.clone()));
    assert_eq!(blockdev::resolve_spec("LABEL=\"kacast root\"").unwrap(), Some(p1.clone()));
    assert_eq!(blockdev::find_by_tag("UUID", "00000000-dead-beef-0000-000000000000").unwrap(), None);
    assert_eq!(blockdev::locate_partition(&p1).unwrap(), (lo.dev.clone(), 1));

    let mut mounted = Mounted::new(&p1);
    let want = format!("{} is mounted on {}", p1.display(), mounted.dir.path().display());
    assert_eq!(disk.in_use().unwrap(), vec![want.clone()]);
    let m = blockdev::mounts().unwrap().into_iter().find(|m| m.mount_point == mounted.dir.path()).unwrap();
    assert_eq!(((m.major, m.minor), m.fstype.as_str()), (sysfs_dev(&format!("{}p1", disk.name)), "ext4"));
    assert_eq!(Path::new(&m.source), p1);
    match disk.ensure_unused() {
        Err(DiskError::InUse { path, reasons }) => assert_eq!((path, reasons), (lo.dev.clone(), vec![want])),
        other => panic!("ensure_unused on a mounted disk gave {other:?}"),
    }
    assert!(matches!(disk.wipe(), Err(DiskError::InUse { .. })));
    let layout = Desc::parse(GPT_DESC, "t").unwrap().layout(disk.bytes).unwrap();
    assert!(matches!(disk.write_table(&layout), Err(DiskError::InUse { .. })));
    assert_eq!(blockdev::probe(&p1).unwrap().uuid.as_deref(), Some(uuid.as_str()), "still there");
    mounted.unmount();
    disk.ensure_unused().unwrap();

    disk.wipe().unwrap();
    assert_eq!(disk.partitions().unwrap(), vec![]);
    assert!(!p1.exists(), "{} is gone", p1.display());
    assert_eq!(blockdev::probe(&lo.dev).unwrap(), Probe::default());
    let blkid = Command::new("blkid").args(["-p", lo.dev.to_str().unwrap()]).status().unwrap();
    assert_eq!(blkid.code(), Some(2), "blkid -p finds nothing on the wiped disk");
    assert_nothing_at(&lo.dev, P1_OFFSET);
    assert_eq!(blockdev::find_by_tag("UUID", &uuid).unwrap(), None);
}

#[test]
fn a_gpt_table_replaces_an_mbr_one() {
    let lo = loop_or_skip!();
    let disk = lo.disk();
    write(&disk, MBR_DESC);
    let desc = write(&disk, GPT_DESC);
    assert_eq!(numbers(&disk), vec![1, 2]);
    assert_nodes_match_kernel(&disk);
    for gone in [3, 5, 6] {
        assert!(!disk.partition_path(gone).exists(), "partition {gone} is gone");
    }

    let json = disk.table_json().unwrap();
    let dumped = Desc::from_sfdisk_json(&json).unwrap();
    assert_eq!(dumped.label, Label::Gpt);
    let types = |d: &Desc| d.partitions.iter().map(|p| p.ptype.clone()).collect::<Vec<_>>();
    assert_eq!(types(&dumped), types(&desc));

    let p1 = disk.partition_path(1);
    let partuuid = blockdev::probe(&p1).unwrap().partuuid.expect("a GPT partition has a UUID");
    assert!(json.to_lowercase().contains(&partuuid.to_lowercase()), "{partuuid} not in {json}");
    assert_eq!(blockdev::find_by_tag("PARTUUID", &partuuid).unwrap(), Some(p1.clone()));
    assert_eq!(blockdev::resolve_spec(&format!("PARTUUID={partuuid}")).unwrap(), Some(p1));
}

#[test]
fn reread_makes_missing_and_stale_nodes_and_checks_the_numbers() {
    let lo = loop_or_skip!();
    let disk = lo.disk();
    write(&disk, GPT_DESC);
    let (p1, p2) = (disk.partition_path(1), disk.partition_path(2));
    let name1 = format!("{}p1", disk.name);
    fs::remove_file(&p1).unwrap();
    fs::remove_file(&p2).unwrap();
    fs::write(&p2, b"not a node").unwrap();
    disk.reread(&[1, 2]).unwrap();
    assert_nodes_match_kernel(&disk);
    assert_eq!(numbers(&disk), vec![1, 2]);

    // Without udev and with nothing to recreate it, device_of makes the node.
    fs::remove_file(&p1).unwrap();
    assert_eq!(blockdev::device_of(sysfs_dev(&name1).0, sysfs_dev(&name1).1).unwrap(), p1);
    assert_nodes_match_kernel(&disk);

    let e = disk.reread(&[1, 2, 3]).unwrap_err().to_string();
    assert!(e.contains(&format!("{}p3", lo.dev.display())) && e.contains("no partition 3"), "{e}");
    let e = disk.reread(&[1]).unwrap_err().to_string();
    assert!(e.contains(&format!("still has {}", p2.display())), "{e}");
}

#[test]
fn wipe_erases_partitions_whose_nodes_are_missing() {
    let lo = loop_or_skip!();
    let disk = lo.disk();
    write(&disk, GPT_DESC);
    let p1 = disk.partition_path(1);
    mkfs_ext4(&p1, "old");
    fs::remove_file(&p1).unwrap();
    disk.wipe().unwrap();
    assert_eq!(numbers(&disk), Vec::<u32>::new());
    assert_nothing_at(&lo.dev, P1_OFFSET);
    assert_eq!(blockdev::probe(&lo.dev).unwrap(), Probe::default());
}

#[test]
fn a_partscan_loop_is_reread_by_the_kernel() {
    let lo = loop_or_skip!("-P");
    let disk = lo.disk();
    write(&disk, MBR_DESC);
    assert_eq!(numbers(&disk), vec![1, 2, 3, 5, 6]);
    assert_nodes_match_kernel(&disk);
    write(&disk, GPT_DESC);
    assert_eq!(numbers(&disk), vec![1, 2]);
    assert_nodes_match_kernel(&disk);
    disk.wipe().unwrap();
    assert_eq!(numbers(&disk), Vec::<u32>::new());
    assert!(!disk.partition_path(1).exists());
}

#[test]
fn an_active_swap_is_in_use() {
    let lo = loop_or_skip!();
    if let Some(why) = common::missing_tool("mkswap").or_else(|| common::missing_tool("swapon")) {
        return common::skip(&why);
    }
    let disk = lo.disk();
    write(&disk, MBR_DESC);
    let p2 = disk.partition_path(2);
    sh("mkswap", &[p2.to_str().unwrap()]).unwrap();
    if let Err(why) = sh("swapon", &[p2.to_str().unwrap()]) {
        return common::skip(&format!("cannot enable a swap here: {why}"));
    }
    let reasons = disk.in_use();
    let _ = sh("swapoff", &[p2.to_str().unwrap()]);
    assert_eq!(reasons.unwrap(), vec![format!("{} is an active swap", p2.display())]);
}

#[test]
fn open_refuses_files_and_missing_paths() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    fs::write(&file, b"x").unwrap();
    assert!(matches!(Disk::open(&file), Err(DiskError::NotBlockDevice { path }) if path == file));
    let missing = dir.path().join("missing");
    assert!(matches!(Disk::open(&missing), Err(DiskError::NoSuchDisk { path }) if path == missing));
}
