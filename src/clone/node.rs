//! `kacast install`: a node's side of an install (what the initrd runs once
//! it has a network).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{info, warn};

use crate::chain::{ImageSink, Sink};
use crate::disk::apply::{self, DiskMap, Mounted};
use crate::disk::golden::Sessions;
use crate::disk::{tar, Plan};
use crate::error::{Error, Result};
use crate::session::status::local_macs;
use crate::session::{Client, ClientConfig, StatusReporter};

#[derive(Debug, Clone)]
pub struct InstallConfig {
    /// How to reach the golden node, this node's name, key, timeouts; the
    /// session name is set per session.
    pub client: ClientConfig,
    pub sessions: Sessions,
    /// Where the clone is mounted while it is written (`/mnt/kacast`).
    pub root: PathBuf,
    pub disks: DiskMap,
    /// How long to wait for each session after the first to start: the
    /// golden node starts it once the slowest node is done with the step before.
    pub phase_timeout: Duration,
    /// Where the plan is kept while it is checked.
    pub work_dir: PathBuf,
}

/// What happened on this node.
#[derive(Debug, Clone)]
pub struct InstallOutcome {
    /// What was done, step by step.
    pub log: Vec<String>,
    /// `None` when the node is a working clone.
    pub error: Option<String>,
}

/// Runs the install on this node. An `Err` means the node could not even take
/// part (no server, no plan); a failed step is an [`InstallOutcome`] with an
/// error, already reported to the golden node.
pub fn install(config: &InstallConfig) -> Result<InstallOutcome> {
    let s = &config.sessions;
    // 1. The plan.
    std::fs::create_dir_all(&config.work_dir)
        .map_err(|e| Error::Config(format!("{}: {e}", config.work_dir.display())))?;
    let plan_file = config.work_dir.join("plan.json");
    let received = Client::bind(client(config, &s.plan(), Sink::File(plan_file.clone()), false))?.run()?;
    if !received.ok() {
        return Err(Error::Aborted(format!(
            "plan not received: {}",
            received.outcome.error.unwrap_or_default()
        )));
    }
    let status = StatusReporter::start(&config.client, received.server, &s.base, local_macs());
    status.forward_logs("plan");
    let outcome = follow_plan(config, &plan_file, &status, Vec::new());
    StatusReporter::stop_forwarding();
    status.finish(&match &outcome {
        Ok(o) => o.error.clone().map_or(Ok(()), Err),
        Err(e) => Err(e.to_string()),
    });
    outcome
}

/// The install once the plan is here: check, prepare, receive, finish.
fn follow_plan(
    config: &InstallConfig,
    plan_file: &Path,
    status: &StatusReporter,
    mut log: Vec<String>,
) -> Result<InstallOutcome> {
    let s = &config.sessions;
    let mut say = |line: &str| {
        info!("{line}");
        log.push(line.to_string());
    };
    let bytes =
        std::fs::read(plan_file).map_err(|e| Error::Config(format!("{}: {e}", plan_file.display())))?;
    let mut next = Next::new(config);
    let plan = match Plan::parse(&bytes) {
        Ok(p) => p,
        Err(e) => return next.withdraw(format!("{e}"), log, status),
    };
    say(&format!(
        "plan from {}: {} disks, {} filesystems",
        plan.golden,
        plan.disks.len(),
        plan.filesystems.len()
    ));
    next = Next::of_plan(config, &plan);
    // 2. Check, then partition, format, mount.
    let checked = match apply::check(plan, &config.disks, &config.root, &config.client.name) {
        Ok(c) => c,
        Err(e) => return next.withdraw(format!("checking the plan: {e}"), log, status),
    };
    say("plan checked against this node's disks: nothing written yet");
    let mut step = String::new();
    let mounted = apply::prepare_disks(checked, &mut |p| {
        status.forward_logs(p);
        info!("{p}");
        step = p.to_string();
    });
    let mut mounted = match mounted {
        Ok(m) => m,
        Err(e) => return next.withdraw(format!("{step}: {e}"), log, status),
    };
    say("disks partitioned, formatted and mounted");
    // 3. The streams.
    let plan = mounted.checked.plan.clone();
    if let Some(session) = &plan.tree_session {
        status.forward_logs(session);
        let sink = Sink::Command(tar::extract_command(&mounted.checked.root, plan.tree_compression));
        if let Err(e) = next.receive(sink) {
            return Ok(failed(&mut mounted, format!("receiving the filesystems: {e}"), log));
        }
        say("filesystems received and extracted");
    }
    for r in &plan.raw {
        status.forward_logs(&r.session);
        let dev = mounted.raw_device(&r.disk, r.partition);
        let decompress = r.compression.decompress_command().map(String::from);
        let sink = Sink::Image(ImageSink { path: dev, sparse: r.sparse, decompress });
        if let Err(e) = next.receive(sink) {
            return Ok(failed(&mut mounted, format!("receiving raw partition {}: {e}", r.partition), log));
        }
        say(&format!("raw image of {} partition {} written", r.disk, r.partition));
    }
    for (i, p) in plan.postinstalls.iter().enumerate() {
        let dir = config.work_dir.join(format!("postinstall{i}"));
        let sink = Sink::Command(format!(
            "mkdir -p {0} && {1}",
            tar::sh_quote(&dir.to_string_lossy()),
            tar::extract_command(&dir, p.compression)
        ));
        if let Err(e) = next.receive(sink) {
            return Ok(failed(&mut mounted, format!("receiving post-install {i}: {e}"), log));
        }
        mounted.postinstall_dirs.push(dir);
    }
    // 4. Finish, unmount, report.
    let finished = mounted.finish(&mut |p| {
        status.forward_logs(p);
        info!("{p}");
        step = p.to_string();
    });
    let result = match finished {
        Ok(lines) => {
            log.extend(lines);
            mounted.unmount_all().map_err(|e| format!("unmounting: {e}"))
        }
        Err(e) => Err(format!("{step}: {e}")),
    };
    drop(mounted);
    let end = Client::bind(client(config, &s.end(), Sink::Discard, true))?;
    status.finish(&result);
    end.report_only(result.clone())?;
    match result {
        Ok(()) => {
            log.push("install done".into());
            Ok(InstallOutcome { log, error: None })
        }
        Err(e) => Ok(InstallOutcome { log, error: Some(e) }),
    }
}

