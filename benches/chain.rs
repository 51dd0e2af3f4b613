//! Chain throughput and CPU cost, measured side by side with a plain TCP copy.
//!
//! ```text
//! cargo bench --bench chain [-- --size 1G --nodes 1,2,4,8,16 --repeat 1]
//! cargo bench --bench chain -- --scenario slow [--slow-size 512M --slow-after 2]
//! ```
//!
//! Everything runs on 127.0.0.1 only. The bench writes a file of incompressible
//! pseudo-random bytes, then for each N runs the release `kacast` binary as real
//! processes: one `kacast server -i FILE` and N `kacast client --discard`. It
//! times each session from the server's start to its exit, requires exit code 0
//! (every node verified the BLAKE3 hash), and takes every child's CPU time from
//! `wait4`. The baseline, in the same run, is one plain TCP copy of the same file
//! over loopback (a sending and a receiving thread, 256 KiB buffers).
//!
//! The slow-node scenario, in the same invocation unless `--scenario` picks one,
//! runs 4 nodes where node2's sink is throttled to at most 20 MB/s (`THROTTLE`)
//! and the others discard: once with `--slow-after 0` (node2 sets everybody's
//! pace), once with `--slow-after SECS` (the server feeds it on its own), and
//! once without a slow node for reference. It reports each node's time from the
//! server's report, when the detach came (from the server's log), and whether
//! every node verified the hash, without stopping at a failure.
//!
//! The Markdown tables go to stdout and into `docs/PERFORMANCE.md`; a scenario
//! that did not run keeps its section there.

mod common;

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use common::*;
use kacast::demo::Pattern;
use kacast::size::{human, parse_size};

/// Buffer size of the baseline copy, and of kacast's chunks.
const BUF: usize = 256 * 1024;
/// How often the wait loop polls the children: the resolution of the wall time.
const POLL: Duration = Duration::from_millis(1);
/// Plain copies per repetition; the median counts.
const BASELINE_RUNS: usize = 3;
/// How long the other processes may take to end once one node has failed.
const FAIL_GRACE: Duration = Duration::from_secs(15);

const USAGE: &str = "\
usage: cargo bench --bench chain [-- OPTIONS]
  --scenario LIST    what to run, comma-separated: chain, slow or all (default all)
  --size SIZE        chain: bytes to stream (default 1G; K, M, G suffixes)
  --nodes LIST       chain: chain lengths to run, comma-separated (default 1,2,4,8,16)
  --slow-size SIZE   slow: bytes to stream (default 512M)
  --slow-after SECS  slow: the server's --slow-after in the detaching run (default 2)
  --repeat R         run everything R times, report the median (default 1)
  --timeout SECS     give up on one session after this long (default 300)
  --no-doc           do not rewrite docs/PERFORMANCE.md";

struct Opts {
    /// Run the chain scenario (plain copy and chains of `nodes`).
    chain: bool,
    /// Run the slow-node scenario.
    slow: bool,
    size: u64,
    nodes: Vec<usize>,
    slow_size: u64,
    slow_after: f64,
    repeat: usize,
    timeout: Duration,
    doc: bool,
    /// The options as given, for the command line recorded in the doc.
    given: Vec<String>,
}

