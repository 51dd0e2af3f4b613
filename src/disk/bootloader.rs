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

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use tracing::warn;

use super::error::{DiskError, Result};
use super::tool;
use crate::disk::Label;

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

/// Bytes of boot code in an MBR: the 32-bit disk signature (0x1b8, GRUB's
/// `GRUB_BOOT_MACHINE_WINDOWS_NT_MAGIC`) and the partition table follow.
const BOOT_CODE_END: usize = 0x1b8;

/// The string boot.img prints before loading core.img (boot.S
/// `notification_string`), the mark of GRUB's boot code.
const GRUB_MARK: &[u8] = b"GRUB";

/// Whether an MBR's boot code is GRUB's boot.img.
pub fn has_grub_boot_code(mbr: &[u8]) -> bool {
    mbr[..mbr.len().min(BOOT_CODE_END)].windows(GRUB_MARK.len()).any(|w| w == GRUB_MARK)
}

// ---------------------------------------------------------------------------
// Checks and choice of the way.

/// The one sector size BIOS boot code knows (GRUB_DISK_SECTOR_SIZE).
const SECTOR: u64 = 512;

/// Everything about the target that can be refused before writing.
fn check_target(t: &GrubTarget, firmware: Firmware) -> Result<()> {
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
fn check_uuid(uuid: &str) -> Result<()> {
    if !uuid.is_empty() && uuid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        Ok(())
    } else {
        Err(DiskError::Plan(format!("'{uuid}' is not a filesystem UUID GRUB can search for /boot")))
    }
}

/// GRUB's module reading /boot's filesystem.
fn fs_module(fstype: &str) -> Result<&'static str> {
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

// ---------------------------------------------------------------------------
// In the clone.

/// PATH inside the clone: the stage2's PATH may name directories it lacks.
const CLONE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn install_in_clone(t: &GrubTarget, firmware: Firmware, installer: &str) -> Result<Vec<String>> {
    let disk = t.disk.to_string_lossy().into_owned();
    let runs: Vec<Vec<String>> = match firmware {
        Firmware::Bios => vec![vec!["--target=i386-pc".into(), disk.clone()]],
        Firmware::Uefi => {
            let esp = esp_in_clone(t.root, t.esp.expect("checked by check_target"))?;
            let named =
                vec!["--target=x86_64-efi".into(), format!("--efi-directory={esp}"), "--no-nvram".into()];
            // The removable-media path is what firmware without an NVRAM
            // entry for this disk (a freshly cloned node) boots.
            let removable = [named.clone(), vec!["--removable".into()]].concat();
            vec![named, removable]
        }
    };
    let mut done = Vec::new();
    for args in runs {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_in_clone(t.root, installer, &args, &disk)?;
        done.push(format!("{} {} run in the clone for {disk}", tool_name(installer), args.join(" ")));
    }
    Ok(done)
}

/// The clone's initramfs tools, Debian's first.
const UPDATE_INITRAMFS: &[&str] = &["/usr/sbin/update-initramfs", "/sbin/update-initramfs"];
const DRACUT: &[&str] = &["/usr/bin/dracut", "/usr/sbin/dracut", "/sbin/dracut", "/bin/dracut"];

