//! The rack's machines: QEMU VMs, network first then disk, their serial
//! console in a file.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::error::{io, LabError};
use super::net::Network;

/// How QEMU runs the guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// Hardware KVM only when it is really there: some machines expose a
    /// `/dev/kvm` that is a software layer (`kvm_pvm`, no vmx/svm flag) and
    /// cannot boot a kernel in useful time (NOTES-vm-testing.md).
    pub fn detect() -> Accel {
        let writable = fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let flags = cpuinfo.lines().find(|l| l.starts_with("flags")).unwrap_or("");
        let hardware = flags.split_whitespace().any(|f| f == "vmx" || f == "svm");
        let pvm = Path::new("/sys/module/kvm_pvm").exists();
        if writable && hardware && !pvm {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }

    fn args(self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => ["-accel", "tcg", "-cpu", "max"],
        }
    }
}

/// BIOS (SeaBIOS) or UEFI (OVMF) firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Uefi,
}

/// OVMF's code and the template of its variable store (Debian's ovmf).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

pub struct Vm {
    pub name: String,
    pub mac: String,
    pub disk: PathBuf,
    pub serial: PathBuf,
    child: Option<Child>,
}

/// What a VM needs to start.
pub struct VmSpec<'a> {
    pub index: usize,
    pub name: String,
    pub disk: PathBuf,
    pub work: &'a Path,
    pub accel: Accel,
    pub firmware: Firmware,
    pub memory_mib: u32,
}

impl Vm {
    /// Starts the VM in the rack's namespace on its tap: it boots from the
    /// network first, so the kamethod PXE entry (or its per-MAC `local`
    /// override) decides what it does; its disk comes next.
    pub fn start(spec: VmSpec<'_>, net: &Network) -> Result<Vm, LabError> {
        let i = spec.index;
        let serial = spec.work.join(format!("{}.serial", spec.name));
        let mut c = net.command(Path::new("qemu-system-x86_64"));
        c.args(spec.accel.args());
        c.args(["-m", &spec.memory_mib.to_string(), "-smp", "1", "-display", "none", "-monitor", "none"]);
        c.args(["-name", &spec.name]);
        c.arg("-serial").arg(format!("file:{}", serial.display()));
        let tap = &net.taps[i];
        c.args(["-netdev", &format!("tap,id=n0,ifname={tap},script=no,downscript=no")]);
        c.args(["-device", &format!("virtio-net-pci,netdev=n0,mac={},bootindex=1", net.macs[i])]);
        c.args(["-drive", &format!("file={},format=raw,if=none,id=d0", spec.disk.display())]);
        c.args(["-device", "virtio-blk-pci,drive=d0,bootindex=2"]);
        if spec.firmware == Firmware::Uefi {
            let vars = spec.work.join(format!("{}.vars.fd", spec.name));
            fs::copy(OVMF_VARS, &vars).map_err(io(Path::new(OVMF_VARS)))?;
            c.args(["-drive", &format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}")]);
            c.args(["-drive", &format!("if=pflash,format=raw,file={}", vars.display())]);
        }
        let child = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| LabError::step(format!("start VM {}", spec.name), e))?;
        Ok(Vm { name: spec.name, mac: net.macs[i].clone(), disk: spec.disk, serial, child: Some(child) })
    }

    /// What the VM printed so far. Firmware writes bytes that are not UTF-8
    /// (OVMF's box drawing): read lossily, or nothing after them is seen.
    pub fn console(&self) -> String {
        fs::read(&self.serial).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// Pulls the plug.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits until the console shows `marker` or the VM stops, at most until
    /// `deadline`. Polls the console file: QEMU offers no other signal.
    pub fn wait_for(&mut self, marker: &str, deadline: Instant) -> bool {
        loop {
            let stopped = !self.running();
            if self.console().contains(marker) {
                return true;
            }
            if stopped || Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}