/// The sessions still ahead of this node, so that a failure is reported to
/// the next one (the golden node waits for this node there).
struct Next<'a> {
    config: &'a InstallConfig,
    sessions: Vec<String>,
}

impl<'a> Next<'a> {
    /// Before the plan is known: the session a refusal is reported to.
    fn new(config: &'a InstallConfig) -> Next<'a> {
        Next { config, sessions: vec![config.sessions.tree(), config.sessions.end()] }
    }

    /// The plan's sessions in the order the golden node serves them.
    fn of_plan(config: &'a InstallConfig, plan: &Plan) -> Next<'a> {
        let data = plan.tree_session.iter().cloned();
        let raw = plan.raw.iter().map(|r| r.session.clone());
        let post = plan.postinstalls.iter().map(|p| p.session.clone());
        let sessions = data.chain(raw).chain(post).chain([config.sessions.end()]).collect();
        Next { config, sessions }
    }

    /// The next session, which this node now takes part in.
    fn take(&mut self) -> String {
        self.sessions.remove(0)
    }

    /// Takes part in the next session, a data one; the golden node learns
    /// the outcome from it.
    fn receive(&mut self, sink: Sink) -> std::result::Result<(), String> {
        let session = self.take();
        let config = client(self.config, &session, sink, true);
        let report = Client::bind(config).and_then(Client::run).map_err(|e| e.to_string())?;
        if report.ok() {
            Ok(())
        } else {
            Err(report.outcome.error.unwrap_or_else(|| "stream hash mismatch".into()))
        }
    }

    /// Leaves the install before any data: tells the next session why.
    fn withdraw(mut self, why: String, log: Vec<String>, status: &StatusReporter) -> Result<InstallOutcome> {
        status.finish(&Err(why.clone()));
        warn!("{why}");
        let session = self.take();
        Client::bind(client(self.config, &session, Sink::Discard, true))?.report_only(Err(why.clone()))?;
        Ok(InstallOutcome { log, error: Some(why) })
    }
}

fn client(config: &InstallConfig, session: &str, sink: Sink, later: bool) -> ClientConfig {
    let mut c = config.client.clone();
    c.session = session.to_string();
    c.sink = sink;
    if later {
        c.wait = Some(config.phase_timeout);
    }
    c
}

fn failed(mounted: &mut Mounted, why: String, mut log: Vec<String>) -> InstallOutcome {
    warn!("{why}");
    let _ = mounted.unmount_all();
    log.push(why.clone());
    InstallOutcome { log, error: Some(why) }
}
