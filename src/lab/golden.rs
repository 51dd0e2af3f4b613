//! The lab's golden node: a small disk image holding a bootable system (a
//! Debian kernel, a boot-only kacast initrd, busybox) whose init prints who
//! it is on the console and powers off. Attached to a loop device and
//! mounted, it is what `kacast clone` clones, exactly as it would a real
//! golden node's disk.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use super::error::{io, LabError};
use super::run;
use super::vm::Firmware;

/// What each clone prints on its console once it booted from its own disk.
pub const BOOTED: &str = "KACAST-LAB-BOOTED";

/// The cloned system's init: proves the boot went through the clone's own
/// GRUB, kernel, initrd and root filesystem, and names the clone.
const INIT: &str = r#"#!/bin/sh
# kacast lab: the golden system's init. It says who it is, then powers off.
mount -t proc proc /proc
mount -t sysfs sys /sys
[ -s /etc/hostname ] && hostname "$(cat /etc/hostname)"
root=$(grep ' / ' /proc/mounts | cut -d' ' -f1)
echo "KACAST-LAB-BOOTED host=$(hostname) machine-id=$(cat /etc/machine-id) root=$root" > /dev/console
sync
poweroff -f
"#;

/// Busybox applets the init uses.
const APPLETS: &[&str] =
    &["sh", "mount", "umount", "cat", "echo", "hostname", "grep", "cut", "sync", "poweroff"];

/// Disk sizes: room for the kernel, the initrd, busybox and the filler,
/// small enough that formatting and cloning stay quick under TCG.
const ROOT_MIB: u64 = 160;
const SWAP_MIB: u64 = 32;
const ESP_MIB: u64 = 32;

pub struct GoldenDisk {
    pub image: PathBuf,
    pub loop_dev: PathBuf,
    /// Where its root filesystem is mounted: `kacast clone --root`.
    pub root: PathBuf,
    pub bytes: u64,
    mounted: bool,
}

/// What the golden system boots with.
pub struct GoldenSpec<'a> {
    pub work: &'a Path,
    pub firmware: Firmware,
    pub vmlinuz: &'a Path,
    /// A boot-only initrd (no kacast client): it mounts `root=` and switches to it.
    pub initrd: &'a Path,
    pub busybox: &'a Path,
    /// MiB of incompressible data in `/var/filler.bin`, so the stream lasts
    /// long enough to watch (and to pull a node's plug during it).
    pub filler_mib: u64,
}

impl GoldenDisk {
    pub fn build(spec: &GoldenSpec<'_>) -> Result<GoldenDisk, LabError> {
        let image = spec.work.join("golden.img");
        let (table, bytes) = match spec.firmware {
            Firmware::Bios => (
                format!("label: dos\nsize={ROOT_MIB}MiB, type=83, bootable\ntype=82\n"),
                (ROOT_MIB + SWAP_MIB + 2) << 20,
            ),
            Firmware::Uefi => (
                format!(
                    "label: gpt\nsize={ESP_MIB}MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp\n\
                     size={ROOT_MIB}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n\
                     type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F, name=swap\n"
                ),
                (ESP_MIB + ROOT_MIB + SWAP_MIB + 3) << 20,
            ),
        };
        fs::File::create(&image).and_then(|f| f.set_len(bytes)).map_err(io(&image))?;
        let dev = run("attach the golden image", "losetup", &["-f", "--show", &path(&image)])?;
        let mut disk = GoldenDisk {
            image,
            loop_dev: PathBuf::from(dev.trim()),
            root: spec.work.join("golden-root"),
            bytes,
            mounted: false,
        };
        let loop_dev = path(&disk.loop_dev);
        run_with_input("partition the golden disk", "sfdisk", &["-q", &loop_dev], &table)?;
        // No udev here: partition nodes come from partx. A loop device reused
        // from an earlier image may still carry its partitions.
        let _ = run("forget old partitions", "partx", &["-d", &loop_dev]);
        run("read the golden partition table", "partx", &["-a", &loop_dev])?;
        let (root_part, swap_part) = match spec.firmware {
            Firmware::Bios => (disk.part(1), disk.part(2)),
            Firmware::Uefi => {
                run("format the golden ESP", "mkfs.vfat", &["-n", "ESP", &path(&disk.part(1))])?;
                (disk.part(2), disk.part(3))
            }
        };
        run("format the golden root", "mkfs.ext4", &["-q", "-F", "-L", "labroot", &path(&root_part)])?;
        run("format the golden swap", "mkswap", &["-L", "labswap", &path(&swap_part)])?;
        fs::create_dir_all(&disk.root).map_err(io(&disk.root))?;
        run("mount the golden root", "mount", &[&path(&root_part), &path(&disk.root)])?;
        disk.mounted = true;
        let uuid = |dev: &Path| run("read a UUID", "blkid", &["-s", "UUID", "-o", "value", &path(dev)]);
        let mut fstab = format!(
            "UUID={} / ext4 defaults 0 1\nUUID={} none swap sw 0 0\n",
            uuid(&root_part)?.trim(),
            uuid(&swap_part)?.trim()
        );
        if spec.firmware == Firmware::Uefi {
            // The ESP, as a UEFI golden node's fstab has it (this kernel may
            // not mount FAT: kacast sends the ESP raw and writes it with mtools).
            fstab += &format!("UUID={} /boot/efi vfat umask=0077 0 1\n", uuid(&disk.part(1))?.trim());
        }
        populate(&disk.root, spec, &uuid(&root_part)?, &fstab)?;
        Ok(disk)
    }

