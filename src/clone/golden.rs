//! `kacast clone`: the golden node's side of an install.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use serde::Serialize;
use tracing::{info, warn};

use super::raw::image_input;
use crate::disk::golden::{read_golden, Golden, GoldenSpec, Sessions, TreeSource};
use crate::disk::recorded::RecordedImage;
use crate::error::{Error, Result};
use crate::session::{Input, Server, ServerConfig, SessionReport, Stats, StatusBoard};

/// What is cloned.
#[derive(Debug, Clone)]
pub enum Source {
    /// This golden node, live (`kacast clone`).
    Live(GoldenSpec),
    /// A recorded image (`kacast clone --env`).
    Recorded(RecordedImage),
}

#[derive(Debug, Clone)]
pub struct CloneConfig {
    pub source: Source,
    pub sessions: Sessions,
    /// Settings of every session (nodes, port, key, order…); the session name
    /// is set per session.
    pub server: ServerConfig,
    /// How long a session after the first waits for nodes still busy with the
    /// previous step (formatting a large disk, restoring a bootloader), before
    /// it goes on with those that came.
    pub phase_timeout: Duration,
    /// The stage2 archive (`kacast stage2 build`), served first in its own
    /// session to nodes booted on the kacast initrd (ka's `getstage2`).
    pub stage2: Option<Stage2>,
    /// The TFTP root whose per-MAC configurations are switched to `local`
    /// for each node that became a clone, so it does not clone itself again
    /// on its next boot.
    pub pxe_root: Option<PathBuf>,
}

/// ka's `getstage2` step.
#[derive(Debug, Clone)]
pub struct Stage2 {
    pub session: String,
    pub archive: PathBuf,
}

/// Where one node got to.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeStatus {
    pub name: String,
    /// The last session it took part in, or `done`.
    pub step: String,
    pub ok: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CloneReport {
    pub nodes: Vec<NodeStatus>,
    pub sessions: Vec<SessionReport>,
    /// Per-MAC PXE configurations switched to `local`.
    pub pxe_local: Vec<PathBuf>,
}

impl CloneReport {
    pub fn ok_count(&self) -> usize {
        self.nodes.iter().filter(|n| n.ok).count()
    }

