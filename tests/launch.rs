//! The launcher against real sshds: hosts are network namespaces on a bridge
//! (tests/common/hosts.rs), the master's ssh runs in the master namespace.
//!
//! Needs root, iproute2, openssh-server and -client, pgrep; skipped otherwise
//! (a failure when `KACAST_REQUIRE_ALL_TESTS` is set, as in CI).

mod common;
#[path = "common/hosts.rs"]
mod hosts;

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hosts::Hosts;
use kacast::launch::{self, Agent, AgentExit, LaunchConfig, LaunchError, Launcher};

/// The test connector: the harness's ssh, giving up on a dead host after 3 s.
const CONNECT_TIMEOUT: u64 = 3;

/// `n` hosts, or `None` (the test is skipped, saying why).
fn rack(n: usize) -> Option<Hosts> {
    if !common::is_root() {
        common::skip("network namespaces and sshd need root");
        return None;
    }
    for tool in hosts::TOOLS.iter().chain(&["pgrep"]) {
        if let Some(why) = common::missing_tool(tool) {
            common::skip(&format!("{why} (the launcher tests need {:?} and pgrep)", hosts::TOOLS));
            return None;
        }
    }
    match Hosts::new(n) {
        Ok(h) => Some(h),
        Err(why) => {
            common::skip(&why);
            None
        }
    }
}

fn config(hosts: &Hosts, agent_path: &str) -> LaunchConfig {
    let mut cfg = LaunchConfig::new(&format!("{} -o ConnectTimeout={CONNECT_TIMEOUT}", hosts.connector()));
    cfg.agent_path = agent_path.to_string();
    cfg.copy_agent = false;
    cfg.setup_timeout = Duration::from_secs(30);
    cfg
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Unique per test run: keeps names and hashes from clashing with other runs.
fn nonce() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// [`Agent::wait`], failing the test past `limit` instead of hanging it.
fn wait_within(agent: Agent, limit: Duration) -> AgentExit {
    let node = agent.node.clone();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(agent.wait());
    });
    rx.recv_timeout(limit).unwrap_or_else(|_| panic!("agent on {node} still running after {limit:?}"))
}

/// Polls `cond` until it holds, failing with `what` after `limit`.
fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what} (after {limit:?})");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pids of the processes whose command line matches `pattern` (pgrep -f).
fn pgrep(pattern: &str) -> Vec<u32> {
    let out = Command::new("pgrep").arg("-f").arg(pattern).output().expect("run pgrep");
    String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// An agent on each of 3 hosts runs there (sshd saw the master's address
/// connect to the host's), gets its arguments intact, and its status and
/// output come back; its own exit ends the session at once.
#[test]
fn agents_run_on_their_hosts() {
    let Some(hosts) = rack(3) else { return };
    let cfg = config(&hosts, "/bin/sh");
    let tricky = "it's \"quoted\" $HOME `id` $(id); | & * ~";
    let args = strings(&["-c", "echo \"ran-on $SSH_CONNECTION\"; printf '%s\\n' \"$1\"", "sh", tricky]);
    let nodes: Vec<String> = (0..hosts.len()).map(|i| hosts.node(i)).collect();
    let launcher = Launcher::Ssh { connector: cfg.connector.clone() };
    let started = Instant::now();
    let agents = launcher.start_all(&nodes, |_| args.clone(), &cfg);
    for (i, (node, agent)) in agents.into_iter().enumerate() {
        assert_eq!(node, hosts.node(i));
        let agent = agent.unwrap_or_else(|e| panic!("start on {node}: {e}"));
        assert_eq!(
            (agent.node.as_str(), agent.program.as_str(), agent.copied),
            (node.as_str(), "/bin/sh", false)
        );
        let exit = wait_within(agent, Duration::from_secs(20));
        assert!(exit.success(), "{exit}; stdout {:?}; sshd log:\n{}", exit.stdout, hosts.sshd_log(i));
        // SSH_CONNECTION = "client_ip client_port server_ip server_port".
        let conn: Vec<&str> =
            exit.stdout[0].strip_prefix("ran-on ").expect("the agent's line").split(' ').collect();
        assert_eq!(conn[0], hosts.master_ip().to_string(), "{:?}", exit.stdout);
        assert_eq!((conn[2], conn[3]), (node.as_str(), "22"), "{:?}", exit.stdout);
        assert_eq!(exit.stdout[1], tricky);
        assert_eq!(exit.reason(), None);
    }
    // Three sessions, each ending with its agent: no watchdog or timeout in the way.
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());

    let failing = strings(&["-c", "echo oops >&2; exit 7"]);
    let exit = wait_within(launch::start(&nodes[0], &failing, &cfg).unwrap(), Duration::from_secs(20));
    assert_eq!(exit.code(), Some(7));
    assert_eq!(exit.reason().as_deref(), Some("exited with status 7: oops"));
    assert_eq!(exit.to_string(), format!("{}: exited with status 7: oops", nodes[0]));
}

