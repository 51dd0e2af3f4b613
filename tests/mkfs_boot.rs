//! Making filesystems and restoring GRUB on loop devices backed by image
//! files in a temporary directory. Needs root and the tools; each test skips
//! with the reason otherwise. No other device is ever touched.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kacast::disk::bootloader::{detect_firmware, has_grub_boot_code, restore, Firmware, GrubTarget};
use kacast::disk::{mkfs, DiskError, Label};

const SECTOR: usize = 512;
const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const LINUX_TYPE: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
/// grub-bios-setup, the reference the by-hand install is compared with.
const GRUB_BIOS_SETUP: &str = "/usr/lib/grub/i386-pc/grub-bios-setup";

/// Why a test cannot run here: not root, or a tool missing.
fn cannot_run(tools: &[&str]) -> Option<String> {
    if !common::is_root() {
        return Some("needs root for loop devices and mounts".into());
    }
    tools.iter().find_map(|t| common::missing_tool(t))
}

fn cannot_run_grub(platform: &str, tools: &[&str]) -> Option<String> {
    cannot_run(tools).or_else(|| {
        let dir = Path::new("/usr/lib/grub").join(platform);
        (!dir.join("moddep.lst").is_file())
            .then(|| format!("GRUB {platform} modules missing in {}", dir.display()))
    })
}

fn sh(program: &str, args: &[&str]) -> String {
    common::disks::sh(program, args).unwrap_or_else(|e| panic!("{e}"))
}

/// An image file in a temporary directory attached to a loop device,
/// optionally partitioned; what it mounted is unmounted, its partitions
/// removed and the loop device detached on drop. The directory is kept (not
/// deleted recursively) if something could not be unmounted.
struct Rig {
    dir: Option<tempfile::TempDir>,
    image: PathBuf,
    dev: PathBuf,
    partitioned: bool,
    mounts: Vec<PathBuf>,
}

impl Rig {
    fn new(mib: u64, sfdisk_script: Option<&str>) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        File::create(&image).unwrap().set_len(mib << 20).unwrap();
        let dev = PathBuf::from(sh("losetup", &["-f", "--show", image.to_str().unwrap()]).trim());
        let mut rig = Rig { dir: Some(dir), image, dev, partitioned: false, mounts: Vec::new() };
        if let Some(script) = sfdisk_script {
            let mut child = Command::new("sfdisk")
                .args(["-q", "--no-reread", "--no-tell-kernel", rig.dev_str()])
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
            assert!(child.wait().unwrap().success(), "sfdisk on {}", rig.dev.display());
            sh("partx", &["-a", rig.dev_str()]);
            rig.partitioned = true;
        }
        rig
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    fn dev_str(&self) -> &str {
        self.dev.to_str().unwrap()
    }

