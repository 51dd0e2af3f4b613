//! GRUB for UEFI by hand: an image with the early config built from this
//! host's files and put at the ESP's removable-media path, which firmware
//! boots without an NVRAM entry; into the mounted ESP, or with mtools into
//! an ESP partition that is not mounted.

use std::fs;
use std::path::Path;

use super::bios::read_at;
use super::check::fs_module;
use super::host_grub::{prefix, prepare_grub_dir, HostGrub};
use super::{resolve_esp, Firmware, GrubTarget};
use crate::disk::error::{DiskError, Result};
use crate::disk::tool;

/// The removable-media path firmware boots when it has no NVRAM entry for
/// the disk (UEFI spec 3.5.1.1, x64).
const EFI_REMOVABLE: &str = "EFI/BOOT/BOOTX64.EFI";

/// UEFI modules linked into the image: both partition tables, every
/// filesystem /boot is commonly on, the UUID search, and `normal` and
/// `linux`, so the image boots even when the prefix's modules are unreadable
/// (the size of an ESP file does not matter).
const UEFI_MODULES: &[&str] =
    &["part_gpt", "part_msdos", "fat", "ext2", "xfs", "btrfs", "search_fs_uuid", "normal", "linux"];

/// The UEFI image's modules: [`UEFI_MODULES`] and the /boot filesystem's.
fn uefi_modules(t: &GrubTarget) -> Result<Vec<&'static str>> {
    let fs_mod = fs_module(t.boot_fstype)?;
    let mut modules = UEFI_MODULES.to_vec();
    if !modules.contains(&fs_mod) {
        modules.push(fs_mod);
    }
    Ok(modules)
}

/// A PE/COFF image starts with the DOS header magic.
const PE_MAGIC: &[u8] = b"MZ";

/// GRUB for UEFI from the host's files: modules in the clone's
/// /boot/grub/x86_64-efi, the image with the early config at the ESP's
/// removable-media path (replacing whatever loader was there). Unsigned: a
/// node with Secure Boot enabled refuses it.
pub(super) fn uefi_by_hand(t: &GrubTarget, reason: &str) -> Result<Vec<String>> {
    let Some(esp) = t.esp else {
        return uefi_into_device(t, t.esp_device.expect("checked by check_target"), reason);
    };
    let esp = resolve_esp(t.root, esp);
    let host = HostGrub::find(Firmware::Uefi, t.disk)?;
    let (dir, copied) = prepare_grub_dir(t, &host)?;
    let modules = uefi_modules(t)?;
    let target = esp.join(EFI_REMOVABLE);
    let parent = target.parent().expect("EFI_REMOVABLE has a directory");
    fs::create_dir_all(parent).map_err(|e| DiskError::io(format!("creating {}", parent.display()), e))?;
    // Built aside and renamed: a failed build leaves the old loader in place.
    let fresh = parent.join("BOOTX64.EFI.kacast");
    host.mkimage(&dir.join("load.cfg"), prefix(t), &modules, &fresh)?;
    if !read_at(&fresh, 0, PE_MAGIC.len())?.starts_with(PE_MAGIC) {
        return Err(DiskError::Other(format!("{}: grub-mkimage did not make a PE image", fresh.display())));
    }
    fs::rename(&fresh, &target)
        .map_err(|e| DiskError::io(format!("renaming {} to {}", fresh.display(), target.display()), e))?;
    Ok(vec![
        format!(
            "grub x86_64-efi image written to {} (removable-media path, no NVRAM entry needed; by hand: {reason})",
            target.display()
        ),
        format!(
            "{copied} GRUB x86_64-efi files copied to {}; /boot found by search.fs_uuid {} with prefix {}",
            dir.display(),
            t.boot_fs_uuid,
            prefix(t)
        ),
    ])
}

/// As [`uefi_by_hand`], for an ESP that is not mounted: the image is built
/// in the clone's /boot/grub and copied into the FAT partition with mtools.
fn uefi_into_device(t: &GrubTarget, dev: &Path, reason: &str) -> Result<Vec<String>> {
    tool::require("mcopy", "write the UEFI loader into an unmounted ESP")?;
    let host = HostGrub::find(Firmware::Uefi, t.disk)?;
    let (dir, copied) = prepare_grub_dir(t, &host)?;
    let image = dir.join("BOOTX64.EFI");
    host.mkimage(&dir.join("load.cfg"), prefix(t), &uefi_modules(t)?, &image)?;
    if !read_at(&image, 0, PE_MAGIC.len())?.starts_with(PE_MAGIC) {
        return Err(DiskError::Other(format!("{}: grub-mkimage did not make a PE image", image.display())));
    }
    let target = dev.display().to_string();
    let mtool = |program: &str, args: &[&str]| {
        let mut cmd = std::process::Command::new(program);
        // Loop devices and partitions answer no geometry; the check is for floppies.
        cmd.env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(dev).args(args);
        tool::run_command(cmd, program, &target, None)
    };
    for dir in ["::/EFI", "::/EFI/BOOT"] {
        if mtool("mdir", &["-b", dir]).is_err() {
            mtool("mmd", &[dir])?;
        }
    }
    let dest = format!("::/{EFI_REMOVABLE}");
    mtool("mcopy", &["-o", &image.to_string_lossy(), &dest])?;
    let _ = fs::remove_file(&image);
    Ok(vec![
        format!("grub x86_64-efi image written to {dest} on {target} with mtools (by hand: {reason})"),
        format!("{copied} GRUB x86_64-efi files copied to {}", dir.display()),
    ])
}