    /// 0 every node cloned, 2 some, 1 none (as a session's).
    pub fn exit_code(&self) -> i32 {
        match self.ok_count() {
            n if n == self.nodes.len() && n > 0 => 0,
            0 => 1,
            _ => 2,
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::from("node                 result  step          detail\n");
        for n in &self.nodes {
            let result = if n.ok { "ok" } else { "FAILED" };
            out.push_str(&format!(
                "{:<20} {:<7} {:<13} {}\n",
                n.name,
                result,
                n.step,
                n.error.as_deref().unwrap_or("")
            ));
        }
        out.push_str(&format!("{} of {} nodes cloned", self.ok_count(), self.nodes.len()));
        out
    }
}

/// Runs a whole install from the golden node: surveys it, then serves each
/// session in turn to the nodes still going. `watch` shows each session's
/// progress until its channel closes.
pub fn run_golden(
    config: CloneConfig,
    watch: impl Fn(&str, Arc<Stats>, mpsc::Receiver<()>) + Send + Sync + Clone + 'static,
) -> Result<CloneReport> {
    let golden = match &config.source {
        Source::Live(spec) => read_golden(spec),
        Source::Recorded(image) => image.plan(),
    };
    let Golden { plan, tree, raw_devices, postinstall_files } =
        golden.map_err(|e| Error::Config(format!("golden node: {e}")))?;
    info!("plan:\n{}", plan.to_json());
    let mut steps: Vec<(String, Input)> = vec![(config.sessions.plan(), plan_input(plan.to_json()))];
    if let (Some(s), Some(tree)) = (&plan.tree_session, tree) {
        let input = match tree {
            TreeSource::Command(cmd) => Input::Command(cmd),
            TreeSource::File(path) => Input::File(path),
        };
        steps.push((s.clone(), input));
    }
    // A recorded image's raw files are stored compressed already.
    let level = match &config.source {
        Source::Live(spec) => spec.compress,
        Source::Recorded(_) => None,
    };
    for (r, dev) in plan.raw.iter().zip(raw_devices) {
        steps.push((r.session.clone(), image_input(dev, r.sparse, level)));
    }
    for (p, file) in plan.postinstalls.iter().zip(postinstall_files) {
        steps.push((p.session.clone(), Input::File(file)));
    }
    steps.push((config.sessions.end(), Input::Reader(Box::new(std::io::empty()))));

    let mut server_config = config.server.clone();
    let mut nodes: BTreeMap<String, NodeStatus> = BTreeMap::new();
    let mut reports = Vec::new();
    if let Some(stage2) = &config.stage2 {
        server_config.session = stage2.session.clone();
        let report = serve_one(&mut server_config, Input::File(stage2.archive.clone()), &watch)?;
        for r in report.nodes.iter().filter(|r| !r.ok()) {
            let why = r.error.clone().unwrap_or_else(|| "stream hash mismatch".into());
            warn!("node '{}' did not get the stage2: {why}", r.name);
        }
        // The install waits for those that have their tools, or for the
        // phase timeout should one lose its way.
        server_config.nodes = Some(report.ok_count().max(1));
        server_config.start_after = Some(config.phase_timeout);
        reports.push(report);
    }
    let last = steps.len() - 1;
    for (i, (session, input)) in steps.into_iter().enumerate() {
        server_config.session = session.clone();
        if i > 0 {
            if let Some(board) = &config.server.status {
                drop_lost(&mut nodes, board);
            }
            let going = nodes.values().filter(|n| n.ok).count();
            if going == 0 {
                warn!("no node left to go on with: stopping before session '{session}'");
                break;
            }
            server_config.nodes = Some(going);
            server_config.min_nodes = 1;
            server_config.start_after = Some(config.phase_timeout);
        }
        let report = serve_one(&mut server_config, input, &watch)?;
        let step = if i == last { "done" } else { session.as_str() };
        if i > 0 {
            // Nodes expected but never seen in this session were lost between steps.
            for n in nodes.values_mut().filter(|n| n.ok) {
                if !report.nodes.iter().any(|r| r.name == n.name) {
                    n.ok = false;
                    n.error = Some(format!(
                        "did not come to session '{session}' within {:?}",
                        config.phase_timeout
                    ));
                }
            }
        }
        for r in &report.nodes {
            if i > 0 && !nodes.get(&r.name).is_some_and(|n| n.ok) {
                warn!("node '{}' was not expected in session '{session}': ignored", r.name);
                continue;
            }
            let status = NodeStatus {
                name: r.name.clone(),
                step: if r.ok() { step.to_string() } else { session.clone() },
                ok: r.ok(),
                error: r.error.clone().or_else(|| (!r.hash_ok).then(|| "stream hash mismatch".to_string())),
            };
            nodes.insert(r.name.clone(), status);
        }
        info!("session '{session}': {} of {} nodes going on", report.ok_count(), report.nodes.len());
        reports.push(report);
    }
    let nodes: Vec<NodeStatus> = nodes.into_values().collect();
    if let Some(board) = &config.server.status {
        let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
        board.settle(&names, STATUS_SETTLE);
    }
    let pxe_local = match &config.pxe_root {
        Some(root) => switch_to_local(root, &nodes, &reports, config.server.status.as_deref()),
        None => Vec::new(),
    };
    Ok(CloneReport { nodes, sessions: reports, pxe_local })
}

/// Nodes whose status connection ended without a last word (powered off,
/// crashed, unplugged) are not waited for in the next session.
fn drop_lost(nodes: &mut BTreeMap<String, NodeStatus>, board: &StatusBoard) {
    for v in board.views().into_iter().filter(|v| v.state == "lost") {
        if let Some(n) = nodes.get_mut(&v.name).filter(|n| n.ok) {
            warn!("node '{}' is gone: {}", v.name, v.last);
            n.ok = false;
            n.error = Some(v.last);
        }
    }
}

/// How long the end waits for nodes' last status lines, which travel on
/// their own connection and may come just after their reports.
const STATUS_SETTLE: Duration = Duration::from_secs(5);

/// Points each cloned node's PXE configuration to its local disk. Its MACs
/// come from its status connection, else from this host's neighbour table
/// (the node is on the install network, so it was there a moment ago).
fn switch_to_local(
    root: &Path,
    nodes: &[NodeStatus],
    reports: &[SessionReport],
    board: Option<&StatusBoard>,
) -> Vec<PathBuf> {
    let mut written = Vec::new();
    for n in nodes.iter().filter(|n| n.ok) {
        let mut macs = board.map(|b| b.macs(&n.name)).unwrap_or_default();
        if macs.is_empty() {
            let address = reports.iter().flat_map(|r| &r.nodes).find(|r| r.name == n.name);
            macs.extend(address.and_then(|r| neighbour_mac(&r.address)));
        }
        if macs.is_empty() {
            warn!("node '{}': no hardware address known, its PXE configuration is left as it is", n.name);
        }
        for mac in macs {
            match crate::boot::set_local(root, &mac) {
                Ok(path) => {
                    info!("node '{}' ({mac}) will boot its disk: {}", n.name, path.display());
                    written.push(path);
                }
                Err(e) => warn!("node '{}': {e}", n.name),
            }
        }
    }
    written
}

/// The MAC of `ip` in this host's ARP table (`/proc/net/arp`).
fn neighbour_mac(ip: &str) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/arp").ok()?;
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 4 && f[0] == ip && f[3] != "00:00:00:00:00:00").then(|| f[3].to_string())
    })
}

/// One session, watched. Pins the control port for the sessions after it,
/// so nodes given `--server HOST:PORT` follow.
fn serve_one(
    config: &mut ServerConfig,
    input: Input,
    watch: &(impl Fn(&str, Arc<Stats>, mpsc::Receiver<()>) + Send + Sync + Clone + 'static),
) -> Result<SessionReport> {
    let session = config.session.clone();
    let server = Server::bind(config.clone())?;
    config.control_port = Some(server.control_addr().port());
    let (done, watching) = mpsc::channel();
    let watcher = {
        let (watch, stats) = (watch.clone(), server.stats());
        std::thread::spawn(move || watch(&session, stats, watching))
    };
    let report = server.run(input);
    drop(done);
    let _ = watcher.join();
    report
}

fn plan_input(json: String) -> Input {
    let len = json.len() as u64;
    Input::Sized(Box::new(Cursor::new(json.into_bytes())), len)
}
