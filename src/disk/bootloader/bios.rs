//! GRUB for BIOS by hand: core.img built from this host's files and
//! embedded after the MBR (MBR label) or in the bios-boot partition (GPT),
//! checked against the disk's own table first, then boot.img written into
//! the MBR's boot code; every write is read back.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::boot_code::{pad_to_sectors, patch_boot, patch_core, BOOT_CODE_END, SECTOR};
use super::check::fs_module;
use super::host_grub::{prefix, prepare_grub_dir, HostGrub};
use super::{Firmware, GrubTarget};
use crate::disk::error::{DiskError, Result};
use crate::disk::Label;

/// An MBR's (and a protective MBR's) last two bytes.
const MBR_SIGNATURE: [u8; 2] = [0x55, 0xaa];

/// GPT's header signature at the start of sector 1.
const GPT_SIGNATURE: &[u8] = b"EFI PART";

/// The GPT partition type of a BIOS boot partition (where GRUB embeds
/// core.img on GPT), and its on-disk bytes (mixed-endian: "Hah!IdontNeedEFI").
pub(super) const BIOS_BOOT_GUID: &str = "21686148-6449-6E6F-744E-656564454649";
const BIOS_BOOT_TYPE_BYTES: &[u8; 16] = b"Hah!IdontNeedEFI";

/// BIOS modules linked into core.img: the disk driver, both partition
/// tables, /boot's filesystem and the UUID search. `normal` and the rest are
/// loaded from the prefix, which keeps core.img small enough for any
/// bios-boot partition (grub-install embeds the same set).
const BIOS_CORE_MODULES: &[&str] = &["biosdisk", "part_msdos", "part_gpt", "search_fs_uuid"];

/// GRUB for BIOS from the host's files. The disk is written only once
/// everything fits; the clone's /boot/grub/i386-pc is refreshed before that,
/// since core.img's size is known only once it is built there.
pub(super) fn bios_by_hand(t: &GrubTarget, reason: &str) -> Result<Vec<String>> {
    let disk = t.disk.display();
    let host = HostGrub::find(Firmware::Bios, t.disk)?;
    let old_mbr = read_at(t.disk, 0, SECTOR as usize)?;
    if old_mbr[510..] != MBR_SIGNATURE {
        return Err(DiskError::Other(format!("{disk} has no partition table (no 0x55AA MBR signature)")));
    }
    let room = embed_room(t, &old_mbr)?;
    let boot = fs::read(host.dir.join("boot.img"))
        .map_err(|e| DiskError::io(format!("reading {}", host.dir.join("boot.img").display()), e))?;

    let (dir, copied) = prepare_grub_dir(t, &host)?;
    let core_path = dir.join("core.img");
    let modules = [BIOS_CORE_MODULES, &[fs_module(t.boot_fstype)?]].concat();
    host.mkimage(&dir.join("load.cfg"), prefix(t), &modules, &core_path)?;
    // Kept unpatched next to the modules, as grub-install leaves them, so
    // grub-bios-setup can be rerun on the node.
    let boot_copy = dir.join("boot.img");
    fs::write(&boot_copy, &boot).map_err(|e| DiskError::io(format!("writing {}", boot_copy.display()), e))?;
    let mut core =
        fs::read(&core_path).map_err(|e| DiskError::io(format!("reading {}", core_path.display()), e))?;

    let sectors = pad_to_sectors(&mut core);
    let (at, max) = room;
    if sectors > max {
        return Err(DiskError::Plan(format!(
            "GRUB's core.img ({sectors} sectors) does not fit in {} of {disk} ({max} sectors)",
            room_name(t)
        )));
    }
    patch_core(&mut core, at)?;
    let mbr = patch_boot(&boot, &old_mbr, at)?;
    // core.img first: the MBR never points at sectors not yet written.
    write_verified(t.disk, at * SECTOR, &core)?;
    write_verified(t.disk, 0, &mbr[..BOOT_CODE_END])?;
    Ok(vec![
        format!(
            "grub i386-pc core.img ({sectors} sectors) embedded at sector {at} of {disk} (by hand: {reason})"
        ),
        format!("GRUB boot.img written to the MBR of {disk} (disk signature and partition table kept)"),
        format!(
            "{copied} GRUB i386-pc files copied to {}; /boot found by search.fs_uuid {} with prefix {}",
            dir.display(),
            t.boot_fs_uuid,
            prefix(t)
        ),
    ])
}

fn room_name(t: &GrubTarget) -> &'static str {
    match t.label {
        Label::Dos => "the gap before the first partition",
        Label::Gpt => "the bios-boot partition",
    }
}

