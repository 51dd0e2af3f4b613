//! Sparse raw images: what a mostly empty ext4 partition costs on the wire and
//! in time, sparse against byte for byte, side by side in one run.
//!
//! ```text
//! cargo bench --bench sparse                 # a 20 GiB partition holding 2 GiB
//! cargo bench --bench sparse -- --quick      # 4 GiB holding 512 MiB
//! ```
//!
//! The golden partition is a loop device over an image file, formatted ext4
//! and filled with pseudo-random files. Two nodes on loopback receive it:
//! - *sparse*: `kacast server --sparse -i DEV` (e2image's used blocks, zero
//!   blocks left out) and `kacast client --sparse --to-file IMAGE`, which
//!   writes the data and leaves holes; each node's image is then checked with
//!   `e2fsck -fn`.
//! - *every byte*: `kacast server -i DEV` and `kacast client --discard`: the
//!   whole partition through the chain, with no disk write on the nodes (in
//!   its favour).
//!
//! Loopback is not a rack's link, so the table also gives what the wire bytes
//! alone would take at 1 Gbit/s (bytes over the TCP limit, 119.5 MB/s).

mod common;

use std::fmt::Write as _;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::*;
use kacast::size::{human, parse_size};

const HEADING: &str = "## Sparse raw images";
/// TCP payload at 1 Gbit/s through tbf, as benches/rack.rs measures it.
const GBIT_LIMIT: f64 = 1e9 / 8.0 * 1448.0 / 1514.0;
const FILE_SIZE: u64 = 64 << 20;

struct Opts {
    size: u64,
    data: u64,
    doc: bool,
    command: String,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("sparse bench: {e:#}");
        std::process::exit(1);
    }
}

fn parse() -> Result<Opts> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let mut o =
        Opts { size: 20 << 30, data: 2 << 30, doc: true, command: "cargo bench --bench sparse".into() };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => (o.size, o.data) = (4 << 30, 512 << 20),
            "--size" => o.size = parse_size(it.next().context("--size SIZE")?)?,
            "--data" => o.data = parse_size(it.next().context("--data SIZE")?)?,
            "--no-doc" => o.doc = false,
            other => bail!("unknown option {other}; usage: cargo bench --bench sparse [-- --quick | --size S --data S | --no-doc]"),
        }
    }
    if !args.is_empty() {
        o.command = format!("{} -- {}", o.command, args.join(" "));
    }
    Ok(o)
}

fn sh(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("run {program}"))?;
    if !out.status.success() {
        bail!("{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A loop device over a sparse file, detached when dropped.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = sh("umount", &[&self.0]);
        let _ = sh("losetup", &["-d", &self.0]);
    }
}

struct Run {
    way: &'static str,
    wire: u64,
    secs: f64,
    server_cpu: f64,
    node_cpu: f64,
    node_disk: u64,
}

fn run() -> Result<()> {
    let o = parse()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (loop device, mkfs, mount)");
    }
    for tool in ["mkfs.ext4", "e2image", "e2fsck", "losetup"] {
        sh("sh", &["-c", &format!("command -v {tool}")])
            .with_context(|| format!("{tool} is not installed"))?;
    }
    let dir = tempfile::Builder::new().prefix("kacast-sparse-").tempdir_in("/var/tmp")?;
    let golden = build_golden(dir.path(), &o)?;
    let load0 = loadavg();
    let sparse = one_run(dir.path(), &golden.0, true)?;
    let whole = one_run(dir.path(), &golden.0, false)?;
    let section = render(&o, &load0, &[sparse, whole]);
    println!("{section}");
    if o.doc {
        let doc = fs::read_to_string(DOC).unwrap_or_default();
        fs::write(DOC, put_section(&doc, HEADING, &section))?;
        println!("wrote {DOC}");
    }
    Ok(())
}