    /// Partition `n`'s device node, once the kernel has made it. /dev may
    /// hold a stale node of the same name whose numbers belong to a partition
    /// gone since (devtmpfs does not replace an existing node), so the
    /// numbers are checked against sysfs, and a node made in the rig's
    /// directory when they differ.
    fn part(&self, n: u32) -> PathBuf {
        let name = format!("{}p{n}", self.dev.file_name().unwrap().to_str().unwrap());
        let sys = Path::new("/sys/class/block").join(&name).join("dev");
        let deadline = Instant::now() + Duration::from_secs(10);
        let numbers = loop {
            if let Ok(s) = fs::read_to_string(&sys) {
                break s.trim().to_string();
            }
            assert!(Instant::now() < deadline, "{name} did not appear in sysfs");
            std::thread::sleep(Duration::from_millis(50));
        };
        let (major, minor) = numbers.split_once(':').unwrap();
        let devt = libc::makedev(major.parse().unwrap(), minor.parse().unwrap());
        let in_dev = Path::new("/dev").join(&name);
        if fs::metadata(&in_dev).is_ok_and(|m| m.rdev() == devt) {
            return in_dev;
        }
        let own = self.path().join(&name);
        let c = std::ffi::CString::new(own.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path; mknod only creates the node.
        let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o600, devt) };
        assert_eq!(r, 0, "mknod {}: {}", own.display(), std::io::Error::last_os_error());
        own
    }

    /// Mounts `dev` on `dir` (created); false when the kernel cannot mount it.
    fn mount(&mut self, dev: &Path, dir: &Path) -> bool {
        fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount").arg(dev).arg(dir).status().unwrap().success();
        if ok {
            self.mounts.push(dir.to_path_buf());
        }
        ok
    }

    fn unmount_all(&mut self) {
        while let Some(m) = self.mounts.pop() {
            let ok = Command::new("umount").arg(&m).status().is_ok_and(|s| s.success());
            if !ok && !Command::new("umount").arg("-l").arg(&m).status().is_ok_and(|s| s.success()) {
                eprintln!("cannot unmount {}: keeping {}", m.display(), self.path().display());
                if let Some(dir) = self.dir.take() {
                    let _ = dir.keep();
                }
            }
        }
    }

    fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        File::open(&self.dev).unwrap().read_exact_at(&mut buf, offset).unwrap();
        buf
    }

    fn sync(&self) {
        File::open(&self.dev).unwrap().sync_all().unwrap();
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.unmount_all();
        if self.partitioned {
            let _ = Command::new("partx").arg("-d").arg(&self.dev).status();
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// `blkid -p -o export` of a device as a map (TYPE, UUID, LABEL…), values
/// unescaped (export writes `\ ` for a space).
fn probe(dev: &Path) -> BTreeMap<String, String> {
    let unescape = |v: &str| {
        let mut out = String::new();
        let mut chars = v.chars();
        while let Some(c) = chars.next() {
            out.push(if c == '\\' { chars.next().unwrap_or(c) } else { c });
        }
        out
    };
    sh("blkid", &["-p", "-o", "export", dev.to_str().unwrap()])
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), unescape(v)))
        .collect()
}

#[test]
fn mkfs_keeps_the_given_uuid_and_label() {
    if let Some(why) = cannot_run(&["losetup", "sfdisk", "partx", "blkid", "mkfs.ext4"]) {
        return common::skip(&why);
    }
    // 320 MiB: mkfs.xfs of xfsprogs 6 refuses less than 300 MiB. 16 MiB:
    // too small for FAT32.
    let rig = Rig::new(340, Some("label: dos\nstart=2048, size=320M, type=83\nsize=16M, type=c\n"));
    let (big, small) = (rig.part(1), rig.part(2));
    let cases = [
        ("ext4", "kacast-root"),
        ("xfs", "kacast-xfs"),
        ("btrfs", "kacast-btrfs"),
        ("vfat", "KACAST ESP"),
        ("swap", "kacast-swap"),
        // Again: each type is made over the previous one's leftovers.
        ("ext4", "root-again"),
    ];
    let mut tested = Vec::new();
    for (fstype, label) in cases {
        if common::missing_tool(mkfs::tool(fstype).unwrap()).is_some() {
            eprintln!("{fstype}: {} not installed, not tested", mkfs::tool(fstype).unwrap());
            continue;
        }
        let uuid = mkfs::new_uuid(fstype);
        mkfs::make(&big, fstype, Some(&uuid), Some(label)).unwrap_or_else(|e| panic!("{fstype}: {e}"));
        let seen = probe(&big);
        assert_eq!(seen.get("TYPE").map(String::as_str), Some(fstype), "{seen:?}");
        assert_eq!(seen.get("UUID"), Some(&uuid), "{fstype}: {seen:?}");
        assert_eq!(seen.get("LABEL").map(String::as_str), Some(label), "{fstype}: {seen:?}");
        if fstype == "vfat" {
            assert_eq!(seen.get("VERSION").map(String::as_str), Some("FAT32"), "{seen:?}");
        }
        tested.push(fstype);
    }
    eprintln!("tested: {tested:?}");

    if common::missing_tool("mkfs.vfat").is_none() {
        mkfs::make(&small, "vfat", None, None).unwrap();
        let seen = probe(&small);
        assert_eq!(seen.get("TYPE").map(String::as_str), Some("vfat"), "{seen:?}");
        assert_ne!(seen.get("VERSION").map(String::as_str), Some("FAT32"), "16 MiB: {seen:?}");
        assert!(!seen.contains_key("LABEL"), "{seen:?}");
    }
}

