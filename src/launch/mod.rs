//! Starting kacast agents on remote nodes from the master (Kascade's launcher).
//!
//! Kadeploy hands a broadcast tool a node list and a connector (`-S 'ssh -o
//! StrictHostKeyChecking=no -o BatchMode=yes -q'`) and expects the tool to
//! start its own agents. [`start`] runs one agent per node as
//! `CONNECTOR NODE 'sh -c WRAPPER … kacast client --server MASTER:PORT --name NODE …'`:
//!
//! - **Node identity**: the master tells every agent its name as the master
//!   listed it ([`client_args`]), so an agent never guesses it from a hostname,
//!   an FQDN or one of several addresses (a Kascade failure mode).
//! - **Where to connect back**: [`route_address`] is the master's own address
//!   on the route to a node, the one that node can reach.
//! - **Copying**: with [`LaunchConfig::copy_agent`], a node that lacks the agent
//!   gets the master's binary, streamed through the connector into
//!   `/tmp/kacast-<hash>` (see [`copy`]).
//! - **Watchdog**: the remote agent ends with the connector's session. The
//!   master holds the connector's stdin open and never writes to it; on the node
//!   a wrapper runs the agent and a `cat` of that stdin, and the moment `cat`
//!   sees EOF (the ssh client killed, the master dead, the connection gone) the
//!   agent gets SIGTERM, then SIGKILL after 5 s. Kadeploy kills only its local
//!   process tree on a timeout; this is what makes the remote side follow. When
//!   the agent ends first, the wrapper ends at once with the agent's exit
//!   status, which the connector passes on. The script and its corner cases are
//!   documented in `script.rs`. (The agent also exits on its own when it loses
//!   its server's control connection.)
//! - **Reporting**: [`Agent::wait`] gives the exit status and the last lines the
//!   agent (or ssh) printed: "ssh: connect to host n3 port 22: No route to host"
//!   is what belongs in the ko file.
//!
//! The remote command line is `sh -c '…'` in single quotes, so it works under
//! any POSIX login shell; a connector must pass stdin through (no `ssh -n`, or
//! the watchdog stops the agent at once and says so on stderr).

pub mod copy;
mod script;
mod ssh;

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ExitStatus};
use std::sync::Mutex;
use std::time::Duration;

use tracing::info;

pub use script::quote_remote;

/// The connector when none is given: never prompt (BatchMode), give up on a
/// dead node after 10 s rather than the TCP default of minutes.
pub const DEFAULT_CONNECTOR: &str = "ssh -o BatchMode=yes -o ConnectTimeout=10";

/// How many agents [`Launcher::start_all`] starts at once: each start may copy
/// the binary, and the master's uplink is shared by all of them.
const PARALLEL_STARTS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A node name the connector would take for an option, or no name at all.
    #[error("{node:?}: not a usable node name: {why}")]
    BadNode { node: String, why: &'static str },
    #[error("{node}: no connector command given (e.g. 'ssh -o BatchMode=yes')")]
    NoConnector { node: String },
    /// The connector could not even be started on the master.
    #[error("{node}: cannot run the connector `{connector}`: {source}")]
    Spawn {
        node: String,
        connector: String,
        #[source]
        source: io::Error,
    },
    /// Asking the node whether it has the agent failed: usually the node is
    /// unreachable, and `detail` holds ssh's own words.
    #[error("{node}: cannot check for the agent '{agent}' on it: {detail}")]
    Probe { node: String, agent: String, detail: String },
    #[error("{node}: cannot read the local agent {} to copy it: {source}", path.display())]
    LocalAgent {
        node: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{node}: copying the agent to {remote} failed: {detail}")]
    Copy { node: String, remote: String, detail: String },
    #[error("unknown launcher '{0}': expected ssh, taktuk or none")]
    UnknownLauncher(String),
}

impl LaunchError {
    /// The node the error is about, for the ko file.
    pub fn node(&self) -> Option<&str> {
        match self {
            LaunchError::BadNode { node, .. }
            | LaunchError::NoConnector { node }
            | LaunchError::Spawn { node, .. }
            | LaunchError::Probe { node, .. }
            | LaunchError::LocalAgent { node, .. }
            | LaunchError::Copy { node, .. } => Some(node),
            LaunchError::UnknownLauncher(_) => None,
        }
    }
}

/// How the master gets its agents running (Kascade's `-D`, `-S`, `-P`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Launcher {
    /// One connector process per node.
    Ssh { connector: String },
    /// What Kadeploy asks for (`-D taktuk -P '-d ARITY'`). Run as [`Launcher::Ssh`]
    /// with the same connector: one connector process per node is what gives
    /// each agent its own exit status, its own stderr for the ko file and its
    /// own watchdog, which TakTuk's multiplexed tree would hide. The params are
    /// accepted and ignored, and [`Launcher::start_all`] says so.
    Taktuk { connector: String, params: String },
    /// The agents are already running (started from an initrd, or by hand).
    None,
}

