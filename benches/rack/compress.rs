//! *compress*: the effective image rate of an OS tree through the chain on the
//! shaped rack, plain against compressed on the fly with multi-threaded zstd
//! (what `kacast clone --compress zstd:LEVEL` does: the golden node
//! compresses, relays forward the compressed bytes, each node decompresses
//! for itself). Side by side in one run, for each profile and N.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kacast::size::human;

use super::{cpus, gib, loadavg, machine, one_run, utc_now, Net, Opts, Run, Tool};

pub use super::common::COMPRESS_HEADING as HEADING;
const TOOLS: [Tool; 3] = [Tool::Chain, Tool::ChainZstd1, Tool::ChainZstd3];
/// Where the tree comes from: this machine's own Debian system.
const TREE: [&str; 3] = ["/usr/bin", "/usr/lib", "/usr/share"];

/// A tar of the first `cap` bytes of files of [`TREE`], in path order:
/// binaries, libraries, scripts, text and compressed documentation, as a
/// system holds them. Returns its size.
fn build_tree(tar: &Path, cap: u64) -> Result<u64> {
    let out = Command::new("find")
        .args(TREE)
        .args(["-xdev", "-type", "f", "-printf", "%s %p\\0"])
        .output()
        .context("find")?;
    let mut entries: Vec<(u64, String)> = String::from_utf8_lossy(&out.stdout)
        .split('\0')
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(size, path)| Some((size.parse().ok()?, path.trim_start_matches('/').to_string())))
        .collect();
    entries.sort_by(|a, b| a.1.cmp(&b.1));
    let mut list = String::new();
    let mut total = 0;
    for (size, path) in entries {
        if total >= cap {
            break;
        }
        total += size;
        list.push_str(&path);
        list.push('\0');
    }
    let list_file = tar.with_extension("list");
    std::fs::write(&list_file, list)?;
    let status = Command::new("tar")
        .args(["-C", "/", "--format=posix", "--numeric-owner", "--null", "-T"])
        .arg(&list_file)
        .arg("-cf")
        .arg(tar)
        .status()
        .context("tar")?;
    // 1: a file changed while read; the tar is still a tree.
    if !matches!(status.code(), Some(0 | 1)) {
        bail!("tar of the tree failed ({status})");
    }
    Ok(std::fs::metadata(tar)?.len())
}

pub fn scenario(opts: &Opts, command: &str) -> Result<String> {
    let load0 = loadavg();
    let tmp = tempfile::Builder::new().prefix("kacast-compress-").tempdir().context("temporary directory")?;
    let tar = tmp.path().join("tree.tar");
    let size = build_tree(&tar, opts.size)?;
    let hash = {
        let mut h = blake3::Hasher::new();
        h.update_reader(std::fs::File::open(&tar)?)?;
        h.finalize().to_hex().to_string()
    };
    eprintln!("bench compress: the tree's tar is {}", human(size));
    let nodes: Vec<usize> = opts.nodes.iter().copied().filter(|&n| n <= 8).collect();
    let net = Net::new(nodes.iter().copied().max().unwrap_or(1))?;
    let mut port = 21_000u16;
    let mut rows = String::new();
    for &p in &opts.profiles {
        net.shape(p, opts.delay_ms)?;
        for &n in &nodes {
            let mut runs: Vec<Run> = Vec::new();
            for tool in TOOLS {
                port += 1;
                let dir = tmp.path().join(format!("{}-{}-{n}", p.name, tool.name().replace([' ', ':'], "-")));
                std::fs::create_dir(&dir)?;
                let timeout = Duration::from_secs_f64(size as f64 / p.tcp_limit() * 3.0 + 60.0);
                let r = one_run(&net, tool, n, &tar, &hash, size, port, &dir, timeout)
                    .with_context(|| format!("{} {} N={n}", p.name, tool.name()))?;
                eprintln!("bench compress: {} {} N={n}: {:.2} s", p.name, tool.name(), r.wall_s);
                runs.push(r);
            }
            let plain = runs[0].wall_s;
            for r in &runs {
                let wire = r.wire.unwrap_or(size);
                let effective = size as f64 / r.wall_s;
                let _ = writeln!(
                    rows,
                    "| {} | {n} | {} | {} | {:.2} | {:.2} | {:.2} | {:.0}% | {:.2} | {:.2} | {:.2} | {:.2} ({:.0}%) |",
                    p.name,
                    r.tool.name(),
                    human(wire),
                    size as f64 / wire as f64,
                    r.wall_s,
                    effective / 1e6,
                    100.0 * effective / p.tcp_limit(),
                    plain / r.wall_s,
                    r.server.total(),
                    r.nodes.total() / n as f64 / gib(size),
                    r.busy,
                    100.0 * r.busy / cpus(),
                );
            }
        }
    }
    drop(net);
    let m = machine();
    let mut s = format!("{HEADING}\n\n");
    let _ = writeln!(
        s,
        "Measured by `benches/rack.rs` (`--scenario compress`), which rewrites this section: the \
         same shaped rack as *Virtual rack*, carrying a tar ({}, POSIX format, numeric owners) of the \
         first {} of files of this machine's Debian {} in path order: binaries, libraries, scripts, \
         text, already-compressed documentation. For each link and N, in one run: *chain* sends the \
         tar as it is and the nodes discard it; *chain zstd:L* has the server compress it on the fly \
         (`zstd -T0 -L`, both cores) and every node decompress it (`zstd -dc > /dev/null`), as \
         `kacast clone --compress zstd:L` does.\n",
        human(size),
        human(opts.size),
        TREE.join(", "),
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
    let _ = writeln!(s, "- Command: `{command}`");
    let _ = writeln!(
        s,
        "- *wire*: bytes each node received; *tree / wire*: the compression ratio. *effective MB/s per \
         node*: the tree's bytes over the wall time (start-up included), and as a share of the link's \
         TCP limit: above 100% is what compression buys. *golden CPU s*: the server with its zstd. \
         *node CPU s/GiB*: per node, per GiB of tree, decompression included.\n"
    );
    s.push_str(
        "| link | N | way | wire | tree / wire | time s | effective MB/s per node | % of TCP limit | \
         speed-up vs plain | golden CPU s | node CPU s/GiB | cores busy |\n\
         |---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    s.push_str(&rows);
    Ok(s)
}
