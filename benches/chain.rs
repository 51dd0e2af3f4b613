//! Chain throughput and CPU cost, measured side by side with a plain TCP copy.
//!
//! ```text
//! cargo bench --bench chain [-- --size 1G --nodes 1,2,4,8,16 --repeat 1]
//! ```
//!
//! Everything runs on 127.0.0.1 only. The bench writes a file of incompressible
//! pseudo-random bytes, then for each N runs the release `kacast` binary as real
//! processes: one `kacast server -i FILE` and N `kacast client --discard`. It
//! times each session from the server's start to its exit, requires exit code 0
//! (every node verified the BLAKE3 hash), and takes every child's CPU time from
//! `wait4`. The baseline, in the same run, is one plain TCP copy of the same file
//! over loopback (a sending and a receiving thread, 256 KiB buffers). The
//! Markdown table goes to stdout and into `docs/PERFORMANCE.md`.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use kacast::demo::Pattern;
use kacast::size::{human, parse_size};

/// Cargo builds the binary (in the bench profile, i.e. release) before the bench.
const KACAST: &str = env!("CARGO_BIN_EXE_kacast");
const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PERFORMANCE.md");
const GIB: f64 = (1u64 << 30) as f64;
/// Buffer size of the baseline copy, and of kacast's chunks.
const BUF: usize = 256 * 1024;
const SEED: u64 = 0x6b61_6361_7374;
/// How often the wait loop polls the children: the resolution of the wall time.
const POLL: Duration = Duration::from_millis(1);
/// Plain copies per repetition; the median counts.
const BASELINE_RUNS: usize = 3;
/// How long the other processes may take to end once one node has failed.
const FAIL_GRACE: Duration = Duration::from_secs(15);

const USAGE: &str = "\
usage: cargo bench --bench chain [-- OPTIONS]
  --size SIZE      bytes to stream (default 1G; K, M, G suffixes)
  --nodes LIST     chain lengths to run, comma-separated (default 1,2,4,8,16)
  --repeat R       run everything R times, report the median (default 1)
  --timeout SECS   give up on one session after this long (default 300)
  --no-doc         do not rewrite docs/PERFORMANCE.md";

struct Opts {
    size: u64,
    nodes: Vec<usize>,
    repeat: usize,
    timeout: Duration,
    doc: bool,
    /// The options as given, for the command line recorded in the doc.
    given: Vec<String>,
}