fn parse_args() -> Result<Opts> {
    let mut o = Opts {
        chain: true,
        slow: true,
        size: 1 << 30,
        nodes: vec![1, 2, 4, 8, 16],
        slow_size: 512 << 20,
        slow_after: 2.0,
        repeat: 1,
        timeout: Duration::from_secs(300),
        doc: true,
        given: Vec::new(),
    };
    // `cargo bench` passes `--bench` to every harness-less bench.
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(a) = args.next() {
        o.given.push(a.clone());
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        };
        let mut value = || -> Result<String> {
            let v = match inline.clone() {
                Some(v) => v,
                None => args.next().ok_or_else(|| anyhow!("{key} needs a value\n{USAGE}"))?,
            };
            if inline.is_none() {
                o.given.push(v.clone());
            }
            Ok(v)
        };
        match key.as_str() {
            "--scenario" => {
                (o.chain, o.slow) = (false, false);
                for v in value()?.split(',') {
                    match v.trim() {
                        "chain" => o.chain = true,
                        "slow" => o.slow = true,
                        "all" => (o.chain, o.slow) = (true, true),
                        other => bail!("unknown scenario '{other}' (chain, slow or all)\n{USAGE}"),
                    }
                }
            }
            "--slow-size" => o.slow_size = parse_size(&value()?)?,
            "--slow-after" => {
                o.slow_after = value()?.parse().context("--slow-after: seconds")?;
                if !(o.slow_after > 0.0 && o.slow_after.is_finite()) {
                    bail!("--slow-after must be more than 0 (the run without detaching uses 0)\n{USAGE}");
                }
            }
            "--size" => o.size = parse_size(&value()?)?,
            "--nodes" => {
                o.nodes = value()?
                    .split(',')
                    .map(|n| n.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .context("--nodes takes a list such as 1,2,4")?
            }
            "--repeat" => o.repeat = value()?.parse().context("--repeat takes a number")?,
            "--timeout" => o.timeout = Duration::from_secs(value()?.parse().context("--timeout: seconds")?),
            "--no-doc" => o.doc = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => bail!("unknown argument '{a}'\n{USAGE}"),
        }
    }
    if o.size == 0 || o.slow_size == 0 || o.repeat == 0 || o.nodes.is_empty() || o.nodes.contains(&0) {
        bail!("--size, --slow-size, --repeat and every --nodes entry must be at least 1\n{USAGE}");
    }
    Ok(o)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench chain: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let opts = parse_args()?;
    // Other work on the machine skews every figure: say how busy it was.
    let load = loadavg();
    let kacast = Path::new(KACAST);
    if !kacast.is_file() {
        bail!(
            "the kacast binary is missing at {KACAST}; build it with `cargo build --release` \
             (cargo bench normally builds it first)"
        );
    }
    let tmp =
        tempfile::Builder::new().prefix("kacast-bench-").tempdir().context("create a temporary directory")?;
    // The sources are only bulk: on a failure they go, the logs stay.
    let mut bulk = Vec::new();
    let mut source = |name: &str, size: u64| -> Result<(PathBuf, String)> {
        let file = tmp.path().join(name);
        eprintln!("bench chain: writing {} of pseudo-random bytes to {}", human(size), file.display());
        let hash = write_source(&file, size)?;
        bulk.push(file.clone());
        Ok((file, hash))
    };
    let chain_src = if opts.chain { Some(source("source.img", opts.size)?) } else { None };
    let slow_src = match &chain_src {
        Some(src) if opts.slow && opts.slow_size == opts.size => Some(src.clone()),
        _ if opts.slow => Some(source("slow.img", opts.slow_size)?),
        _ => None,
    };
    let blake3_s_per_gib = if opts.chain { blake3_cost(opts.size) } else { 0.0 };
    let keep = |tmp: tempfile::TempDir, bulk: &[PathBuf]| -> PathBuf {
        for f in bulk {
            let _ = std::fs::remove_file(f);
        }
        tmp.keep()
    };

    let mut chain_others = None;
    let mut slow_others = None;
    let mut baselines = Vec::new();
    let mut chains: Vec<Vec<ChainRun>> = opts.nodes.iter().map(|_| Vec::new()).collect();
    let mut slows: Vec<Vec<SlowRun>> = SlowCase::ALL.iter().map(|_| Vec::new()).collect();
    for rep in 1..=opts.repeat {
        let tag = if opts.repeat > 1 { format!(" (run {rep}/{})", opts.repeat) } else { String::new() };
        if let Some((file, hash)) = &chain_src {
            let before = Usage::now();
            // The copy takes a fraction of a second and varies from run to run:
            // its median of three is the yardstick.
            let b =
                median((0..BASELINE_RUNS).map(|_| baseline(file, opts.size)).collect::<Result<_>>()?, |b| {
                    b.wall_s
                });
            eprintln!(
                "bench chain: plain TCP copy{tag}: {:.2} s, {:.0} MB/s",
                b.wall_s,
                mb_s(opts.size, b.wall_s)
            );
            baselines.push(b);
            for (i, &n) in opts.nodes.iter().enumerate() {
                let dir = tmp.path().join(format!("n{n}-r{rep}"));
                std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
                let r = match chain(file, hash, opts.size, n, &dir, opts.timeout) {
                    Ok(r) => r,
                    Err(e) => {
                        let kept = keep(tmp, &bulk);
                        return Err(
                            e.context(format!("chain of {n} nodes{tag} (logs kept in {})", kept.display()))
                        );
                    }
                };
                eprintln!(
                    "bench chain: {n} nodes{tag}: {:.2} s, {:.0} MB/s per node",
                    r.wall_s,
                    mb_s(opts.size, r.wall_s)
                );
                chains[i].push(r);
            }
            add_others(&mut chain_others, others_since(&before));
        }
        if let Some((file, hash)) = &slow_src {
            let before = Usage::now();
            for (i, case) in SlowCase::ALL.into_iter().enumerate() {
                let dir = tmp.path().join(format!("slow-{}-r{rep}", case.tag()));
                std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
                let r = match slow(file, hash, opts.slow_size, case, opts.slow_after, &dir, opts.timeout) {
                    Ok(r) => r,
                    Err(e) => {
                        let kept = keep(tmp, &bulk);
                        return Err(e.context(format!(
                            "slow node, {}{tag} (logs kept in {})",
                            case.label(opts.slow_after),
                            kept.display()
                        )));
                    }
                };
                eprintln!(
                    "bench chain: {}{tag}: fast nodes {:.2} s, slow node {:.2} s, wall {:.2} s, {}",
                    case.label(opts.slow_after),
                    r.fast_s(),
                    r.slow_s,
                    r.wall_s,
                    r.verdict()
                );
                slows[i].push(r);
            }
            add_others(&mut slow_others, others_since(&before));
        }
    }

    let command = if opts.given.is_empty() {
        "cargo bench --bench chain".to_string()
    } else {
        format!("cargo bench --bench chain -- {}", opts.given.join(" "))
    };
    let mut chain_doc = None;
    if opts.chain {
        let baseline = median(baselines, |b| b.wall_s);
        let chains: Vec<(usize, ChainRun)> =
            opts.nodes.iter().zip(chains).map(|(&n, runs)| (n, median(runs, |r| r.wall_s))).collect();
        let table = render_table(opts.size, &baseline, &chains);
        let facts = Facts::new(opts.size, &baseline, blake3_s_per_gib, &chains, chain_others);
        println!("\n{table}\n{}", facts.render());
        chain_doc = Some(render_doc(&opts, &command, &table, &facts, &load));
    }
    let mut slow_doc = None;
    if opts.slow {
        let runs: Vec<SlowRun> = slows.into_iter().map(|runs| median(runs, SlowRun::fast_s)).collect();
        let table = render_slow_table(opts.slow_size, opts.slow_after, &runs);
        let notes = render_slow_notes(opts.slow_size, opts.slow_after, &runs, &slow_others);
        println!("\n{table}\n{notes}");
        slow_doc = Some(render_slow_doc(&opts, &command, &table, &notes, &runs, &load));
    }
    if opts.doc {
        let old = std::fs::read_to_string(DOC).unwrap_or_default();
        let doc = compose_doc(&old, chain_doc, slow_doc);
        if let Some(dir) = Path::new(DOC).parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        std::fs::write(DOC, doc).with_context(|| format!("write {DOC}"))?;
        eprintln!("bench chain: wrote {DOC}");
    }
    Ok(())
}

