//! Fault injection on loopback chains of real `kacast` processes: nodes killed
//! (SIGKILL) at random byte offsets, stopped (SIGSTOP), a sink that stops
//! reading, a data connection cut. The survivors' copies always match the source
//! and the report names exactly the failed nodes.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use kacast::demo::Pattern;

/// The stream is throttled so that faults land mid-transfer: 96 MiB at 48 MiB/s.
const SIZE: u64 = 96 << 20;
const RATE: &str = "48M";
/// Short enough for quick tests, long enough for a loaded 2-core machine.
const TIMEOUT: &str = "3";
/// A session that outlives this is hung: every rack here ends within seconds
/// of its last timeout.
const SERVER_LIMIT: Duration = Duration::from_secs(120);

struct Rack {
    dir: tempfile::TempDir,
    input: PathBuf,
    hash: String,
    port: u16,
    server: Option<Child>,
    nodes: Vec<Option<Child>>,
    n: usize,
    /// Nodes this test SIGKILLed: they have no exit code of their own.
    killed: std::cell::RefCell<Vec<usize>>,
    /// One rack at a time: timeouts are judged on a 2-core machine, and racks
    /// competing for it would measure the machine, not kacast.
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

static RACKS: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Drop for Rack {
    fn drop(&mut self) {
        for c in self.nodes.iter_mut().flatten().chain(self.server.iter_mut()) {
            // SAFETY: a process this test started.
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn name(i: usize) -> String {
    format!("node{i:02}")
}

impl Rack {
    /// A server and `n` nodes writing files; `sink` may replace a node's sink.
    /// `sink(i, out)` may replace node `i`'s sink; `out` is where its copy is checked.
    fn start(n: usize, buffer: &str, sink: impl Fn(usize, &str) -> Option<Vec<String>>) -> Rack {
        let one_at_a_time = RACKS.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("input");
        let mut f = std::fs::File::create(&input).unwrap();
        std::io::copy(&mut Pattern::new(42, SIZE), &mut f).unwrap();
        let hash = blake3_hex(&std::fs::read(&input).unwrap());
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let d = dir.path();
        let server = Command::new(kacast_bin())
            .args(["server", "-s", "faults", "-n", &n.to_string(), "--bind", "127.0.0.1", "--no-discovery"])
            .args(["--port", &port.to_string(), "--max-rate", RATE, "--timeout", TIMEOUT, "--buffer", buffer])
            .arg("-i")
            .arg(&input)
            .arg("--ok")
            .arg(d.join("ok"))
            .arg("--ko")
            .arg(d.join("ko"))
            .arg("--report")
            .arg(d.join("report.json"))
            .args(["--slow-after", "1.5"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let nodes = (1..=n)
            .map(|i| {
                let out = d.join(name(i)).to_str().unwrap().to_string();
                let sink = sink(i, &out).unwrap_or_else(|| vec!["--to-file".into(), out]);
                Some(
                    Command::new(kacast_bin())
                        .args(["client", "-s", "faults", "--server", &format!("127.0.0.1:{port}")])
                        .args(["--name", &name(i), "--bind", "127.0.0.1", "--timeout", TIMEOUT])
                        .args(["--buffer", buffer])
                        .args(&sink)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::piped())
                        .spawn()
                        .unwrap(),
                )
            })
            .collect();
        Rack {
            dir,
            input,
            hash,
            port,
            server: Some(server),
            nodes,
            n,
            killed: Default::default(),
            _one_at_a_time: one_at_a_time,
        }
    }

    fn out(&self, i: usize) -> PathBuf {
        self.dir.path().join(name(i))
    }

    fn pid(&self, i: usize) -> i32 {
        self.nodes[i - 1].as_ref().unwrap().id() as i32
    }

    fn signal(&self, i: usize, sig: i32) {
        if sig == libc::SIGKILL {
            self.killed.borrow_mut().push(i);
        }
        // SAFETY: a process this test started.
        unsafe { libc::kill(self.pid(i), sig) };
    }

    /// Waits until node `i` has written at least `bytes` to its file.
    fn wait_written(&self, i: usize, bytes: u64) {
        let path = self.out(i);
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end {
            if std::fs::metadata(&path).map(|m| m.len() >= bytes).unwrap_or(false) {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("node {i} never reached byte {bytes}");
    }

    /// Waits for the server; checks its exit code, that the ko file names exactly
    /// `failed` and that every other node's copy equals the source. Returns the
    /// ko file and the JSON report.
    fn finish(mut self, failed: &[usize]) -> (String, serde_json::Value) {
        let (server_code, server_log) = wait_bounded(&mut self.server.take().unwrap(), SERVER_LIMIT);
        let mut exits = Vec::new();
        for (i, c) in self.nodes.iter_mut().enumerate() {
            let mut c = c.take().unwrap();
            if failed.contains(&(i + 1)) {
                // SAFETY: a process this test started.
                unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            }
            let out = wait_bounded(&mut c, Duration::from_secs(30));
            exits.push(out);
        }
        let ko = std::fs::read_to_string(self.dir.path().join("ko")).unwrap_or_default();
        let ok = std::fs::read_to_string(self.dir.path().join("ok")).unwrap_or_default();
        let expected_code = if failed.is_empty() { 0 } else { 2 };
        assert_eq!(server_code, Some(expected_code), "server exit ({server_log}); ko:\n{ko}");
        let ko_names: BTreeSet<String> =
            ko.lines().map(|l| l.split('\t').next().unwrap().to_string()).collect();
        let want: BTreeSet<String> = failed.iter().map(|i| name(*i)).collect();
        assert_eq!(ko_names, want, "ko file:\n{ko}");
        for i in 1..=self.n {
            let (code, log) = &exits[i - 1];
            if self.killed.borrow().contains(&i) {
                assert_eq!(*code, None, "node {i} was killed");
            } else if failed.contains(&i) {
                assert!(
                    matches!(code, Some(c) if *c != 0),
                    "failed node {i} must exit non-zero by itself:\n{log}"
                );
            } else {
                assert_eq!(*code, Some(0), "node {i} exit:\n{log}");
                assert!(ok.lines().any(|l| l == name(i)), "node {i} missing from ok:\n{ok}");
                let got = blake3_hex(&std::fs::read(self.out(i)).unwrap());
                assert_eq!(got, self.hash, "node {i}'s copy differs from the source");
            }
        }
        let _ = &self.input;
        let report = std::fs::read_to_string(self.dir.path().join("report.json")).unwrap();
        (ko, serde_json::from_str(&report).unwrap())
    }
}

/// Waits for a child, killing it after `limit` (a lingering agent is a bug the
/// assertion then reports): returns its exit code and stderr.
fn wait_bounded(c: &mut Child, limit: Duration) -> (Option<i32>, String) {
    let stderr = c.stderr.take();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut log = String::new();
        if let Some(e) = stderr {
            for line in BufReader::new(e).lines().map_while(Result::ok) {
                log.push_str(&line);
                log.push('\n');
            }
        }
        let _ = tx.send(log);
    });
    let end = Instant::now() + limit;
    loop {
        if let Some(status) = c.try_wait().unwrap() {
            let log = rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
            return (status.code(), log);
        }
        if Instant::now() > end {
            let _ = c.kill();
            let _ = c.wait();
            return (None, format!("still running after {limit:?}: killed"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// xorshift: reproducible choices from a seed.
fn rng(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    move |below| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % below
    }
}

#[test]
fn sigkill_at_random_offsets() {
    for seed in [1u64, 2, 3] {
        let mut r = rng(seed);
        let n = 8 + r(5) as usize;
        let mut victims: Vec<usize> = vec![1 + r(n as u64) as usize];
        if r(2) == 1 {
            let other = 1 + r(n as u64) as usize;
            if !victims.contains(&other) {
                victims.push(other);
            }
        }
        // Small buffers: the replay often has to come from the server's re-read.
        let rack = Rack::start(n, if seed % 2 == 0 { "4M" } else { "32M" }, |_, _| None);
        for &v in &victims {
            let offset = r(SIZE * 8 / 10);
            eprintln!("seed {seed}: {n} nodes, killing node {v} at byte {offset}");
            rack.wait_written(v, offset);
            rack.signal(v, libc::SIGKILL);
        }
        rack.finish(&victims);
    }
}

#[test]
fn first_and_last_nodes_killed() {
    let rack = Rack::start(8, "8M", |_, _| None);
    rack.wait_written(1, SIZE / 4);
    rack.signal(1, libc::SIGKILL);
    rack.wait_written(8, SIZE / 2);
    rack.signal(8, libc::SIGKILL);
    rack.finish(&[1, 8]);
}

#[test]
fn two_neighbours_killed_together() {
    let rack = Rack::start(8, "8M", |_, _| None);
    rack.wait_written(5, SIZE / 3);
    rack.signal(4, libc::SIGKILL);
    rack.signal(5, libc::SIGKILL);
    rack.finish(&[4, 5]);
}

#[test]
fn a_node_killed_before_the_stream_reaches_it() {
    let rack = Rack::start(6, "8M", |_, _| None);
    // Its file appears when it is told its place, before any byte arrives.
    rack.wait_written(3, 0);
    rack.signal(3, libc::SIGKILL);
    rack.finish(&[3]);
}

/// Stops node `victim` of `n` a quarter into the stream: it is bypassed once
/// silent for the timeout, and the others get the whole stream.
fn stop_and_bypass(n: usize, buffer: &str, victim: usize) {
    let rack = Rack::start(n, buffer, |_, _| None);
    rack.wait_written(victim, SIZE / 4);
    rack.signal(victim, libc::SIGSTOP);
    let (ko, _) = rack.finish(&[victim]);
    assert!(ko.contains(&format!("silent for {TIMEOUT}s")), "{ko}");
}

#[test]
fn a_stopped_node_is_bypassed_after_the_timeout() {
    stop_and_bypass(6, "8M", 3);
}

#[test]
fn a_sink_that_stops_reading_is_cut_off_and_killed() {
    let marker = format!("sleep 6{}.5", std::process::id() % 1000);
    let cmd = marker.clone();
    let rack = Rack::start(5, "4M", move |i, _| (i == 2).then(|| vec!["-e".to_string(), cmd.clone()]));
    let (ko, _) = rack.finish(&[2]);
    assert!(ko.contains("sink took no data"), "{ko}");
    let left = Command::new("pgrep").args(["-f", &marker]).output().unwrap();
    assert!(left.stdout.is_empty(), "the hung sink command outlived its node: {:?}", left);
}

#[test]
fn a_cut_data_connection_heals_without_losing_a_node() {
    if let Some(why) = missing_tool("ss") {
        return skip(&why);
    }
    let rack = Rack::start(5, "8M", |_, _| None);
    rack.wait_written(3, SIZE / 3);
    // Node 3's upstream is node 2: cut every connection to node 2's data port.
    let port = data_port_of(&rack, 2);
    let cut = Command::new("ss")
        .args(["-K", "dst", "127.0.0.1", "dport", "=", &port.to_string()])
        .output()
        .unwrap();
    assert!(cut.status.success(), "{cut:?}");
    rack.finish(&[]);
}

/// The data port a node listens on, found from its open sockets.
fn data_port_of(rack: &Rack, i: usize) -> u16 {
    let pid = rack.pid(i);
    let out = Command::new("ss").args(["-ltnpH"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(&format!("pid={pid},")))
        .unwrap_or_else(|| panic!("no listening socket of pid {pid} in:\n{text}"));
    let local = line.split_whitespace().nth(3).unwrap();
    let _ = rack.port;
    local.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn a_slow_node_is_fed_on_its_own_and_the_others_keep_their_speed() {
    // Node 3 writes 256 KiB every 50 ms at most (about 5 MB/s): alone it would
    // set the pace of the whole chain.
    let rack = Rack::start(5, "8M", |i, out| {
        (i == 3).then(|| {
            let cmd = format!(
                "while [ \"$(dd bs=256k count=1 iflag=fullblock status=none | tee -a {out} | wc -c)\" -gt 0 ]; do sleep 0.05; done"
            );
            vec!["-e".to_string(), cmd]
        })
    });
    // The stream is throttled to 48 MiB/s: 2 s for the chain, ~20 s for node 3.
    // `finish` checks every copy, the slow node's too.
    let (_, report) = rack.finish(&[]);
    let took = |name: &str| {
        report["nodes"].as_array().unwrap().iter().find(|n| n["name"] == name).unwrap()["duration_s"]
            .as_f64()
            .unwrap()
    };
    let slow = took("node03");
    for other in ["node01", "node02", "node04", "node05"] {
        assert!(
            took(other) * 2.0 < slow,
            "{other} took {}s, the slow node {slow}s: it still set the pace",
            took(other)
        );
    }
}

#[test]
fn nodes_that_lose_the_server_exit_non_zero_and_leave_nothing_behind() {
    for sig in [libc::SIGKILL, libc::SIGSTOP] {
        let mut rack = Rack::start(4, "8M", |i, out| {
            // One node with a command sink, to check it is not left running.
            (i == 2).then(|| vec!["-e".to_string(), format!("cat > {out}")])
        });
        rack.wait_written(4, SIZE / 4);
        let server = rack.server.take().unwrap();
        // SAFETY: a process this test started.
        unsafe { libc::kill(server.id() as i32, sig) };
        let limit = Duration::from_secs(3 * TIMEOUT.parse::<u64>().unwrap() + 5);
        for i in 1..=4 {
            let mut c = rack.nodes[i - 1].take().unwrap();
            let (code, log) = wait_bounded(&mut c, limit);
            assert!(
                matches!(code, Some(c) if c != 0),
                "node {i} after the server got signal {sig}: {code:?}\n{log}"
            );
            assert!(log.contains("server"), "node {i} should say it lost the server:\n{log}");
        }
        let out = rack.out(2).to_str().unwrap().to_string();
        let left = Command::new("pgrep").args(["-f", &format!("cat > {out}")]).output().unwrap();
        assert!(left.stdout.is_empty(), "a sink command outlived its node");
        let mut server = server;
        // SAFETY: as above.
        unsafe { libc::kill(server.id() as i32, libc::SIGKILL) };
        let _ = server.wait();
    }
}

#[test]
fn the_first_node_stopped_is_bypassed_and_the_rest_finish() {
    // The server's only reader is then cut off, and with a small buffer the
    // second node resumes from a re-read of the input: the server must go on
    // pumping without readers, or that node never gets the end of the stream.
    stop_and_bypass(3, "4M", 1);
}