fn parse_args() -> Result<Opts> {
    let mut o = Opts {
        size: 1 << 30,
        nodes: vec![1, 2, 4, 8, 16],
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
    if o.size == 0 || o.repeat == 0 || o.nodes.is_empty() || o.nodes.contains(&0) {
        bail!("--size, --repeat and every --nodes entry must be at least 1\n{USAGE}");
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
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    let kacast = Path::new(KACAST);
    if !kacast.is_file() {
        bail!(
            "the kacast binary is missing at {KACAST}; build it with `cargo build --release` \
             (cargo bench normally builds it first)"
        );
    }
    let tmp =
        tempfile::Builder::new().prefix("kacast-bench-").tempdir().context("create a temporary directory")?;
    let file = tmp.path().join("source.img");
    eprintln!("bench chain: writing {} of pseudo-random bytes to {}", human(opts.size), file.display());
    let hash = write_source(&file, opts.size)?;
    let blake3_s_per_gib = blake3_cost(opts.size);

    let before = Usage::now();
    let mut baselines = Vec::new();
    let mut chains: Vec<Vec<ChainRun>> = opts.nodes.iter().map(|_| Vec::new()).collect();
    for rep in 1..=opts.repeat {
        let tag = if opts.repeat > 1 { format!(" (run {rep}/{})", opts.repeat) } else { String::new() };
        // The copy takes a fraction of a second and varies from run to run:
        // its median of three is the yardstick.
        let b = median((0..BASELINE_RUNS).map(|_| baseline(&file, opts.size)).collect::<Result<_>>()?, |b| {
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
            let r = match chain(&file, &hash, opts.size, n, &dir, opts.timeout) {
                Ok(r) => r,
                Err(e) => {
                    // Keep the logs for a look; the source file is only bulk.
                    let _ = std::fs::remove_file(&file);
                    let kept = tmp.keep();
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
    }
    let baseline = median(baselines, |b| b.wall_s);
    let chains: Vec<(usize, ChainRun)> =
        opts.nodes.iter().zip(chains).map(|(&n, runs)| (n, median(runs, |r| r.wall_s))).collect();

    let command = if opts.given.is_empty() {
        "cargo bench --bench chain".to_string()
    } else {
        format!("cargo bench --bench chain -- {}", opts.given.join(" "))
    };
    let table = render_table(opts.size, &baseline, &chains);
    let others = others_since(&before);
    let facts = Facts::new(opts.size, &baseline, blake3_s_per_gib, &chains, others);
    println!("\n{table}\n{}", facts.render());
    if opts.doc {
        let doc = render_doc(&opts, &command, &table, &facts, &load);
        if let Some(dir) = Path::new(DOC).parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        std::fs::write(DOC, doc).with_context(|| format!("write {DOC}"))?;
        eprintln!("bench chain: wrote {DOC}");
    }
    Ok(())
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / GIB
}

fn mb_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-9)
}

/// The median run by `key` (the faster of the middle two for an even count).
fn median<T>(mut runs: Vec<T>, key: impl Fn(&T) -> f64) -> T {
    runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    runs.swap_remove((runs.len() - 1) / 2)
}

/// Writes `size` pattern bytes to `path` and returns their BLAKE3 hash (hex).
fn write_source(path: &Path, size: u64) -> Result<String> {
    let mut out = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut pattern = Pattern::new(SEED, size);
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = pattern.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).with_context(|| format!("write {}", path.display()))?;
    }
    // On disk before any measurement, so no writeback competes for the CPUs; the
    // pages stay cached and every run reads the file from memory.
    out.sync_all().with_context(|| format!("sync {}", path.display()))?;
    Ok(hasher.finalize().to_hex().to_string())
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

#[derive(Clone, Copy, Default)]
struct Cpu {
    user: f64,
    sys: f64,
}

impl Cpu {
    fn total(self) -> f64 {
        self.user + self.sys
    }

    fn from_rusage(ru: &libc::rusage) -> Cpu {
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Cpu { user: tv(ru.ru_utime), sys: tv(ru.ru_stime) }
    }
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, o: Cpu) -> Cpu {
        Cpu { user: self.user - o.user, sys: self.sys - o.sys }
    }
}

impl std::ops::Add for Cpu {
    type Output = Cpu;
    fn add(self, o: Cpu) -> Cpu {
        Cpu { user: self.user + o.user, sys: self.sys + o.sys }
    }
}

/// CPU seconds the machine spent busy (user, nice, system) and stolen, from
/// /proc/stat, with this process's and its reaped children's CPU: the
/// difference is what other processes took while the bench measured.
struct Usage {
    busy: f64,
    steal: f64,
    own: f64,
    at: Instant,
    /// CPUs /proc/stat counts.
    cpus: f64,
}

struct Others {
    cpu: f64,
    steal: f64,
    available: f64,
}

impl Usage {
    fn now() -> Option<Usage> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks: Vec<f64> =
            stat.lines().next()?.split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0.0)).collect();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let own = [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN]
            .iter()
            .map(|&who| {
                // SAFETY: rusage is plain data; getrusage only writes into it.
                let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
                // SAFETY: a valid pointer to a rusage.
                unsafe { libc::getrusage(who, &mut ru) };
                Cpu::from_rusage(&ru).total()
            })
            .sum();
        // Interrupt time is left out: the kernel may book loopback's softirq
        // work there rather than on the process it ran for.
        Some(Usage {
            busy: (ticks.first()? + ticks.get(1)? + ticks.get(2)?) / hz,
            steal: ticks.get(7).copied().unwrap_or(0.0) / hz,
            own,
            at: Instant::now(),
            cpus: stat.lines().filter(|l| l.starts_with("cpu") && !l.starts_with("cpu ")).count() as f64,
        })
    }
}

