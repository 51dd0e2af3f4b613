//! Whole chains on loopback, driven through the library: every node's output is
//! checked against the source, whatever the size, node count or tree shape.

mod common;

use std::io::Cursor;
use std::path::Path;
use std::thread;

use common::*;
use kacast::chain::{ChunkSize, Sink, CHUNK_SIZE, FAST_PACE, SMALL_CHUNK};
use kacast::session::{Input, Order, Server, SessionReport};

/// Streams `data` from a server to `n` nodes that each write a file, and checks
/// every file byte for byte (by hash) against the source.
fn stream_to_files(
    session: &str,
    n: usize,
    data: Vec<u8>,
    tweak: impl FnOnce(&mut kacast::session::ServerConfig),
) -> SessionReport {
    let dir = tempfile::tempdir().unwrap();
    let mut config = loopback_server(session, n);
    tweak(&mut config);
    let server = Server::bind(config).unwrap();
    let sinks = (0..n).map(|i| Sink::File(dir.path().join(format!("n{i}")))).collect();
    let clients = spawn_clients(session, server.control_addr(), sinks);
    let want = blake3_hex(&data);
    let report = server.run(Input::Reader(Box::new(Cursor::new(data)))).unwrap();
    for c in clients {
        let r = c.join().unwrap().unwrap();
        assert!(r.ok(), "{r:?}");
    }
    assert_eq!(report.nodes.len(), n);
    assert_eq!(report.hash.as_deref(), Some(want.as_str()));
    for i in 0..n {
        let got = std::fs::read(dir.path().join(format!("n{i}"))).unwrap();
        assert_eq!(blake3_hex(&got), want, "node {i}'s copy differs from the source");
    }
    assert!(report.nodes.iter().all(|r| r.ok()), "{}", report.render());
    assert_eq!(report.exit_code(), 0);
    report
}

#[test]
fn edge_sizes_reach_every_node_of_chains_of_1_2_and_8() {
    for n in [1, 2, 8] {
        for size in [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE + 1] {
            let report =
                stream_to_files(&format!("edge-{n}-{size}"), n, pattern(size, size as u64 + 7), |_| {});
            assert!(report.nodes.iter().all(|r| r.bytes == size as u64));
        }
    }
}

#[test]
fn thirty_two_nodes() {
    let report = stream_to_files("wide", 32, pattern(3 * CHUNK_SIZE + 5, 3), |_| {});
    let positions: Vec<usize> = report.nodes.iter().map(|r| r.position).collect();
    assert_eq!(positions, (1..=32).collect::<Vec<_>>());
}

#[test]
fn two_hundred_mib_through_eight_nodes_with_a_small_buffer() {
    // A 4 MiB buffer is 50 times smaller than the stream: back-pressure, not
    // memory, carries it.
    let report = stream_to_files("big", 8, pattern(200 << 20, 11), |c| c.buffer = 4 << 20);
    // Loopback is fast, but this machine may be loaded: whatever the pace,
    // the decision must follow it, and the chunks grow on a large boundary.
    let chunks = report.chunks;
    let pace = chunks.measured_mb_s.expect("200 MiB is long enough to measure the pace");
    assert_eq!(chunks.first, SMALL_CHUNK);
    match chunks.large_from {
        Some(at) => assert!(pace * 1e6 >= FAST_PACE && at % CHUNK_SIZE as u64 == 0, "{chunks:?}"),
        None => assert!(pace * 1e6 < FAST_PACE, "{chunks:?}"),
    }
}

#[test]
fn a_slow_stream_keeps_small_chunks_and_a_fixed_size_is_kept() {
    // Throttled well under the pace at which large chunks pay.
    let report = stream_to_files("slow", 2, pattern(40 << 20, 12), |c| {
        c.buffer = 4 << 20;
        c.max_rate = Some(16 << 20);
    });
    let (chunks, limit) = (report.chunks, 16.0 * 1.048576);
    assert!(chunks.measured_mb_s.is_some_and(|p| p <= limit * 1.05), "{chunks:?}");
    assert_eq!((chunks.first, chunks.large_from), (SMALL_CHUNK, None), "{chunks:?}");

    let report = stream_to_files("fixed", 2, pattern(40 << 20, 13), |c| {
        c.buffer = 4 << 20;
        c.chunk = ChunkSize::Fixed(100_000);
    });
    assert_eq!((report.chunks.first, report.chunks.large_from), (100_000, None), "{:?}", report.chunks);
}

#[test]
fn trees_of_arity_2_and_4() {
    for arity in [2, 4] {
        stream_to_files(&format!("tree{arity}"), 9, pattern(CHUNK_SIZE * 5 + 3, arity as u64), |c| {
            c.arity = arity
        });
    }
}

