//! The chain on a shaped virtual rack, side by side with a star and udpcast;
//! and what relaying costs the CPU, copy against zero-copy.
//!
//! ```text
//! cargo bench --bench rack -- --quick        # 256 MiB, N = 2, 4, 8, both profiles
//! cargo bench --bench rack                   # 1 GiB, N = 2, 4, 8, 16, both profiles
//! cargo bench --bench rack -- --scenario relay
//! ```
//!
//! *rack*: a bridge in one network namespace, the server and N nodes each in
//! their own namespace on a veth to it. Every veth is shaped on both ends with
//! `tc tbf` (each direction of every link at the profile's rate: 100 Mbit/s or
//! 1 Gbit/s), optionally behind `netem` for added latency. For each profile and
//! each N, in one run and interleaved, four ways to get the same file onto
//! every node, all receivers discarding:
//!
//! - *chain*: the release `kacast server -i FILE` and N `kacast client --discard`
//!   (each node verifies the BLAKE3 hash; the server exits 0 only if all did);
//! - *copy chain*: the same chain of nodes as plain read/write relays (this
//!   bench re-executed): no framing, hashing or replay buffer, the floor;
//! - *star*: every node pulls the whole file from the server over its own TCP
//!   connection (this bench re-executed as a plain read/write server and as N
//!   pullers that count the bytes);
//! - *udpcast*: Debian's `udp-sender --min-receivers N` and N `udp-receiver
//!   --file /dev/null`, multicast on the bridge.
//!
//! Each run is timed from the first process's start to the last one's exit, and
//! every process's CPU time comes from `wait4`. Beside every figure: the share
//! of the machine's CPUs that were busy (from /proc/stat, interrupts included:
//! veth and tc work runs in softirq), and how much of that was other processes.
//!
//! *relay*: one relaying thread on loopback between a sending and a discarding
//! thread, in each of the ways a node could forward (plain copy loop, kacast's
//! receive-into-the-ring-and-send, splice + tee keeping a copy in user memory,
//! splice alone, MSG_ZEROCOPY sends), with the relaying thread's CPU per GiB.

mod common;
#[path = "rack/compress.rs"]
mod compress;

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use common::*;
use kacast::size::{human, parse_size};

