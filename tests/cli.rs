//! The `kacast` binary as a sysadmin runs it: exit codes, ok/ko/report files,
//! refusals and retries, all on loopback.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kacast::protocol::{Frame, Header, Hello, Kind, Role, HEADER_LEN, MAGIC, VERSION};
use kacast::session::Server;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn kacast(args: &[&str]) -> Command {
    let mut c = Command::new(kacast_bin());
    c.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn server_cmd(session: &str, port: u16, extra: &[&str]) -> Command {
    let port = port.to_string();
    let mut args = vec!["server", "-s", session, "--bind", "127.0.0.1", "--port", &port, "--no-discovery"];
    args.extend_from_slice(extra);
    kacast(&args)
}

fn client_cmd(session: &str, port: u16, name: &str, extra: &[&str]) -> Command {
    let server = format!("127.0.0.1:{port}");
    let mut args = vec!["client", "-s", session, "--server", &server, "--name", name, "--bind", "127.0.0.1"];
    args.extend_from_slice(extra);
    kacast(&args)
}

fn finish(child: Child) -> Output {
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Waits for `cond` to hold, checking every few milliseconds, up to `limit`.
fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

#[test]
fn a_failing_node_lands_in_ko_and_the_server_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = d.join("input");
    std::fs::write(&input, vec![42u8; 3 << 20]).unwrap();
    let port = free_port();
    let (ok, ko, report) = (d.join("ok"), d.join("ko"), d.join("report.json"));
    let server = server_cmd(
        "kainstall",
        port,
        &[
            "-n",
            "3",
            "-i",
            input.to_str().unwrap(),
            "--ok",
            ok.to_str().unwrap(),
            "--ko",
            ko.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ],
    )
    .spawn()
    .unwrap();
    let out = |n: &str| d.join(n).to_str().unwrap().to_string();
    let good1 =
        client_cmd("kainstall", port, "node1", &["-e", &format!("cat > {}", out("c1"))]).spawn().unwrap();
    let bad =
        client_cmd("kainstall", port, "node2", &["-e", "tar -x -C /nonexistent-kacast-dir"]).spawn().unwrap();
    let good3 = client_cmd("kainstall", port, "node3", &["--to-file", &out("c3")]).spawn().unwrap();
    let (g1, b, g3) = (finish(good1), finish(bad), finish(good3));
    let s = finish(server);
    assert!(g1.status.success(), "{}", text(&g1));
    assert!(g3.status.success(), "{}", text(&g3));
    assert!(!b.status.success(), "a client whose command fails must exit non-zero: {}", text(&b));
    assert_eq!(s.status.code(), Some(2), "{}", text(&s));
    let table = text(&s);
    assert!(table.contains("Total data sent") && table.contains("The pipeline was emptied in"), "{table}");
    assert_eq!(std::fs::read_to_string(&ok).unwrap(), "node1\nnode3\n");
    let ko_text = std::fs::read_to_string(&ko).unwrap();
    assert!(ko_text.starts_with("node2\t") && ko_text.contains("exited with status 2"), "{ko_text}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let nodes = json["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert_eq!(nodes[1]["name"], "node2");
    assert_eq!(nodes[1]["sink_status"], 2);
    assert_eq!(nodes[1]["hash_ok"], true);
    assert_eq!(nodes[0]["bytes"], 3 << 20);
    for key in ["address", "duration_s", "error"] {
        assert!(nodes[0].get(key).is_some(), "report lacks {key}");
    }
    assert_eq!(std::fs::read(d.join("c1")).unwrap(), std::fs::read(&input).unwrap());
    assert_eq!(std::fs::read(d.join("c3")).unwrap(), std::fs::read(&input).unwrap());
}

#[test]
fn a_sparse_image_travels_without_its_zeros_and_lands_as_holes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 64 MiB with 2 MiB of data at 40 MiB: what a mostly empty partition is.
    let input = d.join("disk.img");
    let mut image = vec![0u8; 64 << 20];
    image[40 << 20..42 << 20].copy_from_slice(&pattern(2 << 20, 3));
    std::fs::write(&input, &image).unwrap();
    let (out, report) = (d.join("copy.img"), d.join("report.json"));
    std::fs::write(&out, b"old contents").unwrap();
    let port = free_port();
    let args = ["-n", "1", "--sparse", "-i", input.to_str().unwrap(), "--report", report.to_str().unwrap()];
    let server = server_cmd("raw", port, &args).spawn().unwrap();
    let client =
        client_cmd("raw", port, "node1", &["--sparse", "--to-file", out.to_str().unwrap()]).spawn().unwrap();
    let (c, s) = (finish(client), finish(server));
    assert!(c.status.success() && s.status.success(), "{}\n{}", text(&c), text(&s));
    assert!(std::fs::read(&out).unwrap() == image, "the copy differs from the image");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let wire = json["nodes"][0]["bytes"].as_u64().unwrap();
    assert!(wire > 2 << 20 && wire < (2 << 20) + 4096, "{wire} bytes on the wire for 2 MiB of data");
    let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&out).unwrap());
    assert!(blocks * 512 < 4 << 20, "the copy takes {} bytes of disk, not ~2 MiB", blocks * 512);

    let o = kacast(&["server", "-s", "x", "-n", "1", "--sparse", "-e", "true"]).output().unwrap();
    assert!(!o.status.success() && text(&o).contains("--sparse needs --input FILE"), "{}", text(&o));
    let o = kacast(&["client", "-s", "x", "--sparse", "--discard"]).output().unwrap();
    assert!(!o.status.success() && text(&o).contains("--sparse needs --to-file"), "{}", text(&o));
}

