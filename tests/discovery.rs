//! UDP broadcast discovery for real, inside network namespaces the tests create.
//!
//! Every test builds its own two-host network: a "golden node" namespace and a
//! "rack" namespace joined by a veth pair (`<subnet>.1/24` and `<subnet>.2/24`,
//! no default route), so broadcasts cross a link as they do in a rack. Nothing
//! is ever sent on the host's own network: the test re-executes its own binary
//! inside the server namespace (`ip netns exec`, with `KACAST_NETNS_INNER` set)
//! and that inner run drives the library in-process. Client threads move
//! themselves into the rack namespace with setns(2), which affects only the
//! calling thread and the threads it spawns. Both namespaces (and with them the
//! veth pair) are deleted when the test ends, whatever its outcome.
//!
//! Needs root and `ip` (iproute2); skipped otherwise, a failure when
//! `KACAST_REQUIRE_ALL_TESTS` is set (CI).

mod common;

use std::fs::File;
use std::io::Read;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use kacast::chain::Sink;
use kacast::demo::Pattern;
use kacast::protocol::{DEFAULT_CONTROL_PORT, DISCOVERY_PORT};
use kacast::session::{go, Client, ClientConfig, ClientReport, Input, Server, ServerConfig, SessionReport};

/// Set (to the test's name) in the inner run, which executes the test body.
const INNER: &str = "KACAST_NETNS_INNER";
const SERVER_NS: &str = "KACAST_NETNS_SERVER";
const RACK_NS: &str = "KACAST_NETNS_RACK";
const SUBNET: &str = "KACAST_NETNS_SUBNET";
/// Identity (`dev:inode`) of the network namespace the outer run started in.
const HOST_NS: &str = "KACAST_NETNS_HOST";
/// Printed by the inner run once the body passed: proves it really ran.
const PASSED: &str = "kacast-netns-inner-passed:";

/// The link's /24: addresses below 127.0.0.1, like a 10.x rack network.
const LOW_SUBNET: &str = "10.213.7";
/// The whole inner run, namespaces set up, must end well within this.
const INNER_TIMEOUT: Duration = Duration::from_secs(60);

/// Not a multiple of the chunk size, so the last data frame is a short one.
const SIZE: u64 = 3 * 1024 * 1024 + 12_345;

/// The two namespaces of a test, as the inner run sees them.
struct Net {
    server: String,
    rack: String,
    /// The rack end of the link (the server end is `<subnet>.1`).
    rack_ip: String,
}

/// Runs `body` inside a fresh pair of namespaces linked on `subnet` (a /24 given
/// by its first three octets): the outer run sets them up, re-executes this test
/// inside the server namespace and deletes them after.
fn in_namespaces(test: &str, subnet: &str, body: fn(&Net)) {
    if std::env::var(INNER).as_deref() == Ok(test) {
        return run_inner(test, body);
    }
    if !common::is_root() {
        return common::skip("network namespaces need root");
    }
    if let Some(why) = common::missing_tool("ip") {
        return common::skip(&format!("{why} (iproute2, for network namespaces)"));
    }
    let network = match Network::create(subnet) {
        Ok(n) => n,
        Err(why) => return common::skip(&format!("cannot create a network namespace: {why}")),
    };
    let exe = std::env::current_exe().expect("path of the test binary");
    let child = Command::new("ip")
        .args(["netns", "exec", &network.server])
        .arg(exe)
        .args(["--exact", test, "--include-ignored", "--nocapture", "--test-threads=1"])
        .env(INNER, test)
        .env(SERVER_NS, &network.server)
        .env(RACK_NS, &network.rack)
        .env(SUBNET, subnet)
        .env(HOST_NS, netns_id("/proc/thread-self/ns/net"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the test inside the namespace");
    let (status, stdout, stderr) = wait_with_timeout(child, INNER_TIMEOUT);
    // Shown by the test harness when the test fails.
    println!("--- inner run stdout ---\n{stdout}--- inner run stderr ---\n{stderr}");
    let status = status.unwrap_or_else(|| panic!("inner run of {test} timed out"));
    assert!(status.success(), "inner run of {test} failed: {status}");
    assert!(stdout.contains(&format!("{PASSED} {test}")), "inner run of {test} did not run the test");
    drop(network);
}

fn run_inner(test: &str, body: fn(&Net)) {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
    let net = Net { server: var(SERVER_NS), rack: var(RACK_NS), rack_ip: format!("{}.2", var(SUBNET)) };
    // Belt and braces: never run the body in the namespace the outer run came from.
    let here = netns_id("/proc/thread-self/ns/net");
    assert_ne!(here, var(HOST_NS), "inner run is in the host's namespace");
    assert_eq!(here, netns_id(&format!("/run/netns/{}", net.server)));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "kacast=debug".into()),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
    body(&net);
    println!("{PASSED} {test}");
}

/// Waits for `child` at most `limit`, killing it past that. Returns its status
/// (`None` when killed) and everything it wrote.
fn wait_with_timeout(
    mut child: std::process::Child,
    limit: Duration,
) -> (Option<std::process::ExitStatus>, String, String) {
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout piped")));
    let err = drain(Box::new(child.stderr.take().expect("stderr piped")));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait().expect("wait for the inner run") {
            Some(s) => break Some(s),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => thread::sleep(Duration::from_millis(20)),
        }
    };
    (status, out.join().unwrap_or_default(), err.join().unwrap_or_default())
}