#[test]
fn check_accepts_fresh_uuids_and_names_what_is_wrong() {
    for fstype in mkfs::SUPPORTED {
        let (a, b) = (mkfs::new_uuid(fstype), mkfs::new_uuid(fstype));
        assert_ne!(a, b);
        match mkfs::check(fstype, Some(&a), Some("data")) {
            Ok(()) => {}
            Err(DiskError::MissingTool { tool, .. }) => {
                assert!(common::missing_tool(&tool).is_some(), "{fstype}: {tool} is installed")
            }
            Err(e) => panic!("{fstype}: fresh UUID {a} refused: {e}"),
        }
    }
    let e = mkfs::check("ntfs", None, None).unwrap_err().to_string();
    assert!(
        e.contains("'ntfs'") && e.contains("ext2, ext3, ext4, xfs, btrfs, vfat, swap, jfs, reiserfs"),
        "{e}"
    );
    let e = mkfs::check("ext4", Some("not-a-uuid"), None).unwrap_err().to_string();
    assert!(e.contains("UUID 'not-a-uuid'") && e.contains("ext4"), "{e}");
    let e = mkfs::check("vfat", Some("12345678"), None).unwrap_err().to_string();
    assert!(e.contains("XXXX-XXXX"), "{e}");
    let e = mkfs::check("xfs", None, Some("label-too-long")).unwrap_err().to_string();
    assert!(e.contains("'label-too-long'") && e.contains("at most 12"), "{e}");
    let e = mkfs::check("vfat", None, Some("ESP-LABEL-12")).unwrap_err().to_string();
    assert!(e.contains("at most 11"), "{e}");
}

/// A cloned root: `dev` formatted ext4 with `uuid`, mounted on `rig/root`,
/// with the golden grub.cfg.
fn cloned_root(rig: &mut Rig, dev: &Path, uuid: &str, grub_cfg: &str) -> PathBuf {
    mkfs::make(dev, "ext4", Some(uuid), Some("root")).unwrap();
    let root = rig.path().join("root");
    assert!(rig.mount(dev, &root), "mount {}", dev.display());
    fs::create_dir_all(root.join("boot/grub")).unwrap();
    fs::write(root.join("boot/grub/grub.cfg"), grub_cfg).unwrap();
    root
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}

/// Checks the boot code and core.img on the disk after a BIOS restore:
/// boot.img in the MBR pointing at `at`, the disk's own bytes from 440 kept,
/// core.img (as left in /boot/grub/i386-pc) at `at` with its blocklist
/// pointing at `at + 1`.
fn assert_bios_boot(rig: &Rig, root: &Path, before_mbr: &[u8], at: u64) {
    let mbr = rig.read(0, SECTOR);
    assert!(has_grub_boot_code(&mbr), "no GRUB boot code in the MBR");
    assert_eq!(mbr[440..], before_mbr[440..], "disk signature or partition table changed");
    assert_eq!(u64_at(&mbr, 0x5c), at, "boot.img kernel sector");
    assert_eq!(mbr[0x64], 0xff, "boot drive");
    assert_eq!(mbr[0x66..0x68], [0x90, 0x90], "hard disk drive check");

    let grub = root.join("boot/grub/i386-pc");
    let core = fs::read(grub.join("core.img")).unwrap();
    let sectors = core.len().div_ceil(SECTOR);
    let on_disk = rig.read(at * SECTOR as u64, sectors * SECTOR);
    assert_eq!(on_disk[..0x1e8], core[..0x1e8], "diskboot code");
    assert!(on_disk[0x1e8..0x1f4].iter().all(|&b| b == 0), "blocklist terminator");
    assert_eq!(u64_at(&on_disk, 0x1f4), at + 1, "blocklist start");
    assert_eq!(u16_at(&on_disk, 0x1fc) as usize, sectors - 1, "blocklist length");
    assert_eq!(u16_at(&on_disk, 0x1fe), 0x820, "blocklist segment");
    assert_eq!(on_disk[SECTOR..core.len()], core[SECTOR..], "core.img after its first sector");
    assert!(grub.join("normal.mod").is_file());
    assert!(grub.join("boot.img").is_file());
}

