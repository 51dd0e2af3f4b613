//! `kacast lab --nodes N`: a virtual rack on this one machine, for trying
//! kacast without hardware and for the end-to-end tests.
//!
//! ```text
//!  namespace kacast-lab-PID
//!  br0 10.66.0.1 ── golden node: kacast clone --stage2 … --log-dir … --pxe-root …
//!   │               dnsmasq: DHCP, TFTP (the files `kacast pxe` renders), RA
//!   ├── tap0 ── VM node01 (QEMU, network boot first, then its virtio disk)
//!   └── tap1 ── VM node02 …
//! ```
//!
//! Each VM PXE-boots the kamethod entry into the kacast initrd, fetches the
//! stage2 from the golden node (`getstage2`), installs the golden disk onto
//! its own, and reboots. The golden node has switched its PXE files to
//! `local` by then, so the VM leaves the network boot for its disk, boots the
//! clone through the clone's own GRUB, kernel and initrd, prints
//! [`BOOTED`] with its name, and powers off.
//!
//! Everything lives in a network namespace, a work directory and loop devices
//! the lab creates; dropping the [`Lab`] removes them (the work directory is
//! kept for its logs), and so does [`sweep`] when a signal leaves no time to
//! drop it.

mod error;
mod golden;
mod net;
mod sweep;
mod vm;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tracing::info;

pub use error::LabError;
pub use golden::{GoldenDisk, GoldenSpec, BOOTED};
pub use net::{mac_of, Network};
pub use sweep::{sweep, sweep_stale, Swept};
pub use vm::{Accel, Firmware, Vm, VmSpec};

use crate::boot::initrd::{self, InitrdSpec, KernelTree};
use crate::boot::{stage2, PxeConfig};
use error::io;

#[derive(Debug, Clone)]
pub struct LabConfig {
    pub nodes: usize,
    pub firmware: Firmware,
    /// Where images, logs and consoles go (kept afterwards).
    pub work: PathBuf,
    /// Where the Debian kernel package is kept between runs.
    pub cache: PathBuf,
    /// The kacast binary: the golden server, and the client in the initrd.
    pub kacast: PathBuf,
    /// Incompressible MiB in the golden system, to make the stream last.
    pub filler_mib: u64,
    pub memory_mib: u32,
    pub session: String,
}

impl LabConfig {
    pub fn new(nodes: usize, kacast: PathBuf, work: PathBuf, cache: PathBuf) -> LabConfig {
        LabConfig {
            nodes,
            firmware: Firmware::Bios,
            work,
            cache,
            kacast,
            filler_mib: 16,
            // The initrd unpacks the stage2 into RAM beside itself.
            memory_mib: 512,
            session: "kainstall".into(),
        }
    }
}

/// Where `kacast lab` works unless told: named for the process, like the
/// lab's namespace, so a sweep after a SIGKILL finds it.
pub fn default_work_dir() -> PathBuf {
    std::env::temp_dir().join(net::namespace_of_this_process())
}

/// Everything the lab runs, with the Debian package that has it.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("dnsmasq", "dnsmasq-base"),
    ("busybox", "busybox-static"),
    ("sfdisk", "fdisk"),
    ("partx", "util-linux"),
    ("losetup", "mount"),
    ("mkfs.ext4", "e2fsprogs"),
    ("mkswap", "util-linux"),
    ("grub-mkimage", "grub2-common"),
    ("dpkg-deb", "dpkg"),
    ("depmod", "kmod"),
];