/// CPU seconds per GiB of BLAKE3 on one thread (as kacast hashes), over up to
/// 256 MiB held in memory: the hashing share of a node's CPU.
fn blake3_cost(size: u64) -> f64 {
    let len = size.min(256 << 20) as usize;
    let mut data = vec![0u8; len];
    let _ = Pattern::new(SEED, len as u64).read_exact(&mut data);
    let start = thread_cpu();
    let mut hasher = blake3::Hasher::new();
    for chunk in data.chunks(BUF) {
        hasher.update(chunk);
    }
    std::hint::black_box(hasher.finalize());
    let cpu = thread_cpu() - start;
    cpu.total() / gib(len as u64)
}

struct Baseline {
    wall_s: f64,
    send_cpu: Cpu,
    recv_cpu: Cpu,
}

/// One plain TCP copy of the file over loopback: a thread reads the file and
/// writes it to the socket, another reads the socket and discards, both with
/// 256 KiB buffers. The receiver checks the byte count (the kernel checksums).
fn baseline(file: &Path, size: u64) -> Result<Baseline> {
    let listener = TcpListener::bind("127.0.0.1:0").context("baseline: listen")?;
    let addr = listener.local_addr()?;
    let receiver = thread::spawn(move || -> io::Result<(u64, Cpu, Instant)> {
        let (mut s, _) = listener.accept()?;
        let start = thread_cpu();
        let mut buf = vec![0u8; BUF];
        let mut got = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let end = Instant::now();
        Ok((got, thread_cpu() - start, end))
    });
    let started = Instant::now();
    let path = file.to_path_buf();
    let sender = thread::spawn(move || -> io::Result<Cpu> {
        let start = thread_cpu();
        let mut f = File::open(&path)?;
        let mut s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let mut buf = vec![0u8; BUF];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n])?;
        }
        s.shutdown(Shutdown::Write)?;
        Ok(thread_cpu() - start)
    });
    let send_cpu =
        sender.join().map_err(|_| anyhow!("baseline sender panicked"))?.context("baseline sender")?;
    let (got, recv_cpu, ended) =
        receiver.join().map_err(|_| anyhow!("baseline receiver panicked"))?.context("baseline receiver")?;
    if got != size {
        bail!("baseline: received {got} bytes of {size}");
    }
    Ok(Baseline { wall_s: (ended - started).as_secs_f64(), send_cpu, recv_cpu })
}

struct ChainRun {
    wall_s: f64,
    /// Session start to the last node's report, from the server's report.
    stream_s: f64,
    server: Cpu,
    clients: Cpu,
    /// Peak RSS of the server and of the largest client, in MiB.
    server_rss_mib: f64,
    client_rss_mib: f64,
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(l.local_addr()?.port())
}

/// Whether some socket listens on TCP `port` (from /proc, without connecting:
/// a probe connection would show up in the server's log).
fn listening(port: u16) -> bool {
    let suffix = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines().skip(1).any(|l| {
                let mut cols = l.split_whitespace().skip(1);
                let local = cols.next().unwrap_or("");
                let state = cols.nth(1).unwrap_or("");
                local.ends_with(&suffix) && state == "0A"
            })
        })
    })
}

/// One node of a session: its name and its sink options (`--discard`, `-e CMD`).
struct Node {
    name: String,
    sink: Vec<String>,
}

/// How one session went, whatever its outcome.
struct Session {
    /// Server start to server exit.
    wall_s: f64,
    server: Exit,
    /// CPU of all the clients (and their sink commands).
    clients: Cpu,
    /// The largest peak RSS of any client, in MiB.
    client_rss_mib: f64,
    /// The server's `--report`.
    report: serde_json::Value,
    server_log: PathBuf,
}