const USAGE: &str = "\
usage: cargo bench --bench rack [-- OPTIONS]
  --quick            256 MiB, N = 2,4,8 (unless --size / --nodes say otherwise)
  --scenario LIST    rack, relay, compress or all (default all)
  --size SIZE        rack: bytes every node receives (default 1G)
  --nodes LIST       rack: rack sizes, comma-separated (default 2,4,8,16)
  --profiles LIST    rack: link rates, from 100mbit,1gbit (default both)
  --tools LIST       rack: from chain,copy,star,udpcast (default all four), and
                     baseline: the chain of the kacast binary named by
                     KACAST_RACK_BASELINE (another commit's build), side by side
  --delay MS         rack: one-way latency added on every host's link with netem
                     (default 0; needs sch_netem, which this machine's kernel lacks)
  --relay-size SIZE  relay: bytes relayed per variant (default 1G, quick 512M)
  --timeout SECS     give up on one run after this long (default: 3 x the
                     expected time + 60)
  --no-doc           do not rewrite docs/PERFORMANCE.md";

/// Data chunk of the star and the relay variants: kacast's chunk size, so
/// every way moves the bytes in the same pieces.
const BUF: usize = kacast::chain::CHUNK_SIZE;
/// How often the wait loop polls the children: the resolution of the times.
const POLL: Duration = Duration::from_millis(2);
/// TCP payload per frame over what tbf counts for it: with timestamps a full
/// segment carries 1448 bytes in a 1514-byte Ethernet frame (tbf counts from the
/// Ethernet header, without preamble or FCS).
const TCP_EFFICIENCY: f64 = 1448.0 / 1514.0;
/// Hidden sub-commands: this bench re-executed as the star's server and pullers.
const STAR_SERVE: &str = "__star-serve";
const STAR_PULL: &str = "__star-pull";
const COPY_RELAY: &str = "__copy-relay";
/// Extra `kacast server` options for the chain runs, from the environment.
const CHAIN_ARGS_ENV: &str = "KACAST_RACK_CHAIN_ARGS";
/// Another kacast binary (an earlier commit's build), run as the `baseline`
/// tool beside this one's chain: a data-plane change measured side by side.
const BASELINE_ENV: &str = "KACAST_RACK_BASELINE";
/// The TCP congestion control of every host of the rack (`cubic`, `bbr`),
/// set in each namespace; unset, the namespaces inherit this machine's.
const CC_ENV: &str = "KACAST_RACK_CC";
/// How long a star puller keeps trying to connect while its server starts.
const CONNECT_FOR: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tool {
    Chain,
    Star,
    Udpcast,
    /// A chain of plain read/write relays (this bench re-executed): no framing,
    /// no hashing, no replay buffer; the floor a TCP chain can reach here.
    CopyChain,
    /// The chain with the golden node compressing on the fly, as `kacast
    /// clone --compress zstd:LEVEL` does, and every node decompressing.
    ChainZstd1,
    ChainZstd3,
    /// The chain of the kacast binary named by `KACAST_RACK_BASELINE`.
    Baseline,
}

impl Tool {
    /// The zstd level of a compressing chain.
    fn zstd(self) -> Option<u32> {
        match self {
            Tool::ChainZstd1 => Some(1),
            Tool::ChainZstd3 => Some(3),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Tool::ChainZstd1 => "chain zstd:1",
            Tool::ChainZstd3 => "chain zstd:3",
            Tool::Chain => "chain",
            Tool::Star => "star",
            Tool::Udpcast => "udpcast",
            Tool::CopyChain => "copy chain",
            Tool::Baseline => "baseline",
        }
    }
}

#[derive(Clone, Copy)]
struct Profile {
    name: &'static str,
    /// Link rate, bits per second.
    bits: u64,
}

impl Profile {
    /// What one TCP stream can carry through tbf at this rate, bytes per second.
    fn tcp_limit(self) -> f64 {
        self.bits as f64 / 8.0 * TCP_EFFICIENCY
    }
}

const PROFILES: [Profile; 2] =
    [Profile { name: "100mbit", bits: 100_000_000 }, Profile { name: "1gbit", bits: 1_000_000_000 }];

struct Opts {
    rack: bool,
    relay: bool,
    compress: bool,
    size: u64,
    nodes: Vec<usize>,
    profiles: Vec<Profile>,
    tools: Vec<Tool>,
    delay_ms: f64,
    relay_size: u64,
    timeout: Option<Duration>,
    doc: bool,
    given: Vec<String>,
}

fn parse_args() -> Result<Opts> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let quick = args.iter().any(|a| a == "--quick");
    let mut o = Opts {
        rack: true,
        relay: true,
        compress: true,
        size: if quick { 256 << 20 } else { 1 << 30 },
        nodes: if quick { vec![2, 4, 8] } else { vec![2, 4, 8, 16] },
        profiles: PROFILES.to_vec(),
        tools: vec![Tool::Chain, Tool::CopyChain, Tool::Star, Tool::Udpcast],
        delay_ms: 0.0,
        relay_size: if quick { 512 << 20 } else { 1 << 30 },
        timeout: None,
        doc: true,
        given: args.clone(),
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{a} needs a value\n{USAGE}"));
        let list = |v: String| v.split(',').map(|s| s.trim().to_string()).collect::<Vec<_>>();
        match a.as_str() {
            "--quick" => {}
            "--scenario" => {
                (o.rack, o.relay, o.compress) = (false, false, false);
                for v in list(value()?) {
                    match v.as_str() {
                        "rack" => o.rack = true,
                        "relay" => o.relay = true,
                        "compress" => o.compress = true,
                        "all" => (o.rack, o.relay, o.compress) = (true, true, true),
                        other => bail!("unknown scenario '{other}'\n{USAGE}"),
                    }
                }
            }
            "--size" => o.size = parse_size(&value()?)?,
            "--relay-size" => o.relay_size = parse_size(&value()?)?,
            "--nodes" => {
                o.nodes = list(value()?)
                    .iter()
                    .map(|n| n.parse::<usize>())
                    .collect::<Result<_, _>>()
                    .context("--nodes takes a list such as 2,4,8")?
            }
            "--profiles" => {
                o.profiles = list(value()?)
                    .iter()
                    .map(|p| {
                        PROFILES.iter().find(|x| x.name == p).copied().ok_or_else(|| anyhow!("profile '{p}'"))
                    })
                    .collect::<Result<_>>()?
            }
            "--tools" => {
                o.tools = list(value()?)
                    .iter()
                    .map(|t| match t.as_str() {
                        "chain" => Ok(Tool::Chain),
                        "star" => Ok(Tool::Star),
                        "udpcast" => Ok(Tool::Udpcast),
                        "copy" => Ok(Tool::CopyChain),
                        "baseline" if std::env::var_os(BASELINE_ENV).is_some() => Ok(Tool::Baseline),
                        "baseline" => {
                            Err(anyhow!("tool 'baseline' needs {BASELINE_ENV}=PATH of a kacast binary"))
                        }
                        other => Err(anyhow!("unknown tool '{other}'")),
                    })
                    .collect::<Result<_>>()?
            }
            "--delay" => o.delay_ms = value()?.parse().context("--delay: milliseconds")?,
            "--timeout" => {
                o.timeout = Some(Duration::from_secs(value()?.parse().context("--timeout: seconds")?))
            }
            "--no-doc" => o.doc = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => bail!("unknown argument '{a}'\n{USAGE}"),
        }
    }
    if o.size == 0 || o.nodes.is_empty() || o.nodes.contains(&0) || o.nodes.iter().any(|&n| n > 200) {
        bail!("--size must be at least 1 and every --nodes entry 1 to 200\n{USAGE}");
    }
    Ok(o)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some(STAR_SERVE) => star_serve(&args[2..]),
        Some(STAR_PULL) => star_pull(&args[2..]),
        Some(COPY_RELAY) => copy_relay(&args[2..]),
        _ => run(),
    };
    if let Err(e) = result {
        eprintln!("bench rack: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let opts = parse_args()?;
    let command = if opts.given.is_empty() {
        "cargo bench --bench rack".to_string()
    } else {
        format!("cargo bench --bench rack -- {}", opts.given.join(" "))
    };
    let command = match std::env::var(CHAIN_ARGS_ENV) {
        Ok(extra) => format!("{CHAIN_ARGS_ENV}='{extra}' {command}"),
        Err(_) => command,
    };
    let command = match std::env::var(CC_ENV) {
        Ok(cc) => format!("{CC_ENV}={cc} {command}"),
        Err(_) => command,
    };
    let mut doc = std::fs::read_to_string(DOC).unwrap_or_default();
    if opts.relay {
        let section = relay_scenario(&opts, &command)?;
        println!("\n{section}");
        doc = put_section(&doc, RELAY_HEADING, &section);
        if opts.doc {
            std::fs::write(DOC, &doc).with_context(|| format!("write {DOC}"))?;
        }
    }
    if opts.rack {
        let section = rack_scenario(&opts, &command)?;
        println!("\n{section}");
        // Re-read: the relay section may just have been written.
        doc = put_section(&std::fs::read_to_string(DOC).unwrap_or(doc), RACK_HEADING, &section);
        if opts.doc {
            std::fs::write(DOC, &doc).with_context(|| format!("write {DOC}"))?;
        }
    }
    if opts.compress {
        let section = compress::scenario(&opts, &command)?;
        println!("\n{section}");
        doc = put_section(&std::fs::read_to_string(DOC).unwrap_or(doc), compress::HEADING, &section);
        if opts.doc {
            std::fs::write(DOC, &doc).with_context(|| format!("write {DOC}"))?;
        }
    }
    if opts.doc {
        eprintln!("bench rack: wrote {DOC}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The virtual rack

/// The namespaces of one rack: a bridge, the server, the nodes. Dropping it
/// kills what runs there and deletes them (the veths go with them).
struct Net {
    subnet: String,
    master: String,
    server: String,
    nodes: Vec<String>,
    created: Vec<String>,
}

/// One `ip`/`tc` invocation that must succeed.
fn sh(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {program}"))?;
    if !out.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Net {
    fn new(nodes: usize) -> Result<Net> {
        let pid = std::process::id();
        let base = format!("krk-{pid}");
        let mut net = Net {
            subnet: format!("10.98.{}", pid % 250 + 1),
            master: format!("{base}-br"),
            server: format!("{base}-s"),
            nodes: (1..=nodes).map(|i| format!("{base}-n{i}")).collect(),
            created: Vec::new(),
        };
        let m = net.master.clone();
        sh("ip", &["netns", "add", &m]).context("create a network namespace (needs root)")?;
        net.created.push(m.clone());
        sh("ip", &["-n", &m, "link", "set", "lo", "up"])?;
        sh("ip", &["-n", &m, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])?;
        sh("ip", &["-n", &m, "link", "set", "br0", "up"])?;
        let hosts: Vec<String> = std::iter::once(net.server.clone()).chain(net.nodes.clone()).collect();
        for (i, h) in hosts.iter().enumerate() {
            sh("ip", &["netns", "add", h])?;
            net.created.push(h.clone());
            let veth = format!("v{i}");
            let addr = format!("{}/24", net.ip(i));
            sh("ip", &["-n", h, "link", "set", "lo", "up"])?;
            sh("ip", &["-n", &m, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", h])?;
            sh("ip", &["-n", &m, "link", "set", &veth, "master", "br0"])?;
            sh("ip", &["-n", &m, "link", "set", &veth, "up"])?;
            // With its broadcast address: udpcast's control traffic uses it.
            sh("ip", &["-n", h, "addr", "add", &addr, "brd", "+", "dev", "eth0"])?;
            sh("ip", &["-n", h, "link", "set", "eth0", "up"])?;
            // udpcast's multicast goes out of eth0, the only interface.
            sh("ip", &["-n", h, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
            if let Ok(cc) = std::env::var(CC_ENV) {
                let setting = format!("net.ipv4.tcp_congestion_control={cc}");
                sh("ip", &["netns", "exec", h, "sysctl", "-q", "-w", &setting]).with_context(|| {
                    format!("{CC_ENV}={cc}: a namespace may use it only if net.ipv4.tcp_allowed_congestion_control lists it")
                })?;
            }
        }
        Ok(net)
    }

    /// Host `i`'s address: 0 is the server, 1..=N the nodes.
    fn ip(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, 10 + i)
    }

    fn hosts(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.server).chain(&self.nodes)
    }

    fn ns(&self, name: &str) -> Result<File> {
        File::open(format!("/run/netns/{name}")).with_context(|| format!("open namespace {name}"))
    }

    /// Shapes both ends of every host's veth at `p`'s rate: tbf on the host's
    /// eth0 (what it sends) and on the bridge's port (what it receives), with
    /// `delay_ms` of netem in front of the host's side.
    fn shape(&self, p: Profile, delay_ms: f64) -> Result<()> {
        let rate = p.bits.to_string();
        let bytes_per_s = p.bits / 8;
        // At least a 64 KiB GSO segment plus a frame, so tbf never has to split
        // one (which would cost CPU the real NIC would not spend); at least 1 ms
        // of line rate, so the timer's resolution does not cap the rate.
        let burst = (bytes_per_s / 1000).max(64 * 1024 + 1514 * 2).to_string();
        // 20 ms of line rate queued before tbf drops: TCP then sees its loss in
        // about an RTT, as behind a real switch port.
        let limit = (bytes_per_s / 50 + 64 * 1024 * 2).to_string();
        let tbf = ["tbf", "rate", &rate, "burst", &burst, "limit", &limit];
        for (i, h) in self.hosts().enumerate() {
            let port = format!("v{i}");
            let mut ends: Vec<(String, String)> =
                vec![(self.master.clone(), port), (h.clone(), "eth0".into())];
            if delay_ms > 0.0 {
                let (ns, dev) = ends.pop().expect("two ends");
                let _ = sh("tc", &["-n", &ns, "qdisc", "del", "dev", &dev, "root"]);
                let delay = format!("{delay_ms}ms");
                sh(
                    "tc",
                    &[
                        "-n", &ns, "qdisc", "add", "dev", &dev, "root", "handle", "1:", "netem", "delay",
                        &delay,
                    ]
                    .iter()
                    .copied()
                    .chain(["limit", "100000"])
                    .collect::<Vec<_>>(),
                )
                .context("--delay needs the kernel's netem qdisc (sch_netem)")?;
                let mut a = vec!["-n", &ns, "qdisc", "add", "dev", &dev, "parent", "1:1", "handle", "10:"];
                a.extend(tbf);
                sh("tc", &a)?;
            }
            for (ns, dev) in &ends {
                let mut a = vec!["-n", ns, "qdisc", "replace", "dev", dev, "root"];
                a.extend(tbf);
                sh("tc", &a)?;
            }
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            // Whatever still runs there (a hung receiver) goes first.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: signals a process in a namespace this bench made.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            let _ = Command::new("ip").args(["netns", "delete", ns]).stderr(Stdio::null()).status();
        }
    }
}

/// Busy and stolen CPU seconds of the whole machine, interrupts included: with
/// veth and tc the network's work runs in softirq, booked to no process.
#[derive(Clone, Copy)]
struct Stat {
    busy: f64,
    steal: f64,
    at: Instant,
}

impl Stat {
    fn now() -> Stat {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let t: Vec<f64> = stat
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0.0))
            .collect();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let g = |i: usize| t.get(i).copied().unwrap_or(0.0) / hz;
        // user nice system idle iowait irq softirq steal
        Stat { busy: g(0) + g(1) + g(2) + g(5) + g(6), steal: g(7), at: Instant::now() }
    }
}

fn cpus() -> f64 {
    thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// One run of one tool at one N.
struct Run {
    tool: Tool,
    n: usize,
    wall_s: f64,
    /// kacast only: session start to the last node's report (server's report).
    stream_s: Option<f64>,
    /// kacast only: the bytes each node received (compressed, when it was).
    wire: Option<u64>,
    /// kacast only: the largest chunk the stream was cut into (`--chunk auto`
    /// stays at its small chunks on a slow chain); it sets the pipeline fill.
    largest_chunk: Option<u64>,
    nodes: Cpu,
    server: Cpu,
    /// Machine CPU busy over the run, in cores (all processes and softirq).
    busy: f64,
    /// Of which the processes of this run (from `wait4`), in cores.
    ours: f64,
    steal: f64,
    load: String,
}

fn rack_scenario(opts: &Opts, command: &str) -> Result<String> {
    for tool in ["ip", "tc", "udp-sender", "udp-receiver"] {
        if opts.tools.contains(&Tool::Udpcast) || !tool.starts_with("udp") {
            let found = std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
            if !found {
                bail!("`{tool}` is missing (iproute2, udpcast)");
            }
        }
    }
    let load0 = loadavg();
    let tmp = tempfile::Builder::new().prefix("kacast-rack-").tempdir().context("temporary directory")?;
    let file = tmp.path().join("source.img");
    eprintln!("bench rack: writing {} of pseudo-random bytes", human(opts.size));
    let hash = write_source(&file, opts.size)?;
    let max_n = opts.nodes.iter().copied().max().unwrap_or(1);
    let net = Net::new(max_n)?;
    let mut sections = Vec::new();
    let mut port = 20_000u16;
    for &p in &opts.profiles {
        net.shape(p, opts.delay_ms)?;
        let mut runs = Vec::new();
        for &n in &opts.nodes {
            for &tool in &opts.tools {
                port += 1;
                let dir = tmp.path().join(format!("{}-{}-{n}", p.name, tool.name()));
                std::fs::create_dir(&dir)?;
                let expected =
                    opts.size as f64 / p.tcp_limit() * if tool == Tool::Star { n as f64 } else { 1.0 };
                let timeout = opts.timeout.unwrap_or_else(|| Duration::from_secs_f64(expected * 3.0 + 60.0));
                let r = one_run(&net, tool, n, &file, &hash, opts.size, port, &dir, timeout);
                let r = match r {
                    Ok(r) => r,
                    Err(e) => {
                        let kept = tmp.keep();
                        let _ = std::fs::remove_file(kept.join("source.img"));
                        return Err(e.context(format!(
                            "{} {} N={n} (logs kept in {})",
                            p.name,
                            tool.name(),
                            kept.display()
                        )));
                    }
                };
                eprintln!(
                    "bench rack: {} {:>7} N={n:>2}: {:6.2} s, {:6.2} MB/s per node ({:5.1}% of the TCP \
                     limit), nodes {:.2} CPU s/GiB, {:.2} of {} cores busy ({:.2} ours), load {}",
                    p.name,
                    tool.name(),
                    r.wall_s,
                    mb_s(opts.size, r.wall_s),
                    100.0 * opts.size as f64 / r.wall_s / p.tcp_limit(),
                    r.nodes.total() / gib(opts.size) / n as f64,
                    r.busy,
                    cpus(),
                    r.ours,
                    r.load
                );
                runs.push(r);
            }
        }
        sections.push(render_profile(p, opts, &runs));
    }
    drop(net);
    Ok(render_rack_doc(opts, command, &load0, &sections))
}

#[allow(clippy::too_many_arguments)]
fn one_run(
    net: &Net,
    tool: Tool,
    n: usize,
    file: &Path,
    hash: &str,
    size: u64,
    port: u16,
    dir: &Path,
    timeout: Duration,
) -> Result<Run> {
    let s = |v: &str| v.to_string();
    let server_ip = net.ip(0);
    let me = std::env::current_exe().context("this bench's path")?;
    let mut rack = Rack::default();
    let load = loadavg();
    let stat0 = Stat::now();
    let started = Instant::now();
    let report = dir.join("report.json");
    let server_ns = net.ns(&net.server)?;
    let node_ns: Vec<File> = net.nodes[..n].iter().map(|h| net.ns(h)).collect::<Result<_>>()?;
    let server_args: Vec<String>;
    match tool {
        Tool::Chain | Tool::ChainZstd1 | Tool::ChainZstd3 | Tool::Baseline => {
            let kacast = match tool {
                Tool::Baseline => PathBuf::from(std::env::var_os(BASELINE_ENV).unwrap_or_default()),
                _ => PathBuf::from(KACAST),
            };
            let input = match tool.zstd() {
                None => [s("-i"), file.display().to_string()],
                Some(level) => [s("-e"), format!("zstd -T0 -{level} -q -c < '{}'", file.display())],
            };
            let sink = match tool.zstd() {
                None => vec![s("--discard")],
                Some(_) => vec![s("-e"), s("zstd -dc > /dev/null")],
            };
            server_args = vec![
                s("-q"),
                s("server"),
                s("-s"),
                s("rack"),
                s("-n"),
                n.to_string(),
                input[0].clone(),
                input[1].clone(),
                s("--bind"),
                server_ip.clone(),
                s("--port"),
                port.to_string(),
                s("--no-discovery"),
                s("--report"),
                report.display().to_string(),
            ];
            // Experiments (`--chunk 64K`): extra server options, named in the doc's command.
            let mut server_args = server_args;
            if let Ok(extra) = std::env::var(CHAIN_ARGS_ENV) {
                server_args.extend(extra.split_whitespace().map(String::from));
            }
            rack.spawn_in("server", &kacast, &server_args, dir, Some(&server_ns))?;
            for (k, ns) in node_ns.iter().enumerate() {
                let args = vec![
                    s("-q"),
                    s("client"),
                    s("-s"),
                    s("rack"),
                    s("--server"),
                    format!("{server_ip}:{port}"),
                    s("--name"),
                    format!("node{:02}", k + 1),
                    s("--bind"),
                    net.ip(k + 1),
                    s("--tries"),
                    s("200"),
                    s("--retry-interval"),
                    s("0.05"),
                ];
                let args = [args, sink.clone()].concat();
                rack.spawn_in(&format!("node{:02}", k + 1), &kacast, &args, dir, Some(ns))?;
            }
        }
        Tool::Star => {
            server_args = vec![file.display().to_string(), format!("{server_ip}:{port}"), n.to_string()];
            let mut a = vec![s(STAR_SERVE)];
            a.extend(server_args);
            rack.spawn_in("server", &me, &a, dir, Some(&server_ns))?;
            for (k, ns) in node_ns.iter().enumerate() {
                let a = vec![s(STAR_PULL), format!("{server_ip}:{port}"), size.to_string()];
                rack.spawn_in(&format!("node{:02}", k + 1), &me, &a, dir, Some(ns))?;
            }
        }
        Tool::CopyChain => {
            let a = vec![file.display().to_string(), format!("{server_ip}:{port}"), s("1")];
            server_args = std::iter::once(s(STAR_SERVE)).chain(a).collect();
            rack.spawn_in("server", &me, &server_args, dir, Some(&server_ns))?;
            for (k, ns) in node_ns.iter().enumerate() {
                let upstream = format!("{}:{port}", net.ip(k));
                let mut a = vec![s(COPY_RELAY), upstream, size.to_string()];
                if k + 1 < n {
                    a.push(format!("{}:{port}", net.ip(k + 1)));
                }
                rack.spawn_in(&format!("node{:02}", k + 1), &me, &a, dir, Some(ns))?;
            }
        }
        Tool::Udpcast => {
            // Receivers first: the sender starts once N of them have said hello.
            let base = [s("--interface"), s("eth0"), s("--nokbd"), s("--portbase"), port.to_string()];
            let mut sender = base.to_vec();
            sender.extend([
                s("--file"),
                file.display().to_string(),
                s("--min-receivers"),
                n.to_string(),
                s("--no-progress"),
            ]);
            rack.spawn_in("server", Path::new("/usr/bin/udp-sender"), &sender, dir, Some(&server_ns))?;
            for (k, ns) in node_ns.iter().enumerate() {
                let mut a = base.to_vec();
                a.extend([s("--file"), s("/dev/null"), s("--no-progress")]);
                rack.spawn_in(
                    &format!("node{:02}", k + 1),
                    Path::new("/usr/bin/udp-receiver"),
                    &a,
                    dir,
                    Some(ns),
                )?;
            }
        }
    }
    drop((server_ns, node_ns));
    loop {
        rack.reap()?;
        if rack.all_exited() {
            break;
        }
        if let Some(p) = rack.procs.iter().find(|p| p.exit.is_some_and(|e| !e.ok())) {
            bail!("{} ended with {}\n{}", p.name, p.exit.expect("exited").describe(), rack.logs());
        }
        if started.elapsed() > timeout {
            bail!("not done after {} s\n{}", timeout.as_secs(), rack.logs());
        }
        thread::sleep(POLL);
    }
    let stat1 = Stat::now();
    if let Some(p) = rack.procs.iter().find(|p| !p.exit.is_some_and(|e| e.ok())) {
        bail!("{} failed\n{}", p.name, rack.logs());
    }
    let end = rack.procs.iter().filter_map(|p| p.exit).map(|e| e.at).max().expect("processes ran");
    let wall_s = (end - started).as_secs_f64();
    let mut stream_s = None;
    let mut wire = None;
    let mut largest_chunk = None;
    if matches!(tool, Tool::Chain | Tool::ChainZstd1 | Tool::ChainZstd3 | Tool::Baseline) {
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report)?)?;
        wire = r["bytes"].as_u64();
        // A compressed stream is checked by each node's hash and by zstd's
        // own checksum (the node's `zstd -d` exits non-zero on a bad frame).
        let (size, hash) = match tool.zstd() {
            None => (Some(size), Some(hash)),
            Some(_) => (wire, r["hash"].as_str()),
        };
        let ok = r["nodes"].as_array().is_some_and(|a| {
            a.len() == n && a.iter().all(|x| x["hash_ok"] == true && x["bytes"].as_u64() == size)
        });
        if r["bytes"].as_u64() != size || r["hash"].as_str() != hash || !ok {
            bail!("the server's report does not match the source: {r}");
        }
        // How the end travels down the chain: the per-hop delay is the chunk's
        // store-and-forward time plus what scheduling adds at each hop.
        let done: Vec<f64> =
            r["nodes"].as_array().into_iter().flatten().filter_map(|x| x["duration_s"].as_f64()).collect();
        if let (Some(first), Some(last)) =
            (done.iter().copied().reduce(f64::min), done.iter().copied().reduce(f64::max))
        {
            if n > 1 {
                let each: Vec<String> = done.iter().map(|d| format!("{d:.3}")).collect();
                eprintln!(
                    "bench rack: {} N={n}: first node done {first:.3} s after the start, last {last:.3} s \
                     ({:.1} ms per hop; in chain order {})",
                    tool.name(),
                    (last - first) * 1000.0 / (n - 1) as f64,
                    each.join(" ")
                );
            }
        }
        // Where `--chunk auto` switched to large chunks, if it did (baselines
        // from before it have no such field).
        let chunks = &r["chunks"];
        largest_chunk = match chunks["large_from"].as_u64() {
            Some(_) => chunks["large"].as_u64(),
            None => chunks["first"].as_u64(),
        };
        if chunks.is_object() {
            eprintln!(
                "bench rack: {} N={n}: chunks of {} from the start, {} from {} (pace measured {} MB/s)",
                tool.name(),
                chunks["first"],
                chunks["large"],
                chunks["large_from"],
                chunks["measured_mb_s"]
            );
        }
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        stream_s = Some(f("transfer_s") + f("pipeline_emptied_s"));
    }
    let cpu = |i: usize| rack.procs[i].exit.expect("exited").cpu;
    let nodes = (1..rack.procs.len()).map(cpu).fold(Cpu::default(), |a, c| a + c);
    let span = (stat1.at - stat0.at).as_secs_f64();
    Ok(Run {
        tool,
        n,
        wall_s,
        stream_s,
        wire,
        largest_chunk,
        nodes,
        server: cpu(0),
        busy: (stat1.busy - stat0.busy) / span,
        ours: (nodes + cpu(0)).total() / span,
        steal: (stat1.steal - stat0.steal) / span,
        load,
    })
}

fn render_profile(p: Profile, opts: &Opts, runs: &[Run]) -> String {
    let g = gib(opts.size);
    let limit = p.tcp_limit();
    let find = |tool: Tool, n: usize| runs.iter().find(|r| r.tool == tool && r.n == n);
    let n0 = opts.nodes.iter().copied().min().unwrap_or(1);
    let mut t = format!(
        "### {} per link{}\n\n\
         TCP limit {:.2} MB/s per node (rate x 1448/1514).\n\n\
         | N | tool | time s | MB/s per node | % of TCP limit | time vs chain | time vs N={n0} | \
         node CPU s/GiB | server CPU s/GiB | cores busy (of {}) | ours, others, steal | load 1 min |\n\
         |--:|---|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|\n",
        if p.bits >= 1_000_000_000 {
            format!("{} Gbit/s", p.bits / 1_000_000_000)
        } else {
            format!("{} Mbit/s", p.bits / 1_000_000)
        },
        if opts.delay_ms > 0.0 { format!(", {} ms added one way", opts.delay_ms) } else { String::new() },
        limit / 1e6,
        cpus(),
    );
    for r in runs {
        let rate = opts.size as f64 / r.wall_s;
        let vs_chain = find(Tool::Chain, r.n).map_or("".into(), |c| format!("{:.2}", r.wall_s / c.wall_s));
        let vs_n0 = find(r.tool, n0).map_or("".into(), |c| format!("{:.2}", r.wall_s / c.wall_s));
        let stream = r
            .stream_s
            .map_or(String::new(), |s| format!(" (stream {:.1}%)", 100.0 * opts.size as f64 / s / limit));
        let _ = writeln!(
            t,
            "| {} | {} | {:.2} | {:.2} | {:.1}{stream} | {vs_chain} | {vs_n0} | {:.3} | {:.3} | {:.2} ({:.0}%) | \
             {:.2}, {:.2}, {:.2} | {} |",
            r.n,
            r.tool.name(),
            r.wall_s,
            rate / 1e6,
            100.0 * rate / limit,
            r.nodes.total() / g / r.n as f64,
            r.server.total() / g,
            r.busy,
            100.0 * r.busy / cpus(),
            r.ours,
            (r.busy - r.ours).max(0.0),
            r.steal,
            r.load,
        );
    }
    // How the chain's time grows with N, against the pipeline's fill: one
    // chunk (the largest the run sent) per hop at the link's rate.
    if let Some(c0) = find(Tool::Chain, n0) {
        let _ = writeln!(t);
        for &n in opts.nodes.iter().filter(|&&n| n > n0) {
            if let Some(c) = find(Tool::Chain, n) {
                let chunk = c.largest_chunk.unwrap_or(BUF as u64);
                let fill = (n - n0) as f64 * chunk as f64 / limit;
                let _ = writeln!(
                    t,
                    "- chain N={n}: {:.2} s = N={n0} ({:.2} s) + {:.2} s; pipeline fill for {} more hops \
                     ({} KiB chunks) {:.2} s; {:.1}% over N={n0} + fill.",
                    c.wall_s,
                    c0.wall_s,
                    c.wall_s - c0.wall_s,
                    n - n0,
                    chunk / 1024,
                    fill,
                    100.0 * (c.wall_s / (c0.wall_s + fill) - 1.0)
                );
            }
        }
    }
    t
}

fn render_rack_doc(opts: &Opts, command: &str, load0: &str, sections: &[String]) -> String {
    let m = machine();
    format!(
        "{RACK_HEADING}\n\n\
         Measured by `benches/rack.rs`, which rewrites this section: the server and\n\
         every node in its own network namespace on one bridge, every veth shaped on\n\
         both ends with `tc tbf` (so each direction of each link runs at the rate), all\n\
         receivers discarding. Same file, same rack, one run; for each N the four\n\
         tools ran back to back.\n\n\
         - Date: {date}; machine: {cpus} CPUs ({model}), {mem} RAM, Linux {kernel},\n  \
           {rustc}; load average {load0} when the bench started. Shared with other\n  \
           engineers' builds and VMs: read the ratios, measured side by side.\n\
         - Command: `{command}`\n\
         - Data: {size} of incompressible pseudo-random bytes, in the page cache.\n\
         - *chain*: `kacast server -i FILE` and N `kacast client --discard` (each node\n  \
           verifies the BLAKE3 hash; the run counts only if the server exits 0).\n  \
           *copy chain*: the same chain as plain read/write relays with one 256 KiB\n  \
           buffer (this bench re-executed): no framing, hashing or replay buffer.\n  \
           *star*: every node pulls the whole file from the server on its own TCP\n  \
           connection (this bench as a read/write server and counting pullers).\n  \
           *udpcast*: `udp-sender --min-receivers N` and N `udp-receiver --file\n  \
           /dev/null`, multicast on the bridge, default settings.\n\
         - *time s*: first process started to last process exited, start-up included\n  \
           (for udpcast, its hello phase). *MB/s per node*: bytes / time; *% of TCP\n  \
           limit*: over rate x 1448/1514; for the chain, in brackets, the same over\n  \
           the stream's own time from the server's report (session start to the last\n  \
           node's report: without process start-up and rendezvous).\n\
         - *node CPU s/GiB*: user+sys of all node processes (wait4) / (GiB x N);\n  \
           *server CPU s/GiB* likewise for the sender. *cores busy*: the whole\n  \
           machine's busy CPU (user, system, irq, softirq from /proc/stat) over the\n  \
           run, in cores and as saturation of all {cpus}; *ours* is the run's processes'\n  \
           own CPU, *others* the rest (softirq for veth and tc, this bench, and the\n  \
           other engineers' work), *steal* what the hypervisor took.\n\n\
         {body}",
        date = utc_now(),
        cpus = m.cpus,
        model = m.model,
        mem = m.memory,
        kernel = m.kernel,
        rustc = m.rustc,
        size = human(opts.size),
        body = sections.join("\n"),
    )
}

// ---------------------------------------------------------------------------
// The star's two sides, run as this bench's hidden sub-commands

/// `__star-serve FILE ADDR N`: accepts N connections and sends each the whole
/// file from its own thread with plain read/write, as a file server would.
fn star_serve(args: &[String]) -> Result<()> {
    let [file, addr, n] = args else { bail!("{STAR_SERVE} FILE ADDR N") };
    let addr: SocketAddr = addr.parse()?;
    let n: usize = n.parse()?;
    let listener = TcpListener::bind(addr).with_context(|| format!("listen on {addr}"))?;
    let mut threads = Vec::new();
    for _ in 0..n {
        let (mut s, _) = listener.accept()?;
        let file = PathBuf::from(file);
        threads.push(thread::spawn(move || -> io::Result<()> {
            let mut f = File::open(file)?;
            let mut buf = vec![0u8; BUF];
            loop {
                let got = f.read(&mut buf)?;
                if got == 0 {
                    break;
                }
                s.write_all(&buf[..got])?;
            }
            s.shutdown(Shutdown::Write)?;
            // Wait for the puller's close: it has every byte then.
            let _ = s.read(&mut [0u8; 1]);
            Ok(())
        }));
    }
    for t in threads {
        t.join().map_err(|_| anyhow!("a sender thread panicked"))??;
    }
    Ok(())
}

/// `__star-pull ADDR SIZE`: reads one stream to its end and discards it; fails
/// unless it had exactly SIZE bytes.
fn star_pull(args: &[String]) -> Result<()> {
    let [addr, size] = args else { bail!("{STAR_PULL} ADDR SIZE") };
    let addr: SocketAddr = addr.parse()?;
    let size: u64 = size.parse()?;
    let start = Instant::now();
    let mut s = loop {
        match TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(_) if start.elapsed() < CONNECT_FOR => thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e).with_context(|| format!("connect to {addr}")),
        }
    };
    let mut buf = vec![0u8; BUF];
    let mut got = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    if got != size {
        bail!("received {got} bytes of {size}");
    }
    Ok(())
}

/// `__copy-relay UPSTREAM SIZE [LISTEN]`: one node of the copy chain. Waits for
/// its child on LISTEN (unless last), then reads UPSTREAM to its end and writes
/// every byte on with one 256 KiB buffer; fails unless it had SIZE bytes.
fn copy_relay(args: &[String]) -> Result<()> {
    let (upstream, size, listen) = match args {
        [u, s] => (u, s, None),
        [u, s, l] => (u, s, Some(l)),
        _ => bail!("{COPY_RELAY} UPSTREAM SIZE [LISTEN]"),
    };
    let size: u64 = size.parse()?;
    let child = match listen {
        Some(l) => {
            let l = TcpListener::bind(l.parse::<SocketAddr>()?)?;
            Some(l.accept()?.0)
        }
        None => None,
    };
    let upstream: SocketAddr = upstream.parse()?;
    let start = Instant::now();
    let mut s = loop {
        match TcpStream::connect(upstream) {
            Ok(s) => break s,
            Err(_) if start.elapsed() < CONNECT_FOR => thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e).with_context(|| format!("connect to {upstream}")),
        }
    };
    let mut buf = vec![0u8; BUF];
    let mut got = 0u64;
    let mut child = child;
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if let Some(c) = child.as_mut() {
            c.write_all(&buf[..n])?;
        }
        got += n as u64;
    }
    if let Some(c) = child {
        c.shutdown(Shutdown::Write)?;
        let _ = (&c).read(&mut [0u8; 1]);
    }
    if got != size {
        bail!("received {got} bytes of {size}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Relay cost

/// The replay buffer a relaying node keeps: kacast's default `--buffer`.
const RING: usize = kacast::chain::DEFAULT_BUFFER;
/// Pipe capacity for the splice variants: Linux's default ceiling
/// (/proc/sys/fs/pipe-max-size), so one splice moves up to a chunk and more.
const PIPE: i32 = 1 << 20;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    /// read() into one 256 KiB buffer, write() it on: the plain userspace copy loop.
    Copy,
    /// Fill the next chunk of a 32 MiB ring, write() it on: what kacast does.
    Ring,
    /// As Ring, sending with MSG_ZEROCOPY; a chunk is reused only once the
    /// kernel says it is done with it.
    ZeroCopy,
    /// As Ring, sending through a pipe with vmsplice + splice (the pages are
    /// lent, not copied).
    Vmsplice,
    /// splice socket -> pipe, tee to a second pipe, splice on to the next socket,
    /// read the second pipe into the ring: the forwarding is zero-copy, the
    /// replay buffer still gets its copy.
    SpliceTee,
    /// splice socket -> pipe -> socket and nothing else: the floor, without the
    /// replay buffer (and without hashing) that failure recovery needs.
    Splice,
}

impl Way {
    const ALL: [Way; 6] = [Way::Copy, Way::Ring, Way::ZeroCopy, Way::Vmsplice, Way::SpliceTee, Way::Splice];

    fn name(self) -> &'static str {
        match self {
            Way::Copy => "copy loop: read -> write, one 256 KiB buffer",
            Way::Ring => "ring: recv (SO_RCVLOWAT 64 KiB) into the 32 MiB ring -> send (kacast)",
            Way::ZeroCopy => "ring -> send(MSG_ZEROCOPY)",
            Way::Vmsplice => "ring -> vmsplice -> pipe -> splice -> socket",
            Way::SpliceTee => "splice -> pipe, tee -> pipe -> read into the ring; splice -> socket",
            Way::Splice => "splice -> pipe -> splice, nothing kept (floor)",
        }
    }

    fn keeps_copy(self) -> bool {
        !matches!(self, Way::Copy | Way::Splice)
    }
}

struct RelayRun {
    way: Way,
    wall_s: f64,
    relay: Cpu,
    /// The whole pipeline: sender, relay, receiver threads.
    all: Cpu,
}

fn relay_scenario(opts: &Opts, command: &str) -> Result<String> {
    let load0 = loadavg();
    let size = opts.relay_size.div_ceil(BUF as u64) * BUF as u64;
    let mut data = vec![0u8; BUF];
    let _ = kacast::demo::Pattern::new(SEED, BUF as u64).read_exact(&mut data);
    let expected = {
        let mut h = blake3::Hasher::new();
        for _ in 0..size / BUF as u64 {
            h.update(&data);
        }
        h.finalize()
    };
    let blake3 = {
        let t = thread_cpu();
        let mut h = blake3::Hasher::new();
        for _ in 0..(256 << 20) / BUF {
            h.update(&data);
        }
        std::hint::black_box(h.finalize());
        (thread_cpu() - t).total() / 0.25
    };
    let stat0 = Stat::now();
    let mut runs: Vec<Vec<RelayRun>> = Way::ALL.iter().map(|_| Vec::new()).collect();
    // Interleaved, three rounds: the median of each way counts.
    for round in 0..3 {
        for (i, &way) in Way::ALL.iter().enumerate() {
            let r = relay_once(way, &data, size, expected).with_context(|| way.name())?;
            eprintln!(
                "bench rack: relay round {round}: {:<70} {:.2} s, relay {:.3} CPU s/GiB",
                way.name(),
                r.wall_s,
                r.relay.total() / gib(size)
            );
            runs[i].push(r);
        }
    }
    let stat1 = Stat::now();
    let span = (stat1.at - stat0.at).as_secs_f64();
    let runs: Vec<RelayRun> = runs.into_iter().map(|r| median(r, |r| r.relay.total())).collect();
    let g = gib(size);
    let copy = runs[0].relay.total();
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| way | keeps the replay copy | relay CPU s/GiB (user+sys) | vs copy loop | pipeline CPU s/GiB | MB/s |"
    );
    let _ = writeln!(t, "|---|:-:|--:|--:|--:|--:|");
    for r in &runs {
        let _ = writeln!(
            t,
            "| {} | {} | {:.3} ({:.3}+{:.3}) | {:.2} | {:.3} | {:.0} |",
            r.way.name(),
            if r.way.keeps_copy() { "yes" } else { "no" },
            r.relay.total() / g,
            r.relay.user / g,
            r.relay.sys / g,
            r.relay.total() / copy,
            r.all.total() / g,
            mb_s(size, r.wall_s),
        );
    }
    let m = machine();
    Ok(format!(
        "{RELAY_HEADING}\n\n\
         Measured by `benches/rack.rs` (`--scenario relay`), which rewrites this section:\n\
         what it costs one thread to pass a stream on, in each way a node could. A\n\
         sending thread writes {size} over loopback TCP to the relaying thread, which\n\
         forwards it over loopback TCP to a receiving thread that hashes it (every run's\n\
         BLAKE3 matched the source's). Each way ran three times, interleaved; the median\n\
         by relay CPU counts. *relay CPU*: the relaying thread's own user+sys\n\
         (RUSAGE_THREAD) per GiB; on loopback its sends also carry the kernel's delivery\n\
         into the receiving socket. *pipeline CPU*: all three threads.\n\n\
         - Date: {date}; {cpus} CPUs ({model}), Linux {kernel}; load average {load0} at\n  \
           the start; over the runs the machine was {busy:.2} of {cpus} cores busy.\n\
         - Command: `{command}`\n\
         - For scale: BLAKE3, which every node runs over every byte to verify the\n  \
           stream, costs {blake3:.3} CPU s/GiB on one thread here.\n\n\
         {t}",
        size = human(size),
        date = utc_now(),
        cpus = m.cpus,
        model = m.model,
        kernel = m.kernel,
        busy = (stat1.busy - stat0.busy) / span,
    ))
}

fn check(r: isize, what: &str) -> io::Result<usize> {
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(r as usize)
}

fn pipe() -> io::Result<(i32, i32)> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid array of two ints.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } as isize, "pipe2")?;
    // SAFETY: fcntl on a pipe we own.
    unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, PIPE) };
    Ok((fds[0], fds[1]))
}