/// The first `len` bytes grub-bios-setup itself writes on a copy of the
/// disk as it was (`before`), from the core.img and boot.img restore left in
/// `grub_dir`; `None` when grub-bios-setup is not installed.
fn grub_bios_setup_reference(before: &Path, grub_dir: &Path, len: usize) -> Option<Vec<u8>> {
    if !Path::new(GRUB_BIOS_SETUP).is_file() || common::missing_tool("mkfs.ext2").is_some() {
        eprintln!("{GRUB_BIOS_SETUP} or mkfs.ext2 missing: no comparison with grub-bios-setup");
        return None;
    }
    // grub-bios-setup wants its directory on a device it can name: an ext2
    // filesystem on a whole loop device, mapped as (hd1).
    let mut aux = Rig::new(16, None);
    sh("mkfs.ext2", &["-q", "-F", aux.dev_str()]);
    let dir = aux.path().join("grub");
    let dev = aux.dev.clone();
    assert!(aux.mount(&dev, &dir));
    for f in ["boot.img", "core.img"] {
        fs::copy(grub_dir.join(f), dir.join(f)).unwrap();
    }
    let map = aux.path().join("device.map");
    fs::write(&map, format!("(hd0) {}\n(hd1) {}\n", before.display(), aux.dev.display())).unwrap();
    let args = ["-d", dir.to_str().unwrap(), "-b", "boot.img", "-c", "core.img", "-m", map.to_str().unwrap()];
    sh(GRUB_BIOS_SETUP, &[&args[..], &["--no-rs-codes", "--skip-fs-probe", "(hd0)"]].concat());
    let mut out = vec![0u8; len];
    File::open(before).unwrap().read_exact(&mut out).unwrap();
    Some(out)
}

/// A sparse copy of the rig's image as it is now.
fn snapshot_image(rig: &Rig, name: &str) -> PathBuf {
    rig.sync();
    let copy = rig.path().join(name);
    sh("cp", &["--sparse=always", rig.image.to_str().unwrap(), copy.to_str().unwrap()]);
    copy
}

const BIOS_TOOLS: &[&str] = &["losetup", "sfdisk", "partx", "blkid", "mkfs.ext4", "grub-mkimage", "cp"];