/// One session on loopback: `kacast server -i FILE` (with `server_extra`) and a
/// client per node, timed from the server's start to its exit. With `strict`,
/// any process ending non-zero is an error; otherwise the outcome is returned
/// for the caller to judge, once the server has exited.
fn session(
    name: &str,
    file: &Path,
    nodes: &[Node],
    server_extra: &[String],
    strict: bool,
    dir: &Path,
    timeout: Duration,
) -> Result<Session> {
    let port = free_port()?;
    let report = dir.join("report.json");
    let s = |v: &str| v.to_string();
    let mut server_args = vec![
        s("server"),
        s("-s"),
        s(name),
        s("-n"),
        nodes.len().to_string(),
        s("-i"),
        file.display().to_string(),
        s("--bind"),
        s("127.0.0.1"),
        s("--port"),
        port.to_string(),
        s("--no-discovery"),
        s("--report"),
        report.display().to_string(),
    ];
    server_args.extend_from_slice(server_extra);
    let mut rack = Rack::default();
    let started = Instant::now();
    rack.spawn("server", &server_args, dir)?;
    // Start the nodes once the server listens; they would retry anyway.
    while !listening(port) {
        rack.reap()?;
        if rack.procs[0].exit.is_some() {
            bail!("the server exited before listening\n{}", rack.logs());
        }
        if started.elapsed() > Duration::from_secs(10) {
            bail!("the server is not listening on port {port}\n{}", rack.logs());
        }
        thread::sleep(POLL);
    }
    for node in nodes {
        let mut args = vec![
            s("-q"),
            s("client"),
            s("-s"),
            s(name),
            s("--server"),
            format!("127.0.0.1:{port}"),
            s("--name"),
            node.name.clone(),
            s("--bind"),
            s("127.0.0.1"),
            s("--tries"),
            s("100"),
            s("--retry-interval"),
            s("0.05"),
        ];
        args.extend_from_slice(&node.sink);
        rack.spawn(&node.name, &args, dir)?;
    }
    loop {
        rack.reap()?;
        if rack.all_exited() {
            break;
        }
        if strict {
            // A node failed: give the session a moment to end and say why (the
            // checks below then report it), but do not wait out the timeout.
            if let Some(p) = rack.procs[1..].iter().find(|p| p.exit.is_some_and(|e| !e.ok())) {
                let failed_at = p.exit.expect("found exited").at;
                if failed_at.elapsed() > FAIL_GRACE {
                    bail!("{} failed and the session did not end\n{}", p.name, rack.logs());
                }
            }
        } else if rack.procs[0].exit.is_some_and(|e| e.at.elapsed() > FAIL_GRACE) {
            // The server has its verdict; clients that linger are killed below.
            break;
        }
        if started.elapsed() > timeout {
            bail!("not done after {} s (--timeout)\n{}", timeout.as_secs(), rack.logs());
        }
        thread::sleep(POLL);
    }
    let server = rack.procs[0].exit.expect("the server exited");
    if strict {
        if !server.ok() {
            bail!(
                "the server ended with {} (a node failed or did not verify the hash)\n{}",
                server.describe(),
                rack.logs()
            );
        }
        if let Some(p) = rack.procs.iter().find(|p| !p.exit.is_some_and(|e| e.ok())) {
            bail!("{} failed\n{}", p.name, rack.logs());
        }
    }
    let report: serde_json::Value = std::fs::read(&report)
        .with_context(|| format!("read {}", report.display()))
        .and_then(|r| serde_json::from_slice(&r).context("parse the server's report"))
        .with_context(|| format!("the server ended with {}\n{}", server.describe(), rack.logs()))?;
    Ok(Session {
        wall_s: (server.at - started).as_secs_f64(),
        server,
        clients: rack.procs[1..].iter().filter_map(|p| p.exit).fold(Cpu::default(), |a, e| a + e.cpu),
        client_rss_mib: rack.procs[1..].iter().filter_map(|p| p.exit).map(|e| e.rss_mib).fold(0.0, f64::max),
        report,
        server_log: rack.procs[0].log.clone(),
    })
}

/// One chain session: a server and `n` discarding clients on loopback, timed
/// from the server's start to its exit.
fn chain(file: &Path, hash: &str, size: u64, n: usize, dir: &Path, timeout: Duration) -> Result<ChainRun> {
    let width = n.to_string().len().max(2);
    let nodes: Vec<Node> =
        (1..=n).map(|k| Node { name: format!("node{k:0width$}"), sink: vec!["--discard".into()] }).collect();
    let run = session(&format!("bench{n}"), file, &nodes, &["-q".into()], true, dir, timeout)?;
    let r = &run.report;
    let nodes_ok = r["nodes"].as_array().is_some_and(|a| {
        a.len() == n && a.iter().all(|x| x["hash_ok"] == true && x["bytes"].as_u64() == Some(size))
    });
    if r["bytes"].as_u64() != Some(size) || r["hash"].as_str() != Some(hash) || !nodes_ok {
        bail!("the server's report does not match the source file: {r}");
    }
    let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    Ok(ChainRun {
        wall_s: run.wall_s,
        stream_s: f("transfer_s") + f("pipeline_emptied_s"),
        server: run.server.cpu,
        clients: run.clients,
        server_rss_mib: run.server.rss_mib,
        client_rss_mib: run.client_rss_mib,
    })
}

/// Nodes in the slow-node scenario, and the one whose sink is throttled.
const SLOW_NODES: usize = 4;
const SLOW_NODE: usize = 2;
/// The slow node's sink: 1 MiB, then a 50 ms nap, until the end of the input
/// (at most 20 MB/s, less the cost of starting `dd`, `wc` and `sleep`). `dd`
/// on an exhausted stdin copies nothing and succeeds, hence the byte count.
const THROTTLE: &str =
    r#"while [ "$(dd bs=1M count=1 iflag=fullblock status=none | wc -c)" -gt 0 ]; do sleep 0.05; done"#;
const SLOW_HEADING: &str = "## Slow node";

/// The runs of the slow-node scenario, side by side.
#[derive(Clone, Copy)]
enum SlowCase {
    /// Every node `--discard`: what the fast nodes take without a slow node.
    Even,
    /// The slow node and `--slow-after 0`: it stays in the chain.
    Stay,
    /// The slow node and `--slow-after SECS`: it is fed on its own.
    Detach,
}

impl SlowCase {
    const ALL: [SlowCase; 3] = [SlowCase::Even, SlowCase::Stay, SlowCase::Detach];

    fn tag(self) -> &'static str {
        match self {
            SlowCase::Even => "even",
            SlowCase::Stay => "stay",
            SlowCase::Detach => "detach",
        }
    }

    fn label(self, slow_after: f64) -> String {
        match self {
            SlowCase::Even => "no slow node (all `--discard`)".into(),
            SlowCase::Stay => "slow node, `--slow-after 0`".into(),
            SlowCase::Detach => format!("slow node, `--slow-after {slow_after}`"),
        }
    }

    /// The server's `--slow-after` in this run.
    fn slow_after(self, detach: f64) -> f64 {
        match self {
            SlowCase::Stay => 0.0,
            SlowCase::Even | SlowCase::Detach => detach,
        }
    }
}

struct SlowRun {
    wall_s: f64,
    server: Exit,
    /// Every node's report says all the bytes arrived and hashed right.
    all_verified: bool,
    /// The fast nodes' names and times (session start to their report).
    fast: Vec<(String, f64)>,
    slow_s: f64,
    /// When the server took the slow node out of the chain (from session start),
    /// and how far the slow node was by then.
    detached_s: Option<f64>,
    detached_at: Option<u64>,
    /// Failed nodes, with the reason.
    failures: Vec<String>,
}