impl Launcher {
    /// From Kascade's `-D KIND`, `-S CONNECTOR` (empty: [`DEFAULT_CONNECTOR`]) and `-P PARAMS`.
    pub fn parse(kind: &str, connector: &str, params: &str) -> Result<Launcher, LaunchError> {
        let connector =
            if connector.trim().is_empty() { DEFAULT_CONNECTOR.to_string() } else { connector.to_string() };
        match kind {
            "ssh" => Ok(Launcher::Ssh { connector }),
            "taktuk" => Ok(Launcher::Taktuk { connector, params: params.to_string() }),
            "none" => Ok(Launcher::None),
            other => Err(LaunchError::UnknownLauncher(other.to_string())),
        }
    }

    /// The connector command, `None` for [`Launcher::None`].
    pub fn connector(&self) -> Option<&str> {
        match self {
            Launcher::Ssh { connector } | Launcher::Taktuk { connector, .. } => Some(connector),
            Launcher::None => None,
        }
    }

    /// Starts one agent per node, `args(node)` being its arguments (see
    /// [`client_args`]), with `cfg` but this launcher's connector. Starts run
    /// in parallel (a copy or an unreachable node takes seconds); the result
    /// is in `nodes`' order. [`Launcher::None`] starts nothing.
    pub fn start_all(
        &self,
        nodes: &[String],
        args: impl Fn(&str) -> Vec<String> + Sync,
        cfg: &LaunchConfig,
    ) -> Vec<(String, Result<Agent, LaunchError>)> {
        let Some(connector) = self.connector() else { return Vec::new() };
        if let Launcher::Taktuk { params, .. } = self {
            info!(
                params = %params,
                "taktuk launcher: starting each agent with its own connector process (TakTuk's tree is \
                 not used; its parameters are ignored)"
            );
        }
        let cfg = LaunchConfig { connector: connector.to_string(), ..cfg.clone() };
        let results: Vec<Mutex<Option<Result<Agent, LaunchError>>>> =
            nodes.iter().map(|_| Mutex::new(None)).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..nodes.len().min(PARALLEL_STARTS) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(node) = nodes.get(i) else { break };
                    let r = start(node, &args(node), &cfg);
                    *results[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                });
            }
        });
        nodes
            .iter()
            .cloned()
            .zip(
                results.into_iter().map(|m| {
                    m.into_inner().unwrap_or_else(|p| p.into_inner()).expect("every node was started")
                }),
            )
            .collect()
    }
}

/// How to start an agent on a node.
#[derive(Clone, Debug)]
pub struct LaunchConfig {
    /// The command that runs a command on a node: `CONNECTOR NODE REMOTE_CMD`.
    /// A shell string, like Kadeploy's `-S`; it must pass stdin through.
    pub connector: String,
    /// What to run on the node: a name looked up on its PATH, or a path.
    pub agent_path: String,
    /// Copy `local_agent` to nodes where `agent_path` is not found.
    pub copy_agent: bool,
    /// The binary to copy: the running kacast by default.
    pub local_agent: PathBuf,
    /// Limit for checking for the agent and for copying it to one node: an ssh
    /// that hangs on a half-dead node must not hang the deployment. The agent
    /// itself runs as long as it needs.
    pub setup_timeout: Duration,
}

impl LaunchConfig {
    /// Runs `kacast` from the nodes' PATH, copying the running binary where it
    /// is missing, as Kascade copies itself.
    pub fn new(connector: &str) -> LaunchConfig {
        LaunchConfig {
            connector: connector.to_string(),
            agent_path: "kacast".to_string(),
            copy_agent: true,
            local_agent: std::env::current_exe().unwrap_or_default(),
            setup_timeout: Duration::from_secs(300),
        }
    }
}

