//! A small rack for launcher tests: N hosts, each a network namespace with a
//! real sshd on its own address, on one bridge in a master namespace.
//!
//! ```text
//!  kch-<pid>-<n>-br (the master)        kch-<pid>-<n>-h<i> (host i)
//!  br0 10.77.K.1/24 ── v<i> ═══ veth ═══ eth0 10.77.K.(10+i)/24, sshd on :22
//! ```
//!
//! Everything is created inside namespaces this harness creates: no interface,
//! address or route ever appears in the namespace the tests run in. The test
//! process stays in that root namespace, so whatever must run as the master
//! goes through [`Hosts::connector`] (an `ip netns exec` prefix),
//! [`Hosts::master_exec`] (a command) or [`Hosts::in_master`] (in-process
//! code, on a thread moved into the master namespace with setns(2), which only
//! moves that thread). Hosts share the root filesystem, /tmp included, and the
//! pid namespace: `pgrep` from the test sees the hosts' processes.
//!
//! Dropping [`Hosts`] kills every process left in its namespaces (sshds, their
//! sessions, agents), deletes the namespaces (the veths and the bridge go
//! with them) and the temporary directory, even after a panic.
//!
//! Needs root and `ip`, `sshd` (openssh-server), `ssh`, `ssh-keygen`
//! ([`TOOLS`]): the test checks them and skips with the reason.
#![allow(dead_code)]

use std::fs::{self, File};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What the harness runs; a test skips when one is missing.
pub const TOOLS: [&str; 4] = ["ip", "sshd", "ssh", "ssh-keygen"];

/// How long an sshd may take to accept connections.
const SSHD_READY: Duration = Duration::from_secs(15);

/// Tells the [`Hosts`] of one process apart (and their subnets).
static NEXT: AtomicUsize = AtomicUsize::new(0);

pub struct Hosts {
    /// First three octets of the /24: `10.77.K`.
    subnet: String,
    master: String,
    hosts: Vec<String>,
    /// Namespaces created so far: what Drop deletes.
    created: Vec<String>,
    sshds: Vec<Child>,
    dir: tempfile::TempDir,
    client_key: PathBuf,
}

impl Hosts {
    /// `n` hosts with sshd accepting connections. `Err` only when no network
    /// namespace can be created at all (the test skips); any later setup
    /// failure panics, with the sshd log when sshd is the problem.
    pub fn new(n: usize) -> Result<Hosts, String> {
        let seq = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id() as usize;
        // Each set of namespaces is its own network, so equal subnets could not
        // clash anyway; distinct ones keep logs and errors unambiguous.
        let k = (pid * 7 + seq) % 250 + 1;
        let base = format!("kch-{pid}-{seq}");
        let dir = tempfile::Builder::new().prefix("kacast-hosts-").tempdir().map_err(|e| e.to_string())?;
        let mut hosts = Hosts {
            subnet: format!("10.77.{k}"),
            master: format!("{base}-br"),
            hosts: (0..n).map(|i| format!("{base}-h{i}")).collect(),
            created: Vec::new(),
            sshds: Vec::new(),
            client_key: dir.path().join("client_key"),
            dir,
        };
        // A leftover of an earlier process that had our pid; ours to remove.
        let _ = Command::new("ip").args(["netns", "delete", &hosts.master]).stderr(Stdio::null()).status();
        ip(&["netns", "add", &hosts.master])
            .map_err(|e| format!("cannot create a network namespace: {e}"))?;
        hosts.created.push(hosts.master.clone());
        // From here on a failure is a test failure; `hosts` is dropped (and
        // cleans up) while the panic unwinds.
        hosts.build();
        Ok(hosts)
    }

    fn build(&mut self) {
        let m = self.master.clone();
        let master_ip = format!("{}.1/24", self.subnet);
        for args in [
            &["-n", &m, "link", "set", "lo", "up"][..],
            &["-n", &m, "link", "add", "br0", "type", "bridge"],
            &["-n", &m, "addr", "add", &master_ip, "dev", "br0"],
            &["-n", &m, "link", "set", "br0", "up"],
        ] {
            ip(args).unwrap_or_else(|e| panic!("master namespace setup: {e}"));
        }
        for i in 0..self.hosts.len() {
            let h = self.hosts[i].clone();
            let _ = Command::new("ip").args(["netns", "delete", &h]).stderr(Stdio::null()).status();
            ip(&["netns", "add", &h]).unwrap_or_else(|e| panic!("host namespace: {e}"));
            self.created.push(h.clone());
            let veth = format!("v{i}");
            let addr = format!("{}/24", self.ip(i));
            // Both ends are created inside our namespaces, never in the root one.
            for args in [
                &["-n", &h, "link", "set", "lo", "up"][..],
                &["-n", &m, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &h],
                &["-n", &m, "link", "set", &veth, "master", "br0"],
                &["-n", &m, "link", "set", &veth, "up"],
                &["-n", &h, "addr", "add", &addr, "dev", "eth0"],
                &["-n", &h, "link", "set", "eth0", "up"],
            ] {
                ip(args).unwrap_or_else(|e| panic!("host {i} setup: {e}"));
            }
        }
        self.start_sshds();
    }

