//! Making a node's filesystems, keeping the golden node's UUID and label.
//!
//! ka-deploy recreated each filesystem by type from the golden fstab and lost
//! its UUID, so every clone needed its fstab and grub.cfg rewritten. kacast
//! gives each new filesystem the golden one's UUID and label by default: the
//! clone's fstab, grub.cfg and initramfs stay valid as extracted. With
//! `--new-uuids` the caller passes fresh values from [`new_uuid`] instead.
//!
//! [`check`] validates everything it can before anything is written (so a bad
//! plan is refused on every node before the first disk is touched); [`make`]
//! checks again and runs the type's mkfs tool.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use super::error::{DiskError, Result};
use super::tool;

/// The filesystem types kacast can make, as blkid names them (`TYPE=`).
pub const SUPPORTED: &[&str] = &["ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "swap", "jfs", "reiserfs"];

/// jfs's mkfs cannot set a UUID; jfs_tune sets it right after.
const JFS_TUNE: &str = "jfs_tune";

/// Smallest vfat filesystem made as FAT32, per 512 bytes of logical sector.
/// FAT32 needs at least 65525 clusters (with fewer, the FAT specification and
/// every driver read the volume as FAT16); mkfs.fat 4.2 uses one sector per
/// cluster at that size, so with 512-byte sectors the data area needs 32 MiB
/// plus 2 FATs and reserved sectors. Measured: 33280 KiB is still short
/// ("less than suggested minimum"), 33344 KiB is enough; 33 MiB leaves a
/// margin. With 4096-byte sectors everything is 8 times larger.
const FAT32_MIN_BYTES_PER_512: u64 = 33 << 20;

/// Sector size assumed when the device does not say (an image file).
const DEFAULT_SECTOR: u64 = 512;

/// The mkfs tool making `fstype`, `None` for a type kacast cannot make.
pub fn tool(fstype: &str) -> Option<&'static str> {
    Some(match fstype {
        "ext2" => "mkfs.ext2",
        "ext3" => "mkfs.ext3",
        "ext4" => "mkfs.ext4",
        "xfs" => "mkfs.xfs",
        "btrfs" => "mkfs.btrfs",
        "vfat" => "mkfs.vfat",
        "swap" => "mkswap",
        "jfs" => "mkfs.jfs",
        "reiserfs" => "mkreiserfs",
        _ => return None,
    })
}

/// The longest label each type stores, in bytes (vfat: characters, each one
/// byte in the DOS code page). Longer labels are truncated or refused by the
/// tools, and a truncated label no longer matches the clone's fstab `LABEL=`.
fn label_max(fstype: &str) -> usize {
    match fstype {
        "xfs" => 12,
        "vfat" => 11,
        "swap" => 15,
        "btrfs" => 255,
        // ext2/3/4, jfs and reiserfs keep 16 bytes.
        _ => 16,
    }
}

/// Characters a FAT volume label may not contain (mkfs.fat refuses them).
const FAT_LABEL_FORBIDDEN: &str = "*?.,;:/\\|+=<>[]\"";

/// Everything that can be checked before writing: the type is supported, the
/// UUID has that type's syntax, the label fits, and the tools are installed.
/// Syntax comes first so a bad plan is reported the same way on every node,
/// whatever it has installed.
pub fn check(fstype: &str, uuid: Option<&str>, label: Option<&str>) -> Result<()> {
    check_syntax(fstype, uuid, label)?;
    let mkfs = tool(fstype).expect("check_syntax accepted a supported type");
    tool::require(mkfs, &format!("make {fstype} filesystems"))?;
    if fstype == "jfs" && uuid.is_some() {
        tool::require(JFS_TUNE, "set the UUID of jfs filesystems")?;
    }
    Ok(())
}

