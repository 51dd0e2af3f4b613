//! The outcome of a session: per-node results, the table, and the ok/ko/JSON files.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::chain::ChunkReport;
use crate::error::{IoContext, Result};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeResult {
    pub name: String,
    pub address: String,
    /// 1-based chain position; 0 for a node that reported before the start
    /// without taking part in the stream.
    pub position: usize,
    pub bytes: u64,
    pub hash_ok: bool,
    /// Exit status of the node's `-e` command, when it has one and it exited.
    pub sink_status: Option<i32>,
    /// From the start of the session to the node's report.
    pub duration_s: f64,
    pub error: Option<String>,
}

impl NodeResult {
    pub fn ok(&self) -> bool {
        self.hash_ok && self.error.is_none()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionReport {
    pub session: String,
    /// Bytes the server streamed and their BLAKE3 hash (hex), when the input was read whole.
    pub bytes: u64,
    pub hash: Option<String>,
    /// Why the source failed, when it did.
    pub source_error: Option<String>,
    /// From the start of the session until the server had sent every byte.
    pub transfer_s: f64,
    /// From the last byte sent until the last node reported: the pipeline drain.
    pub pipeline_emptied_s: f64,
    /// How the stream was cut into chunks (`--chunk`).
    pub chunks: ChunkReport,
    pub nodes: Vec<NodeResult>,
}

impl SessionReport {
    pub fn ok_count(&self) -> usize {
        self.nodes.iter().filter(|n| n.ok()).count()
    }

    /// 0 when every node succeeded, 2 when some failed, 1 when none succeeded
    /// (Kascade's convention, which Kadeploy3 reads).
    pub fn exit_code(&self) -> i32 {
        let ok = self.ok_count();
        if ok == self.nodes.len() && !self.nodes.is_empty() {
            0
        } else if ok == 0 {
            1
        } else {
            2
        }
    }

    pub fn write_ok(&self, path: &Path) -> Result<()> {
        let mut s = String::new();
        for n in self.nodes.iter().filter(|n| n.ok()) {
            let _ = writeln!(s, "{}", n.name);
        }
        std::fs::write(path, s).context(|| format!("write ok file {}", path.display()))
    }

    pub fn write_ko(&self, path: &Path) -> Result<()> {
        let mut s = String::new();
        for n in self.nodes.iter().filter(|n| !n.ok()) {
            let why = n.error.as_deref().unwrap_or("hash mismatch").replace(['\n', '\t'], " ");
            let _ = writeln!(s, "{}\t{why}", n.name);
        }
        std::fs::write(path, s).context(|| format!("write ko file {}", path.display()))
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).expect("report serialises");
        std::fs::write(path, json + "\n").context(|| format!("write report {}", path.display()))
    }

    /// The per-node table and ka-style closing lines.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let w = self.nodes.iter().map(|n| n.name.len()).max().unwrap_or(4).max(4);
        let _ = writeln!(
            s,
            "{:>3}  {:<w$}  {:<21}  {:>12}  {:<4}  {:>6}  {:>8}  result",
            "#", "node", "address", "bytes", "hash", "status", "time"
        );
        for n in &self.nodes {
            let status = n.sink_status.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
            let result = match &n.error {
                None if n.hash_ok => "ok".to_string(),
                None => "FAILED: hash mismatch".to_string(),
                Some(e) => format!("FAILED: {e}"),
            };
            let _ = writeln!(
                s,
                "{:>3}  {:<w$}  {:<21}  {:>12}  {:<4}  {:>6}  {:>7.1}s  {result}",
                n.position,
                n.name,
                n.address,
                n.bytes,
                if n.hash_ok { "ok" } else { "BAD" },
                status,
                n.duration_s,
            );
        }
        let mb = self.bytes as f64 / 1e6;
        let rate = if self.transfer_s > 0.0 { mb / self.transfer_s } else { 0.0 };
        let _ = writeln!(s, "Total data sent = {mb:.1} MB to {} nodes", self.nodes.len());
        let _ = writeln!(
            s,
            "Transfer time = {:.2} seconds, throughput = {rate:.1} MB/s per node",
            self.transfer_s
        );
        let _ = writeln!(s, "The pipeline was emptied in {:.2} seconds", self.pipeline_emptied_s);
        if let Some(e) = &self.source_error {
            let _ = writeln!(s, "Source failed: {e}");
        }
        let _ = write!(s, "{} ok, {} failed", self.ok_count(), self.nodes.len() - self.ok_count());
        s
    }
}

pub(crate) fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}
