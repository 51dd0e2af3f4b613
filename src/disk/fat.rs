//! The volume serial of a FAT filesystem: what `UUID=ABCD-1234` in fstab
//! names. A FAT filesystem travels as a raw image (see [`super::plan`]), so
//! `--new-uuids` changes its serial in place rather than by formatting.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::error::{DiskError, Result};

/// Boot sector fields (Microsoft's FAT specification): the 16-bit
/// sectors-per-FAT count is 0 on FAT32, whose extended BPB is longer, so the
/// serial sits at 0x43 there and at 0x27 on FAT12/16. FAT32 also keeps a
/// backup boot sector (its sector number at 0x32) that must agree.
const FAT16_SECTORS_PER_FAT: usize = 0x16;
const SERIAL_FAT16: usize = 0x27;
const SERIAL_FAT32: usize = 0x43;
const BACKUP_BOOT_SECTOR: usize = 0x32;
const BYTES_PER_SECTOR: usize = 0x0b;

/// Parses `ABCD-1234` (blkid's spelling of a FAT serial).
pub fn parse_serial(s: &str) -> Option<u32> {
    let (hi, lo) = s.split_once('-')?;
    if hi.len() != 4 || lo.len() != 4 {
        return None;
    }
    Some(u32::from_str_radix(hi, 16).ok()? << 16 | u32::from_str_radix(lo, 16).ok()?)
}

/// Writes `serial` into the FAT filesystem on `dev`.
pub fn set_serial(dev: &Path, serial: &str) -> Result<()> {
    let value = parse_serial(serial)
        .ok_or_else(|| DiskError::Other(format!("'{serial}' is not a FAT volume serial (XXXX-XXXX)")))?;
    let what = || format!("FAT serial of {}", dev.display());
    let f = OpenOptions::new().read(true).write(true).open(dev).map_err(|e| DiskError::io(what(), e))?;
    let mut boot = [0u8; 512];
    f.read_exact_at(&mut boot, 0).map_err(|e| DiskError::io(what(), e))?;
    if boot[510..512] != [0x55, 0xaa] {
        return Err(DiskError::Other(format!("{} has no FAT boot sector", dev.display())));
    }
    let fat32 = u16::from_le_bytes([boot[FAT16_SECTORS_PER_FAT], boot[FAT16_SECTORS_PER_FAT + 1]]) == 0;
    let at = if fat32 { SERIAL_FAT32 } else { SERIAL_FAT16 };
    let bytes = value.to_le_bytes();
    f.write_all_at(&bytes, at as u64).map_err(|e| DiskError::io(what(), e))?;
    if fat32 {
        let backup = u16::from_le_bytes([boot[BACKUP_BOOT_SECTOR], boot[BACKUP_BOOT_SECTOR + 1]]) as u64;
        let sector = u16::from_le_bytes([boot[BYTES_PER_SECTOR], boot[BYTES_PER_SECTOR + 1]]) as u64;
        if backup != 0 && backup != 0xffff {
            f.write_all_at(&bytes, backup * sector + at as u64).map_err(|e| DiskError::io(what(), e))?;
        }
    }
    f.sync_all().map_err(|e| DiskError::io(what(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_parse_like_blkid_prints_them() {
        assert_eq!(parse_serial("ABCD-1234"), Some(0xabcd_1234));
        assert_eq!(parse_serial("abcd-0001"), Some(0xabcd_0001));
        assert_eq!(parse_serial("ABCD1234"), None);
        assert_eq!(parse_serial("ABC-12345"), None);
        assert_eq!(parse_serial("WXYZ-1234"), None);
    }

    #[test]
    fn the_serial_blkid_reads_is_the_one_written() {
        for (size, extra) in [("40M", &[][..]), ("300M", &["-F", "32"][..])] {
            let dir = tempfile::tempdir().unwrap();
            let img = dir.path().join("fat.img");
            std::fs::File::create(&img).unwrap().set_len(crate::size::parse_size(size).unwrap()).unwrap();
            let made = std::process::Command::new("mkfs.vfat").args(extra).arg(&img).output();
            if !made.is_ok_and(|o| o.status.success()) {
                return crate::testing::skip("mkfs.vfat is not installed");
            }
            set_serial(&img, "C0FF-EE42").unwrap();
            let out = std::process::Command::new("blkid")
                .args(["-p", "-s", "UUID", "-o", "value"])
                .arg(&img)
                .output();
            if let Ok(o) = out {
                assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "C0FF-EE42", "{size}");
            }
            let fsck = std::process::Command::new("fsck.vfat").arg("-n").arg(&img).output().unwrap();
            assert!(fsck.status.success(), "{}", String::from_utf8_lossy(&fsck.stdout));
        }
    }
}