/// Removes a file when the test ends, however it ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Leftover temporary copies of `copy` (`<copy>.part.*`).
fn partial_copies(copy: &Path) -> Vec<PathBuf> {
    let prefix = format!("{}.part.", copy.file_name().unwrap().to_string_lossy());
    std::fs::read_dir(copy.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

/// A node without the agent gets the local binary at /tmp/kacast-<hash>, once:
/// the next start (hosts share /tmp) finds the copy. Concurrent copies do not
/// clash. An installed agent is never copied.
#[test]
fn missing_agent_is_copied_once() {
    let Some(hosts) = rack(3) else { return };
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("agent.sh");
    let body = format!("#!/bin/sh\necho \"copied-agent $*\"\n# {}\n", nonce());
    std::fs::write(&script, &body).unwrap();
    let hash = &blake3::hash(body.as_bytes()).to_hex()[..16];
    let copy = PathBuf::from(format!("/tmp/kacast-{hash}"));
    let _cleanup = RemoveOnDrop(copy.clone());
    let mut cfg = config(&hosts, "kacast-not-installed-here");
    cfg.copy_agent = true;
    cfg.local_agent = script.clone();
    let args = strings(&["a", "b c"]);

    for i in 0..hosts.len() {
        let agent = launch::start(&hosts.node(i), &args, &cfg).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(agent.program, copy.to_str().unwrap());
        assert_eq!(agent.copied, i == 0, "host {i}: only the first start copies");
        let exit = wait_within(agent, Duration::from_secs(20));
        assert!(exit.success(), "{exit}");
        assert_eq!(exit.stdout, ["copied-agent a b c"]);
    }
    assert_eq!(std::fs::read_to_string(&copy).unwrap(), body);
    assert_eq!(std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777, 0o755);

    // Every node copying at the same time.
    std::fs::remove_file(&copy).unwrap();
    let nodes: Vec<String> = (0..hosts.len()).map(|i| hosts.node(i)).collect();
    let started =
        Launcher::Ssh { connector: cfg.connector.clone() }.start_all(&nodes, |_| args.clone(), &cfg);
    let mut copied = 0;
    for (node, agent) in started {
        let agent = agent.unwrap_or_else(|e| panic!("{node}: {e}"));
        copied += agent.copied as usize;
        let exit = wait_within(agent, Duration::from_secs(20));
        assert!(exit.success(), "{exit}");
        assert_eq!(exit.stdout, ["copied-agent a b c"]);
    }
    assert!(copied >= 1);
    assert_eq!(std::fs::read_to_string(&copy).unwrap(), body);
    assert_eq!(partial_copies(&copy), Vec::<PathBuf>::new());

    // Installed: run as is.
    cfg.agent_path = "/bin/echo".to_string();
    let agent = launch::start(&nodes[1], &args, &cfg).unwrap();
    assert_eq!((agent.program.as_str(), agent.copied), ("/bin/echo", false));
    assert_eq!(wait_within(agent, Duration::from_secs(20)).stdout, ["a b c"]);
}

/// A host whose cable is pulled: ssh's own error, naming the host, within the
/// connector's ConnectTimeout; a copy attempt fails at the probe the same way.
#[test]
fn unreachable_host_is_reported() {
    let Some(hosts) = rack(2) else { return };
    hosts.cut(1);
    let node = hosts.node(1);
    let cfg = config(&hosts, "/bin/true");
    let limit = Duration::from_secs(CONNECT_TIMEOUT + 7);

    let started = Instant::now();
    let exit = wait_within(launch::start(&node, &[], &cfg).unwrap(), limit);
    assert!(!exit.success());
    assert_eq!(exit.code(), Some(255), "{exit}");
    let reason = exit.reason().unwrap();
    assert!(reason.contains(&format!("ssh: connect to host {node} port 22")), "{reason}");
    assert!(started.elapsed() < limit);

    let mut copying = cfg.clone();
    copying.copy_agent = true;
    copying.local_agent = PathBuf::from("/bin/true");
    let started = Instant::now();
    match launch::start(&node, &[], &copying) {
        Err(e @ LaunchError::Probe { .. }) => {
            assert_eq!(e.node(), Some(node.as_str()));
            assert!(e.to_string().contains(&format!("connect to host {node} port 22")), "{e}");
        }
        other => panic!("expected a probe error, got {other:?}"),
    }
    assert!(started.elapsed() < limit);

    // The other host is fine.
    let exit = wait_within(launch::start(&hosts.node(0), &[], &cfg).unwrap(), Duration::from_secs(20));
    assert!(exit.success(), "{exit}");
}

/// Kadeploy kills only its local process tree: SIGKILL to the local ssh must
/// take the remote agent down (the wrapper's watchdog), leaving nothing behind.
#[test]
fn remote_agent_dies_with_its_ssh() {
    let Some(hosts) = rack(1) else { return };
    let dir = tempfile::tempdir().unwrap();
    // The agent is `sleep` under a unique name, so pgrep finds exactly it.
    let marker = format!("kacast-watchdog-{}", nonce());
    let agent_path = dir.path().join(&marker);
    std::os::unix::fs::symlink("/bin/sleep", &agent_path).unwrap();
    let cfg = config(&hosts, agent_path.to_str().unwrap());
    let agent = launch::start(&hosts.node(0), &strings(&["1000"]), &cfg).unwrap();
    let running = format!("^{} 1000$", agent_path.display());
    eventually(Duration::from_secs(20), "the remote agent never started", || !pgrep(&running).is_empty());
    // It really runs on the host: in the host's network namespace.
    let pid = pgrep(&running)[0];
    let ns = Command::new("ip").args(["netns", "identify", &pid.to_string()]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&ns.stdout).trim(), hosts.host_ns(0));

    let ssh = agent.pid().expect("a running connector");
    // SAFETY: our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(ssh as i32, libc::SIGKILL) }, 0);
    let exit = wait_within(agent, Duration::from_secs(10));
    assert!(!exit.success());
    // Agent, wrapper, watchdog and ssh session: nothing naming the marker is left.
    eventually(Duration::from_secs(15), "the remote agent outlived its ssh", || pgrep(&marker).is_empty());
}

/// Agent::kill stops the remote agent too, and dropping an Agent does.
#[test]
fn killed_or_dropped_agents_stop() {
    let Some(hosts) = rack(1) else { return };
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("kacast-kill-{}", nonce());
    let agent_path = dir.path().join(&marker);
    std::os::unix::fs::symlink("/bin/sleep", &agent_path).unwrap();
    let cfg = config(&hosts, agent_path.to_str().unwrap());
    let running = format!("^{} 1000$", agent_path.display());

    let mut agent = launch::start(&hosts.node(0), &strings(&["1000"]), &cfg).unwrap();
    eventually(Duration::from_secs(20), "the remote agent never started", || !pgrep(&running).is_empty());
    agent.kill();
    assert!(!wait_within(agent, Duration::from_secs(10)).success());
    eventually(Duration::from_secs(15), "the killed agent lingers", || pgrep(&marker).is_empty());

    let agent = launch::start(&hosts.node(0), &strings(&["1000"]), &cfg).unwrap();
    eventually(Duration::from_secs(20), "the remote agent never started", || !pgrep(&running).is_empty());
    drop(agent);
    eventually(Duration::from_secs(15), "the dropped agent lingers", || pgrep(&marker).is_empty());
}

/// Inside the master namespace, the route to a host leaves from the bridge
/// address: what the agents must connect back to. No route, no address.
#[test]
fn route_address_is_the_masters_bridge_address() {
    let Some(hosts) = rack(2) else { return };
    let (to_host, nowhere) =
        hosts.in_master(|| (launch::route_address(&hosts.node(1)), launch::route_address("192.0.2.1")));
    assert_eq!(to_host.unwrap(), IpAddr::V4(hosts.master_ip()));
    assert!(nowhere.is_err(), "the master namespace has no default route: {nowhere:?}");
}