fn splice(from: i32, to: i32, len: usize) -> io::Result<usize> {
    let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE;
    // SAFETY: plain fds, null offsets (sockets and pipes have none).
    check(unsafe { libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, flags) }, "splice")
}

/// Moves exactly `len` bytes from a pipe to a socket.
fn splice_all(from: i32, to: i32, mut len: usize) -> io::Result<()> {
    while len > 0 {
        let n = splice(from, to, len)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        len -= n;
    }
    Ok(())
}

fn read_full(fd: i32, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: writes at most the rest of `buf`.
        let n = check(unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) }, "read")?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// `ee_origin` of a MSG_ZEROCOPY completion (linux/errqueue.h); not in libc.
const SO_EE_ORIGIN_ZEROCOPY: u8 = 5;

/// Collects MSG_ZEROCOPY completions: returns the highest send number the
/// kernel has released (or `done` when none came).
fn zc_completions(fd: i32, done: &mut u32, block: bool) -> io::Result<()> {
    loop {
        let mut control = [0u8; 128];
        // SAFETY: msghdr is plain data.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len();
        let flags = libc::MSG_ERRQUEUE | if block { 0 } else { libc::MSG_DONTWAIT };
        // SAFETY: msg points at our buffers.
        let r = unsafe { libc::recvmsg(fd, &mut msg, flags) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                if block {
                    // The error queue polls readable with POLLERR only.
                    let mut p = libc::pollfd { fd, events: 0, revents: 0 };
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut p, 1, 100) };
                    continue;
                }
                return Ok(());
            }
            return Err(e);
        }
        // SAFETY: walking the control messages the kernel wrote into `msg`.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                let err = &*(libc::CMSG_DATA(c) as *const libc::sock_extended_err);
                if err.ee_origin == SO_EE_ORIGIN_ZEROCOPY {
                    *done = (*done).max(err.ee_data + 1);
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        if block {
            return Ok(());
        }
    }
}