impl Default for LaunchConfig {
    fn default() -> LaunchConfig {
        LaunchConfig::new(DEFAULT_CONNECTOR)
    }
}

/// The agent arguments for `node`: `client -s SESSION --server ADDR --name NODE EXTRA…`.
pub fn client_args(session: &str, server: SocketAddr, node: &str, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = ["client", "-s", session, "--server", &server.to_string(), "--name", node]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend_from_slice(extra);
    args
}

/// Starts the agent on `node`: `cfg.agent_path` (or its copy) with
/// `remote_args`, under the watchdog wrapper. Returns once the connector runs
/// (and, with `copy_agent`, once the node is known to have the agent): an
/// unreachable node without `copy_agent` shows in [`Agent::wait`], with ssh's
/// message.
pub fn start(node: &str, remote_args: &[String], cfg: &LaunchConfig) -> Result<Agent, LaunchError> {
    if node.is_empty() {
        return Err(LaunchError::BadNode { node: node.to_string(), why: "empty" });
    }
    if node.starts_with('-') {
        return Err(LaunchError::BadNode { node: node.to_string(), why: "it starts with '-'" });
    }
    if cfg.connector.trim().is_empty() {
        return Err(LaunchError::NoConnector { node: node.to_string() });
    }
    let (program, copied) =
        if cfg.copy_agent { copy::ensure(node, cfg)? } else { (cfg.agent_path.clone(), false) };
    let mut argv = Vec::with_capacity(remote_args.len() + 1);
    argv.push(program.clone());
    argv.extend_from_slice(remote_args);
    let running = ssh::spawn(node, &cfg.connector, &script::wrapped(&argv))?;
    info!(node, program = %program, copied, pid = running.child.id(), "agent started");
    Ok(Agent { node: node.to_string(), program, copied, running: Some(running) })
}

/// One remote agent, held as the local connector process running it.
///
/// Dropping an `Agent` that was not waited for stops the remote agent (its
/// connector is killed, so the watchdog fires) and reaps the connector.
pub struct Agent {
    /// The node, as given to [`start`].
    pub node: String,
    /// What runs on the node: `agent_path`, or the copy's path.
    pub program: String,
    /// Whether [`start`] copied the agent to the node.
    pub copied: bool,
    running: Option<ssh::Running>,
}

impl Agent {
    /// The local connector process's pid.
    pub fn pid(&self) -> Option<u32> {
        self.running.as_ref().map(|r| r.child.id())
    }

    /// Whether the connector has ended (the agent is done, or never started).
    pub fn exited(&mut self) -> bool {
        self.running.as_mut().is_none_or(|r| !matches!(r.child.try_wait(), Ok(None)))
    }

    /// Waits for the agent to end. The connector's stdin stays open until then,
    /// so the watchdog does not fire.
    pub fn wait(mut self) -> AgentExit {
        let running = self.running.take().expect("an Agent is only emptied by wait, which consumes it");
        let ssh::Running { mut child, stdin, stdout, stderr } = running;
        let status = child.wait().ok();
        drop(stdin);
        AgentExit { node: self.node.clone(), status, stdout: stdout.finish(), stderr: stderr.finish() }
    }

    /// Stops the agent: closes the connector's stdin (the remote watchdog sees
    /// EOF) and kills the connector. [`Agent::wait`] then reports how it ended.
    pub fn kill(&mut self) {
        if let Some(r) = self.running.as_mut() {
            stop(&mut r.stdin, &mut r.child);
        }
    }
}

fn stop(stdin: &mut Option<ChildStdin>, child: &mut Child) {
    drop(stdin.take());
    let _ = child.kill();
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut r) = self.running.take() {
            stop(&mut r.stdin, &mut r.child);
            let _ = r.child.wait();
        }
    }
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("node", &self.node)
            .field("program", &self.program)
            .field("copied", &self.copied)
            .field("pid", &self.pid())
            .finish()
    }
}

/// How an agent ended.
#[derive(Clone, Debug)]
pub struct AgentExit {
    pub node: String,
    /// The connector's exit status: the agent's own, or 255 when ssh failed;
    /// `None` when it could not be waited for.
    pub status: Option<ExitStatus>,
    /// The last lines of its stdout.
    pub stdout: Vec<String>,
    /// The last lines of its stderr (the agent's, or ssh's own complaint).
    pub stderr: Vec<String>,
}