/// What other processes took since `before`.
fn others_since(before: &Option<Usage>) -> Option<Others> {
    let (a, b) = (before.as_ref()?, Usage::now()?);
    Some(Others {
        cpu: ((b.busy - a.busy) - (b.own - a.own)).max(0.0),
        steal: b.steal - a.steal,
        available: (b.at - a.at).as_secs_f64() * b.cpus,
    })
}

/// CPU time of the calling thread so far.
fn thread_cpu() -> Cpu {
    // SAFETY: rusage is plain data; getrusage only writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage; RUSAGE_THREAD is supported on Linux.
    let r = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    assert_eq!(r, 0, "getrusage: {}", io::Error::last_os_error());
    Cpu::from_rusage(&ru)
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
}

/// How a child process ended.
#[derive(Clone, Copy)]
struct Exit {
    status: libc::c_int,
    cpu: Cpu,
    at: Instant,
}

impl Exit {
    fn ok(&self) -> bool {
        libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }

    fn describe(&self) -> String {
        if libc::WIFEXITED(self.status) {
            format!("exit code {}", libc::WEXITSTATUS(self.status))
        } else if libc::WIFSIGNALED(self.status) {
            format!("killed by signal {}", libc::WTERMSIG(self.status))
        } else {
            format!("wait status {}", self.status)
        }
    }
}

struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    exit: Option<Exit>,
}

/// The processes of one session. Whatever happens (an error, a panic), dropping
/// the rack kills and reaps every child still running.
#[derive(Default)]
struct Rack {
    procs: Vec<Proc>,
}

impl Rack {
    fn spawn(&mut self, name: &str, args: &[String], dir: &Path) -> Result<()> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        let mut cmd = Command::new(KACAST);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Even if the bench is killed outright, no kacast is left behind.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("start {KACAST}"))?;
        self.procs.push(Proc { name: name.to_string(), child, log, exit: None });
        Ok(())
    }

    /// Reaps every child that has exited, with its CPU time.
    fn reap(&mut self) -> Result<()> {
        for p in self.procs.iter_mut().filter(|p| p.exit.is_none()) {
            let pid = p.child.id() as libc::pid_t;
            let mut status = 0;
            // SAFETY: rusage is plain data; wait4 only writes into it.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: valid pointers; the pid is our own unreaped child.
            let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
            if r == pid {
                p.exit = Some(Exit { status, cpu: Cpu::from_rusage(&ru), at: Instant::now() });
            } else if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e).with_context(|| format!("wait for {}", p.name));
                }
            }
        }
        Ok(())
    }

    fn all_exited(&self) -> bool {
        self.procs.iter().all(|p| p.exit.is_some())
    }

    /// The last lines of every child's log, to explain a failure.
    fn logs(&self) -> String {
        let mut s = String::new();
        for p in &self.procs {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let state = p.exit.map_or("still running".to_string(), |e| e.describe());
            let _ = writeln!(s, "--- {} ({state}), {}:", p.name, p.log.display());
            for l in &lines[lines.len().saturating_sub(15)..] {
                let _ = writeln!(s, "    {l}");
            }
        }
        s
    }
}