/// One relaying thread between two loopback connections, in `way`.
fn relay_once(way: Way, data: &[u8], size: u64, expected: blake3::Hash) -> Result<RelayRun> {
    let upstream = TcpListener::bind("127.0.0.1:0")?;
    let downstream = TcpListener::bind("127.0.0.1:0")?;
    let (up, down) = (upstream.local_addr()?, downstream.local_addr()?);
    let own0 = process_cpu();
    let started = Instant::now();
    let data = data.to_vec();
    let sender = thread::spawn(move || -> io::Result<()> {
        let mut s = TcpStream::connect(up)?;
        for _ in 0..size / BUF as u64 {
            s.write_all(&data)?;
        }
        s.shutdown(Shutdown::Write)
    });
    let receiver = thread::spawn(move || -> io::Result<(u64, blake3::Hash)> {
        let (mut s, _) = downstream.accept()?;
        let mut buf = vec![0u8; BUF];
        let mut h = blake3::Hasher::new();
        let mut got = 0u64;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            got += n as u64;
        }
        Ok((got, h.finalize()))
    });
    let (inp, _) = upstream.accept()?;
    let out = TcpStream::connect(down)?;
    let (i, o) = (inp.as_raw_fd(), out.as_raw_fd());
    let cpu0 = thread_cpu();
    relay_loop(way, i, o, size)?;
    out.shutdown(Shutdown::Write)?;
    let relay = thread_cpu() - cpu0;
    sender.join().map_err(|_| anyhow!("sender panicked"))??;
    let (got, hash) = receiver.join().map_err(|_| anyhow!("receiver panicked"))??;
    let wall_s = started.elapsed().as_secs_f64();
    if got != size || hash != expected {
        bail!("the receiver got {got} bytes of {size}, hash matches: {}", hash == expected);
    }
    Ok(RelayRun { way, wall_s, relay, all: process_cpu() - own0 })
}