/// Rebuilds every initramfs of the clone with its own tool (binds mounted).
fn rebuild_initramfs_in(root: &Path) -> Result<String> {
    let find =
        |paths: &[&'static str]| paths.iter().copied().find(|p| in_clone(root, p).symlink_metadata().is_ok());
    let (program, args): (&str, &[&str]) = if let Some(p) = find(UPDATE_INITRAMFS) {
        (p, &["-u", "-k", "all"])
    } else if let Some(p) = find(DRACUT) {
        (p, &["--regenerate-all", "-f"])
    } else {
        return Err(DiskError::Other(format!(
            "cannot rebuild the initramfs of the clone in {}: it has neither update-initramfs nor dracut",
            root.display()
        )));
    };
    run_in_clone(root, program, args, &root.display().to_string())?;
    Ok(format!("initramfs rebuilt in the clone ({} {})", tool_name(program), args.join(" ")))
}

fn tool_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Runs `program` (a path in the clone) chrooted into `root`.
fn run_in_clone(root: &Path, program: &str, args: &[&str], target: &str) -> Result<String> {
    tool::require("chroot", &format!("run {} in the clone", tool_name(program)))?;
    let mut cmd = Command::new("chroot");
    cmd.arg(root).arg(program).args(args).env("PATH", CLONE_PATH).env("LC_ALL", "C");
    tool::run_command(cmd, &format!("{} (in the clone)", tool_name(program)), target, None)
}

/// What the chrooted tools need from the running system, in mount order.
/// efivars only when present (a UEFI-booted stage2): grub-install and dracut
/// read it on UEFI.
const BINDS: &[&str] = &["/dev", "/proc", "/sys", "/sys/firmware/efi/efivars"];

/// Runs `f` with [`BINDS`] bind-mounted into `root`, and unmounts them
/// whatever `f` returns.
fn with_binds<T>(root: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let binds = Binds::mount(root)?;
    let out = f();
    let released = binds.release();
    match (out, released) {
        (Err(e), Err(u)) => {
            warn!("{u}");
            Err(e)
        }
        (out, released) => released.and(out),
    }
}

/// Bind mounts made in the clone, unmounted in reverse order by
/// [`Binds::release`] or, on a panic, by `Drop`.
struct Binds {
    mounted: Vec<PathBuf>,
}

impl Binds {
    fn mount(root: &Path) -> Result<Binds> {
        let mut binds = Binds { mounted: Vec::new() };
        for src in BINDS {
            let src = Path::new(src);
            if !src.is_dir() {
                continue;
            }
            let dst = in_clone(root, &src.to_string_lossy());
            prepare_mount_point(&dst)?;
            // On error, dropping `binds` unmounts what is already mounted.
            bind(src, &dst)?;
            binds.mounted.push(dst);
        }
        Ok(binds)
    }

    /// Unmounts everything; an error only when a mount could not even be
    /// detached lazily.
    fn release(mut self) -> Result<()> {
        self.unmount_all()
    }

    fn unmount_all(&mut self) -> Result<()> {
        let mut first_error = None;
        while let Some(path) = self.mounted.pop() {
            if let Err(e) = unmount(&path) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Binds {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_all() {
            warn!("{e}");
        }
    }
}

/// Creates a missing mount point; refuses a symlink, which would carry the
/// mount (and its unmount) outside the clone.
fn prepare_mount_point(dst: &Path) -> Result<()> {
    match fs::symlink_metadata(dst) {
        Ok(m) if m.file_type().is_symlink() => Err(DiskError::Other(format!(
            "{} is a symlink in the clone: refusing to mount over it",
            dst.display()
        ))),
        Ok(_) => Ok(()),
        Err(_) => {
            fs::create_dir_all(dst).map_err(|e| DiskError::io(format!("creating {}", dst.display()), e))
        }
    }
}

fn c_path(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| DiskError::Other(format!("{}: path contains a NUL byte", p.display())))
}

/// A non-recursive bind mount (submounts such as /dev/pts stay out, so one
/// unmount undoes it), made private so nothing mounted in the clone
/// propagates to the host.
fn bind(src: &Path, dst: &Path) -> Result<()> {
    let (s, d) = (c_path(src)?, c_path(dst)?);
    let what = || format!("bind-mounting {} on {}", src.display(), dst.display());
    // SAFETY: NUL-terminated strings that outlive the call; MS_BIND ignores
    // the filesystem type and data, which may be null.
    let r = unsafe { libc::mount(s.as_ptr(), d.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) };
    if r != 0 {
        return Err(DiskError::io(what(), std::io::Error::last_os_error()));
    }
    // SAFETY: as above; a propagation change ignores the source.
    let r = unsafe {
        libc::mount(c"none".as_ptr(), d.as_ptr(), std::ptr::null(), libc::MS_PRIVATE, std::ptr::null())
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        let _ = unmount(dst);
        return Err(DiskError::io(what(), e));
    }
    Ok(())
}

/// Unmounts `path`; lazily (detached now, freed when no longer busy) when a
/// process still uses it, which is better than leaving the host's /dev
/// mounted in a clone about to be unmounted itself.
fn unmount(path: &Path) -> Result<()> {
    let p = c_path(path)?;
    // SAFETY: a NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(p.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let first = std::io::Error::last_os_error();
    // SAFETY: as above.
    if unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) } == 0 {
        warn!("{} was busy ({first}): unmounted lazily", path.display());
        return Ok(());
    }
    Err(DiskError::io(format!("unmounting {}", path.display()), first))
}

// ---------------------------------------------------------------------------
// By hand: the host's GRUB files.

/// The host's GRUB image maker and module directory for one platform.
struct HostGrub {
    mkimage: &'static str,
    dir: PathBuf,
    platform: &'static str,
}

