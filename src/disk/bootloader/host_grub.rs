//! GRUB by hand starts from this host's (stage2's) GRUB files: its
//! grub-mkimage and per-platform module directory ([`HostGrub`]), the
//! modules copied into the clone's /boot/grub, and the early config embedded
//! in every image, which finds /boot by filesystem UUID.

use std::fs;
use std::path::{Path, PathBuf};

use super::{Firmware, GrubTarget, GRUB_LIB_DIRS};
use crate::disk::error::{DiskError, Result};
use crate::disk::tool;

/// The host's GRUB image maker and module directory for one platform.
pub(super) struct HostGrub {
    pub(super) mkimage: &'static str,
    pub(super) dir: PathBuf,
    pub(super) platform: &'static str,
}

impl HostGrub {
    pub(super) fn find(firmware: Firmware, disk: &Path) -> Result<HostGrub> {
        let platform = firmware.platform();
        let mkimage =
            ["grub-mkimage", "grub2-mkimage"].into_iter().find(|m| tool::exists(m)).ok_or_else(|| {
                DiskError::MissingTool {
                    tool: "grub-mkimage".into(),
                    purpose: format!("install GRUB {platform} by hand on {}", disk.display()),
                }
            })?;
        let dir = GRUB_LIB_DIRS
            .iter()
            .map(|d| Path::new(d).join(platform))
            .find(|d| d.join("moddep.lst").is_file())
            .ok_or_else(|| {
                let package = if firmware == Firmware::Bios { "grub-pc-bin" } else { "grub-efi-amd64-bin" };
                DiskError::Other(format!(
                    "GRUB {platform} modules are not installed on this host (/usr/lib/grub/{platform}, \
                     package {package}): cannot install GRUB on {}",
                    disk.display()
                ))
            })?;
        Ok(HostGrub { mkimage, dir, platform })
    }

    /// Builds a GRUB image with `config` embedded and `modules` linked in.
    pub(super) fn mkimage(&self, config: &Path, prefix: &str, modules: &[&str], out: &Path) -> Result<()> {
        let (dir, config, out_s) =
            (self.dir.to_string_lossy(), config.to_string_lossy(), out.to_string_lossy());
        let mut args = vec!["-O", self.platform, "-d", &dir, "-p", prefix, "-c", &config, "-o", &out_s];
        args.extend_from_slice(modules);
        tool::run(self.mkimage, &args, &out_s, None).map(drop)
    }
}

/// GRUB's directory prefix on the filesystem holding /boot.
pub(super) fn prefix(t: &GrubTarget) -> &'static str {
    if t.boot_is_separate {
        "/grub"
    } else {
        "/boot/grub"
    }
}

/// The config embedded in the image, run before anything is read from disk:
/// find /boot by UUID (not by BIOS drive number or partition, which differ
/// between nodes), then load `normal` and grub.cfg from there. The same text
/// grub-install writes to load.cfg.
fn early_config(t: &GrubTarget) -> String {
    format!("search.fs_uuid {} root\nset prefix=($root)'{}'\n", t.boot_fs_uuid, prefix(t))
}

/// File extensions grub-install copies from (and clears in) a platform
/// directory: modules, their lists, efiemu objects, images.
const GRUB_FILE_EXTENSIONS: &[&str] = &["mod", "lst", "o", "img"];

/// Fills the clone's /boot/grub/PLATFORM with the host's modules (those a
/// grub.cfg `insmod`s must match the core image's GRUB version, so old ones
/// are removed first, as grub-install does) and the early config.
pub(super) fn prepare_grub_dir(t: &GrubTarget, host: &HostGrub) -> Result<(PathBuf, usize)> {
    let dir = t.root.join("boot/grub").join(host.platform);
    let io = |what: &str, p: &Path, e| DiskError::io(format!("{what} {}", p.display()), e);
    fs::create_dir_all(&dir).map_err(|e| io("creating", &dir, e))?;
    for old in grub_files(&dir)? {
        fs::remove_file(&old).map_err(|e| io("removing", &old, e))?;
    }
    let mut copied = 0;
    for src in grub_files(&host.dir)? {
        let dst = dir.join(src.file_name().expect("a listed file has a name"));
        fs::copy(&src, &dst).map_err(|e| io("copying GRUB file to", &dst, e))?;
        copied += 1;
    }
    let cfg = dir.join("load.cfg");
    fs::write(&cfg, early_config(t)).map_err(|e| io("writing", &cfg, e))?;
    Ok((dir, copied))
}

/// The GRUB files directly in `dir`.
fn grub_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = fs::read_dir(dir).map_err(|e| DiskError::io(format!("reading {}", dir.display()), e))?;
    Ok(entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| p.extension().is_some_and(|x| GRUB_FILE_EXTENSIONS.iter().any(|g| x == *g)))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::check::{check_uuid, fs_module};
    use super::super::test_util::target;
    use super::*;

    #[test]
    fn early_config_finds_boot_by_uuid() {
        let (root, disk) = (Path::new("/mnt/x"), Path::new("/dev/x"));
        let mut t = target(root, disk, None);
        assert_eq!(
            early_config(&t),
            "search.fs_uuid 0c8a2f4e-2b7e-4c1a-9f0e-1d2c3b4a5f60 root\nset prefix=($root)'/boot/grub'\n"
        );
        t.boot_is_separate = true;
        assert!(early_config(&t).ends_with("set prefix=($root)'/grub'\n"));
        assert!(check_uuid("ABCD-1234").is_ok());
        assert!(check_uuid("x' root; reboot").is_err());
        assert!(check_uuid("").is_err());
        assert_eq!(fs_module("ext4").unwrap(), "ext2");
        assert_eq!(fs_module("vfat").unwrap(), "fat");
        assert!(fs_module("swap").unwrap_err().to_string().contains("swap"));
    }
}
