//! The rack's network: one namespace holding a bridge, a tap per VM and
//! dnsmasq. Nothing of it appears in the namespace `kacast lab` runs in, and
//! dropping it kills what runs inside and deletes the namespace.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::error::LabError;
use super::run;

/// The install network: `10.66.0.0/24`, the golden node on `.1`, node `i`
/// (from 0) on `.(10+i)`. Private to the namespace, so it cannot clash with
/// the host's networks.
pub const SUBNET: &str = "10.66.0";
/// IPv6 router advertisements on a ULA prefix: without them iPXE waits about
/// 13 s for IPv6 before it boots (NOTES-vm-testing.md).
const ULA: &str = "fd66::";

pub struct Network {
    pub namespace: String,
    pub bridge: String,
    pub taps: Vec<String>,
    pub macs: Vec<String>,
    dnsmasq: Option<Child>,
}

impl Network {
    /// The namespace, its bridge (STP off, no forward delay: a VM's first
    /// DHCP request must not be dropped while the port learns) and `n` taps.
    pub fn create(n: usize) -> Result<Network, LabError> {
        let namespace = namespace_of_this_process();
        // A leftover of an earlier run that had our pid is ours to remove.
        let _ = Command::new("ip").args(["netns", "delete", &namespace]).stderr(Stdio::null()).status();
        run("create the lab's network namespace", "ip", &["netns", "add", &namespace])?;
        let mut net = Network {
            namespace,
            bridge: "br0".into(),
            taps: (0..n).map(|i| format!("tap{i}")).collect(),
            macs: (0..n).map(mac_of).collect(),
            dnsmasq: None,
        };
        let ns = net.namespace.clone();
        let ipn = |args: &[&str]| {
            let mut all = vec!["-n", ns.as_str()];
            all.extend(args);
            run("set up the lab's network", "ip", &all)
        };
        ipn(&["link", "set", "lo", "up"])?;
        ipn(&["link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0"])?;
        ipn(&["addr", "add", &format!("{SUBNET}.1/24"), "dev", "br0"])?;
        ipn(&["addr", "add", &format!("{ULA}1/64"), "dev", "br0", "nodad"])?;
        ipn(&["link", "set", "br0", "up"])?;
        for tap in &net.taps {
            ipn(&["tuntap", "add", "dev", tap, "mode", "tap"])?;
            ipn(&["link", "set", tap, "master", "br0", "up"])?;
        }
        net.bridge = "br0".into();
        Ok(net)
    }

    pub fn golden_ip(&self) -> String {
        format!("{SUBNET}.1")
    }

    pub fn node_ip(i: usize) -> String {
        format!("{SUBNET}.{}", 10 + i)
    }

    /// `program`, to be run inside the namespace. The child enters it
    /// between fork and exec (where `ip netns exec` would enter it after its
    /// own exec), so once `spawn` returns the process is in the namespace: a
    /// sweep after a signal at that moment finds it there.
    pub fn command(&self, program: &Path) -> Command {
        use std::os::unix::process::CommandExt;
        let ns = std::fs::File::open(Path::new("/run/netns").join(&self.namespace));
        let ns = ns.map_err(|e| e.raw_os_error().unwrap_or(libc::ENOENT));
        let mut c = Command::new(program);
        // SAFETY: the closure runs in the forked child and only makes the
        // setns system call (async-signal-safe) on an fd opened beforehand;
        // the error is built from an errno, without allocating.
        unsafe {
            c.pre_exec(move || {
                let fd = ns.as_ref().map_err(|e| std::io::Error::from_raw_os_error(*e))?;
                if libc::setns(std::os::fd::AsRawFd::as_raw_fd(fd), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        c
    }

    /// dnsmasq with the configuration `kacast pxe` rendered, plus each VM's
    /// fixed address and name and the router advertisements.
    pub fn start_dnsmasq(&mut self, conf: &Path, names: &[String], work: &Path) -> Result<(), LabError> {
        let mut c = self.command(Path::new("dnsmasq"));
        c.arg("--no-daemon").arg(format!("--conf-file={}", conf.display()));
        c.arg(format!("--dhcp-leasefile={}", work.join("dnsmasq.leases").display()));
        c.arg(format!("--pid-file={}", work.join("dnsmasq.pid").display()));
        c.arg(format!("--log-facility={}", work.join("dnsmasq.log").display()));
        c.args(["--enable-ra", &format!("--dhcp-range={ULA},ra-only")]);
        for (i, (mac, name)) in self.macs.iter().zip(names).enumerate() {
            c.arg(format!("--dhcp-host={mac},{},{name}", Network::node_ip(i)));
        }
        let child = c
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| LabError::step("start dnsmasq", e))?;
        self.dnsmasq = Some(child);
        Ok(())
    }
}

/// `52:54:00:66:00:0a` for VM 0: QEMU's prefix, then the lab's.
pub fn mac_of(i: usize) -> String {
    format!("52:54:00:66:{:02x}:{:02x}", (10 + i) / 256, (10 + i) % 256)
}

/// The lab's namespace is named for the process that runs it, so a sweep
/// after a signal knows which one is its own without being told.
pub(crate) fn namespace_of_this_process() -> String {
    format!("{NAMESPACE_PREFIX}{}", std::process::id())
}

/// A lab's namespace, and its default work directory, are this and its pid.
pub(crate) const NAMESPACE_PREFIX: &str = "kacast-lab-";

/// Kills whatever still runs in the namespace (a VM, dnsmasq, the golden
/// server), waits for it to be dead, and deletes the namespace; whether it
/// was there. Waiting matters: a process killed but not yet dead still holds
/// the golden root's files and the disk images, so the unmounts and loop
/// detaches that follow a sweep would find them busy.
pub(crate) fn remove_namespace(namespace: &str) -> bool {
    let Ok(out) = Command::new("ip").args(["netns", "pids", namespace]).stderr(Stdio::null()).output() else {
        return false;
    };
    let pids = String::from_utf8_lossy(&out.stdout);
    kill_and_wait(pids.split_whitespace().filter_map(|p| p.parse().ok()));
    Command::new("ip")
        .args(["netns", "delete", namespace])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// How long a killed process may take to die: QEMU gives back hundreds of
/// MiB of guest memory, which takes well under a second; past this the
/// process is stuck in the kernel (a hung NFS or disk) and waiting longer
/// would not help.
const DEATH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// SIGKILL to every process, then a wait until each has died (is a zombie or
/// gone). Through pidfds: they also wait for processes that are not our
/// children (after a SIGKILL of the lab, init adopted its VMs), and a pid
/// reused meanwhile is never signalled.
fn kill_and_wait(pids: impl Iterator<Item = libc::pid_t>) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut dying: Vec<OwnedFd> = Vec::new();
    for pid in pids {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as libc::c_int;
        if fd < 0 {
            continue; // Already gone.
        }
        // SAFETY: fd was just opened and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: fd is a pidfd; a null siginfo is allowed.
        let null = std::ptr::null::<libc::siginfo_t>();
        unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), libc::SIGKILL, null, 0) };
        dying.push(fd);
    }
    // A pidfd polls readable once its process has exited.
    let deadline = std::time::Instant::now() + DEATH_TIMEOUT;
    while !dying.is_empty() {
        let fds: Vec<_> = dying.iter().map(AsRawFd::as_raw_fd).collect();
        match crate::net::wait_any(&fds, deadline.saturating_duration_since(std::time::Instant::now())) {
            Some(dead) => drop(dying.swap_remove(dead)),
            None => break,
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if let Some(mut d) = self.dnsmasq.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        remove_namespace(&self.namespace);
    }
}
