//! Everything about a [`GrubTarget`] that can be refused before the disk is
//! written: the target root and disk exist, the UUID and filesystem of /boot
//! are ones GRUB can search and read, and the firmware's own needs (an ESP
//! for UEFI, a bios-boot partition for BIOS on GPT) are met.

use std::fs;
use std::path::Component;

use super::bios::BIOS_BOOT_GUID;
use super::{resolve_esp, Firmware, GrubTarget};
use crate::disk::error::{DiskError, Result};
use crate::disk::Label;

/// Everything about the target that can be refused before writing.
pub(super) fn check_target(t: &GrubTarget, firmware: Firmware) -> Result<()> {
    if !t.root.is_dir() {
        return Err(DiskError::Other(format!("target root {} is not a directory", t.root.display())));
    }
    if fs::metadata(t.disk).is_err() {
        return Err(DiskError::NoSuchDisk { path: t.disk.to_path_buf() });
    }
    check_uuid(t.boot_fs_uuid)?;
    fs_module(t.boot_fstype)?;
    match firmware {
        Firmware::Uefi if t.esp.is_none() && t.esp_device.is_some() => {}
        Firmware::Uefi => {
            let esp = t.esp.ok_or_else(|| {
                DiskError::Plan(format!("UEFI boot of {} needs an EFI system partition", t.disk.display()))
            })?;
            if !esp.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_))) {
                return Err(DiskError::Plan(format!(
                    "ESP path {} must be plain (no '.' or '..'): it is resolved under the target root",
                    esp.display()
                )));
            }
            let dir = resolve_esp(t.root, esp);
            if !dir.is_dir() {
                return Err(DiskError::Other(format!("ESP mount point {} does not exist", dir.display())));
            }
        }
        Firmware::Bios if t.label == Label::Gpt && t.bios_boot.is_none() => {
            return Err(DiskError::Plan(format!(
                "BIOS boot from the GPT disk {} needs a bios-boot partition (type {BIOS_BOOT_GUID}) \
                 for GRUB's core.img; add `bios-boot 1M` to the desc",
                t.disk.display()
            )));
        }
        Firmware::Bios => {}
    }
    Ok(())
}

/// The UUID is written into GRUB's early config: only hex digits and dashes,
/// so it cannot change the meaning of that script.
pub(super) fn check_uuid(uuid: &str) -> Result<()> {
    if !uuid.is_empty() && uuid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        Ok(())
    } else {
        Err(DiskError::Plan(format!("'{uuid}' is not a filesystem UUID GRUB can search for /boot")))
    }
}

/// GRUB's module reading /boot's filesystem.
pub(super) fn fs_module(fstype: &str) -> Result<&'static str> {
    Ok(match fstype {
        "ext2" | "ext3" | "ext4" => "ext2",
        "xfs" => "xfs",
        "btrfs" => "btrfs",
        "vfat" => "fat",
        "jfs" => "jfs",
        "reiserfs" => "reiserfs",
        _ => return Err(DiskError::Plan(format!("GRUB cannot read /boot from a {fstype} filesystem"))),
    })
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::path::Path;

    use super::super::test_util::target;
    use super::*;

    #[test]
    fn target_checks_name_the_problem() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let disk = root.join("disk.img");
        File::create(&disk).unwrap().set_len(1 << 20).unwrap();
        let t = target(root, &disk, None);
        check_target(&t, Firmware::Bios).unwrap();
        let e = check_target(&t, Firmware::Uefi).unwrap_err().to_string();
        assert!(e.contains("EFI system partition") && e.contains("disk.img"), "{e}");
        let gpt = GrubTarget { label: Label::Gpt, ..t.clone() };
        let e = check_target(&gpt, Firmware::Bios).unwrap_err().to_string();
        assert!(e.contains("bios-boot") && e.contains(BIOS_BOOT_GUID), "{e}");
        let missing = root.join("nope");
        let e = check_target(&GrubTarget { disk: &missing, ..t.clone() }, Firmware::Bios).unwrap_err();
        assert!(matches!(e, DiskError::NoSuchDisk { .. }), "{e}");
        let e = check_target(&GrubTarget { boot_fstype: "swap", ..t.clone() }, Firmware::Bios).unwrap_err();
        assert!(e.to_string().contains("swap"), "{e}");
        let dotted = Path::new("boot/../../etc");
        let e = check_target(&GrubTarget { esp: Some(dotted), ..t.clone() }, Firmware::Uefi).unwrap_err();
        assert!(e.to_string().contains(".."), "{e}");
        let noesp = Path::new("/boot/efi");
        let e = check_target(&GrubTarget { esp: Some(noesp), ..t }, Firmware::Uefi).unwrap_err();
        assert!(e.to_string().contains("boot/efi does not exist"), "{e}");
    }
}