/// [`check`] without looking for the tools.
fn check_syntax(fstype: &str, uuid: Option<&str>, label: Option<&str>) -> Result<()> {
    if tool(fstype).is_none() {
        return Err(DiskError::Plan(format!(
            "filesystem type '{fstype}' is not supported (kacast can make {})",
            SUPPORTED.join(", ")
        )));
    }
    if let Some(uuid) = uuid {
        check_uuid(fstype, uuid)?;
    }
    if let Some(label) = label.filter(|l| !l.is_empty()) {
        check_label(fstype, label)?;
    }
    Ok(())
}

fn check_uuid(fstype: &str, uuid: &str) -> Result<()> {
    let (ok, form) = if fstype == "vfat" {
        (hex_groups(uuid, &[4, 4]), "a volume serial XXXX-XXXX (8 hex digits)")
    } else {
        (hex_groups(uuid, &[8, 4, 4, 4, 12]), "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (hex digits)")
    };
    if ok {
        Ok(())
    } else {
        Err(DiskError::Plan(format!("UUID '{uuid}' is not valid for {fstype}: expected {form}")))
    }
}

/// Whether `s` is dash-separated groups of hex digits of the given lengths.
fn hex_groups(s: &str, lens: &[usize]) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == lens.len()
        && groups.iter().zip(lens).all(|(g, &n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn check_label(fstype: &str, label: &str) -> Result<()> {
    let max = label_max(fstype);
    let (len, unit) =
        if fstype == "vfat" { (label.chars().count(), "characters") } else { (label.len(), "bytes") };
    if len > max {
        return Err(DiskError::Plan(format!(
            "label '{label}' is too long for {fstype}: {len} {unit}, at most {max}"
        )));
    }
    if fstype == "vfat" {
        if let Some(c) = label.chars().find(|c| FAT_LABEL_FORBIDDEN.contains(*c) || c.is_control()) {
            return Err(DiskError::Plan(format!("label '{label}' is not valid for vfat: it contains {c:?}")));
        }
    }
    Ok(())
}

/// Makes a `fstype` filesystem on `device` with the given UUID and label (the
/// tool's own random UUID and no label when `None`). Old signatures are wiped
/// first (when wipefs is installed): a stale superblock left at another offset
/// makes blkid, and so mounting by UUID, ambiguous.
pub fn make(device: &Path, fstype: &str, uuid: Option<&str>, label: Option<&str>) -> Result<()> {
    check(fstype, uuid, label)?;
    let label = label.filter(|l| !l.is_empty());
    let dev = device
        .to_str()
        .ok_or_else(|| DiskError::Other(format!("{}: device path is not valid UTF-8", device.display())))?;
    if tool::exists("wipefs") {
        tool::run("wipefs", &["-a", "-q", dev], dev, None)?;
    }
    let mkfs = tool(fstype).expect("checked above");
    let args = mkfs_args(fstype, uuid, label, vfat_fat32(device, fstype)?, dev);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tool::run(mkfs, &args, dev, None)?;
    if let (Some(uuid), "jfs") = (uuid, fstype) {
        tool::run(JFS_TUNE, &["-U", uuid, dev], dev, None)?;
    }
    Ok(())
}

/// The arguments of `fstype`'s tool: force (the partition may hold anything
/// from an earlier deployment), quiet where the tool has it, UUID and label.
fn mkfs_args(fstype: &str, uuid: Option<&str>, label: Option<&str>, fat32: bool, dev: &str) -> Vec<String> {
    // (fixed flags, UUID flag, label flag); jfs's UUID is set by jfs_tune.
    let (fixed, uuid_flag, label_flag): (&[&str], Option<&str>, &str) = match fstype {
        "ext2" | "ext3" | "ext4" => (&["-F", "-q"], Some("-U"), "-L"),
        "xfs" => (&["-f", "-q"], Some("-m"), "-L"),
        "btrfs" => (&["-f", "-q"], Some("-U"), "-L"),
        // -I: the caller chose this device; mkfs.fat would otherwise refuse a
        // whole (unpartitioned) device. It has no quiet flag.
        "vfat" if fat32 => (&["-I", "-F", "32"], Some("-i"), "-n"),
        "vfat" => (&["-I"], Some("-i"), "-n"),
        "swap" => (&["-f"], Some("-U"), "-L"),
        "jfs" => (&["-q"], None, "-L"),
        // -f twice: no confirmation question even on a whole disk.
        "reiserfs" => (&["-f", "-f", "-q"], Some("-u"), "-l"),
        _ => unreachable!("check() refuses unsupported types"),
    };
    let mut args: Vec<String> = fixed.iter().map(|s| s.to_string()).collect();
    if let (Some(flag), Some(uuid)) = (uuid_flag, uuid) {
        let value = match fstype {
            "xfs" => format!("uuid={uuid}"),
            // mkfs.fat takes the serial as one 32-bit hex number.
            "vfat" => uuid.replace('-', "").to_ascii_uppercase(),
            _ => uuid.to_string(),
        };
        args.extend([flag.to_string(), value]);
    }
    if let Some(label) = label {
        args.extend([label_flag.to_string(), label.to_string()]);
    }
    args.push(dev.to_string());
    args
}

/// Whether a vfat filesystem on `device` should be FAT32: always when the
/// device is large enough (the UEFI specification asks FAT32 for a fixed
/// disk's ESP), else mkfs.fat's own choice of FAT12/16.
fn vfat_fat32(device: &Path, fstype: &str) -> Result<bool> {
    if fstype != "vfat" {
        return Ok(false);
    }
    let (bytes, sector) = size_and_sector(device)?;
    Ok(bytes >= FAT32_MIN_BYTES_PER_512 * (sector / DEFAULT_SECTOR).max(1))
}

/// Size in bytes and logical sector size of a block device or image file.
fn size_and_sector(device: &Path) -> Result<(u64, u64)> {
    let what = || format!("{}: cannot read its size", device.display());
    let mut f = File::open(device).map_err(|e| DiskError::io(what(), e))?;
    let bytes = f.seek(SeekFrom::End(0)).map_err(|e| DiskError::io(what(), e))?;
    let is_block = f.metadata().map(|m| m.file_type().is_block_device()).unwrap_or(false);
    let mut sector: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int into `sector`, which outlives the call.
    let ok = is_block && unsafe { libc::ioctl(f.as_raw_fd(), libc::BLKSSZGET, &mut sector) } == 0;
    Ok((bytes, if ok && sector > 0 { sector as u64 } else { DEFAULT_SECTOR }))
}

/// A fresh UUID for a new `fstype` filesystem: a random (version 4) UUID in
/// lower case, or for vfat a random volume serial `ABCD-1234` in upper case as
/// blkid shows it.
pub fn new_uuid(fstype: &str) -> String {
    let mut b = [0u8; 16];
    random_bytes(&mut b);
    if fstype == "vfat" {
        return format!("{:02X}{:02X}-{:02X}{:02X}", b[0], b[1], b[2], b[3]);
    }
    // RFC 4122 §4.4: version 4 in the high nibble of byte 6, variant 10xx in byte 8.
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// Fills `buf` from the kernel's random source.
fn random_bytes(buf: &mut [u8]) {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: writes at most the remaining length into our buffer.
        let r = unsafe { libc::getrandom(buf[got..].as_mut_ptr().cast(), buf.len() - got, 0) };
        if r > 0 {
            got += r as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            panic!("getrandom failed: {}", std::io::Error::last_os_error());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_type_has_a_tool() {
        for t in SUPPORTED {
            assert!(tool(t).is_some(), "{t}");
        }
        assert_eq!(tool("ext4"), Some("mkfs.ext4"));
        assert_eq!(tool("swap"), Some("mkswap"));
        assert_eq!(tool("reiserfs"), Some("mkreiserfs"));
        assert_eq!(tool("ntfs"), None);
    }

    #[test]
    fn new_uuids_have_their_type_syntax_and_differ() {
        for t in SUPPORTED {
            let (a, b) = (new_uuid(t), new_uuid(t));
            assert_ne!(a, b, "{t}");
            check_syntax(t, Some(&a), None).unwrap_or_else(|e| panic!("{t}: {a}: {e}"));
        }
        let u = new_uuid("ext4");
        assert_eq!(u, u.to_lowercase());
        assert_eq!(&u[14..15], "4", "version 4: {u}");
        assert!("89ab".contains(&u[19..20]), "RFC 4122 variant: {u}");
        let s = new_uuid("vfat");
        assert_eq!(s.len(), 9);
        assert_eq!(s, s.to_uppercase());
    }

    #[test]
    fn bad_type_uuid_and_label_are_named() {
        let e = check_syntax("ntfs", None, None).unwrap_err().to_string();
        assert!(e.contains("'ntfs'") && e.contains("ext4, xfs"), "{e}");

        let e = check_syntax("ext4", Some("1234-5678"), None).unwrap_err().to_string();
        assert!(e.contains("UUID '1234-5678'") && e.contains("ext4"), "{e}");
        let e = check_syntax("vfat", Some("0c8a2f4e-2b7e-4c1a-9f0e-1d2c3b4a5f60"), None).unwrap_err();
        assert!(e.to_string().contains("XXXX-XXXX"), "{e}");
        assert!(check_syntax("xfs", Some("0c8a2f4e-2b7e-4c1a-9f0e-1d2c3b4a5g60"), None).is_err());
        assert!(check_syntax("vfat", Some("abcd-12EF"), None).is_ok());

        let e = check_syntax("xfs", None, Some("thirteen-char")).unwrap_err().to_string();
        assert!(e.contains("'thirteen-char'") && e.contains("13 bytes, at most 12"), "{e}");
        assert!(check_syntax("xfs", None, Some("twelve-chars")).is_ok());
        assert!(check_syntax("ext4", None, Some("sixteen-bytes-ok")).is_ok());
        assert!(check_syntax("ext4", None, Some("seventeen-bytes-x")).is_err());
        assert!(check_syntax("swap", None, Some("sixteen-bytes-no")).is_err());
        assert!(check_syntax("btrfs", None, Some(&"b".repeat(255))).is_ok());
        assert!(check_syntax("btrfs", None, Some(&"b".repeat(256))).is_err());
        let e = check_syntax("vfat", None, Some("EFI:SYS")).unwrap_err().to_string();
        assert!(e.contains("':'"), "{e}");
        // Empty means no label.
        assert!(check_syntax("vfat", None, Some("")).is_ok());
    }

    #[test]
    fn tool_arguments_per_type() {
        let uuid = "0c8a2f4e-2b7e-4c1a-9f0e-1d2c3b4a5f60";
        let u = Some(uuid);
        let j = |t, u, l, fat32| mkfs_args(t, u, l, fat32, "/dev/x").join(" ");
        assert_eq!(j("ext4", u, Some("root"), false), format!("-F -q -U {uuid} -L root /dev/x"));
        assert_eq!(j("xfs", u, None, false), format!("-f -q -m uuid={uuid} /dev/x"));
        assert_eq!(j("vfat", Some("abcd-1234"), Some("ESP"), true), "-I -F 32 -i ABCD1234 -n ESP /dev/x");
        assert_eq!(j("vfat", None, None, false), "-I /dev/x");
        assert_eq!(j("swap", u, Some("sw"), false), format!("-f -U {uuid} -L sw /dev/x"));
        assert_eq!(j("jfs", u, Some("j"), false), "-q -L j /dev/x");
        assert_eq!(j("reiserfs", u, None, false), format!("-f -f -q -u {uuid} /dev/x"));
    }

    #[test]
    fn fat32_only_when_large_enough() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        let f = File::create(&img).unwrap();
        f.set_len(32 << 20).unwrap();
        assert!(!vfat_fat32(&img, "vfat").unwrap());
        f.set_len(33 << 20).unwrap();
        assert!(vfat_fat32(&img, "vfat").unwrap());
        assert!(!vfat_fat32(&img, "ext4").unwrap());
    }
}