    fn start_sshds(&mut self) {
        let d = self.dir.path().to_path_buf();
        keygen(&d.join("host_key"));
        keygen(&self.client_key);
        fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).expect("write authorized_keys");
        // sshd's privilege separation directory (on the shared filesystem).
        let privsep = Path::new("/run/sshd");
        if !privsep.is_dir() {
            fs::create_dir_all(privsep).expect("create /run/sshd");
            fs::set_permissions(privsep, fs::Permissions::from_mode(0o755)).expect("chmod /run/sshd");
        }
        let sshd = sshd_path();
        for i in 0..self.hosts.len() {
            let config = d.join(format!("sshd_{i}.config"));
            let text = format!(
                "ListenAddress {ip}\nPort 22\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nPidFile {d}/sshd_{i}.pid\nStrictModes no\n\
                 PrintMotd no\nPrintLastLog no\n",
                ip = self.ip(i),
                d = d.display(),
            );
            fs::write(&config, text).expect("write sshd config");
            let log = File::create(self.log_path(i)).expect("create sshd log");
            let child = Command::new("ip")
                .args(["netns", "exec", &self.hosts[i]])
                .arg(&sshd)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start sshd");
            self.sshds.push(child);
        }
        self.wait_for_sshds();
    }

    /// Polls a TCP connect to every sshd from the master namespace (the path
    /// the launcher takes), failing fast when an sshd exited.
    fn wait_for_sshds(&mut self) {
        let addrs: Vec<SocketAddr> = (0..self.hosts.len()).map(|i| (self.ip(i), 22).into()).collect();
        let master = self.master.clone();
        let sshds = &mut self.sshds;
        let failed = in_namespace(&master, || {
            let deadline = Instant::now() + SSHD_READY;
            for (i, addr) in addrs.iter().enumerate() {
                loop {
                    if TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_ok() {
                        break;
                    }
                    if let Ok(Some(status)) = sshds[i].try_wait() {
                        return Some((i, format!("sshd exited: {status}")));
                    }
                    if Instant::now() >= deadline {
                        return Some((i, format!("sshd not listening on {addr} after {SSHD_READY:?}")));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            None
        });
        if let Some((i, why)) = failed {
            panic!("host {i}: {why}; its log:\n{}", self.sshd_log(i));
        }
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Host `i`'s address (from 0): `10.77.K.(10+i)`.
    pub fn ip(&self, i: usize) -> Ipv4Addr {
        format!("{}.{}", self.subnet, 10 + i).parse().expect("a valid address")
    }

    /// The node name to give the launcher for host `i`: its address.
    pub fn node(&self, i: usize) -> String {
        self.ip(i).to_string()
    }

    /// The master's address on the bridge: `10.77.K.1`.
    pub fn master_ip(&self) -> Ipv4Addr {
        format!("{}.1", self.subnet).parse().expect("a valid address")
    }

    pub fn master_ns(&self) -> &str {
        &self.master
    }

    pub fn host_ns(&self, i: usize) -> &str {
        &self.hosts[i]
    }

    /// The client's private key, authorised on every host (as root).
    pub fn client_key(&self) -> &Path {
        &self.client_key
    }

    /// The ssh command a master would use (Kadeploy-like: batch mode, no host
    /// key prompts); to be run inside the master namespace.
    pub fn ssh_connector(&self) -> String {
        format!(
            "ssh -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
             -o LogLevel=ERROR",
            self.client_key.display()
        )
    }

    /// [`Hosts::ssh_connector`] run in the master namespace, usable from the
    /// test process: `ip netns exec` execs ssh, so the process is ssh itself.
    pub fn connector(&self) -> String {
        format!("ip netns exec {} {}", self.master, self.ssh_connector())
    }

    /// `cmd` (program, arguments, environment, directory) to run inside the
    /// master namespace; set its stdio on the result.
    pub fn master_exec(&self, cmd: &Command) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.master]).arg(cmd.get_program()).args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            c.current_dir(d);
        }
        c
    }

    /// Runs `f` in-process as the master: on a thread moved into the master
    /// namespace (processes it spawns start there too).
    pub fn in_master<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_namespace(&self.master, f)
    }

    /// Makes host `i` unreachable: its port on the bridge goes down, as if its
    /// cable were pulled (its sshd keeps running).
    pub fn cut(&self, i: usize) {
        ip(&["-n", &self.master, "link", "set", &format!("v{i}"), "down"]).expect("cut the host's link");
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("sshd_{i}.log"))
    }

    /// What host `i`'s sshd logged (for a failing test's message).
    pub fn sshd_log(&self, i: usize) -> String {
        fs::read_to_string(self.log_path(i)).unwrap_or_else(|e| format!("(no log: {e})"))
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for c in &mut self.sshds {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Sessions and agents outlive the listening sshd: kill whatever is left
        // in our namespaces (nothing else can be in them), then delete them.
        for ns in self.created.iter().rev() {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                let pids = String::from_utf8_lossy(&out.stdout);
                // Never ourselves, whatever thread of ours visited the namespace.
                for pid in pids.split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
                    if pid != std::process::id() {
                        // SAFETY: kill has no memory preconditions; the pid is in our namespace.
                        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    }
                }
            }
            if let Err(e) = ip(&["netns", "delete", ns]) {
                eprintln!("could not delete network namespace {ns}: {e}");
            }
        }
    }
}

/// Runs `f` on a thread moved into namespace `ns` (setns(2) moves only the
/// calling thread), and gives back its result or its panic.
fn in_namespace<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: a valid namespace fd; CLONE_NEWNET only changes this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns into {path}: {}", io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "kacast-test", "-f"])
        .arg(path)
        .output()
        .expect("run ssh-keygen");
    assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
}

/// sshd must be started by its absolute path (it re-executes itself).
fn sshd_path() -> PathBuf {
    let out = Command::new("sh").args(["-c", "command -v sshd"]).output().expect("run sh");
    let found = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && found.starts_with('/') {
        PathBuf::from(found)
    } else {
        PathBuf::from("/usr/sbin/sshd")
    }
}