fn relay_loop(way: Way, i: i32, o: i32, size: u64) -> io::Result<()> {
    if matches!(way, Way::Ring | Way::ZeroCopy | Way::Vmsplice) {
        // As a kacast node receives into its ring: woken per 64 KiB, not per
        // burst (src/connection.rs, LOWAT). A read asking for less wakes
        // for what it asks.
        let lowat: i32 = 64 * 1024;
        // SAFETY: setsockopt with an int.
        check(
            unsafe {
                libc::setsockopt(i, libc::SOL_SOCKET, libc::SO_RCVLOWAT, (&lowat as *const i32).cast(), 4)
            } as isize,
            "SO_RCVLOWAT",
        )?;
    }
    let mut ring = vec![0u8; if way == Way::Copy || way == Way::Splice { BUF } else { RING }];
    let slots = ring.len() / BUF;
    let mut moved = 0u64;
    let mut slot = 0usize;
    let write_all = |buf: &[u8], flags: i32| -> io::Result<()> {
        let mut off = 0;
        while off < buf.len() {
            // SAFETY: sends from within `buf`.
            let n = unsafe { libc::send(o, buf[off..].as_ptr().cast(), buf.len() - off, flags) };
            if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOBUFS) {
                // Out of optmem for zerocopy: the kernel wants completions read.
                thread::yield_now();
                continue;
            }
            off += check(n, "send")?;
        }
        Ok(())
    };
    match way {
        Way::Copy | Way::Ring => {
            while moved < size {
                let chunk = &mut ring[slot * BUF..(slot + 1) * BUF];
                let n = if way == Way::Copy {
                    // SAFETY: reads into `chunk`.
                    check(unsafe { libc::read(i, chunk.as_mut_ptr().cast(), BUF) }, "read")?
                } else {
                    read_full(i, chunk)?
                };
                if n == 0 {
                    break;
                }
                write_all(&chunk[..n], 0)?;
                moved += n as u64;
                slot = (slot + 1) % slots;
            }
        }
        Way::ZeroCopy => {
            let one: i32 = 1;
            // SAFETY: setsockopt with an int.
            check(
                unsafe {
                    libc::setsockopt(o, libc::SOL_SOCKET, libc::SO_ZEROCOPY, (&one as *const i32).cast(), 4)
                } as isize,
                "SO_ZEROCOPY",
            )?;
            // Send number that last used each slot, and how many sends so far.
            let mut used: Vec<Option<u32>> = vec![None; slots];
            let (mut sends, mut done) = (0u32, 0u32);
            while moved < size {
                while let Some(k) = used[slot].filter(|&k| k >= done) {
                    let _ = k;
                    zc_completions(o, &mut done, true)?;
                }
                let chunk = &mut ring[slot * BUF..(slot + 1) * BUF];
                let n = read_full(i, chunk)?;
                if n == 0 {
                    break;
                }
                // One send call per chunk (it may take several if the socket is
                // full; each counts as a send for the completions).
                let mut off = 0;
                while off < n {
                    // SAFETY: sends from within the chunk.
                    let r =
                        unsafe { libc::send(o, chunk[off..n].as_ptr().cast(), n - off, libc::MSG_ZEROCOPY) };
                    if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOBUFS) {
                        zc_completions(o, &mut done, true)?;
                        continue;
                    }
                    off += check(r, "send")?;
                    sends += 1;
                }
                used[slot] = Some(sends - 1);
                zc_completions(o, &mut done, false)?;
                moved += n as u64;
                slot = (slot + 1) % slots;
            }
            while done < sends {
                zc_completions(o, &mut done, true)?;
            }
        }
        Way::Vmsplice => {
            let (pr, pw) = pipe()?;
            while moved < size {
                let chunk = &mut ring[slot * BUF..(slot + 1) * BUF];
                let n = read_full(i, chunk)?;
                if n == 0 {
                    break;
                }
                let mut off = 0;
                while off < n {
                    let iov = libc::iovec { iov_base: chunk[off..].as_mut_ptr().cast(), iov_len: n - off };
                    // SAFETY: lends pages of the ring to the pipe; the ring slot
                    // is not rewritten until the ring wraps, 32 MiB later.
                    let m = check(unsafe { libc::vmsplice(pw, &iov, 1, 0) }, "vmsplice")?;
                    splice_all(pr, o, m)?;
                    off += m;
                }
                moved += n as u64;
                slot = (slot + 1) % slots;
            }
            // SAFETY: closing our own pipe.
            unsafe { (libc::close(pr), libc::close(pw)) };
        }
        Way::SpliceTee | Way::Splice => {
            let (ar, aw) = pipe()?;
            let (br, bw) = pipe()?;
            while moved < size {
                let n = splice(i, aw, BUF)?;
                if n == 0 {
                    break;
                }
                if way == Way::SpliceTee {
                    let mut teed = 0;
                    while teed < n {
                        // SAFETY: plain pipe fds.
                        teed += check(unsafe { libc::tee(ar, bw, n - teed, 0) }, "tee")?;
                    }
                }
                splice_all(ar, o, n)?;
                if way == Way::SpliceTee {
                    let start = slot * BUF;
                    let mut got = 0;
                    while got < n {
                        let end = (start + n).min(ring.len());
                        got += read_full(br, &mut ring[start + got..end])?;
                        if start + got >= ring.len() {
                            break;
                        }
                    }
                    slot = (slot + 1) % slots;
                }
                moved += n as u64;
            }
            // SAFETY: closing our own pipes.
            unsafe { (libc::close(ar), libc::close(aw), libc::close(br), libc::close(bw)) };
        }
    }
    Ok(())
}

/// CPU of this whole process so far.
fn process_cpu() -> Cpu {
    // SAFETY: rusage is plain data; getrusage only writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    Cpu::from_rusage(&ru)
}