impl SlowRun {
    /// The last fast node's time.
    fn fast_s(&self) -> f64 {
        self.fast.iter().map(|f| f.1).fold(f64::NAN, f64::max)
    }

    fn verdict(&self) -> String {
        if self.server.ok() && self.all_verified {
            "server exit code 0, every node verified".into()
        } else {
            format!("server {}; failed: {}", self.server.describe(), self.failures.join("; "))
        }
    }
}

fn slow_name(k: usize) -> String {
    format!("node{k}")
}

/// One run of the slow-node scenario: `SLOW_NODES` nodes, node `SLOW_NODE`
/// throttled by `THROTTLE` (but in `SlowCase::Even`), the rest `--discard`.
fn slow(
    file: &Path,
    hash: &str,
    size: u64,
    case: SlowCase,
    slow_after: f64,
    dir: &Path,
    timeout: Duration,
) -> Result<SlowRun> {
    let nodes: Vec<Node> = (1..=SLOW_NODES)
        .map(|k| Node {
            name: slow_name(k),
            sink: match case {
                SlowCase::Stay | SlowCase::Detach if k == SLOW_NODE => vec!["-e".into(), THROTTLE.into()],
                _ => vec!["--discard".into()],
            },
        })
        .collect();
    // Not quiet: the server's log says when the session started and when it
    // took the slow node out of the chain.
    let extra = ["--slow-after".to_string(), case.slow_after(slow_after).to_string()];
    let run = session("benchslow", file, &nodes, &extra, false, dir, timeout)?;
    let r = &run.report;
    let mut failures = Vec::new();
    if r["bytes"].as_u64() != Some(size) || r["hash"].as_str() != Some(hash) {
        failures.push(format!(
            "server: sent {} bytes with hash {} (source: {size}, {hash})",
            r["bytes"], r["hash"]
        ));
    }
    let mut fast = Vec::new();
    let mut slow_s = f64::NAN;
    for k in 1..=SLOW_NODES {
        let name = slow_name(k);
        let Some(n) = r["nodes"].as_array().and_then(|a| a.iter().find(|n| n["name"] == name.as_str()))
        else {
            failures.push(format!("{name}: not in the report"));
            continue;
        };
        let ok = n["hash_ok"] == true && n["bytes"].as_u64() == Some(size) && n["error"].is_null();
        if !ok {
            failures.push(format!("{name}: {} bytes, hash_ok {}, {}", n["bytes"], n["hash_ok"], n["error"]));
        }
        if n["position"].as_u64() != Some(k as u64) {
            failures.push(format!("{name}: at position {} of the chain, not {k}", n["position"]));
        }
        let t = n["duration_s"].as_f64().unwrap_or(f64::NAN);
        if k == SLOW_NODE {
            slow_s = t;
        } else {
            fast.push((name, t));
        }
    }
    let all_verified = failures.is_empty();
    let log = std::fs::read_to_string(&run.server_log).unwrap_or_default();
    let (detached_s, detached_at) = detach_from_log(&log);
    if matches!(case, SlowCase::Stay) && detached_s.is_some() {
        failures.push("the server detached a node despite --slow-after 0".into());
    }
    Ok(SlowRun {
        wall_s: run.wall_s,
        server: run.server,
        all_verified,
        fast,
        slow_s,
        detached_s,
        detached_at,
        failures,
    })
}

/// From the server's log: seconds from the session's start to a node being
/// fed on its own, and the offset it resumed at.
fn detach_from_log(log: &str) -> (Option<f64>, Option<u64>) {
    let lines: Vec<String> = log.lines().map(strip_ansi).collect();
    let at = |needle: &str| lines.iter().find(|l| l.contains(needle)).and_then(|l| log_time(l));
    let detached_s = match (at(" starting with "), at(" is much slower than the rest ")) {
        // A session does not last a day: a negative span crossed midnight.
        (Some(t0), Some(t1)) => Some((t1 - t0).rem_euclid(86_400.0)),
        _ => None,
    };
    let offset = lines
        .iter()
        .find_map(|l| l.split_once(" resumes at offset ").map(|(_, rest)| rest.to_string()))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok());
    (detached_s, offset)
}

/// The line without terminal colour codes (the log keeps them in a file).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // Skip to the end of the escape sequence: `ESC [ ... m`.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Seconds into its UTC day of a log line's leading timestamp
/// (`2026-11-22T05:47:08.829240Z ...`).
fn log_time(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (_, time) = stamp.split_once('T')?;
    let mut hms = time.split(':').map(str::parse::<f64>);
    let (h, m, s) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
    Some(h * 3_600.0 + m * 60.0 + s)
}

fn render_slow_table(size: u64, slow_after: f64, runs: &[SlowRun]) -> String {
    let stay = runs[SlowCase::Stay as usize].fast_s();
    let fast_names: Vec<&str> = runs[0].fast.iter().map(|f| f.0.as_str()).collect();
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| run | server exit | every node verified | fast nodes s ({}) | fast nodes vs `--slow-after 0` \
         | slow node s ({}) | slow node MB/s | detached at s (slow node at) | wall s |",
        fast_names.join(", "),
        slow_name(SLOW_NODE),
    );
    t.push_str("|---|--:|:-:|--:|--:|--:|--:|--:|--:|\n");
    for (case, r) in SlowCase::ALL.iter().zip(runs) {
        let fast: Vec<String> = r.fast.iter().map(|f| format!("{:.2}", f.1)).collect();
        let detached = match (r.detached_s, r.detached_at) {
            (Some(s), Some(at)) => format!("{s:.2} ({})", human(at)),
            (Some(s), None) => format!("{s:.2}"),
            _ => "never".into(),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.0} | {detached} | {:.2} |",
            case.label(slow_after),
            if libc::WIFEXITED(r.server.status) {
                libc::WEXITSTATUS(r.server.status).to_string()
            } else {
                r.server.describe()
            },
            if r.all_verified { "yes" } else { "**no**" },
            fast.join(", "),
            r.fast_s() / stay,
            r.slow_s,
            mb_s(size, r.slow_s),
            r.wall_s,
        );
    }
    t
}

