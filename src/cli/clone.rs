//! `kacast clone` and `kacast install`: the two ends of an install.

use std::path::Path;
use std::sync::{mpsc, Arc};

use anyhow::{bail, Context, Result};
use kacast::chain::Sink;
use kacast::clone::{self, CloneConfig, InstallConfig};
use kacast::disk::apply::DiskMap;
use kacast::disk::bootloader::Firmware;
use kacast::disk::golden::{read_golden, GoldenSpec, Sessions};
use kacast::disk::PreparePlan;
use kacast::session::{ClientConfig, ServerConfig, Stats};

use super::args::{CloneArgs, InstallArgs};
use super::{key, progress, seconds};

pub fn run_clone(a: CloneArgs) -> Result<i32> {
    let descs = a.desc.chunks(2).map(|p| (p[0].clone(), p[1].clone().into())).collect();
    let mut prepare = PreparePlan {
        hostname_from_node: a.hostname_from_node,
        keep_ssh_host_keys: a.keep_ssh_host_keys,
        ..PreparePlan::default()
    };
    if let Some(path) = &a.hostnames {
        prepare.hostnames = read_hostnames(path)?;
    }
    let golden = GoldenSpec {
        root: a.root,
        descs,
        leave_out: a.leave_out,
        excludes: a.exclude,
        raw: a.raw,
        bootloader: a.bootloader,
        firmware: a.firmware.as_deref().map(|f| if f == "uefi" { Firmware::Uefi } else { Firmware::Bios }),
        new_uuids: a.new_uuids,
        prepare,
        sessions: Sessions { base: a.session.clone() },
    };
    if a.dry_run {
        let g = read_golden(&golden)?;
        println!("{}", g.plan.to_json());
        if let Some(cmd) = g.tree_command {
            eprintln!("files stream: {cmd}");
        }
        return Ok(0);
    }
    let s = a.serve;
    let mut server = ServerConfig::new(a.session);
    server.nodes = Some(a.nodes);
    server.order = s.order.parse()?;
    server.arity = s.arity;
    server.key = key(s.key_file.as_deref(), false)?;
    server.control_port = s.port;
    server.bind = s.bind;
    if s.no_discovery {
        server.discovery_port = None;
    }
    server.timeout = seconds(s.timeout, "--timeout")?;
    let config = CloneConfig { golden, server, phase_timeout: seconds(a.phase_timeout, "--phase-timeout")? };
    let report = clone::run_golden(config, watch)?;
    println!("{}", report.render());
    if let Some(p) = &a.report {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(p, json).with_context(|| format!("write {}", p.display()))?;
    }
    Ok(report.exit_code())
}

fn watch(session: &str, stats: Arc<Stats>, until: mpsc::Receiver<()>) {
    eprintln!("session '{session}'");
    progress::watch(stats, until);
}

/// `NODE HOSTNAME` per line, `#` comments.
fn read_hostnames(path: &Path) -> Result<std::collections::BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut map = std::collections::BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        match line.split_whitespace().collect::<Vec<_>>()[..] {
            [node, host] => {
                map.insert(node.to_string(), host.to_string());
            }
            _ => bail!("{}:{}: expected 'NODE HOSTNAME', got '{line}'", path.display(), i + 1),
        }
    }
    Ok(map)
}

pub fn run_install(a: InstallArgs) -> Result<i32> {
    let mut client = ClientConfig::new(a.session.clone(), Sink::Discard);
    client.server = a.server.as_deref().map(str::parse).transpose()?;
    client.tries = a.tries;
    client.key = key(a.key_file.as_deref(), a.key_from_cmdline)?;
    client.bind = a.bind;
    client.timeout = seconds(a.timeout, "--timeout")?;
    if let Some(name) = a.name {
        client.name = name;
    }
    let mut disks = DiskMap::default();
    for d in &a.disks {
        disks.add(d)?;
    }
    let config = InstallConfig {
        client,
        sessions: Sessions { base: a.session },
        root: a.root,
        disks,
        phase_timeout: seconds(a.phase_timeout, "--phase-timeout")?,
        work_dir: a.work_dir,
    };
    let outcome = clone::install(&config)?;
    match outcome.error {
        None => {
            eprintln!("kacast: this node is a clone of the golden node");
            Ok(0)
        }
        Some(e) => {
            eprintln!("kacast: install failed: {e}");
            Ok(1)
        }
    }
}
