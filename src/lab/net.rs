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

    /// `ip netns exec NS` before `program`.
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.namespace]).arg(program);
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
/// server) and deletes it; whether it was there.
pub(crate) fn remove_namespace(namespace: &str) -> bool {
    let Ok(out) = Command::new("ip").args(["netns", "pids", namespace]).stderr(Stdio::null()).output() else {
        return false;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    Command::new("ip")
        .args(["netns", "delete", namespace])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
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