fn render_slow_notes(size: u64, slow_after: f64, runs: &[SlowRun], others: &Option<Others>) -> String {
    let [even, stay, detach] = [SlowCase::Even, SlowCase::Stay, SlowCase::Detach].map(|c| &runs[c as usize]);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "- Fast nodes (the last of them), with the slow node fed on its own vs kept in the\n  \
         chain: {:.2} s / {:.2} s = **{:.2}** ({:.1}x as fast). Without any slow node they take\n  \
         {:.2} s.",
        detach.fast_s(),
        stay.fast_s(),
        detach.fast_s() / stay.fast_s(),
        stay.fast_s() / detach.fast_s(),
        even.fast_s(),
    );
    let _ = writeln!(
        s,
        "- The slow node itself: {:.2} s fed on its own vs {:.2} s in the chain ({:.2}).",
        detach.slow_s,
        stay.slow_s,
        detach.slow_s / stay.slow_s,
    );
    match detach.detached_s {
        Some(d) => {
            let at = detach.detached_at.map_or(String::new(), |b| {
                let share = 100.0 * b as f64 / size as f64;
                format!(", {} then at {} of {} ({share:.0}%)", slow_name(SLOW_NODE), human(b), human(size))
            });
            let _ = writeln!(
                s,
                "- With `--slow-after {slow_after}` the server took {slow} out of the chain {d:.2} s into\n  \
                 the session{at}.\n  \
                 Until then every node went at {slow}'s pace; the fast nodes finished {:.2} s\n  \
                 after the detach.",
                detach.fast_s() - d,
                slow = slow_name(SLOW_NODE),
            );
        }
        None => {
            let _ =
                writeln!(s, "- With `--slow-after {slow_after}` the server never detached the slow node.");
        }
    }
    let verdicts: Vec<String> = SlowCase::ALL
        .iter()
        .zip(runs)
        .filter(|(_, r)| !(r.server.ok() && r.failures.is_empty()))
        .map(|(c, r)| format!("{}: {}", c.label(slow_after), r.verdict()))
        .collect();
    if verdicts.is_empty() {
        let _ = writeln!(
            s,
            "- Every run ended with server exit code 0: each node, the slow one included,\n  \
             verified the BLAKE3 hash of all {} bytes.",
            size
        );
    } else {
        let _ = writeln!(s, "- Not every run succeeded: {}.", verdicts.join("; "));
    }
    if let Some(o) = others {
        let _ = writeln!(
            s,
            "- While these runs measured, other processes used {:.1} of {:.1} CPU s ({:.0}%)\n  \
             and the hypervisor stole {:.1} s.",
            o.cpu,
            o.available,
            100.0 * o.cpu / o.available.max(1e-9),
            o.steal,
        );
    }
    s
}

