//! What the benches share: running processes and reaping them with their CPU
//! time, the machine's load while they ran, the source file, the machine facts.
//! Each bench is its own crate and includes this module (`mod common;`).
#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use kacast::demo::Pattern;
use kacast::size::human;

/// Cargo builds the binary (in the bench profile, i.e. release) before the bench.
pub const KACAST: &str = env!("CARGO_BIN_EXE_kacast");
pub const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PERFORMANCE.md");
pub const GIB: f64 = (1u64 << 30) as f64;
/// Seed of the source's pseudo-random bytes: every run streams the same data.
pub const SEED: u64 = 0x6b61_6361_7374;

/// The 1-minute load average, as /proc/loadavg gives it.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / GIB
}

pub fn mb_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-9)
}

/// The median run by `key` (the faster of the middle two for an even count).
pub fn median<T>(mut runs: Vec<T>, key: impl Fn(&T) -> f64) -> T {
    runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    runs.swap_remove((runs.len() - 1) / 2)
}

/// Writes `size` pattern bytes to `path` and returns their BLAKE3 hash (hex).
pub fn write_source(path: &Path, size: u64) -> Result<String> {
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

#[derive(Clone, Copy, Default)]
pub struct Cpu {
    pub user: f64,
    pub sys: f64,
}

impl Cpu {
    pub fn total(self) -> f64 {
        self.user + self.sys
    }

    pub fn from_rusage(ru: &libc::rusage) -> Cpu {
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
pub struct Usage {
    pub busy: f64,
    pub steal: f64,
    pub own: f64,
    pub at: Instant,
    /// CPUs /proc/stat counts.
    pub cpus: f64,
}

pub struct Others {
    pub cpu: f64,
    pub steal: f64,
    pub available: f64,
}

impl Usage {
    pub fn now() -> Option<Usage> {
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

/// Adds one stretch of measurement to the others' total.
pub fn add_others(acc: &mut Option<Others>, o: Option<Others>) {
    let Some(o) = o else { return };
    match acc {
        Some(a) => {
            a.cpu += o.cpu;
            a.steal += o.steal;
            a.available += o.available;
        }
        None => *acc = Some(o),
    }
}

/// What other processes took since `before`.
pub fn others_since(before: &Option<Usage>) -> Option<Others> {
    let (a, b) = (before.as_ref()?, Usage::now()?);
    Some(Others {
        cpu: ((b.busy - a.busy) - (b.own - a.own)).max(0.0),
        steal: b.steal - a.steal,
        available: (b.at - a.at).as_secs_f64() * b.cpus,
    })
}

/// CPU time of the calling thread so far.
pub fn thread_cpu() -> Cpu {
    // SAFETY: rusage is plain data; getrusage only writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage; RUSAGE_THREAD is supported on Linux.
    let r = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    assert_eq!(r, 0, "getrusage: {}", io::Error::last_os_error());
    Cpu::from_rusage(&ru)
}

/// How a child process ended.
#[derive(Clone, Copy)]
pub struct Exit {
    pub status: libc::c_int,
    pub cpu: Cpu,
    pub at: Instant,
    /// Peak resident memory (`ru_maxrss`), in MiB.
    pub rss_mib: f64,
}

impl Exit {
    pub fn ok(&self) -> bool {
        libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }

    pub fn describe(&self) -> String {
        if libc::WIFEXITED(self.status) {
            format!("exit code {}", libc::WEXITSTATUS(self.status))
        } else if libc::WIFSIGNALED(self.status) {
            format!("killed by signal {}", libc::WTERMSIG(self.status))
        } else {
            format!("wait status {}", self.status)
        }
    }
}

pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
    pub exit: Option<Exit>,
}

/// The processes of one session. Whatever happens (an error, a panic), dropping
/// the rack kills and reaps every child still running.
#[derive(Default)]
pub struct Rack {
    pub procs: Vec<Proc>,
}

impl Rack {
    /// Starts `kacast ARGS`, its output in `dir/NAME.log`.
    pub fn spawn(&mut self, name: &str, args: &[String], dir: &Path) -> Result<()> {
        self.spawn_in(name, Path::new(KACAST), args, dir, None)
    }

    /// Starts `program ARGS`, in the network namespace `netns` (a handle on
    /// `/run/netns/NAME`) when given, its output in `dir/NAME.log`. The pid is
    /// the program's own (no `ip netns exec` in between), so `wait4` gives its CPU.
    pub fn spawn_in(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
        dir: &Path,
        netns: Option<&File>,
    ) -> Result<()> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        let ns = netns.map(|f| f.as_raw_fd());
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: only async-signal-safe calls between fork and exec; the
        // namespace's fd stays open in the parent until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                // Even if the bench is killed outright, no child is left behind.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                if let Some(fd) = ns {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("start {}", program.display()))?;
        self.procs.push(Proc { name: name.to_string(), child, log, exit: None });
        Ok(())
    }

    /// Reaps every child that has exited, with its CPU time.
    pub fn reap(&mut self) -> Result<()> {
        for p in self.procs.iter_mut().filter(|p| p.exit.is_none()) {
            let pid = p.child.id() as libc::pid_t;
            let mut status = 0;
            // SAFETY: rusage is plain data; wait4 only writes into it.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: valid pointers; the pid is our own unreaped child.
            let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
            if r == pid {
                let rss_mib = ru.ru_maxrss as f64 / 1024.0;
                p.exit = Some(Exit { status, cpu: Cpu::from_rusage(&ru), at: Instant::now(), rss_mib });
            } else if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e).with_context(|| format!("wait for {}", p.name));
                }
            }
        }
        Ok(())
    }

    pub fn all_exited(&self) -> bool {
        self.procs.iter().all(|p| p.exit.is_some())
    }

    /// The last lines of every child's log, to explain a failure.
    pub fn logs(&self) -> String {
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

pub struct Machine {
    pub cpus: usize,
    pub model: String,
    pub memory: String,
    pub kernel: String,
    pub rustc: String,
}

pub fn machine() -> Machine {
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
pub fn utc_now() -> String {
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

/// Headings of the sections `benches/rack.rs` owns in docs/PERFORMANCE.md.
pub const RACK_HEADING: &str = "## Virtual rack";
pub const RELAY_HEADING: &str = "## Relay cost";
pub const COMPRESS_HEADING: &str = "## Compression";
/// A hand-written section (targets, findings) that no bench rewrites: it
/// comes before the rack's tables and is kept whichever bench runs.
pub const FINDINGS_HEADING: &str = "## Wire speed: targets and findings";

/// Where the section under `heading` lies in `doc`: from its heading to the
/// next `## ` (or the end).
fn section_span(doc: &str, heading: &str) -> Option<(usize, usize)> {
    let start = doc.find(&format!("\n{heading}\n"))? + 1;
    let body = start + heading.len();
    Some((start, doc[body..].find("\n## ").map_or(doc.len(), |e| body + e + 1)))
}

/// Splits the section under `heading` (up to the next `## ` or the end) out of
/// `doc`: the rest, and the section when there is one.
pub fn take_section(doc: &str, heading: &str) -> (String, Option<String>) {
    match section_span(doc, heading) {
        Some((start, end)) => {
            (format!("{}{}", &doc[..start], &doc[end..]), Some(doc[start..end].to_string()))
        }
        None => (doc.to_string(), None),
    }
}

/// The sections `benches/rack.rs` writes, in the order the file keeps them.
const RACK_SECTIONS: [&str; 3] = [RACK_HEADING, COMPRESS_HEADING, RELAY_HEADING];

/// `doc` with the section under `heading` replaced where it stands; a new
/// one goes before the rack bench's sections that follow it in
/// [`RACK_SECTIONS`], or at the end. Every other section stays as it is.
pub fn put_section(doc: &str, heading: &str, section: &str) -> String {
    let section = format!("{}\n", section.trim_end());
    if let Some((start, end)) = section_span(doc, heading) {
        let gap = if end < doc.len() { "\n" } else { "" };
        return format!("{}{section}{gap}{}", &doc[..start], &doc[end..]);
    }
    let later =
        RACK_SECTIONS.iter().skip_while(|h| **h != heading).skip(1).find_map(|h| section_span(doc, h));
    match later {
        Some((start, _)) => format!("{}{section}\n{}", &doc[..start], &doc[start..]),
        None => format!("{}\n\n{section}", doc.trim_end()),
    }
}