/// Where core.img goes and how many sectors it may take: after the MBR up to
/// the first partition, or the bios-boot partition. Checked against the
/// disk's own table, since writing there destroys whatever is in the way.
fn embed_room(t: &GrubTarget, mbr: &[u8]) -> Result<(u64, u64)> {
    let disk = t.disk.display();
    let sector1 = read_at(t.disk, SECTOR, SECTOR as usize)?;
    let is_gpt = sector1.starts_with(GPT_SIGNATURE);
    match t.label {
        Label::Dos => {
            if is_gpt {
                return Err(DiskError::Other(format!(
                    "{disk} has a GPT, not the MBR table expected: core.img would overwrite it"
                )));
            }
            let first =
                mbr_first_partition(mbr).map_or(t.first_partition_start, |s| s.min(t.first_partition_start));
            Ok((1, first.saturating_sub(1)))
        }
        Label::Gpt => {
            if !is_gpt {
                return Err(DiskError::Other(format!("{disk} has no GPT header in sector 1")));
            }
            let (start, len) = t.bios_boot.expect("checked by check_target");
            let on_disk = gpt_bios_boot_partitions(t.disk, &sector1)?;
            match on_disk.iter().find(|(s, _)| *s == start) {
                Some((_, disk_len)) => Ok((start, len.min(*disk_len))),
                None => Err(DiskError::Other(format!(
                    "{disk} has no bios-boot partition (type {BIOS_BOOT_GUID}) at sector {start}"
                ))),
            }
        }
    }
}

/// MBR partition table: 4 entries of 16 bytes at 0x1be; type at +4, first
/// LBA (u32 LE) at +8.
const MBR_TABLE: usize = 0x1be;
const MBR_ENTRY: usize = 16;

/// The lowest start sector of the MBR's partitions, if any.
fn mbr_first_partition(mbr: &[u8]) -> Option<u64> {
    (0..4)
        .map(|i| &mbr[MBR_TABLE + i * MBR_ENTRY..MBR_TABLE + (i + 1) * MBR_ENTRY])
        .filter(|e| e[4] != 0)
        .map(|e| u64::from(u32::from_le_bytes(e[8..12].try_into().unwrap())))
        .min()
}

/// GPT header fields (UEFI spec 5.3.2): partition entry array LBA (u64 at
/// 72), number of entries (u32 at 80), entry size (u32 at 84). Entries: type
/// GUID at 0, first LBA at 32, last LBA at 40.
fn gpt_bios_boot_partitions(disk: &Path, header: &[u8]) -> Result<Vec<(u64, u64)>> {
    let u32_at = |o: usize| u32::from_le_bytes(header[o..o + 4].try_into().unwrap());
    let array = u64::from_le_bytes(header[72..80].try_into().unwrap());
    let (count, size) = (u32_at(80) as usize, u32_at(84) as usize);
    if !(128..=4096).contains(&size) || count > 4096 {
        return Err(DiskError::Other(format!("{}: implausible GPT header", disk.display())));
    }
    let entries = read_at(disk, array * SECTOR, count * size)?;
    Ok(entries
        .chunks(size)
        .filter(|e| &e[..16] == BIOS_BOOT_TYPE_BYTES)
        .map(|e| {
            let first = u64::from_le_bytes(e[32..40].try_into().unwrap());
            let last = u64::from_le_bytes(e[40..48].try_into().unwrap());
            (first, last + 1 - first)
        })
        .collect())
}

pub(super) fn read_at(disk: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    let what = || format!("reading {} bytes at {offset} of {}", len, disk.display());
    let f = File::open(disk).map_err(|e| DiskError::io(what(), e))?;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).map_err(|e| DiskError::io(what(), e))?;
    Ok(buf)
}

/// Writes `bytes` at `offset` of `disk`, flushes, and reads them back.
fn write_verified(disk: &Path, offset: u64, bytes: &[u8]) -> Result<()> {
    let what = || format!("writing {} bytes at {offset} of {}", bytes.len(), disk.display());
    let f = OpenOptions::new().write(true).open(disk).map_err(|e| DiskError::io(what(), e))?;
    f.write_all_at(bytes, offset).map_err(|e| DiskError::io(what(), e))?;
    f.sync_all().map_err(|e| DiskError::io(what(), e))?;
    if read_at(disk, offset, bytes.len())? != bytes {
        return Err(DiskError::Other(format!("{}: read back differs from what was written", what())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbr_first_partition_is_the_lowest_start() {
        let mut mbr = vec![0u8; 512];
        assert_eq!(mbr_first_partition(&mbr), None);
        for (slot, start, kind) in [(0usize, 4096u32, 0x83u8), (1, 2048, 0x82), (2, 63, 0)] {
            let e = 0x1be + slot * 16;
            mbr[e + 4] = kind;
            mbr[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
        }
        assert_eq!(mbr_first_partition(&mbr), Some(2048));
    }
}