/// Sends raw bytes to a control port and returns the refusal the server answers.
fn refusal_for(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    match Frame::parse(&reply) {
        Ok(Frame::Refuse { reason }) => reason,
        other => panic!("expected a refuse frame, got {other:?} from {reply:?}"),
    }
}

#[test]
fn garbage_and_version_mismatch_are_refused_and_the_session_goes_on() {
    let server = Server::bind(loopback_server("sturdy", 2)).unwrap();
    let addr = server.control_addr();
    let run = std::thread::spawn(move || {
        server.run(kacast::session::Input::Reader(Box::new(std::io::Cursor::new(vec![7u8; 5000]))))
    });

    let why = refusal_for(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(why.contains("unknown frame kind 0x47"), "{why}");

    let mut old = Frame::Hello(Hello {
        session: "sturdy".into(),
        name: "old".into(),
        role: Role::Node,
        data_port: 1,
        nonce: None,
    })
    .encode();
    old[HEADER_LEN + MAGIC.len()..HEADER_LEN + MAGIC.len() + 2].copy_from_slice(&99u16.to_be_bytes());
    let why = refusal_for(addr, &old);
    assert!(why.contains(&format!("peer speaks version 99, this kacast speaks version {VERSION}")), "{why}");

    let mut huge = Header::encode(Kind::Hello, 0).to_vec();
    huge[2..6].copy_from_slice(&u32::MAX.to_be_bytes());
    let why = refusal_for(addr, &huge);
    assert!(why.contains("more than its maximum"), "{why}");

    let wrong = Frame::Hello(Hello {
        session: "other".into(),
        name: "x".into(),
        role: Role::Node,
        data_port: 1,
        nonce: None,
    })
    .encode();
    let why = refusal_for(addr, &wrong);
    assert_eq!(why, "this server runs session 'sturdy', not 'other'");

    let clients = spawn_clients("sturdy", addr, vec![kacast::chain::Sink::Discard; 2]);
    for c in clients {
        assert!(c.join().unwrap().unwrap().ok());
    }
    let report = run.join().unwrap().unwrap();
    assert_eq!(report.nodes.len(), 2, "strangers must not count as nodes");
    assert_eq!(report.exit_code(), 0);
}

#[test]
fn a_client_without_server_gives_up_after_its_tries() {
    let port = free_port();
    let o = client_cmd("lonely", port, "n1", &["--discard", "--tries", "3", "--retry-interval", "0.05"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("no kacast server answered for session 'lonely' after 3 tries"), "{t}");
    assert!(t.contains("try 3/3"), "{t}");
}

#[test]
fn go_starts_a_session_with_the_nodes_already_there() {
    let port = free_port();
    let server = server_cmd("early", port, &["-e", "printf hello"]).spawn().unwrap();
    let a = client_cmd("early", port, "a", &["--discard"]).spawn().unwrap();
    let b = client_cmd("early", port, "b", &["--discard"]).spawn().unwrap();
    // The server logs each join; wait until both are in before saying go.
    let mut joined = false;
    let mut log = String::new();
    let mut server = server;
    let mut err = server.stderr.take().unwrap();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let n = err.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        log.push_str(&String::from_utf8_lossy(&buf[..n]));
        if log.contains("(2 joined)") {
            joined = true;
            break;
        }
    }
    assert!(joined, "{log}");
    let port_s = format!("127.0.0.1:{port}");
    let go = kacast(&["go", "-s", "early", "--server", &port_s]).output().unwrap();
    assert!(go.status.success(), "{}", text(&go));
    let s = finish(server);
    assert_eq!(s.status.code(), Some(0), "{}", text(&s));
    assert!(finish(a).status.success() && finish(b).status.success());
    assert!(String::from_utf8_lossy(&s.stdout).contains("2 ok, 0 failed"));
}

#[test]
fn start_after_waits_for_min_nodes() {
    let server = {
        let mut c = loopback_server("timed", 1);
        c.nodes = None;
        c.min_nodes = 2;
        c.start_after = Some(Duration::from_millis(300));
        Server::bind(c).unwrap()
    };
    let addr = server.control_addr();
    let stats = server.stats();
    let run = std::thread::spawn(move || server.run(kacast::session::Input::Command("printf abc".into())));
    let first = spawn_clients("timed", addr, vec![kacast::chain::Sink::Discard]);
    // Well past the timer with one node: still waiting for the second.
    assert!(
        wait_until(Duration::from_secs(5), || stats.joined.load(std::sync::atomic::Ordering::Relaxed) == 1)
    );
    assert!(!wait_until(Duration::from_millis(600), || stats
        .started
        .load(std::sync::atomic::Ordering::Relaxed)));
    let second =
        kacast::session::Client::bind(loopback_client("timed", addr, "second", kacast::chain::Sink::Discard))
            .unwrap();
    let h = std::thread::spawn(move || second.run());
    let report = run.join().unwrap().unwrap();
    assert_eq!(report.nodes.len(), 2);
    assert_eq!(report.exit_code(), 0);
    assert!(h.join().unwrap().unwrap().ok());
    for c in first {
        assert!(c.join().unwrap().unwrap().ok());
    }
}

#[test]
fn bad_command_lines_name_the_problem() {
    let o = kacast(&["server", "-s", "bad name", "-n", "1", "-e", "true", "--no-discovery", "--port", "0"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("invalid session name \"bad name\""), "{}", text(&o));
    let o = kacast(&[
        "server",
        "-s",
        "x",
        "-n",
        "1",
        "-e",
        "true",
        "--arity",
        "7",
        "--no-discovery",
        "--port",
        "0",
    ])
    .output()
    .unwrap();
    assert!(text(&o).contains("--arity must be 1 to 4, not 7"), "{}", text(&o));
    let o =
        kacast(&["server", "-s", "x", "-n", "1", "-e", "true", "--congestion", "cu bic"]).output().unwrap();
    assert!(text(&o).contains("--congestion \"cu bic\": not a TCP congestion control name"), "{}", text(&o));
    let o = kacast(&["server", "-s", "x", "-n", "1", "-e", "true", "--buffer", "12Q"]).output().unwrap();
    assert!(text(&o).contains("invalid size '12Q'"), "{}", text(&o));
    let o = kacast(&["client", "-s", "x", "--server", "h:port", "--discard"]).output().unwrap();
    assert!(text(&o).contains("invalid server address 'h:port'"), "{}", text(&o));
    let o = kacast(&["client", "-s", "x", "--discard", "--to-dir", "/tmp/x"]).output().unwrap();
    assert!(!o.status.success());
}

/// ka-d(1)'s example desc.
const KA_DESC: &str = "# hda1 = linux root\nlinux 5000\n# hda2 = swap\nswap 300\n# hda3 = extended\nextended fill\n# hda5 and 6 = linux\nlogical linux 500\nlogical linux fill\n";

#[test]
fn desc_check_prints_the_layout_or_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("desc");
    std::fs::write(&file, KA_DESC).unwrap();
    let f = file.to_str().unwrap();
    let o = kacast(&["desc", "--check", f, "--disk-size", "20G"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    for row in ["   1         2048", "   5     10858496", "   6     11884544     41943039"] {
        assert!(table.contains(row), "{table}");
    }
    let o = kacast(&["desc", "--check", f, "--disk-size", "4G"]).output().unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("need 5.7 GiB (5804 MiB) but the disk has 4.0 GiB"), "{}", text(&o));
    std::fs::write(&file, "linux 500\nlogical swap 1x\n").unwrap();
    let o = kacast(&["desc", "--check", f, "--disk-size", "4G"]).output().unwrap();
    assert!(text(&o).contains(&format!("{f}:2:")), "{}", text(&o));
}

#[test]
fn desc_of_a_disk_reads_back_the_ka_example() {
    if let Some(why) = missing_tool("sfdisk") {
        return skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("golden.img");
    std::fs::File::create(&img).unwrap().set_len(20 << 30).unwrap();
    let mut sfdisk = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(&img)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\n,5000M,83\n,300M,82\n,,5\n,500M,83\n,,83\n")
        .unwrap();
    assert!(sfdisk.wait().unwrap().success());
    let o = kacast(&["desc", img.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let got: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    let want: Vec<&str> = KA_DESC.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(got, want);
}

/// SIGTERM in the middle of `kacast demo`: the nodes' copies, written to a
/// temporary directory, go with it (they used to stay, GBs of them), and the
/// exit code is the shell's for a process killed by SIGTERM.
#[test]
fn an_interrupted_demo_removes_its_copies() {
    let tmp = tempfile::tempdir().unwrap();
    let written = |dir: &std::path::Path| -> u64 {
        let files =
            std::fs::read_dir(dir).into_iter().flatten().flatten().flat_map(|d| std::fs::read_dir(d.path()));
        files.flatten().flatten().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum()
    };
    // Far more than it can write before the signal: the stream is under way.
    let mut child =
        kacast(&["demo", "--nodes", "2", "--size", "64G"]).env("TMPDIR", tmp.path()).spawn().unwrap();
    let writing = wait_until(Duration::from_secs(60), || written(tmp.path()) > 0);
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    if !wait_until(Duration::from_secs(60), || child.try_wait().unwrap().is_some()) {
        let _ = child.kill();
        panic!("the demo goes on after SIGTERM:\n{}", text(&finish(child)));
    }
    let out = finish(child);
    assert!(writing, "the demo never wrote a copy:\n{}", text(&out));
    assert_eq!(out.status.code(), Some(143), "{}", text(&out));
    assert!(text(&out).contains("interrupted by SIGTERM, cleaning up"), "{}", text(&out));
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "left behind: {left:?}\n{}", text(&out));
    // Its log went to a pipe, not a terminal: plain text, no colour codes.
    assert!(!text(&out).contains('\x1b'), "{}", text(&out));
}