/// What this machine lacks for a rack with this firmware, as lines for the
/// user (empty: it can run one).
pub fn missing(firmware: Firmware) -> Vec<String> {
    let mut out = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        out.push("root (network namespaces, loop devices, mounts)".to_string());
    }
    for (tool, package) in TOOLS {
        if !on_path(tool) {
            out.push(format!("{tool} (package {package})"));
        }
    }
    let mut files = vec![
        ("/usr/lib/grub/i386-pc/boot.img", "grub-pc-bin"),
        ("/usr/lib/ipxe/qemu/efi-virtio.rom", "ipxe-qemu"),
    ];
    if firmware == Firmware::Uefi {
        files.extend([
            (vm::OVMF_CODE, "ovmf"),
            ("/usr/lib/grub/x86_64-efi/kernel.img", "grub-efi-amd64-bin"),
            ("/usr/sbin/mkfs.vfat", "dosfstools"),
            ("/usr/bin/mcopy", "mtools"),
        ]);
    }
    for (file, package) in files {
        if !Path::new(file).exists() {
            out.push(format!("{file} (package {package})"));
        }
    }
    if !Path::new("/dev/loop-control").exists() {
        out.push("loop devices (/dev/loop-control)".to_string());
    }
    out
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Runs a tool for a step of the lab's setup; its stdout, or why it failed.
pub(crate) fn run(step: &str, program: &str, args: &[&str]) -> Result<String, LabError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LabError::step(step, format!("{program}: {e}")))?;
    if !out.status.success() {
        return Err(LabError::step(
            step,
            format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The golden server's process, killed if the lab goes away first.
struct Golden {
    pid: i32,
    exited: mpsc::Receiver<Option<i32>>,
}

impl Drop for Golden {
    fn drop(&mut self) {
        if self.exited.try_recv().is_err() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }
}

/// How the golden node's install ended.
#[derive(Debug, Clone)]
pub struct CloneOutcome {
    /// `kacast clone`'s exit code (0 all, 2 some, 1 none), `None` if killed.
    pub code: Option<i32>,
    /// Its report table.
    pub table: String,
    /// Its JSON report (`--report`).
    pub report: serde_json::Value,
}

/// Whether one VM booted its clone.
#[derive(Debug, Clone)]
pub struct NodeBoot {
    pub name: String,
    pub mac: String,
    /// The console line the clone printed, when it did.
    pub booted: Option<String>,
}

pub struct Lab {
    // Dropped in this order: the VMs and the golden server stop before the
    // network goes and the golden disk is unmounted.
    vms: Vec<Vm>,
    golden_server: Option<Golden>,
    net: Network,
    golden: GoldenDisk,
    pub config: LabConfig,
    pub tftp: PathBuf,
    pub logs: PathBuf,
    pub stage2: PathBuf,
    pub names: Vec<String>,
    node_disks: Vec<PathBuf>,
}

impl Lab {
    /// Builds the rack without starting it: the kernel, the initrds, the
    /// stage2, the golden disk, the network, the PXE files and dnsmasq.
    pub fn prepare(config: LabConfig) -> Result<Lab, LabError> {
        let gaps = missing(config.firmware);
        if !gaps.is_empty() {
            return Err(LabError::Missing(gaps));
        }
        if config.nodes == 0 || config.nodes > 200 {
            return Err(LabError::step("--nodes", format!("{} nodes: give 1 to 200", config.nodes)));
        }
        let work = &config.work;
        fs::create_dir_all(work).map_err(io(work))?;
        let tftp = work.join("tftp");
        let logs = work.join("logs");
        let boot_dir = tftp.join("kacast");
        fs::create_dir_all(&boot_dir).map_err(io(&boot_dir))?;

        info!("lab: fetching the Debian kernel (cached in {})", config.cache.display());
        let kernel = KernelTree::fetch(&config.cache).map_err(|e| LabError::step("the kernel", e))?;
        fs::copy(kernel.vmlinuz(), boot_dir.join("vmlinuz")).map_err(io(&kernel.vmlinuz()))?;
        info!("lab: building the kamethod initrd and the clones' boot initrd");
        let busybox = PathBuf::from("/bin/busybox");
        let spec = |client: Option<PathBuf>| InitrdSpec {
            kernel: kernel.clone(),
            modules: Vec::new(),
            busybox: busybox.clone(),
            client,
        };
        initrd::build(&spec(Some(config.kacast.clone())), &boot_dir.join("initrd.img"))
            .map_err(|e| LabError::step("the kamethod initrd", e))?;
        let boot_initrd = work.join("boot-initrd.img");
        initrd::build(&spec(None), &boot_initrd).map_err(|e| LabError::step("the boot initrd", e))?;
        info!("lab: building the stage2");
        let stage2 = work.join("stage2.tar");
        stage2::build(&stage2::Stage2Spec::default(), &stage2)
            .map_err(|e| LabError::step("the stage2", e))?;

        info!("lab: building the golden disk");
        let golden = GoldenDisk::build(&GoldenSpec {
            work,
            firmware: config.firmware,
            vmlinuz: &kernel.vmlinuz(),
            initrd: &boot_initrd,
            busybox: &busybox,
            filler_mib: config.filler_mib,
        })?;
        let node_disks: Vec<PathBuf> =
            (0..config.nodes).map(|i| work.join(format!("node{:02}.img", i + 1))).collect();
        for d in &node_disks {
            fs::File::create(d).and_then(|f| f.set_len(golden.bytes)).map_err(io(d))?;
        }

        info!("lab: network namespace, bridge, {} taps, dnsmasq", config.nodes);
        let mut net = Network::create(config.nodes)?;
        let names: Vec<String> = (0..config.nodes).map(|i| format!("node{:02}", i + 1)).collect();
        let mut pxe = PxeConfig::new(&tftp, "kacast/vmlinuz", "kacast/initrd.img");
        pxe.session = config.session.clone();
        pxe.server = Some(net.golden_ip());
        pxe.extra_append = format!(
            "console=ttyS0,115200 kacast.disk={}=/dev/vda kacast.onfail=poweroff panic=-1",
            golden.name()
        );
        pxe.interface = Some(net.bridge.clone());
        pxe.range = Some(format!("{}.100,{0}.200,1h", net::SUBNET));
        pxe.dnsmasq_dir = Some(work.clone());
        crate::boot::install(&pxe).map_err(|e| LabError::step("the PXE files", e))?;
        net.start_dnsmasq(&work.join("dnsmasq-full.conf"), &names, work)?;
        Ok(Lab {
            vms: Vec::new(),
            golden_server: None,
            net,
            golden,
            config,
            tftp,
            logs,
            stage2,
            names,
            node_disks,
        })
    }

    /// Starts the golden server, then every VM.
    pub fn start(&mut self) -> Result<(), LabError> {
        let c = &self.config;
        let work = &c.work;
        let n = c.nodes.to_string();
        let mut cmd = self.net.command(&c.kacast);
        cmd.args(["clone", "-n", &n, "--session", &c.session, "--bind", &self.net.golden_ip()]);
        cmd.arg("--root").arg(&self.golden.root);
        cmd.arg("--stage2").arg(&self.stage2);
        cmd.arg("--log-dir").arg(&self.logs);
        cmd.arg("--pxe-root").arg(&self.tftp);
        cmd.arg("--report").arg(work.join("report.json"));
        // TCG guests sharing two cores are slow: generous heartbeats and steps.
        cmd.args(["--hostname-from-node", "--timeout", "30", "--phase-timeout", "900"]);
        if c.firmware == Firmware::Uefi {
            cmd.args(["--firmware", "uefi"]);
        }
        let out = work.join("clone.out");
        let err = work.join("clone.log");
        cmd.stdout(fs::File::create(&out).map_err(io(&out))?);
        cmd.stderr(fs::File::create(&err).map_err(io(&err))?);
        let mut child: Child = cmd.spawn().map_err(|e| LabError::step("start the golden server", e))?;
        let pid = child.id() as i32;
        let (tx, exited) = mpsc::channel();
        std::thread::spawn(move || {
            let code = child.wait().ok().and_then(|s| s.code());
            let _ = tx.send(code);
        });
        self.golden_server = Some(Golden { pid, exited });
        let accel = Accel::detect();
        info!("lab: starting {} VMs ({accel:?})", c.nodes);
        for (i, name) in self.names.iter().enumerate() {
            let spec = VmSpec {
                index: i,
                name: name.clone(),
                disk: self.node_disks[i].clone(),
                work,
                accel,
                firmware: c.firmware,
                memory_mib: c.memory_mib,
            };
            self.vms.push(Vm::start(spec, &self.net)?);
        }
        Ok(())
    }

    pub fn vm(&mut self, i: usize) -> &mut Vm {
        &mut self.vms[i]
    }

    /// Waits for the golden server to finish the install.
    pub fn wait_clone(&mut self, deadline: Instant) -> Result<CloneOutcome, LabError> {
        let server =
            self.golden_server.as_ref().ok_or_else(|| LabError::step("wait", "the lab was not started"))?;
        let left = deadline.saturating_duration_since(Instant::now());
        let code = server.exited.recv_timeout(left).map_err(|_| {
            LabError::step(
                "the install",
                format!("not over after {left:?}; see {}", self.config.work.display()),
            )
        })?;
        let table = fs::read_to_string(self.config.work.join("clone.out")).unwrap_or_default();
        let report = fs::read(self.config.work.join("report.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null);
        Ok(CloneOutcome { code, table, report })
    }

    /// Waits for each VM still running to boot its clone (or stop).
    pub fn wait_boots(&mut self, deadline: Instant) -> Vec<NodeBoot> {
        self.vms
            .iter_mut()
            .map(|vm| {
                let booted = vm.wait_for(BOOTED, deadline).then(|| {
                    vm.console().lines().find(|l| l.contains(BOOTED)).unwrap_or_default().trim().to_string()
                });
                NodeBoot { name: vm.name.clone(), mac: vm.mac.clone(), booted }
            })
            .collect()
    }

    /// The golden system's machine-id, which no clone may keep.
    pub fn golden_machine_id(&self) -> String {
        fs::read_to_string(self.golden.root.join("etc/machine-id")).unwrap_or_default().trim().to_string()
    }

    /// Whether the node's PXE configuration now sends it to its disk.
    pub fn pxe_is_local(&self, mac: &str) -> bool {
        let Ok(name) = crate::boot::mac_config_name(mac) else { return false };
        fs::read_to_string(self.tftp.join("pxelinux.cfg").join(name)).is_ok_and(|t| t.contains("LOCALBOOT"))
    }
}

/// Default deadlines for `kacast lab`: a TCG rack of a few VMs installs in a
/// few minutes on two cores; these only stop a run that is stuck.
pub const INSTALL_DEADLINE: Duration = Duration::from_secs(1800);
pub const BOOT_DEADLINE: Duration = Duration::from_secs(600);