fn render_slow_doc(
    opts: &Opts,
    command: &str,
    table: &str,
    notes: &str,
    runs: &[SlowRun],
    load: &str,
) -> String {
    let m = machine();
    let [even, stay, detach] = [SlowCase::Even, SlowCase::Stay, SlowCase::Detach].map(|c| &runs[c as usize]);
    let repeat = if opts.repeat == 1 {
        "each run once".to_string()
    } else {
        format!("each run {} times; the table shows the median by fast-node time", opts.repeat)
    };
    let fast_names: Vec<String> = (1..=SLOW_NODES).filter(|&k| k != SLOW_NODE).map(slow_name).collect();
    let chain: Vec<String> = (1..=SLOW_NODES).map(slow_name).collect();
    let wait = match detach.detached_s {
        Some(d) => {
            format!("here {d:.1} s from the session's start, {} s of it `--slow-after`", opts.slow_after)
        }
        None => "here the detach never came".into(),
    };
    format!(
        "{SLOW_HEADING}\n\
         \n\
         A node much slower than the rest is taken out of the chain after `--slow-after`\n\
         and fed on its own by the server, re-reading the input, so the others keep their\n\
         speed (`src/session/repair.rs`, `check_slow`). Measured by the same bench:\n\
         \n\
         - Date: {date}; {cpus} CPUs, load average {load} when the bench started\n\
         - Command: `{command}` (`--scenario slow` runs only this)\n\
         - Data: {size} of incompressible pseudo-random bytes in a file (in the page\n  \
           cache); {repeat}.\n\
         - Setup: as the chain runs above, all on 127.0.0.1 with a free port, {n} nodes\n  \
           chained {chain_order}. {fast} run `--discard`; {slow}'s\n  \
           sink is throttled to at most 20 MB/s:\n\
         \n\
         ```text\n\
         kacast server -s benchslow -n {n} -i FILE --bind 127.0.0.1 --port PORT --no-discovery \\\n    \
         --report FILE --slow-after SECS     # 0, then {slow_after}\n\
         kacast -q client -s benchslow --server 127.0.0.1:PORT --name {slow} --bind 127.0.0.1 \\\n    \
         -e '{THROTTLE}'\n\
         ```\n\
         \n\
         {table}\n\
         {notes}\
         \n\
         Columns: *fast nodes s* and *slow node s* are each node's `duration_s` from the\n\
         server's `--report` (session start to the node's report); *fast nodes vs\n\
         `--slow-after 0`* divides the last fast node's time by that of the\n\
         `--slow-after 0` run; *slow node MB/s* is bytes / its time; *detached at* is\n\
         from the server's log (session start to the detach, and the slow node's offset\n\
         then); *wall s* is server start to server exit, which waits for the slow node;\n\
         *server exit* 0 means every node verified the hash. In the first row {slow}\n\
         discards like the others: the same sessions without a slow node.\n\
         \n\
         What limits these numbers:\n\
         \n\
         - The `--slow-after 0` run goes at the slow node's pace, {stay_rate:.0} MB/s: set by the\n  \
           throttle, not by the CPUs, which kacast barely uses then. The throttle gives less\n  \
           than the 20 MB/s its naps allow because every MiB starts a `dd`, a `wc` and a\n  \
           `sleep`, which costs more on a loaded host.\n\
         - With detaching, most of the fast nodes' time is the wait for the detach: until\n  \
           then they go at the slow node's pace. The server first needs its moving\n  \
           average of the node's sink busy share (from heartbeats every 250 ms) to climb\n  \
           past its threshold, which takes a few seconds, and only then counts\n  \
           `--slow-after`:\n  \
           {wait}.\n  \
           That wait is a fixed cost, not a share of the stream: with a multi-GB image\n  \
           the fast nodes would take the wait plus about what they take without a slow\n  \
           node ({even:.2} s here for {size}), far less than at the slow node's pace,\n  \
           while a stream that ends within the wait gains nothing.\n\
         - After the detach, the {cpus} shared CPUs carry the server (now reading and\n  \
           sending the file twice: down the chain and to the slow node), the {n} clients\n  \
           and the throttle loop, besides whatever else the host runs: the fast nodes'\n  \
           last stretch is CPU-bound, as in the chain table above. On a rack each node\n  \
           has its own CPU and NIC; there the server's link carries the slow node's copy\n  \
           on top of the chain's.\n\
         - One machine, loopback, {runs}: read the ratios, not the absolute seconds.\n",
        date = utc_now(),
        cpus = m.cpus,
        size = human(opts.slow_size),
        n = SLOW_NODES,
        chain_order = chain.join(" -> "),
        fast = fast_names.join(", "),
        slow = slow_name(SLOW_NODE),
        slow_after = opts.slow_after,
        stay_rate = mb_s(opts.slow_size, stay.slow_s),
        even = even.fast_s(),
        runs =
            if opts.repeat == 1 { "one run each".to_string() } else { format!("median of {}", opts.repeat) },
    )
}

/// The document from the parts that ran; a part that did not run keeps its text
/// from the current document, and so does every section another bench (or a
/// person) writes, in its place.
fn compose_doc(old: &str, chain: Option<String>, slow: Option<String>) -> String {
    let (rest, old_slow) = take_section(old, SLOW_HEADING);
    let mut doc = match chain {
        // The chain's text is the file's head and its own sections: the
        // others follow it as they stood.
        Some(c) => {
            let ours: Vec<&str> = c.lines().filter(|l| l.starts_with("## ")).collect();
            let others = ours.iter().fold(rest, |d, h| take_section(&d, h).0);
            let others = others.find("\n## ").map_or("", |at| &others[at + 1..]).to_string();
            format!("{}\n\n{others}", c.trim_end())
        }
        None if rest.trim().is_empty() => {
            "# Performance\n\nMeasured by `benches/chain.rs`, which rewrites this file.\n".to_string()
        }
        None => rest,
    };
    // The slow-node section closes the chain's part, before the others.
    if let Some(slow) = slow.or(old_slow) {
        let slow = format!("{}\n\n", slow.trim_end());
        doc = match doc.find(&format!("\n{FINDINGS_HEADING}\n")) {
            Some(at) => format!("{}{slow}{}", &doc[..at + 1], &doc[at + 1..]),
            None => format!("{}\n\n{slow}", doc.trim_end()),
        };
    }
    format!("{}\n", doc.trim_end())
}

fn render_table(size: u64, b: &Baseline, chains: &[(usize, ChainRun)]) -> String {
    let g = gib(size);
    let base = mb_s(size, b.wall_s);
    let copy_cpu = b.send_cpu + b.recv_cpu;
    let mut t = String::new();
    t.push_str(
        "| run | wall s | MB/s per node | vs copy | stream s | MB/s per node (stream), vs copy \
         | delivered MB/s | CPU s/GiB per hop (user+sys) | server CPU s/GiB | cores busy \
         | peak RSS MiB (server, largest node) |\n",
    );
    t.push_str("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    let _ = writeln!(
        t,
        "| plain TCP copy | {:.2} | {base:.0} | 1.00 | {:.2} | {base:.0}, 1.00 | {base:.0} \
         | {:.3} ({:.3}+{:.3}) | | {:.2} | |",
        b.wall_s,
        b.wall_s,
        copy_cpu.total() / g,
        copy_cpu.user / g,
        copy_cpu.sys / g,
        copy_cpu.total() / b.wall_s,
    );
    for (n, r) in chains {
        let per_node = mb_s(size, r.wall_s);
        let streamed = mb_s(size, r.stream_s);
        let hops = g * *n as f64;
        let _ = writeln!(
            t,
            "| chain, {n} node{} | {:.2} | {per_node:.0} | {:.2} | {:.2} | {streamed:.0}, {:.2} \
             | {:.0} | {:.3} ({:.3}+{:.3}) | {:.3} | {:.2} | {:.0}, {:.0} |",
            if *n == 1 { "" } else { "s" },
            r.wall_s,
            per_node / base,
            r.stream_s,
            streamed / base,
            per_node * *n as f64,
            r.clients.total() / hops,
            r.clients.user / hops,
            r.clients.sys / hops,
            r.server.total() / g,
            (r.server.total() + r.clients.total()) / r.wall_s,
            r.server_rss_mib,
            r.client_rss_mib,
        );
    }
    t
}