impl Drop for Rack {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().filter(|p| p.exit.is_none()) {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
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

/// One session: a server and `n` discarding clients on loopback, timed from the
/// server's start to its exit.
fn chain(file: &Path, hash: &str, size: u64, n: usize, dir: &Path, timeout: Duration) -> Result<ChainRun> {
    let port = free_port()?;
    let session = format!("bench{n}");
    let report = dir.join("report.json");
    let s = |v: &str| v.to_string();
    let server_args = vec![
        s("-q"),
        s("server"),
        s("-s"),
        session.clone(),
        s("-n"),
        n.to_string(),
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
    let width = n.to_string().len().max(2);
    for k in 1..=n {
        let name = format!("node{k:0width$}");
        let args = vec![
            s("-q"),
            s("client"),
            s("-s"),
            session.clone(),
            s("--server"),
            format!("127.0.0.1:{port}"),
            s("--name"),
            name.clone(),
            s("--bind"),
            s("127.0.0.1"),
            s("--discard"),
            s("--tries"),
            s("100"),
            s("--retry-interval"),
            s("0.05"),
        ];
        rack.spawn(&name, &args, dir)?;
    }
    loop {
        rack.reap()?;
        if rack.all_exited() {
            break;
        }
        // A node failed: give the session a moment to end and say why (the
        // checks below then report it), but do not wait out the timeout.
        if let Some(p) = rack.procs[1..].iter().find(|p| p.exit.is_some_and(|e| !e.ok())) {
            let failed_at = p.exit.expect("found exited").at;
            if failed_at.elapsed() > FAIL_GRACE {
                bail!("{} failed and the session did not end\n{}", p.name, rack.logs());
            }
        }
        if started.elapsed() > timeout {
            bail!("not done after {} s (--timeout)\n{}", timeout.as_secs(), rack.logs());
        }
        thread::sleep(POLL);
    }
    let server = rack.procs[0].exit.expect("all exited");
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
    let r: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&report).with_context(|| format!("read {}", report.display()))?,
    )
    .context("parse the server's report")?;
    let nodes_ok = r["nodes"].as_array().is_some_and(|a| {
        a.len() == n && a.iter().all(|x| x["hash_ok"] == true && x["bytes"].as_u64() == Some(size))
    });
    if r["bytes"].as_u64() != Some(size) || r["hash"].as_str() != Some(hash) || !nodes_ok {
        bail!("the server's report does not match the source file: {r}");
    }
    let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    Ok(ChainRun {
        wall_s: (server.at - started).as_secs_f64(),
        stream_s: f("transfer_s") + f("pipeline_emptied_s"),
        server: server.cpu,
        clients: rack.procs[1..].iter().filter_map(|p| p.exit).fold(Cpu::default(), |a, e| a + e.cpu),
    })
}

fn render_table(size: u64, b: &Baseline, chains: &[(usize, ChainRun)]) -> String {
    let g = gib(size);
    let base = mb_s(size, b.wall_s);
    let copy_cpu = b.send_cpu + b.recv_cpu;
    let mut t = String::new();
    t.push_str(
        "| run | wall s | MB/s per node | vs copy | stream s | MB/s per node (stream), vs copy \
         | delivered MB/s | CPU s/GiB per hop (user+sys) | server CPU s/GiB | cores busy |\n",
    );
    t.push_str("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    let _ = writeln!(
        t,
        "| plain TCP copy | {:.2} | {base:.0} | 1.00 | {:.2} | {base:.0}, 1.00 | {base:.0} \
         | {:.3} ({:.3}+{:.3}) | | {:.2} |",
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
             | {:.0} | {:.3} ({:.3}+{:.3}) | {:.3} | {:.2} |",
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
        );
    }
    t
}

struct Machine {
    cpus: usize,
    model: String,
    memory: String,
    kernel: String,
    rustc: String,
}

fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".into(), |(_, v)| v.trim().to_string());
    let meminfo = read("/proc/meminfo");
    let memory = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or("unknown".into(), |kb| human(kb * 1024));
    let rustc = Command::new("rustc")
        .arg("-V")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cpus: thread::available_parallelism().map_or(0, |n| n.get()),
        model,
        memory,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        rustc,
    }
}

/// `YYYY-MM-DD HH:MM UTC` without a date crate (civil-from-days, H. Hinnant).
fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3_600, rem % 3_600 / 60)
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
