//! `kacast clone`: the golden node's side of an install.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use serde::Serialize;
use tracing::{info, warn};

use crate::disk::golden::{read_golden, Golden, GoldenSpec, Sessions, TreeSource};
use crate::disk::recorded::RecordedImage;
use crate::error::{Error, Result};
use crate::session::{Input, Server, ServerConfig, SessionReport, Stats};

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
    for (r, dev) in plan.raw.iter().zip(raw_devices) {
        steps.push((r.session.clone(), Input::File(dev)));
    }
    for (p, file) in plan.postinstalls.iter().zip(postinstall_files) {
        steps.push((p.session.clone(), Input::File(file)));
    }
    steps.push((config.sessions.end(), Input::Reader(Box::new(std::io::empty()))));

    let mut server_config = config.server.clone();
    let mut nodes: BTreeMap<String, NodeStatus> = BTreeMap::new();
    let mut reports = Vec::new();
    let last = steps.len() - 1;
    for (i, (session, input)) in steps.into_iter().enumerate() {
        server_config.session = session.clone();
        if i > 0 {
            let going = nodes.values().filter(|n| n.ok).count();
            if going == 0 {
                warn!("no node left to go on with: stopping before session '{session}'");
                break;
            }
            server_config.nodes = Some(going);
            server_config.min_nodes = 1;
            server_config.start_after = Some(config.phase_timeout);
        }
        let server = Server::bind(server_config.clone())?;
        // Later sessions on the same port, so nodes given --server HOST:PORT follow.
        server_config.control_port = Some(server.control_addr().port());
        let (done, watching) = mpsc::channel();
        let watcher = {
            let (watch, stats, name) = (watch.clone(), server.stats(), session.clone());
            std::thread::spawn(move || watch(&name, stats, watching))
        };
        let report = server.run(input);
        drop(done);
        let _ = watcher.join();
        let report = report?;
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
    Ok(CloneReport { nodes: nodes.into_values().collect(), sessions: reports })
}

fn plan_input(json: String) -> Input {
    let len = json.len() as u64;
    Input::Sized(Box::new(Cursor::new(json.into_bytes())), len)
}