/// Reference figures printed under the table, derived from the same run.
struct Facts {
    send: f64,
    recv: f64,
    blake3: f64,
    /// Least and most of (wall - stream) over the chain runs: start-up,
    /// rendezvous and exit, the part of the wall time that does not scale.
    fixed: (f64, f64),
    others: Option<Others>,
}

impl Facts {
    fn new(
        size: u64,
        b: &Baseline,
        blake3: f64,
        chains: &[(usize, ChainRun)],
        others: Option<Others>,
    ) -> Facts {
        let g = gib(size);
        let gaps = chains.iter().map(|(_, r)| r.wall_s - r.stream_s);
        Facts {
            send: b.send_cpu.total() / g,
            recv: b.recv_cpu.total() / g,
            blake3,
            fixed: (gaps.clone().fold(f64::INFINITY, f64::min), gaps.fold(f64::NEG_INFINITY, f64::max)),
            others,
        }
    }

    fn render(&self) -> String {
        let others = match &self.others {
            Some(o) => {
                let share = 100.0 * o.cpu / o.available.max(1e-9);
                let verdict = if share < 5.0 {
                    "the machine was otherwise quiet"
                } else {
                    "rows run while others were busy are slower and show fewer cores busy"
                };
                format!(
                    "- While the bench measured, other processes used {:.1} of {:.1} CPU s\n  \
                     ({share:.0}%) and the hypervisor stole {:.1} s: {verdict}.\n",
                    o.cpu, o.available, o.steal,
                )
            }
            None => String::new(),
        };
        format!(
            "- For scale, in CPU s/GiB: the plain copy's sender {:.3} and receiver {:.3};\n  \
             BLAKE3 on one thread {:.3}. Sender + receiver + BLAKE3 = {:.3}: roughly what\n  \
             a hop that receives, hashes and relays should cost.\n\
             - wall s - stream s (start-up, rendezvous, server exit): {:.2} to {:.2} s.\n\
             {others}",
            self.send,
            self.recv,
            self.blake3,
            self.send + self.recv + self.blake3,
            self.fixed.0,
            self.fixed.1,
        )
    }
}

fn render_doc(opts: &Opts, command: &str, table: &str, facts: &Facts, load: &str) -> String {
    let m = machine();
    let repeat = if opts.repeat == 1 {
        "each configuration ran once".to_string()
    } else {
        format!(
            "each configuration ran {} times; the table shows the run with the median wall time",
            opts.repeat
        )
    };
    let max_n = opts.nodes.iter().max().copied().unwrap_or(1);
    format!(
        "# Performance\n\
         \n\
         Measured by `benches/chain.rs`, which rewrites this file. Numbers from one\n\
         machine, on loopback: read them for ratios and CPU cost, not as what a rack\n\
         reaches over a real network.\n\
         \n\
         - Date: {date}\n\
         - Machine: {cpus} CPUs ({model}), {mem} RAM, Linux {kernel}; load average\n  \
           {load} when the bench started\n\
         - Toolchain: {rustc}, release profile\n\
         - Command: `{command}`\n\
         - Data: {size} of incompressible pseudo-random bytes in a file (in the page\n  \
           cache); {repeat}.\n\
         \n\
         {table}\n\
         {facts}\
         \n\
         ## Columns\n\
         \n\
         - *plain TCP copy*: one thread reads the file and writes it to a loopback TCP\n  \
           socket, another reads and discards, 256 KiB buffers. No framing, no hashing.\n  \
           Being short, it runs three times in a row; the median counts.\n\
         - *chain, N nodes*: the release binary as real processes, `kacast server -i FILE`\n  \
           and N `kacast client --discard`, all bound to 127.0.0.1. Every run ended with\n  \
           server exit code 0: each node verified the BLAKE3 hash of all the bytes.\n\
         - *wall s*: server start to server exit. *stream s*: session start to the last\n  \
           node's report, from the server's report.\n\
         - *MB/s per node*: bytes / time (MB = 10^6 bytes); every node receives all of\n  \
           them. *vs copy*: over the plain copy's MB/s, measured in the same run.\n  \
           *delivered MB/s*: N times the per-node rate (wall).\n\
         - *CPU s/GiB per hop*: user+sys CPU of all clients / (GiB x N), from `wait4`.\n  \
           A hop receives, hashes and (except the last) relays; for the plain copy it is\n  \
           its sender plus its receiver. *server CPU s/GiB*: reading the file, hashing\n  \
           it, sending to the first node. *cores busy*: total CPU / wall time.\n\
         - *peak RSS*: `ru_maxrss` from `wait4`, for the server and the largest node. The\n  \
           default `--buffer` is 32 MiB per process, whatever the stream length.\n\
         \n\
         ## Caveats\n\
         \n\
         This machine has {cpus} CPUs, shared. A chain of N nodes on loopback is N + 1\n\
         processes competing for those cores, so beyond a node or two the chain is\n\
         CPU-bound, not network-bound: the per-node rate falls as N grows because the\n\
         same cores do every hop's work, and the N = {max_n} row measures CPU per hop\n\
         rather than network throughput. On a rack each node has its own CPU and NIC, so\n\
         the per-node rate should stay near the short-chain figure, bounded by the link.\n\
         Loopback copies also cost more CPU than a NIC with offloads. Ratios were\n\
         measured side by side in one run; absolute numbers move with the host's load.\n",
        date = utc_now(),
        cpus = m.cpus,
        model = m.model,
        mem = m.memory,
        kernel = m.kernel,
        rustc = m.rustc,
        size = human(opts.size),
        facts = facts.render(),
    )
}
