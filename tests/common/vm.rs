//! Booting a disk under QEMU to see how far it gets: the serial port is a file
//! that the test reads until a marker appears.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A boot that prints nothing for this long is hung: BIOS and GRUB under TCG
/// take about a second here.
const BOOT_DEADLINE: Duration = Duration::from_secs(120);

/// Boots `drive` (an image or a block device) under QEMU (TCG, SeaBIOS) and
/// returns what its serial port said once `marker` appeared, QEMU stopped
/// (a grub.cfg that halts) or the deadline passed.
pub fn boot_until(drive: &Path, marker: &str, serial: &Path) -> String {
    let drive = format!("file={},format=raw,if=ide", drive.display());
    qemu_until(&["-drive", &drive], Some(marker), serial, BOOT_DEADLINE).log
}

/// How a QEMU run ended.
pub struct Run {
    /// Everything the serial port said.
    pub log: String,
    /// QEMU stopped by itself (poweroff, or a reboot under `-no-reboot`)
    /// rather than being killed at the marker or the deadline.
    pub exited: bool,
}

/// Runs `qemu-system-x86_64` under TCG (this kind of machine's /dev/kvm cannot
/// boot a kernel) with 256 MiB, no display and no reboot, plus `args`, until
/// `marker` appears on the serial port (`None`: until QEMU stops), QEMU stops,
/// or `deadline` passes; then stops it.
pub fn qemu_until(args: &[&str], marker: Option<&str>, serial: &Path, deadline: Duration) -> Run {
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", "256", "-display", "none", "-no-reboot"])
        .args(["-serial", &format!("file:{}", serial.display()), "-monitor", "none"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu-system-x86_64");
    let deadline = Instant::now() + deadline;
    loop {
        // Whether QEMU stopped before reading, so the last read sees all it wrote.
        let exited = qemu.try_wait().expect("poll qemu").is_some();
        let log = fs::read_to_string(serial).unwrap_or_default();
        if marker.is_some_and(|m| log.contains(m)) || exited || Instant::now() > deadline {
            let _ = qemu.kill();
            let _ = qemu.wait();
            return Run { log, exited };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
