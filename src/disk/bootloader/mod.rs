//! Restoring GRUB on a cloned disk.
//!
//! Once a node's disk is partitioned, formatted, mounted under a target root
//! and the golden tree extracted, the disk still has no boot code: the MBR
//! (or the bios-boot partition, or the ESP's loader) was never part of the
//! stream. [`restore`] puts it back, one of two ways:
//!
//! - **In the clone** (the normal path on real hardware and VMs): /dev, /proc,
//!   /sys (and efivars) are bind-mounted into the target and the clone's own
//!   `grub-install` runs chrooted, so the boot code matches the clone's GRUB
//!   modules and distribution. The binds are always unmounted, also on error.
//! - **By hand** from the host's (stage2's) GRUB files, when the clone has no
//!   grub-install or no modules for the platform, or the disk is a loop device
//!   or an image file: GRUB 2.06's grub-install cannot map loop partitions to a
//!   BIOS drive ("cannot find a GRUB drive for /dev/loop0p1", they answer
//!   ENOTTY to HDIO_GETGEO). kacast then does what grub-install +
//!   grub-bios-setup do: `grub-mkimage` with an embedded early config that
//!   finds /boot by filesystem UUID, boot.img patched into the MBR's first 440
//!   bytes, core.img patched and written after the MBR (MBR label) or into the
//!   bios-boot partition (GPT); for UEFI an image at the ESP's removable-media
//!   path `EFI/BOOT/BOOTX64.EFI`, which firmware boots without NVRAM entries.
//!
//! The offsets patched by hand come from GRUB 2's sources:
//! `include/grub/i386/pc/boot.h` (boot.img fields),
//! `grub-core/boot/i386/pc/diskboot.S` (the blocklist ending core.img's first
//! sector) and `util/setup.c` (what grub-bios-setup writes). Before patching,
//! each field is checked to hold the value GRUB's build puts there, so a GRUB
//! with another layout is refused instead of written. The result is the same,
//! byte for byte, as `grub-bios-setup --no-rs-codes` (the tests compare them).

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::error::{DiskError, Result};
use crate::disk::Label;

mod binds;
mod bios;
mod boot_code;
mod check;
mod host_grub;
mod in_clone;
#[cfg(test)]
mod test_util;
mod uefi;

pub use boot_code::has_grub_boot_code;

use binds::with_binds;
use bios::bios_by_hand;
use check::check_target;
use in_clone::{install_in_clone, rebuild_initramfs_in};
use uefi::uefi_by_hand;

/// How the node's firmware starts the clone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// PC BIOS (or UEFI's legacy CSM): boot code in the MBR.
    Bios,
    /// UEFI: a PE loader on the EFI system partition.
    Uefi,
}

impl Firmware {
    /// GRUB's name for the platform (its module directory).
    fn platform(self) -> &'static str {
        match self {
            Firmware::Bios => "i386-pc",
            Firmware::Uefi => "x86_64-efi",
        }
    }
}

/// The cloned disk, mounted, whose bootloader is to be restored.
#[derive(Debug, Clone)]
pub struct GrubTarget<'a> {
    /// The target root, every filesystem of the clone mounted below it.
    pub root: &'a Path,
    /// The whole disk device, e.g. /dev/sda or /dev/loop5.
    pub disk: &'a Path,
    /// The disk's partition table.
    pub label: Label,
    /// Sector of the first partition: the room for core.img after an MBR.
    pub first_partition_start: u64,
    /// The GPT bios-boot partition (start sector, sectors), if any.
    pub bios_boot: Option<(u64, u64)>,
    /// UUID of the filesystem holding /boot (its own filesystem or the root).
    pub boot_fs_uuid: &'a str,
    /// /boot is its own filesystem, so GRUB's prefix is `/grub` on it.
    pub boot_is_separate: bool,
    /// Type of the filesystem holding /boot (ext4, xfs, btrfs, vfat…).
    pub boot_fstype: &'a str,
    /// The ESP's mount point (UEFI): under `root` (`/mnt/kacast/boot/efi`), or
    /// as the clone sees it (`/boot/efi` or `boot/efi`).
    pub esp: Option<&'a Path>,
    /// The ESP's partition when it is not mounted (a kernel without FAT): the
    /// UEFI image is then written into it with mtools.
    pub esp_device: Option<&'a Path>,
}

/// Restores GRUB for `firmware` on the target's disk, and rebuilds the
/// clone's initramfs when asked (ka's `-r 'grub --with=…'`, for nodes whose
/// disk controller differs from the golden node's). Returns one line per
/// thing done, for the node's report.
pub fn restore(t: &GrubTarget, firmware: Firmware, rebuild_initramfs: bool) -> Result<Vec<String>> {
    check_target(t, firmware)?;
    let mut done = match choose_way(t, firmware) {
        Way::InClone { installer } => with_binds(t.root, || install_in_clone(t, firmware, installer))?,
        Way::ByHand { reason } => match firmware {
            Firmware::Bios => bios_by_hand(t, &reason)?,
            Firmware::Uefi => uefi_by_hand(t, &reason)?,
        },
    };
    if rebuild_initramfs {
        done.push(with_binds(t.root, || rebuild_initramfs_in(t.root))?);
    }
    Ok(done)
}