#[test]
fn bios_mbr_by_hand_embeds_core_after_the_mbr() {
    if let Some(why) = cannot_run_grub("i386-pc", BIOS_TOOLS) {
        return common::skip(&why);
    }
    let mut rig = Rig::new(64, Some("label: dos\nstart=2048, type=83, bootable\n"));
    let part = rig.part(1);
    let uuid = mkfs::new_uuid("ext4");
    let root = cloned_root(&mut rig, &part, &uuid, "echo golden\n");
    // Leftovers of another boot loader where GRUB keeps the disk's bytes
    // (a FAT BPB's room, 0x03..0x5a) and where it writes its own.
    let old_code: Vec<u8> = (0..440u32).map(|i| (i % 251) as u8 | 1).collect();
    OpenOptions::new().write(true).open(&rig.dev).unwrap().write_all_at(&old_code, 0).unwrap();
    let before = rig.read(0, 2048 * SECTOR);
    assert!(!has_grub_boot_code(&before[..SECTOR]));
    let reference_disk = snapshot_image(&rig, "before.img");

    let t = mbr_target(&root, &rig.dev, &uuid);
    let done = restore(&t, Firmware::Bios, false).unwrap();
    eprintln!("{}", done.join("\n"));
    let expected = format!("embedded at sector 1 of {} (by hand: loop device)", rig.dev.display());
    assert!(done[0].contains(&expected), "{done:?}");
    assert_bios_boot(&rig, &root, &before[..SECTOR], 1);
    assert_eq!(rig.read(0x03, 0x57), before[0x03..0x5a], "BPB room not kept");
    let load_cfg = fs::read_to_string(root.join("boot/grub/i386-pc/load.cfg")).unwrap();
    assert_eq!(load_cfg, format!("search.fs_uuid {uuid} root\nset prefix=($root)'/boot/grub'\n"));
    assert_eq!(fs::read_to_string(root.join("boot/grub/grub.cfg")).unwrap(), "echo golden\n");

    let after = rig.read(0, 2048 * SECTOR);
    let core_sectors = fs::metadata(root.join("boot/grub/i386-pc/core.img")).unwrap().len().div_ceil(512);
    let end = (1 + core_sectors as usize) * SECTOR;
    assert_eq!(after[end..], before[end..], "bytes past core.img changed");
    if let Some(reference) =
        grub_bios_setup_reference(&reference_disk, &root.join("boot/grub/i386-pc"), 2048 * SECTOR)
    {
        assert!(
            after == reference,
            "differs from grub-bios-setup at byte {:?}",
            first_difference(&after, &reference)
        );
    }

    // No room before the first partition: refused before writing.
    let cramped = GrubTarget { first_partition_start: 40, ..t.clone() };
    let e = restore(&cramped, Firmware::Bios, false).unwrap_err().to_string();
    assert!(
        e.contains("does not fit in the gap before the first partition") && e.contains("39 sectors"),
        "{e}"
    );
    let wrong_label = GrubTarget { label: Label::Gpt, bios_boot: Some((2048, 2048)), ..t };
    let e = restore(&wrong_label, Firmware::Bios, false).unwrap_err().to_string();
    assert!(e.contains("no GPT header"), "{e}");
    assert!(rig.read(0, 2048 * SECTOR) == after, "a refused restore wrote to the disk");
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

#[test]
fn bios_gpt_by_hand_embeds_core_in_bios_boot() {
    if let Some(why) = cannot_run_grub("i386-pc", BIOS_TOOLS) {
        return common::skip(&why);
    }
    let script =
        format!("label: gpt\nstart=2048, size=2048, type={BIOS_BOOT}\nstart=4096, type={LINUX_TYPE}\n");
    let mut rig = Rig::new(64, Some(&script));
    let part = rig.part(2);
    let uuid = mkfs::new_uuid("ext4");
    let root = cloned_root(&mut rig, &part, &uuid, "echo golden\n");
    let table = sh("sfdisk", &["--dump", rig.dev_str()]);
    let before = rig.read(0, 4096 * SECTOR);
    let reference_disk = snapshot_image(&rig, "before.img");

    let t = GrubTarget {
        root: &root,
        disk: &rig.dev,
        label: Label::Gpt,
        first_partition_start: 2048,
        bios_boot: Some((2048, 2048)),
        boot_fs_uuid: &uuid,
        boot_is_separate: false,
        boot_fstype: "ext4",
        esp: None,
        esp_device: None,
    };
    // Refused before writing: too small, not the bios-boot partition, none.
    let small = GrubTarget { bios_boot: Some((2048, 8)), ..t.clone() };
    let e = restore(&small, Firmware::Bios, false).unwrap_err().to_string();
    assert!(e.contains("does not fit in the bios-boot partition") && e.contains("(8 sectors)"), "{e}");
    let root_part = GrubTarget { bios_boot: Some((4096, 2048)), ..t.clone() };
    let e = restore(&root_part, Firmware::Bios, false).unwrap_err().to_string();
    assert!(e.contains("no bios-boot partition") && e.contains("at sector 4096"), "{e}");
    let none = GrubTarget { bios_boot: None, ..t.clone() };
    let e = restore(&none, Firmware::Bios, false).unwrap_err().to_string();
    assert!(e.contains("needs a bios-boot partition"), "{e}");
    assert!(rig.read(0, 4096 * SECTOR) == before, "a refused restore wrote to the disk");

    let done = restore(&t, Firmware::Bios, false).unwrap();
    eprintln!("{}", done.join("\n"));
    assert!(done[0].contains("embedded at sector 2048 of"), "{done:?}");
    assert_bios_boot(&rig, &root, &before[..SECTOR], 2048);
    let after = rig.read(0, 4096 * SECTOR);
    assert_eq!(after[SECTOR..2048 * SECTOR], before[SECTOR..2048 * SECTOR], "GPT header or entries changed");
    assert_eq!(sh("sfdisk", &["--dump", rig.dev_str()]), table);
    if let Some(reference) =
        grub_bios_setup_reference(&reference_disk, &root.join("boot/grub/i386-pc"), 4096 * SECTOR)
    {
        assert!(
            after == reference,
            "differs from grub-bios-setup at byte {:?}",
            first_difference(&after, &reference)
        );
    }
}

#[test]
fn uefi_by_hand_writes_the_removable_media_loader() {
    let tools = ["losetup", "sfdisk", "partx", "blkid", "mkfs.ext4", "mkfs.vfat", "grub-mkimage"];
    if let Some(why) = cannot_run_grub("x86_64-efi", &tools) {
        return common::skip(&why);
    }
    let script = format!("label: gpt\nstart=2048, size=64M, type={ESP_TYPE}\ntype={LINUX_TYPE}\n");
    let mut rig = Rig::new(128, Some(&script));
    let (esp_dev, root_dev) = (rig.part(1), rig.part(2));
    let uuid = mkfs::new_uuid("ext4");
    let root = cloned_root(&mut rig, &root_dev, &uuid, "echo golden\n");
    mkfs::make(&esp_dev, "vfat", Some(&mkfs::new_uuid("vfat")), Some("ESP")).unwrap();
    let esp = root.join("boot/efi");
    if !rig.mount(&esp_dev, &esp) {
        // The image is written the same way on any filesystem.
        eprintln!("this kernel cannot mount vfat: the ESP is a directory of the root");
    }
    assert_eq!(detect_firmware(&root, None), Firmware::Bios);

    let t = GrubTarget {
        root: &root,
        disk: &rig.dev,
        label: Label::Gpt,
        first_partition_start: 2048,
        bios_boot: None,
        boot_fs_uuid: &uuid,
        boot_is_separate: false,
        boot_fstype: "ext4",
        esp: Some(Path::new("/boot/efi")),
        esp_device: None,
    };
    let mbr = rig.read(0, SECTOR);
    let done = restore(&t, Firmware::Uefi, false).unwrap();
    eprintln!("{}", done.join("\n"));
    assert!(done[0].contains("EFI/BOOT/BOOTX64.EFI") && done[0].contains("by hand"), "{done:?}");
    let image = fs::read(esp.join("EFI/BOOT/BOOTX64.EFI")).unwrap();
    assert_eq!(&image[..2], b"MZ");
    let config = format!("search.fs_uuid {uuid} root");
    assert!(image.windows(config.len()).any(|w| w == config.as_bytes()), "early config not in the image");
    assert!(!esp.join("EFI/BOOT/BOOTX64.EFI.kacast").exists());
    assert!(root.join("boot/grub/x86_64-efi/normal.mod").is_file());
    assert_eq!(rig.read(0, SECTOR), mbr, "UEFI restore touched the MBR");
    assert_eq!(detect_firmware(&root, Some(&esp)), Firmware::Uefi);
}

/// The BIOS by-hand install really boots: GRUB loads core.img, finds /boot
/// by UUID, loads `normal` and the golden grub.cfg, which prints a marker
/// on the serial port.
#[test]
fn bios_by_hand_boots_under_qemu() {
    if let Some(why) = cannot_run_grub("i386-pc", &[BIOS_TOOLS, &["qemu-system-x86_64"]].concat()) {
        return common::skip(&why);
    }
    const MARKER: &str = "KACAST-GRUB-BOOTED";
    let mut rig = Rig::new(64, Some("label: dos\nstart=2048, type=83, bootable\n"));
    let part = rig.part(1);
    let uuid = mkfs::new_uuid("ext4");
    let cfg =
        format!("serial --unit=0 --speed=115200\nterminal_output serial\necho {MARKER}\nsleep 1\nhalt\n");
    let root = cloned_root(&mut rig, &part, &uuid, &cfg);
    let t = mbr_target(&root, &rig.dev, &uuid);
    restore(&t, Firmware::Bios, false).unwrap();
    rig.unmount_all();
    rig.sync();

    let log = common::vm::boot_until(&rig.image, MARKER, &rig.path().join("serial.log"));
    assert!(log.contains(MARKER), "no {MARKER} on the serial port; it says:\n{log}");
}

/// BIOS boot of an MBR disk whose ext4 root (holding /boot) starts at 1 MiB.
fn mbr_target<'a>(root: &'a Path, disk: &'a Path, uuid: &'a str) -> GrubTarget<'a> {
    GrubTarget {
        root,
        disk,
        label: Label::Dos,
        first_partition_start: 2048,
        bios_boot: None,
        boot_fs_uuid: uuid,
        boot_is_separate: false,
        boot_fstype: "ext4",
        esp: None,
        esp_device: None,
    }
}
