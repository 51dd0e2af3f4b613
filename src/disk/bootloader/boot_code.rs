//! GRUB's BIOS boot code: boot.img, which goes into the MBR, and the
//! blocklist ending core.img's first sector. Both are recognised and patched
//! at the offsets GRUB 2's sources give, after checking that each field holds
//! the value GRUB's build puts there, as grub-bios-setup does (without
//! Reed-Solomon codes).

use crate::disk::error::{DiskError, Result};

/// The one sector size BIOS boot code knows (GRUB_DISK_SECTOR_SIZE).
pub(super) const SECTOR: u64 = 512;

/// Bytes of boot code in an MBR: the 32-bit disk signature (0x1b8, GRUB's
/// `GRUB_BOOT_MACHINE_WINDOWS_NT_MAGIC`) and the partition table follow.
pub(super) const BOOT_CODE_END: usize = 0x1b8;

/// The string boot.img prints before loading core.img (boot.S
/// `notification_string`), the mark of GRUB's boot code.
const GRUB_MARK: &[u8] = b"GRUB";

/// Whether an MBR's boot code is GRUB's boot.img.
pub fn has_grub_boot_code(mbr: &[u8]) -> bool {
    mbr[..mbr.len().min(BOOT_CODE_END)].windows(GRUB_MARK.len()).any(|w| w == GRUB_MARK)
}

/// Offsets in boot.img (include/grub/i386/pc/boot.h).
mod boot_img {
    /// GRUB_BOOT_MACHINE_BPB_START..BPB_END: a FAT BIOS parameter block's
    /// room; grub-bios-setup keeps the disk's bytes there.
    pub const BPB: std::ops::Range<usize> = 0x03..0x5a;
    /// GRUB_BOOT_MACHINE_KERNEL_SECTOR: u64 LE, the disk sector of core.img's
    /// first sector (boot.S `kernel_sector`, built as 1).
    pub const KERNEL_SECTOR: usize = 0x5c;
    pub const KERNEL_SECTOR_BUILT: u64 = 1;
    /// GRUB_BOOT_MACHINE_BOOT_DRIVE: 0xff = the drive the BIOS booted from.
    pub const BOOT_DRIVE: usize = 0x64;
    pub const BOOT_DRIVE_FROM_BIOS: u8 = 0xff;
    /// GRUB_BOOT_MACHINE_DRIVE_CHECK: a 2-byte short jmp (0xeb) skipping the
    /// workaround for BIOSes that pass a floppy number in %dl when booting a
    /// hard disk; grub-bios-setup turns it into two nops for hard disks.
    pub const DRIVE_CHECK: usize = 0x66;
    pub const SHORT_JMP: u8 = 0xeb;
    pub const NOP: u8 = 0x90;
}

/// The blocklist ending core.img's first sector (diskboot.img), telling it
/// which sectors hold the rest of core.img (grub-core/boot/i386/pc/diskboot.S
/// `firstlist`; struct grub_pc_bios_boot_blocklist, packed).
mod blocklist {
    /// GRUB_BOOT_MACHINE_LIST_SIZE: start u64, len u16, segment u16.
    pub const SIZE: usize = 12;
    /// The first entry ends the sector; further entries (and the
    /// terminator, len 0) grow downwards from it.
    pub const FIRST: usize = 0x200 - SIZE;
    pub const START: usize = 0;
    pub const LEN: usize = 8;
    pub const SEGMENT: usize = 10;
    /// diskboot.S default start: sector 2, core.img right after the MBR.
    pub const START_BUILT: u64 = 2;
    /// Where the sectors after diskboot's load (GRUB_BOOT_I386_PC_KERNEL_SEG
    /// 0x800 + 0x20: 0x8200, right after diskboot itself at 0x8000).
    pub const SEGMENT_BUILT: u16 = 0x820;
}