/// Where the running system says it was booted by UEFI.
const EFI_SYSFS: &str = "/sys/firmware/efi";

/// Which firmware the clone should be made bootable for.
///
/// No ESP: BIOS, since UEFI needs one. With an ESP: UEFI when this node runs
/// its stage2 under UEFI (`/sys/firmware/efi` exists: the firmware is set to
/// boot UEFI, and will boot the clone the same way), or when the clone's ESP
/// already has an `EFI` directory (the golden node booted by UEFI). Otherwise
/// BIOS: an ESP alone may be a leftover of a hybrid disk.
pub fn detect_firmware(root: &Path, esp: Option<&Path>) -> Firmware {
    firmware_rule(root, esp, Path::new(EFI_SYSFS).is_dir())
}

fn firmware_rule(root: &Path, esp: Option<&Path>, booted_uefi: bool) -> Firmware {
    match esp {
        Some(esp) if booted_uefi || has_efi_dir(&resolve_esp(root, esp)) => Firmware::Uefi,
        _ => Firmware::Bios,
    }
}

/// Whether `esp` holds a non-empty `EFI` directory (any case: FAT ignores it).
fn has_efi_dir(esp: &Path) -> bool {
    let Ok(entries) = fs::read_dir(esp) else { return false };
    entries.flatten().any(|e| {
        e.file_name().eq_ignore_ascii_case("efi")
            && fs::read_dir(e.path()).map(|mut d| d.next().is_some()).unwrap_or(false)
    })
}

/// How [`restore`] puts the boot code back (see the module doc).
enum Way {
    InClone { installer: &'static str },
    ByHand { reason: String },
}

/// The clone's grub-install, Debian's or Red Hat's name, usr-merged or not.
const CLONE_INSTALLERS: &[&str] = &[
    "/usr/sbin/grub-install",
    "/usr/bin/grub-install",
    "/sbin/grub-install",
    "/usr/sbin/grub2-install",
    "/usr/bin/grub2-install",
    "/sbin/grub2-install",
];

/// Where a system keeps GRUB's per-platform module directories.
const GRUB_LIB_DIRS: &[&str] = &["/usr/lib/grub", "/usr/lib/grub2"];

/// Linux's major number of loop devices (LOOP_MAJOR).
const LOOP_MAJOR: u32 = 7;

fn choose_way(t: &GrubTarget, firmware: Firmware) -> Way {
    let platform = firmware.platform();
    let installer = CLONE_INSTALLERS.iter().copied().find(|p| in_clone(t.root, p).symlink_metadata().is_ok());
    let has_modules =
        GRUB_LIB_DIRS.iter().any(|d| in_clone(t.root, &format!("{d}/{platform}/moddep.lst")).exists());
    // The disk first: on a loop device grub-install fails whatever the clone has.
    let reason = match installer {
        _ if firmware == Firmware::Uefi && t.esp.is_none() => "the ESP is not mounted".to_string(),
        _ if is_loop_device(t.disk) => "loop device".to_string(),
        _ if !is_block_device(t.disk) => "not a block device".to_string(),
        None => "no grub-install in the clone".to_string(),
        Some(_) if !has_modules => format!("the clone has no GRUB {platform} modules"),
        Some(installer) => return Way::InClone { installer },
    };
    Way::ByHand { reason }
}

/// `path` (absolute, as the clone sees it) under the target root.
fn in_clone(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

fn is_block_device(disk: &Path) -> bool {
    fs::metadata(disk).map(|m| m.file_type().is_block_device()).unwrap_or(false)
}

fn is_loop_device(disk: &Path) -> bool {
    let real = fs::canonicalize(disk).unwrap_or_else(|_| disk.to_path_buf());
    let named = real.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("loop"));
    let major = fs::metadata(&real)
        .map(|m| m.file_type().is_block_device() && libc::major(m.rdev()) == LOOP_MAJOR)
        .unwrap_or(false);
    named || major
}

/// The ESP directory on the host: `esp` under `root` or relative to it.
fn resolve_esp(root: &Path, esp: &Path) -> PathBuf {
    if esp.starts_with(root) {
        esp.to_path_buf()
    } else {
        root.join(esp.strip_prefix("/").unwrap_or(esp))
    }
}

/// The ESP's mount point as the chrooted clone sees it (`/boot/efi`).
fn esp_in_clone(root: &Path, esp: &Path) -> Result<String> {
    let host = resolve_esp(root, esp);
    let rel = host.strip_prefix(root).map_err(|_| {
        DiskError::Other(format!("ESP {} is not under the target root {}", host.display(), root.display()))
    })?;
    Ok(format!("/{}", rel.display()))
}

#[cfg(test)]
mod tests {
    use super::test_util::{is_root, target};
    use super::*;
    use crate::disk::mount::c_path;