/// `dev:inode` of a network namespace file: equal for the same namespace.
fn netns_id(path: &str) -> String {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {path}: {e}"));
    format!("{}:{}", m.dev(), m.ino())
}

/// The namespaces of one test; deleted on drop, even when the test panicked.
struct Network {
    server: String,
    rack: String,
    created: Vec<String>,
}

static NEXT_NETWORK: AtomicUsize = AtomicUsize::new(0);

impl Network {
    /// `Err` only when no namespace can be created at all (not permitted here);
    /// a later setup failure is a test failure.
    fn create(subnet: &str) -> Result<Network, String> {
        let n = NEXT_NETWORK.fetch_add(1, Ordering::Relaxed);
        let base = format!("kacast-t-{}-{n}", std::process::id());
        let mut net = Network { server: format!("{base}-s"), rack: format!("{base}-r"), created: Vec::new() };
        for ns in [net.server.clone(), net.rack.clone()] {
            // A leftover of an earlier run that had our pid; ours to remove.
            let _ = Command::new("ip").args(["netns", "delete", &ns]).stderr(Stdio::null()).status();
            ip(&["netns", "add", &ns])?;
            net.created.push(ns);
        }
        let (s, r) = (net.server.as_str(), net.rack.as_str());
        // Both ends are created inside the namespaces: no interface ever shows
        // up on the host, not even for an instant.
        let setup: [&[&str]; 7] = [
            &["-n", s, "link", "set", "lo", "up"],
            &["-n", r, "link", "set", "lo", "up"],
            &["-n", s, "link", "add", "kc-srv", "type", "veth", "peer", "name", "kc-rack", "netns", r],
            &["-n", s, "addr", "add", &format!("{subnet}.1/24"), "broadcast", "+", "dev", "kc-srv"],
            &["-n", r, "addr", "add", &format!("{subnet}.2/24"), "broadcast", "+", "dev", "kc-rack"],
            &["-n", s, "link", "set", "kc-srv", "up"],
            &["-n", r, "link", "set", "kc-rack", "up"],
        ];
        for args in setup {
            if let Err(e) = ip(args) {
                panic!("network namespace setup failed: {e}");
            }
        }
        Ok(net)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in &self.created {
            if let Err(e) = ip(&["netns", "delete", ns]) {
                eprintln!("cannot delete network namespace {ns}: {e}");
            }
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Moves the calling thread (and the threads it will spawn) into namespace `ns`.
fn enter_netns(ns: &str) {
    let path = format!("/run/netns/{ns}");
    let f = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: a valid namespace fd; setns changes only this thread's namespace.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {ns}: {}", std::io::Error::last_os_error());
    assert_eq!(netns_id("/proc/thread-self/ns/net"), netns_id(&path));
}

fn server_config(session: &str, nodes: Option<usize>) -> ServerConfig {
    let mut c = ServerConfig::new(session);
    c.nodes = nodes;
    c.bind = Ipv4Addr::UNSPECIFIED.into();
    // The well-known ports, as deployed: the namespace has them to itself. A
    // second session falls back to a free control port, announced by its offer.
    c.control_port = None;
    c.discovery_port = Some(DISCOVERY_PORT);
    c
}

/// A client that knows no server: it must find one by broadcast.
fn client_config(session: &str, name: &str) -> ClientConfig {
    let mut c = ClientConfig::new(session, Sink::Discard);
    c.server = None;
    c.name = name.to_string();
    c.discovery_port = DISCOVERY_PORT;
    c.tries = 5;
    c.retry_interval = Duration::from_millis(500);
    c
}

/// Runs a client in namespace `ns`; its sockets, data listener included, live there.
fn spawn_client(ns: &str, config: ClientConfig) -> JoinHandle<kacast::Result<ClientReport>> {
    let ns = ns.to_string();
    thread::spawn(move || {
        enter_netns(&ns);
        Client::bind(config)?.run()
    })
}

fn input(len: u64, seed: u64) -> Input {
    Input::Reader(Box::new(Pattern::new(seed, len)))
}

fn pattern_hash(len: u64, seed: u64) -> String {
    let mut h = blake3::Hasher::new();
    std::io::copy(&mut Pattern::new(seed, len), &mut h).expect("hash the pattern");
    h.finalize().to_hex().to_string()
}

/// Every node of `names` (and no other) got the whole stream and verified it.
fn assert_session(report: &SessionReport, names: &[&str], len: u64, seed: u64) {
    assert_eq!(report.exit_code(), 0, "{}", report.render());
    assert_eq!(report.hash, Some(pattern_hash(len, seed)));
    let mut got: Vec<&str> = report.nodes.iter().map(|n| n.name.as_str()).collect();
    got.sort_unstable();
    let mut want = names.to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "{}", report.render());
    for n in &report.nodes {
        assert!(n.ok() && n.bytes == len, "{}", report.render());
    }
}

fn assert_clients(clients: Vec<JoinHandle<kacast::Result<ClientReport>>>, total: u32) {
    for c in clients {
        let r = c.join().expect("client thread").expect("client run");
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.total, total, "{r:?}");
    }
}

#[test]
fn three_clients_find_the_server_by_broadcast() {
    in_namespaces("three_clients_find_the_server_by_broadcast", LOW_SUBNET, |net| {
        let server = Server::bind(server_config("rack", Some(3))).unwrap();
        assert_eq!(server.control_addr().port(), DEFAULT_CONTROL_PORT);
        let clients: Vec<_> = ["node1", "node2", "node3"]
            .iter()
            .map(|name| spawn_client(&net.rack, client_config("rack", name)))
            .collect();
        let report = server.run(input(SIZE, 1)).unwrap();
        assert_session(&report, &["node1", "node2", "node3"], SIZE, 1);
        // They found the server across the link, and it sees them there.
        for n in &report.nodes {
            assert!(n.address.starts_with(&format!("{}:", net.rack_ip)), "{n:?}");
        }
        assert_clients(clients, 3);
    });
}

#[test]
fn two_servers_share_the_discovery_port_and_answer_only_their_session() {
    in_namespaces("two_servers_share_the_discovery_port_and_answer_only_their_session", LOW_SUBNET, |net| {
        let alpha = Server::bind(server_config("alpha", Some(2))).unwrap();
        let beta = Server::bind(server_config("beta", Some(3))).unwrap();
        // Only beta's offer tells its nodes where its control port went.
        assert_eq!(alpha.control_addr().port(), DEFAULT_CONTROL_PORT);
        assert_ne!(beta.control_addr().port(), DEFAULT_CONTROL_PORT);
        let alpha = thread::spawn(move || alpha.run(input(SIZE, 2)));
        let beta = thread::spawn(move || beta.run(input(SIZE / 2, 3)));
        // Every broadcast reaches both servers. beta also has nodes on the
        // server's own host, found through the local broadcasts. (One that
        // joins over loopback is announced to the chain at the server's address,
        // see the last test.)
        let clients = vec![
            spawn_client(&net.rack, client_config("alpha", "alpha-1")),
            spawn_client(&net.rack, client_config("alpha", "alpha-2")),
            spawn_client(&net.rack, client_config("beta", "beta-1")),
            spawn_client(&net.server, client_config("beta", "beta-2")),
            spawn_client(&net.server, client_config("beta", "beta-3")),
        ];
        let alpha = alpha.join().unwrap().unwrap();
        let beta = beta.join().unwrap().unwrap();
        assert_session(&alpha, &["alpha-1", "alpha-2"], SIZE, 2);
        assert_session(&beta, &["beta-1", "beta-2", "beta-3"], SIZE / 2, 3);
        let (a, b): (Vec<_>, Vec<_>) = clients.into_iter().enumerate().partition(|(i, _)| *i < 2);
        assert_clients(a.into_iter().map(|(_, c)| c).collect(), 2);
        assert_clients(b.into_iter().map(|(_, c)| c).collect(), 3);
    });
}

#[test]
fn a_client_of_an_unserved_session_gives_up_after_its_tries() {
    in_namespaces("a_client_of_an_unserved_session_gives_up_after_its_tries", LOW_SUBNET, |net| {
        // A server of another session hears every broadcast and must stay silent.
        let bystander = Server::bind(server_config("other", Some(1))).unwrap();
        let interval = Duration::from_millis(300);
        let started = Instant::now();
        let clients: Vec<_> = [(&net.rack, "far"), (&net.server, "near")]
            .into_iter()
            .map(|(ns, name)| {
                let mut c = client_config("nobody", name);
                c.tries = 2;
                c.retry_interval = interval;
                spawn_client(ns, c)
            })
            .collect();
        for c in clients {
            let err = c.join().unwrap().expect_err("nobody serves 'nobody'");
            assert_eq!(err.to_string(), "no kacast server answered for session 'nobody' after 2 tries");
        }
        let took = started.elapsed();
        assert!(took >= 2 * interval, "gave up too early: {took:?}");
        assert!(took < Duration::from_secs(5), "gave up too late: {took:?}");
        drop(bystander);
    });
}

#[test]
fn go_found_by_broadcast_starts_the_session_with_the_nodes_joined() {
    in_namespaces("go_found_by_broadcast_starts_the_session_with_the_nodes_joined", LOW_SUBNET, |net| {
        let server = Server::bind(server_config("later", None)).unwrap();
        let stats = server.stats();
        let run = thread::spawn(move || server.run(input(SIZE, 4)));
        let clients = vec![
            spawn_client(&net.rack, client_config("later", "n1")),
            spawn_client(&net.rack, client_config("later", "n2")),
        ];
        let deadline = Instant::now() + Duration::from_secs(5);
        while stats.joined.load(Ordering::Relaxed) < 2 {
            assert!(Instant::now() < deadline, "the nodes did not join");
            thread::sleep(Duration::from_millis(20));
        }
        let rack = net.rack.clone();
        thread::spawn(move || {
            enter_netns(&rack);
            go(&client_config("later", "operator"))
        })
        .join()
        .unwrap()
        .expect("go finds the server by broadcast");
        let report = run.join().unwrap().unwrap();
        assert_session(&report, &["n1", "n2"], SIZE, 4);
        assert_clients(clients, 2);
    });
}

/// A node on the golden node's own host reaches the server through the loopback
/// broadcast, so the server knows it as 127.0.0.1 and sends that address to the
/// next node of the chain, which cannot reach it. On a 192.168.x network the
/// loopback node sorts first by IP, so its chain child is a remote node (the
/// loopback broadcast goes out first, so its offer is usually the first answer).
/// The server now announces such a parent at its own address as the child sees
/// it; before, the remote node waited 2 x `--timeout` and resumed from the
/// server, which worked only while the server's buffer still held byte 0.
#[test]
fn a_node_on_the_servers_host_is_reachable_by_the_rest_of_the_chain() {
    in_namespaces("a_node_on_the_servers_host_is_reachable_by_the_rest_of_the_chain", "192.168.213", |net| {
        let server = Server::bind(server_config("local", Some(2))).unwrap();
        let clients = vec![
            spawn_client(&net.server, client_config("local", "on-server")),
            spawn_client(&net.rack, client_config("local", "on-rack")),
        ];
        let report = server.run(input(SIZE, 5)).unwrap();
        assert_session(&report, &["on-server", "on-rack"], SIZE, 5);
        assert_clients(clients, 2);
    });
}
