//! Many nodes and many sessions at once, on loopback, through the library: a
//! 64-node rack joining in one burst, and four sessions sharing one host
//! without mixing their nodes or their streams.

mod common;

use std::collections::BTreeSet;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use kacast::chain::Sink;
use kacast::session::{Input, Server, SessionReport};

/// Generous: the whole file runs in a few seconds on two cores.
const BUDGET: Duration = Duration::from_secs(60);

/// Every node of `report` succeeded with the whole stream, and positions are
/// exactly 1..=n.
fn assert_all_ok(report: &SessionReport, n: usize, len: usize, want_hash: &str) {
    assert_eq!(report.nodes.len(), n, "{}", report.render());
    assert_eq!(report.hash.as_deref(), Some(want_hash), "{}", report.render());
    assert_eq!(report.bytes, len as u64);
    assert!(report.source_error.is_none(), "{}", report.render());
    for node in &report.nodes {
        assert!(node.ok(), "{node:?}\n{}", report.render());
        assert_eq!(node.bytes, len as u64, "{node:?}");
    }
    assert_eq!(report.exit_code(), 0, "{}", report.render());
    let positions: BTreeSet<usize> = report.nodes.iter().map(|r| r.position).collect();
    assert_eq!(positions, (1..=n).collect(), "positions must be 1..={n}, each once");
}

#[test]
fn sixty_four_nodes_join_at_once() {
    const N: usize = 64;
    let started = Instant::now();
    let len = 4 * 1024 * 1024 + 12_345;
    let data = pattern(len, 64);
    let want = blake3_hex(&data);
    let server = Server::bind(loopback_server("rack64", N)).unwrap();
    // Every client is running, and knocking at the control port, before the
    // server accepts a single one.
    let dir = tempfile::tempdir().unwrap();
    // Files for a few nodes along the chain (the first, the middle, the last)
    // to compare bytes; the others verify the hash and relay.
    let file = |i: usize| dir.path().join(format!("n{i}"));
    let checked = [0, N / 2, N - 1];
    let sinks =
        (0..N).map(|i| if checked.contains(&i) { Sink::File(file(i)) } else { Sink::Discard }).collect();
    let clients = spawn_clients("rack64", server.control_addr(), sinks);
    let report = server.run(Input::Reader(Box::new(std::io::Cursor::new(data)))).unwrap();

    let mut seen = BTreeSet::new();
    for c in clients {
        let r = c.join().unwrap().unwrap();
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.total as usize, N, "{r:?}");
        assert!(seen.insert(r.position), "position {} given twice", r.position);
        let node = report.nodes.iter().find(|n| n.name == r.name).expect("every client is in the report");
        assert_eq!(node.position, r.position as usize, "{r:?} vs {node:?}");
    }
    assert_eq!(seen, (1..=N as u32).collect());
    assert_all_ok(&report, N, len, &want);
    let names: BTreeSet<&str> = report.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names.len(), N, "node names must be distinct");
    for i in checked {
        assert_eq!(blake3_hex(&std::fs::read(file(i)).unwrap()), want, "node {i}'s copy differs");
    }
    assert!(started.elapsed() < BUDGET, "took {:?}", started.elapsed());
}

#[test]
fn four_sessions_at_once_on_one_host() {
    const SESSIONS: [&str; 4] = ["rack-a", "rack-b", "rack-c", "rack-d"];
    const N: usize = 8;
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let file = |s: &str, i: usize| dir.path().join(format!("{s}-{i}"));
    // Bind every server and start every client first, so that the sessions
    // really overlap: 4 lobbies filling at once, then 4 streams at once.
    let runs: Vec<_> = SESSIONS
        .iter()
        .enumerate()
        .map(|(k, &session)| {
            // A different length and content per session: a node fed the wrong
            // stream fails its hash and its length.
            let len = (k + 1) * 512 * 1024 + k * 7;
            let data = pattern(len, 100 + k as u64);
            let want = blake3_hex(&data);
            let server = Server::bind(loopback_server(session, N)).unwrap();
            let sinks = (0..N).map(|i| Sink::File(file(session, i))).collect();
            let clients = spawn_clients_named(session, server.control_addr(), sinks, |i| {
                format!("{session}-node{i:02}")
            });
            (session, len, want, server, clients, data)
        })
        .collect();
    let runs: Vec<_> = runs
        .into_iter()
        .map(|(session, len, want, server, clients, data)| {
            let handle =
                thread::spawn(move || server.run(Input::Reader(Box::new(std::io::Cursor::new(data)))));
            (session, len, want, handle, clients)
        })
        .collect();

    for (session, len, want, handle, clients) in runs {
        let report = handle.join().unwrap().unwrap();
        assert_eq!(report.session, session);
        for c in clients {
            let r = c.join().unwrap().unwrap();
            assert!(r.ok(), "{r:?}");
            assert_eq!(r.outcome.bytes, len as u64, "{r:?}");
            assert_eq!(r.total as usize, N, "{r:?}");
        }
        assert_all_ok(&report, N, len, &want);
        // Exactly this session's own nodes, none of another's.
        let names: BTreeSet<String> = report.nodes.iter().map(|n| n.name.clone()).collect();
        let own: BTreeSet<String> = (1..=N).map(|i| format!("{session}-node{i:02}")).collect();
        assert_eq!(names, own, "{}", report.render());
        for i in 0..N {
            let got = std::fs::read(file(session, i)).unwrap();
            assert_eq!(blake3_hex(&got), want, "{session} node {i}'s copy differs from its source");
        }
    }
    assert!(started.elapsed() < BUDGET, "took {:?}", started.elapsed());
}