impl HostGrub {
    fn find(firmware: Firmware, disk: &Path) -> Result<HostGrub> {
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
    fn mkimage(&self, config: &Path, prefix: &str, modules: &[&str], out: &Path) -> Result<()> {
        let (dir, config, out_s) =
            (self.dir.to_string_lossy(), config.to_string_lossy(), out.to_string_lossy());
        let mut args = vec!["-O", self.platform, "-d", &dir, "-p", prefix, "-c", &config, "-o", &out_s];
        args.extend_from_slice(modules);
        tool::run(self.mkimage, &args, &out_s, None).map(drop)
    }
}

/// GRUB's directory prefix on the filesystem holding /boot.
fn prefix(t: &GrubTarget) -> &'static str {
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
fn prepare_grub_dir(t: &GrubTarget, host: &HostGrub) -> Result<(PathBuf, usize)> {
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

// ---------------------------------------------------------------------------
// By hand, BIOS: boot.img in the MBR, core.img after it or in bios-boot.

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

/// An MBR's (and a protective MBR's) last two bytes.
const MBR_SIGNATURE: [u8; 2] = [0x55, 0xaa];

/// GPT's header signature at the start of sector 1.
const GPT_SIGNATURE: &[u8] = b"EFI PART";

/// The GPT partition type of a BIOS boot partition (where GRUB embeds
/// core.img on GPT), and its on-disk bytes (mixed-endian: "Hah!IdontNeedEFI").
const BIOS_BOOT_GUID: &str = "21686148-6449-6E6F-744E-656564454649";
const BIOS_BOOT_TYPE_BYTES: &[u8; 16] = b"Hah!IdontNeedEFI";

/// BIOS modules linked into core.img: the disk driver, both partition
/// tables, /boot's filesystem and the UUID search. `normal` and the rest are
/// loaded from the prefix, which keeps core.img small enough for any
/// bios-boot partition (grub-install embeds the same set).
const BIOS_CORE_MODULES: &[&str] = &["biosdisk", "part_msdos", "part_gpt", "search_fs_uuid"];

/// GRUB for BIOS from the host's files. The disk is written only once
/// everything fits; the clone's /boot/grub/i386-pc is refreshed before that,
/// since core.img's size is known only once it is built there.
fn bios_by_hand(t: &GrubTarget, reason: &str) -> Result<Vec<String>> {
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

/// Pads `img` with zeros to whole sectors and returns their number.
fn pad_to_sectors(img: &mut Vec<u8>) -> u64 {
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
fn patch_core(core: &mut [u8], at: u64) -> Result<()> {
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
fn patch_boot(boot: &[u8], old_mbr: &[u8], at: u64) -> Result<Vec<u8>> {
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

fn read_at(disk: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
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

// ---------------------------------------------------------------------------
// By hand, UEFI: a GRUB image at the ESP's removable-media path.

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
fn uefi_by_hand(t: &GrubTarget, reason: &str) -> Result<Vec<String>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    fn target<'a>(root: &'a Path, disk: &'a Path, esp: Option<&'a Path>) -> GrubTarget<'a> {
        GrubTarget {
            root,
            disk,
            label: Label::Dos,
            first_partition_start: 2048,
            bios_boot: None,
            boot_fs_uuid: "0c8a2f4e-2b7e-4c1a-9f0e-1d2c3b4a5f60",
            boot_is_separate: false,
            boot_fstype: "ext4",
            esp,
            esp_device: None,
        }
    }

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
            eprintln!("SKIPPED: grub-mkimage or {} missing", dir.display());
            return;
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
            return eprintln!("SKIPPED (block device cases): needs root to make a device node");
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

    /// A clone with a shell (the host's dash and its libraries) and `tools`:
    /// scripts recording their arguments and what they see in /calls.
    fn mini_clone(root: &Path, tools: &[(&str, &str)]) -> bool {
        let Ok(out) = Command::new("ldd").arg("/bin/dash").output() else { return false };
        let libs = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
            .map(PathBuf::from)
            .collect::<Vec<_>>();
        if libs.is_empty() || !Path::new("/bin/dash").is_file() {
            return false;
        }
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::copy("/bin/dash", root.join("bin/sh")).unwrap();
        for lib in libs {
            let dst = root.join(lib.strip_prefix("/").unwrap());
            fs::create_dir_all(dst.parent().unwrap()).unwrap();
            fs::copy(&lib, &dst).unwrap();
        }
        for (path, tail) in tools {
            let dst = in_clone(root, path);
            fs::create_dir_all(dst.parent().unwrap()).unwrap();
            let script = format!(
                "#!/bin/sh\necho \"$0 $*\" >> /calls\ntest -r /proc/self/status && echo proc >> /calls\n\
                 test -d /sys/class && echo sys >> /calls\ntest -c /dev/null && echo dev >> /calls\n{tail}\n"
            );
            fs::write(&dst, script).unwrap();
            std::os::unix::fs::PermissionsExt::set_mode(
                &mut fs::metadata(&dst).unwrap().permissions(),
                0o755,
            );
            fs::set_permissions(&dst, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
        true
    }

    /// Mount points at or below `root`, from the kernel's table.
    fn mounts_under(root: &Path) -> Vec<String> {
        let root = fs::canonicalize(root).unwrap();
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| Path::new(m).starts_with(&root))
            .collect()
    }

    #[test]
    fn grub_install_runs_in_the_clone_with_binds_that_go_away() {
        if !is_root() {
            return eprintln!("SKIPPED: needs root to bind-mount");
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        if !mini_clone(root, &[("/usr/sbin/grub-install", "exit 0")]) {
            return eprintln!("SKIPPED: cannot build a clone with /bin/dash");
        }
        fs::create_dir_all(root.join("boot/efi")).unwrap();
        let disk = Path::new("/dev/sdz");
        let esp = Path::new("/boot/efi");
        let t = target(root, disk, Some(esp));
        let done =
            with_binds(root, || install_in_clone(&t, Firmware::Bios, "/usr/sbin/grub-install")).unwrap();
        assert_eq!(done, ["grub-install --target=i386-pc /dev/sdz run in the clone for /dev/sdz"]);
        assert_eq!(mounts_under(root), Vec::<String>::new());
        with_binds(root, || install_in_clone(&t, Firmware::Uefi, "/usr/sbin/grub-install")).unwrap();
        assert_eq!(mounts_under(root), Vec::<String>::new());
        let calls = fs::read_to_string(root.join("calls")).unwrap();
        assert_eq!(
            calls,
            "/usr/sbin/grub-install --target=i386-pc /dev/sdz\nproc\nsys\ndev\n\
             /usr/sbin/grub-install --target=x86_64-efi --efi-directory=/boot/efi --no-nvram\nproc\nsys\ndev\n\
             /usr/sbin/grub-install --target=x86_64-efi --efi-directory=/boot/efi --no-nvram --removable\n\
             proc\nsys\ndev\n"
        );
    }

    #[test]
    fn a_failing_tool_in_the_clone_still_leaves_no_mounts() {
        if !is_root() {
            return eprintln!("SKIPPED: needs root to bind-mount");
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let fail = "echo 'grub-install: error: boom' >&2; exit 3";
        if !mini_clone(root, &[("/usr/sbin/grub-install", fail)]) {
            return eprintln!("SKIPPED: cannot build a clone with /bin/dash");
        }
        let t = target(root, Path::new("/dev/sdz"), None);
        let e =
            with_binds(root, || install_in_clone(&t, Firmware::Bios, "/usr/sbin/grub-install")).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("grub-install (in the clone) failed on /dev/sdz") && s.contains("boom"), "{s}");
        assert_eq!(mounts_under(root), Vec::<String>::new());
    }

    #[test]
    fn initramfs_is_rebuilt_with_the_clones_own_tool() {
        if !is_root() {
            return eprintln!("SKIPPED: needs root to bind-mount");
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        if !mini_clone(root, &[("/usr/bin/dracut", "exit 0")]) {
            return eprintln!("SKIPPED: cannot build a clone with /bin/dash");
        }
        let line = with_binds(root, || rebuild_initramfs_in(root)).unwrap();
        assert_eq!(line, "initramfs rebuilt in the clone (dracut --regenerate-all -f)");
        mini_clone(root, &[("/usr/sbin/update-initramfs", "exit 0")]);
        let line = with_binds(root, || rebuild_initramfs_in(root)).unwrap();
        assert_eq!(line, "initramfs rebuilt in the clone (update-initramfs -u -k all)");
        let calls = fs::read_to_string(root.join("calls")).unwrap();
        assert!(calls.contains("/usr/bin/dracut --regenerate-all -f\nproc\nsys\ndev\n"), "{calls}");
        assert!(calls.ends_with("/usr/sbin/update-initramfs -u -k all\nproc\nsys\ndev\n"), "{calls}");
        assert_eq!(mounts_under(root), Vec::<String>::new());

        let bare = tempfile::tempdir().unwrap();
        let e = rebuild_initramfs_in(bare.path()).unwrap_err().to_string();
        assert!(e.contains("neither update-initramfs nor dracut"), "{e}");
    }
}