/// Pads `img` with zeros to whole sectors and returns their number.
pub(super) fn pad_to_sectors(img: &mut Vec<u8>) -> u64 {
    let sectors = (img.len() as u64).div_ceil(SECTOR);
    img.resize((sectors * SECTOR) as usize, 0);
    sectors
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Points core.img's blocklist at its own sectors once written at sector
/// `at`: the rest of core.img (after diskboot's sector) is one contiguous run
/// from `at + 1`, followed by a terminator, as grub-bios-setup writes it
/// (without Reed-Solomon codes, like `grub-install --no-rs-codes`).
pub(super) fn patch_core(core: &mut [u8], at: u64) -> Result<()> {
    use blocklist::*;
    let rest = (core.len() as u64 / SECTOR) - 1;
    let first = &core[FIRST..FIRST + SIZE];
    let built = (u64_at(first, START), u64::from(u16_at(first, LEN)), u16_at(first, SEGMENT));
    if built != (START_BUILT, rest, SEGMENT_BUILT) {
        return Err(DiskError::Other(format!(
            "core.img from grub-mkimage has an unknown blocklist (start {}, {} sectors, segment {:#x}; \
             expected {START_BUILT}, {rest}, {SEGMENT_BUILT:#x}): not GRUB 2's diskboot layout",
            built.0, built.1, built.2
        )));
    }
    core[FIRST + START..FIRST + START + 8].copy_from_slice(&(at + 1).to_le_bytes());
    core[FIRST - SIZE..FIRST].fill(0);
    Ok(())
}

/// boot.img made ready for this disk, as grub-bios-setup does: the disk's
/// own BPB bytes kept, core.img's sector set, the boot drive taken from the
/// BIOS, the floppy/hard-disk workaround enabled; the bytes from 440 on are
/// the disk's own.
pub(super) fn patch_boot(boot: &[u8], old_mbr: &[u8], at: u64) -> Result<Vec<u8>> {
    use boot_img::*;
    let known = boot.len() == SECTOR as usize
        && u64_at(boot, KERNEL_SECTOR) == KERNEL_SECTOR_BUILT
        && boot[BOOT_DRIVE] == BOOT_DRIVE_FROM_BIOS
        && boot[DRIVE_CHECK] == SHORT_JMP
        && has_grub_boot_code(boot);
    if !known {
        return Err(DiskError::Other(
            "boot.img of this host's GRUB does not have GRUB 2's layout (kernel sector at 0x5c, \
             boot drive at 0x64, drive check at 0x66): refusing to patch it"
                .into(),
        ));
    }
    let mut mbr = old_mbr.to_vec();
    mbr[..BOOT_CODE_END].copy_from_slice(&boot[..BOOT_CODE_END]);
    mbr[BPB].copy_from_slice(&old_mbr[BPB]);
    mbr[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&at.to_le_bytes());
    mbr[BOOT_DRIVE] = BOOT_DRIVE_FROM_BIOS;
    mbr[DRIVE_CHECK..DRIVE_CHECK + 2].fill(NOP);
    Ok(mbr)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use super::super::host_grub::HostGrub;
    use super::*;
    use crate::disk::tool;

    /// A boot.img with GRUB 2's fields as built, whatever else it holds.
    fn fake_boot_img() -> Vec<u8> {
        let mut b = vec![0x11u8; 512];
        b[0x180..0x185].copy_from_slice(b"GRUB ");
        b[0x5c..0x64].copy_from_slice(&1u64.to_le_bytes());
        b[0x64] = 0xff;
        b[0x66] = 0xeb;
        b
    }

    #[test]
    fn grub_boot_code_is_recognised_in_the_first_440_bytes_only() {
        assert!(has_grub_boot_code(&fake_boot_img()));
        assert!(!has_grub_boot_code(&[0u8; 512]));
        let mut late = vec![0u8; 512];
        late[450..454].copy_from_slice(b"GRUB");
        assert!(!has_grub_boot_code(&late));
        if let Ok(real) = fs::read("/usr/lib/grub/i386-pc/boot.img") {
            assert!(has_grub_boot_code(&real));
        }
    }

    #[test]
    fn boot_img_gets_core_sector_and_keeps_the_disk_bytes() {
        let mut old = vec![0u8; 512];
        old[0x10] = 0x42; // a BPB byte
        for (i, b) in old[440..].iter_mut().enumerate() {
            *b = i as u8 ^ 0x5a;
        }
        let mbr = patch_boot(&fake_boot_img(), &old, 2048).unwrap();
        assert_eq!(mbr[440..], old[440..]);
        assert_eq!(mbr[0x10], 0x42);
        assert_eq!(u64_at(&mbr, 0x5c), 2048);
        assert_eq!(mbr[0x64], 0xff);
        assert_eq!(mbr[0x66..0x68], [0x90, 0x90]);
        assert_eq!(mbr[0x180..0x185], *b"GRUB ");

        let mut other = fake_boot_img();
        other[0x5c] = 7;
        let e = patch_boot(&other, &old, 1).unwrap_err().to_string();
        assert!(e.contains("boot.img") && e.contains("0x5c"), "{e}");
    }

    #[test]
    fn core_blocklist_points_at_its_sectors() {
        // 0x33 everywhere else, also where the terminator must go.
        let mut core = vec![0x33u8; 3 * 512];
        core[0x1f4..0x1fc].copy_from_slice(&2u64.to_le_bytes());
        core[0x1fc..0x1fe].copy_from_slice(&2u16.to_le_bytes());
        core[0x1fe..0x200].copy_from_slice(&0x820u16.to_le_bytes());
        let mut at_2048 = core.clone();
        patch_core(&mut at_2048, 2048).unwrap();
        assert_eq!(u64_at(&at_2048, 0x1f4), 2049);
        assert_eq!(u16_at(&at_2048, 0x1fc), 2);
        assert_eq!(u16_at(&at_2048, 0x1fe), 0x820);
        assert!(at_2048[0x1e8..0x1f4].iter().all(|&b| b == 0));
        assert_eq!(at_2048[..0x1e8], core[..0x1e8]);
        assert_eq!(at_2048[512..], core[512..]);

        // A length that does not match the image: not GRUB's layout.
        let mut odd = vec![0x33u8; 4 * 512];
        odd[..512].copy_from_slice(&core[..512]);
        let e = patch_core(&mut odd, 1).unwrap_err().to_string();
        assert!(e.contains("blocklist") && e.contains("expected 2, 3"), "{e}");
    }

    #[test]
    fn real_core_img_has_the_known_blocklist() {
        let dir = Path::new("/usr/lib/grub/i386-pc");
        if !tool::exists("grub-mkimage") || !dir.is_dir() {
            return crate::testing::skip(&format!("grub-mkimage or {} missing", dir.display()));
        }
        let tmp = tempfile::tempdir().unwrap();
        let (cfg, out) = (tmp.path().join("load.cfg"), tmp.path().join("core.img"));
        fs::write(&cfg, "search.fs_uuid 1234 root\n").unwrap();
        let host = HostGrub { mkimage: "grub-mkimage", dir: dir.into(), platform: "i386-pc" };
        host.mkimage(&cfg, "/boot/grub", &["biosdisk", "part_msdos", "ext2", "search_fs_uuid"], &out)
            .unwrap();
        let mut core = fs::read(&out).unwrap();
        let sectors = pad_to_sectors(&mut core);
        assert!(sectors > 10, "{sectors}");
        patch_core(&mut core, 1).unwrap();
        assert_eq!(u64_at(&core, 0x1f4), 2);
        assert_eq!(u64::from(u16_at(&core, 0x1fc)), sectors - 1);
    }
}
