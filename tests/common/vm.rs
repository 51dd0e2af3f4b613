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
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "256", "-display", "none", "-no-reboot", "-drive", &drive])
        .args(["-serial", &format!("file:{}", serial.display()), "-monitor", "none"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu-system-x86_64");
    let deadline = Instant::now() + BOOT_DEADLINE;
    let log = loop {
        // Whether QEMU stopped before reading, so the last read sees all it wrote.
        let stopped = qemu.try_wait().expect("poll qemu").is_some();
        let log = fs::read_to_string(serial).unwrap_or_default();
        if log.contains(marker) || stopped || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = qemu.kill();
    let _ = qemu.wait();
    log
}