    #[test]
    fn esp_is_found_under_the_root_whatever_its_spelling() {
        let root = Path::new("/mnt/kacast");
        for esp in ["/mnt/kacast/boot/efi", "/boot/efi", "boot/efi"] {
            assert_eq!(resolve_esp(root, Path::new(esp)), Path::new("/mnt/kacast/boot/efi"), "{esp}");
            assert_eq!(esp_in_clone(root, Path::new(esp)).unwrap(), "/boot/efi", "{esp}");
        }
    }

    #[test]
    fn firmware_follows_the_esp_and_the_running_system() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let esp = root.join("boot/efi");
        fs::create_dir_all(&esp).unwrap();
        assert_eq!(firmware_rule(root, None, true), Firmware::Bios);
        assert_eq!(firmware_rule(root, Some(&esp), false), Firmware::Bios);
        assert_eq!(firmware_rule(root, Some(&esp), true), Firmware::Uefi);
        fs::create_dir_all(esp.join("EFI")).unwrap();
        assert_eq!(firmware_rule(root, Some(Path::new("/boot/efi")), false), Firmware::Bios, "empty EFI/");
        fs::create_dir_all(esp.join("EFI/debian")).unwrap();
        assert_eq!(firmware_rule(root, Some(Path::new("/boot/efi")), false), Firmware::Uefi);
        let expected = if Path::new(EFI_SYSFS).is_dir() { Firmware::Uefi } else { Firmware::Bios };
        assert_eq!(detect_firmware(root, None), Firmware::Bios);
        assert_eq!(detect_firmware(root, Some(&esp)), Firmware::Uefi);
        fs::remove_dir_all(esp.join("EFI")).unwrap();
        assert_eq!(detect_firmware(root, Some(&esp)), expected);
        assert_eq!(serde_json::to_string(&Firmware::Uefi).unwrap(), "\"uefi\"");
    }

    /// A root with the clone's grub-install (and `platform` modules).
    fn clone_with_grub(root: &Path, platform: &str) {
        fs::create_dir_all(root.join("usr/sbin")).unwrap();
        fs::write(root.join("usr/sbin/grub-install"), "").unwrap();
        let modules = root.join("usr/lib/grub").join(platform);
        fs::create_dir_all(&modules).unwrap();
        fs::write(modules.join("moddep.lst"), "").unwrap();
    }

    fn reason(way: Way) -> String {
        match way {
            Way::ByHand { reason } => reason,
            Way::InClone { installer } => format!("in the clone with {installer}"),
        }
    }

    #[test]
    fn by_hand_unless_the_clone_can_install_on_a_real_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let image = root.join("disk.img");
        fs::write(&image, "").unwrap();
        let loop0 = Path::new("/dev/loop0");
        let t = target(root, &image, None);
        assert_eq!(reason(choose_way(&t, Firmware::Bios)), "not a block device");
        clone_with_grub(root, "i386-pc");
        assert_eq!(reason(choose_way(&t, Firmware::Bios)), "not a block device");
        assert_eq!(reason(choose_way(&target(root, loop0, None), Firmware::Bios)), "loop device");
        if !is_root() {
            return crate::testing::skip("block device cases: needs root to make a device node");
        }
        // A node for major 8 (sd), never opened: a disk that is not a loop.
        let sda = root.join("sda");
        let node = c_path(&sda).unwrap();
        // SAFETY: a NUL-terminated path; mknod only creates the node.
        assert_eq!(unsafe { libc::mknod(node.as_ptr(), libc::S_IFBLK | 0o600, libc::makedev(8, 0)) }, 0);
        let t = target(root, &sda, None);
        assert_eq!(reason(choose_way(&t, Firmware::Uefi)), "the ESP is not mounted");
        let esp = Path::new("/boot/efi");
        let with_esp = target(root, &sda, Some(esp));
        assert_eq!(reason(choose_way(&with_esp, Firmware::Uefi)), "the clone has no GRUB x86_64-efi modules");
        fs::remove_file(root.join("usr/sbin/grub-install")).unwrap();
        assert_eq!(reason(choose_way(&t, Firmware::Bios)), "no grub-install in the clone");
        clone_with_grub(root, "i386-pc");
        assert_eq!(
            reason(choose_way(&target(root, &sda, None), Firmware::Bios)),
            "in the clone with /usr/sbin/grub-install"
        );
    }
}