impl AgentExit {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// Why it failed, for the ko file: `exited with status 255: ssh: connect to
    /// host n3 port 22: No route to host`. `None` when it succeeded.
    pub fn reason(&self) -> Option<String> {
        (!self.success()).then(|| ssh::describe(self.status, &self.stderr))
    }
}

impl fmt::Display for AgentExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason() {
            None => write!(f, "{}: ok", self.node),
            Some(why) => write!(f, "{}: {why}", self.node),
        }
    }
}

/// The master's own address on the route to `node` (a name or an address):
/// the address the agent on `node` must connect back to. A connected UDP
/// socket makes the kernel pick it from its routing table; no packet is sent.
pub fn route_address(node: &str) -> io::Result<IpAddr> {
    let target = match node.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => {
            let mut addrs: Vec<SocketAddr> = (node, 9).to_socket_addrs()?.collect();
            // IPv4 first: a rack network is IPv4, a name may resolve to both.
            addrs.sort_by_key(|a| !a.is_ipv4());
            addrs
                .first()
                .map(|a| a.ip())
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{node}: no address")))?
        }
    };
    let local: SocketAddr = match target {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect((target, 9)).map_err(|e| io::Error::new(e.kind(), format!("no route to {node}: {e}")))?;
    Ok(socket.local_addr()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launcher_parses_kascade_options() {
        assert_eq!(
            Launcher::parse("ssh", "ssh -q", "").unwrap(),
            Launcher::Ssh { connector: "ssh -q".to_string() }
        );
        assert_eq!(
            Launcher::parse("taktuk", "", "-d 2").unwrap(),
            Launcher::Taktuk { connector: DEFAULT_CONNECTOR.to_string(), params: "-d 2".to_string() }
        );
        assert_eq!(Launcher::parse("none", "", "").unwrap(), Launcher::None);
        let err = Launcher::parse("clush", "", "").unwrap_err();
        assert_eq!(err.to_string(), "unknown launcher 'clush': expected ssh, taktuk or none");
        assert!(Launcher::None
            .start_all(&["n1".to_string()], |_| Vec::new(), &LaunchConfig::default())
            .is_empty());
    }

    #[test]
    fn client_args_name_the_node() {
        let a =
            client_args("kainstall", "10.0.0.1:30765".parse().unwrap(), "n3", &["-e".into(), "tar x".into()]);
        assert_eq!(
            a,
            ["client", "-s", "kainstall", "--server", "10.0.0.1:30765", "--name", "n3", "-e", "tar x"]
        );
    }

    #[test]
    fn bad_nodes_are_refused_before_any_connection() {
        let cfg = LaunchConfig::new("false");
        let err = start("-oProxyCommand=x", &[], &cfg).unwrap_err();
        assert_eq!(err.node(), Some("-oProxyCommand=x"));
        assert!(matches!(start("", &[], &cfg), Err(LaunchError::BadNode { .. })));
        let err = start("n1", &[], &LaunchConfig::new(" ")).unwrap_err();
        assert_eq!(err.to_string(), "n1: no connector command given (e.g. 'ssh -o BatchMode=yes')");
    }

    #[test]
    fn route_to_loopback_is_loopback() {
        assert_eq!(route_address("127.0.0.1").unwrap(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert!(route_address("localhost").unwrap().is_loopback());
    }

    /// The whole path through a fake connector that runs the command locally:
    /// status, output and the node's name in the report.
    #[test]
    fn agent_runs_and_reports_through_a_connector() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake-ssh");
        std::fs::write(&fake, "#!/bin/sh\nshift\nexec sh -c \"$1\"\n").unwrap();
        let mut cfg = LaunchConfig::new(&format!("sh {}", fake.display()));
        cfg.agent_path = "/bin/sh".to_string();
        cfg.copy_agent = false;
        let args: Vec<String> = ["-c", "echo \"$1\"; echo gone >&2; exit 4", "sh", "it's $me"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let agent = start("n7", &args, &cfg).unwrap();
        assert!(!agent.copied);
        let exit = agent.wait();
        assert_eq!(exit.code(), Some(4));
        assert_eq!(exit.stdout, ["it's $me"]);
        assert_eq!(exit.to_string(), "n7: exited with status 4: gone");
    }
}