#[test]
fn join_and_file_orders() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nodes");
    std::fs::write(&file, "# wanted order\nnode03\nnode01\n").unwrap();
    let report = stream_to_files("filed", 3, pattern(1000, 1), |c| c.order = Order::File(file.clone()));
    let names: Vec<&str> = report.nodes.iter().map(|r| r.name.as_str()).collect();
    // node02 is not listed: it goes last.
    assert_eq!(names, ["node03", "node01", "node02"]);
}

#[test]
fn a_tar_stream_unpacks_with_to_dir() {
    let src = tempfile::tempdir().unwrap();
    let root = src.path();
    std::fs::create_dir_all(root.join("etc/sub")).unwrap();
    std::fs::write(root.join("etc/hostname"), "golden\n").unwrap();
    std::fs::write(root.join("etc/sub/big"), pattern(CHUNK_SIZE * 2 + 1, 5)).unwrap();
    std::os::unix::fs::symlink("hostname", root.join("etc/link")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("etc/hostname"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", root).unwrap();
    let tarball = builder.into_inner().unwrap();

    let server = Server::bind(loopback_server("tar", 2)).unwrap();
    let dst = tempfile::tempdir().unwrap();
    let sinks = (0..2).map(|i| Sink::Dir(dst.path().join(format!("n{i}")))).collect();
    let clients = spawn_clients("tar", server.control_addr(), sinks);
    let report = server.run(Input::Reader(Box::new(Cursor::new(tarball)))).unwrap();
    for c in clients {
        assert!(c.join().unwrap().unwrap().ok());
    }
    assert_eq!(report.exit_code(), 0, "{}", report.render());
    for i in 0..2 {
        let out = dst.path().join(format!("n{i}"));
        assert_same_file(&root.join("etc/sub/big"), &out.join("etc/sub/big"));
        assert_eq!(std::fs::read_to_string(out.join("etc/hostname")).unwrap(), "golden\n");
        assert_eq!(std::fs::read_link(out.join("etc/link")).unwrap(), Path::new("hostname"));
        let mode = std::fs::metadata(out.join("etc/hostname")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }
}

fn assert_same_file(a: &Path, b: &Path) {
    assert_eq!(
        blake3_hex(&std::fs::read(a).unwrap()),
        blake3_hex(&std::fs::read(b).unwrap()),
        "{}",
        b.display()
    );
}

#[test]
fn a_failing_sink_fails_only_its_node_and_the_chain_goes_on() {
    let server = Server::bind(loopback_server("partial", 3)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = |i: usize| dir.path().join(format!("n{i}"));
    let sinks = vec![
        Sink::Command(format!("cat > {}", out(1).display())),
        // Reads a little, then fails: the relay to node03 must not stall.
        Sink::Command("head -c 100 >/dev/null; echo 'disk on fire' >&2; exit 3".into()),
        Sink::Command(format!("cat > {}", out(3).display())),
    ];
    let clients = spawn_clients("partial", server.control_addr(), sinks);
    let data = pattern(CHUNK_SIZE * 40, 9);
    let want = blake3_hex(&data);
    let report = server.run(Input::Reader(Box::new(Cursor::new(data)))).unwrap();
    let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap().unwrap()).collect();
    assert!(results[0].ok() && !results[1].ok() && results[2].ok());
    assert_eq!(report.exit_code(), 2, "{}", report.render());
    let failed = &report.nodes[1];
    assert_eq!(failed.name, "node02");
    assert_eq!(failed.sink_status, Some(3));
    assert!(failed.hash_ok, "the stream itself arrived whole");
    let why = failed.error.as_deref().unwrap();
    assert!(why.contains("exited with status 3") && why.contains("disk on fire"), "{why}");
    for i in [1, 3] {
        assert_eq!(blake3_hex(&std::fs::read(out(i)).unwrap()), want);
    }
}

#[test]
fn every_sink_failing_gives_exit_code_1() {
    let server = Server::bind(loopback_server("allbad", 2)).unwrap();
    let clients = spawn_clients("allbad", server.control_addr(), vec![Sink::Command("false".into()); 2]);
    let report = server.run(Input::Reader(Box::new(Cursor::new(vec![1u8; 10])))).unwrap();
    for c in clients {
        assert!(!c.join().unwrap().unwrap().ok());
    }
    assert_eq!(report.exit_code(), 1);
}

#[test]
fn a_failing_input_command_fails_every_node() {
    let server = Server::bind(loopback_server("badinput", 2)).unwrap();
    let clients = spawn_clients("badinput", server.control_addr(), vec![Sink::Discard, Sink::Discard]);
    let report = server.run(Input::Command("printf partial; exit 4".into())).unwrap();
    for c in clients {
        let r = c.join().unwrap().unwrap();
        assert!(!r.ok());
        assert!(r.outcome.error.as_deref().unwrap().contains("exit status: 4"), "{:?}", r.outcome);
    }
    assert!(report.source_error.as_deref().unwrap().contains("failed"), "{:?}", report.source_error);
    assert_eq!(report.exit_code(), 1);
}

#[test]
fn two_sessions_side_by_side_on_one_host() {
    let handles: Vec<_> = ["left", "right"]
        .into_iter()
        .map(|s| {
            thread::spawn(move || stream_to_files(s, 3, pattern(CHUNK_SIZE * 3, s.len() as u64), |_| {}))
        })
        .collect();
    for h in handles {
        let report = h.join().unwrap();
        assert_eq!(report.nodes.len(), 3);
    }
}

#[test]
fn a_node_that_reports_only_counts_towards_n_and_is_listed() {
    let data = pattern(3 * CHUNK_SIZE + 5, 11);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::bind(loopback_server("withdraw", 3)).unwrap();
    let addr = server.control_addr();
    let sinks = (0..2).map(|i| Sink::File(dir.path().join(format!("n{i}")))).collect();
    let clients = spawn_clients("withdraw", addr, sinks);
    let quitter = thread::spawn(move || {
        let c = kacast::session::Client::bind(loopback_client("withdraw", addr, "quitter", Sink::Discard));
        c.unwrap().report_only(Err("formatting /dev/sda1 failed".into()))
    });
    let report = server.run(Input::Reader(Box::new(Cursor::new(data)))).unwrap();
    quitter.join().unwrap().unwrap();
    for c in clients {
        assert!(c.join().unwrap().unwrap().ok());
    }
    assert_eq!(report.nodes.len(), 3, "{report:?}");
    assert_eq!(report.ok_count(), 2);
    let q = report.nodes.iter().find(|n| n.name == "quitter").unwrap();
    assert_eq!((q.position, q.ok()), (0, false));
    assert_eq!(q.error.as_deref(), Some("formatting /dev/sda1 failed"));
    assert_eq!(report.exit_code(), 2);
}

#[test]
fn a_session_whose_nodes_all_report_only_ends_without_its_input() {
    let server = Server::bind(loopback_server("all-done", 2)).unwrap();
    let addr = server.control_addr();
    let nodes: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|name| {
            thread::spawn(move || {
                let c = kacast::session::Client::bind(loopback_client("all-done", addr, name, Sink::Discard));
                c.unwrap().report_only(Ok(()))
            })
        })
        .collect();
    // An input that would fail if it were read: the session must not touch it.
    let report = server.run(Input::Command("exit 7".into())).unwrap();
    for n in nodes {
        n.join().unwrap().unwrap();
    }
    assert_eq!(report.ok_count(), 2, "{report:?}");
    assert_eq!(report.exit_code(), 0);
    assert!(report.source_error.is_none());
}

/// A name the nodes could not be sent whole (or no name at all) is refused
/// by the library, not only by the command line.
#[test]
fn a_congestion_control_name_that_cannot_travel_is_refused() {
    for bad in ["cubic_and_then_some", "", "cu bic"] {
        let mut config = loopback_server("cc-name", 1);
        config.congestion = Some(bad.to_string());
        let e = Server::bind(config).err().expect("refused").to_string();
        assert!(e.contains(&format!("--congestion {bad:?}: not a TCP congestion control name")), "{e}");
    }
}

/// Every hop sends with the chain's congestion control (`--congestion`), on
/// the server and on the relaying node alike: `ss` shows it on both sending
/// sockets while the stream flows.
#[test]
fn every_hop_sends_with_the_sessions_congestion_control() {
    let system = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control").unwrap_or_default();
    // Reno is built into every Linux kernel and allowed to any user; it must
    // differ from the default for the check to mean anything.
    if system.trim() == "reno" {
        return skip("this host's default congestion control is reno already");
    }
    if std::process::Command::new("ss").arg("-V").output().is_err() {
        return skip("no ss (iproute2)");
    }
    let mut config = loopback_server("congestion", 2);
    config.congestion = Some("reno".into());
    // Long enough to watch: 48 MiB at 16 MiB/s.
    config.max_rate = Some(16 << 20);
    let server = Server::bind(config).unwrap();
    let clients = spawn_clients("congestion", server.control_addr(), vec![Sink::Discard, Sink::Discard]);
    let run = thread::spawn(move || server.run(Input::Reader(Box::new(Cursor::new(vec![5u8; 48 << 20])))));
    // Sockets of this process that have sent over a MiB with reno.
    let reno_senders = || {
        let out = std::process::Command::new("ss").args(["-tniOp", "state", "established"]).output().unwrap();
        let me = format!("pid={},", std::process::id());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&me) && l.split_whitespace().any(|w| w == "reno"))
            .filter(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("bytes_sent:"))
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|n| n > 1 << 20)
            })
            .count()
    };
    let mut seen = 0;
    while seen < 2 && !run.is_finished() {
        seen = seen.max(reno_senders());
    }
    let report = run.join().unwrap().unwrap();
    for c in clients {
        assert!(c.join().unwrap().unwrap().ok());
    }
    assert_eq!(report.exit_code(), 0);
    assert_eq!(seen, 2, "the server's and the relaying node's sockets must both send with reno");
}