fn build_golden(dir: &Path, o: &Opts) -> Result<Loop> {
    let image = dir.join("golden.img");
    fs::File::create(&image)?.set_len(o.size)?;
    let dev = Loop(sh("losetup", &["-f", "--show", image.to_str().unwrap()])?.trim().to_string());
    sh("mkfs.ext4", &["-q", "-F", "-E", "nodiscard", &dev.0])?;
    let mnt = dir.join("golden");
    fs::create_dir_all(&mnt)?;
    sh("mount", &[&dev.0, mnt.to_str().unwrap()])?;
    let mut left = o.data;
    let mut i = 0;
    while left > 0 {
        let n = left.min(FILE_SIZE);
        write_source(&mnt.join(format!("data{i:03}")), n)?;
        left -= n;
        i += 1;
    }
    sh("umount", &[mnt.to_str().unwrap()])?;
    Ok(dev)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn one_run(dir: &Path, dev: &str, sparse: bool) -> Result<Run> {
    let port = free_port()?.to_string();
    let report = dir.join("report.json");
    let session = if sparse { "sparse" } else { "whole" };
    let mut server: Vec<String> = [
        "server",
        "-s",
        session,
        "-n",
        "2",
        "--bind",
        "127.0.0.1",
        "--port",
        &port,
        "--no-discovery",
        "-i",
        dev,
    ]
    .map(String::from)
    .to_vec();
    server.extend(["--report".into(), report.display().to_string()]);
    if sparse {
        server.push("--sparse".into());
    }
    let images: Vec<PathBuf> = (1..=2).map(|i| dir.join(format!("node{i}.img"))).collect();
    let mut rack = Rack::default();
    let start = Instant::now();
    rack.spawn("server", &server, dir)?;
    for (i, image) in images.iter().enumerate() {
        let name = format!("node{}", i + 1);
        let server_addr = format!("127.0.0.1:{port}");
        let mut args: Vec<String> =
            ["client", "-s", session, "--server", &server_addr, "--name", &name].map(String::from).to_vec();
        if sparse {
            args.extend(["--sparse".into(), "--to-file".into(), image.display().to_string()]);
        } else {
            args.push("--discard".into());
        }
        rack.spawn(&name, &args, dir)?;
    }
    let deadline = Instant::now() + Duration::from_secs(3600);
    while !rack.all_exited() {
        rack.reap()?;
        if Instant::now() > deadline {
            bail!("the {session} run did not finish within an hour:\n{}", rack.logs());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = start.elapsed().as_secs_f64();
    let exits: Vec<Exit> = rack.procs.iter().map(|p| p.exit.expect("reaped")).collect();
    if exits.iter().any(|e| !e.ok()) {
        bail!("the {session} run failed:\n{}", rack.logs());
    }
    let json: serde_json::Value = serde_json::from_str(&fs::read_to_string(&report)?)?;
    let wire = json["nodes"][0]["bytes"].as_u64().context("report without bytes")?;
    let mut node_disk = 0;
    if sparse {
        for image in &images {
            sh("e2fsck", &["-fn", image.to_str().unwrap()])
                .with_context(|| format!("the clone in {} is damaged", image.display()))?;
            node_disk = node_disk.max(std::os::unix::fs::MetadataExt::blocks(&fs::metadata(image)?) * 512);
            fs::remove_file(image)?;
        }
    }
    Ok(Run {
        way: if sparse { "sparse (e2image, holes)" } else { "every byte (nodes discard)" },
        wire,
        secs,
        server_cpu: exits[0].cpu.total(),
        node_cpu: exits[1..].iter().map(|e| e.cpu.total()).sum::<f64>() / 2.0,
        node_disk,
    })
}

fn render(o: &Opts, load0: &str, runs: &[Run]) -> String {
    let m = machine();
    let mut s = String::new();
    let _ = writeln!(s, "{HEADING}\n");
    let _ = writeln!(
        s,
        "Measured by `benches/sparse.rs`, which rewrites this section: an ext4 partition of {} holding {} \
         of pseudo-random files (a loop device), sent to 2 nodes on loopback, sparse and byte for byte, \
         one after the other in one run.\n",
        human(o.size),
        human(o.data)
    );
    let _ = writeln!(
        s,
        "- Date: {}; machine: {} CPUs ({}), {} RAM, Linux {}; load average {load0} at the start.",
        utc_now(),
        m.cpus,
        m.model,
        m.memory,
        m.kernel
    );
    let _ = writeln!(s, "- Command: `{}`", o.command);
    let _ = writeln!(
        s,
        "- *wire*: bytes each node received (the server's report). *at 1 Gbit/s*: what those bytes alone \
         take at the TCP limit of a 1 Gbit/s link (119.5 MB/s): loopback is faster than a rack's link. \
         *node disk*: blocks the node's image file takes (holes take none); every clone passed `e2fsck -fn`.\n"
    );
    let _ = writeln!(s, "| way | wire | wire / partition | time s (loopback) | at 1 Gbit/s s | server CPU s | node CPU s | node disk |");
    let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|--:|--:|");
    for r in runs {
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} | {:.1} | {:.1} | {:.2} | {:.2} | {} |",
            r.way,
            human(r.wire),
            r.wire as f64 / o.size as f64,
            r.secs,
            r.wire as f64 / GBIT_LIMIT,
            r.server_cpu,
            r.node_cpu,
            if r.node_disk > 0 { human(r.node_disk) } else { "-".into() },
        );
    }
    if let [sp, wh] = runs {
        let _ = writeln!(
            s,
            "\n- Sparse: {:.1}x fewer bytes on the wire, {:.1}x less time on loopback (nodes writing, against \
             nodes discarding), {:.1}x less at 1 Gbit/s.",
            wh.wire as f64 / sp.wire as f64,
            wh.secs / sp.secs,
            wh.wire as f64 / sp.wire as f64
        );
    }
    s
}