    pub fn part(&self, n: u32) -> PathBuf {
        PathBuf::from(format!("{}p{n}", self.loop_dev.display()))
    }

    /// The kernel's name for the disk (`loop7`): how the plan names it.
    pub fn name(&self) -> String {
        self.loop_dev.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

impl Drop for GoldenDisk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = run("unmount the golden root", "umount", &[&path(&self.root)]);
        }
        let _ = run("forget the golden partitions", "partx", &["-d", &path(&self.loop_dev)]);
        let _ = run("detach the golden image", "losetup", &["-d", &path(&self.loop_dev)]);
    }
}

fn populate(root: &Path, spec: &GoldenSpec<'_>, root_uuid: &str, fstab: &str) -> Result<(), LabError> {
    let root_uuid = root_uuid.trim();
    for d in
        ["bin", "sbin", "etc", "proc", "sys", "dev", "run", "tmp", "root", "var", "boot/grub", "boot/efi"]
    {
        let p = root.join(d);
        fs::create_dir_all(&p).map_err(io(&p))?;
    }
    copy(spec.busybox, &root.join("bin/busybox"), 0o755)?;
    for applet in APPLETS {
        let link = root.join("bin").join(applet);
        symlink("busybox", &link).map_err(io(&link))?;
    }
    write(&root.join("sbin/init"), INIT, 0o755)?;
    write(&root.join("etc/hostname"), "golden\n", 0o644)?;
    write(&root.join("etc/machine-id"), &format!("{}\n", random_hex(16)), 0o444)?;
    write(&root.join("etc/fstab"), fstab, 0o644)?;
    copy(spec.vmlinuz, &root.join("boot/vmlinuz"), 0o644)?;
    copy(spec.initrd, &root.join("boot/initrd.img"), 0o644)?;
    write(
        &root.join("boot/grub/grub.cfg"),
        &format!(
            "serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\nset timeout=0\n\
             menuentry \"kacast lab clone\" {{\n    linux /boot/vmlinuz root=UUID={root_uuid} rw console=ttyS0,115200 panic=-1\n    initrd /boot/initrd.img\n}}\n"
        ),
        0o644,
    )?;
    let filler = root.join("var/filler.bin");
    let mut f = fs::File::create(&filler).map_err(io(&filler))?;
    let mut block = vec![0u8; 1 << 20];
    let mut xof = blake3::Hasher::new().update(b"kacast lab filler").finalize_xof();
    for _ in 0..spec.filler_mib {
        xof.fill(&mut block);
        f.write_all(&block).map_err(io(&filler))?;
    }
    Ok(())
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<(), LabError> {
    fs::copy(from, to).map_err(io(from))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).map_err(io(to))
}

fn write(to: &Path, text: &str, mode: u32) -> Result<(), LabError> {
    fs::write(to, text).map_err(io(to))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).map_err(io(to))
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    if fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).is_err() {
        b = blake3::hash(format!("{:?}", std::time::SystemTime::now()).as_bytes()).as_bytes()[..bytes]
            .to_vec();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn run_with_input(step: &str, program: &str, args: &[&str], input: &str) -> Result<(), LabError> {
    use std::process::{Command, Stdio};
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| LabError::step(step, format!("{program}: {e}")))?;
    child.stdin.take().map(|mut s| s.write_all(input.as_bytes()));
    let out = child.wait_with_output().map_err(|e| LabError::step(step, e))?;
    if !out.status.success() {
        return Err(LabError::step(step, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}
