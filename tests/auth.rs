//! Keyed sessions: only holders of the key join, and a recorded handshake
//! cannot be replayed. (Altered, injected and dropped frames are refused by the
//! connection itself: see the unit tests in src/connection.rs.)

mod common;

use std::io::{Cursor, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::*;
use kacast::auth::Key;
use kacast::chain::Sink;
use kacast::session::{Client, Input, Server};
use kacast::Error;

fn key(secret: &str) -> Option<Key> {
    Some(Key::from_secret(secret.as_bytes()).unwrap())
}

fn keyed_server(session: &str, n: usize, secret: Option<&str>) -> Server {
    let mut c = loopback_server(session, n);
    c.key = secret.and_then(key);
    Server::bind(c).unwrap()
}

fn keyed_client(session: &str, addr: SocketAddr, name: &str, secret: Option<&str>) -> Client {
    let mut c = loopback_client(session, addr, name, Sink::Discard);
    c.key = secret.and_then(key);
    c.tries = 1;
    Client::bind(c).unwrap()
}

fn data() -> Vec<u8> {
    (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn a_keyed_session_delivers_to_key_holders() {
    let server = keyed_server("keyed", 3, Some("s3cret"));
    let addr = server.control_addr();
    let clients: Vec<_> = (1..=3)
        .map(|i| {
            let c = keyed_client("keyed", addr, &format!("n{i}"), Some("s3cret"));
            thread::spawn(move || c.run())
        })
        .collect();
    let report = server.run(Input::Reader(Box::new(Cursor::new(data())))).unwrap();
    for c in clients {
        assert!(c.join().unwrap().unwrap().ok());
    }
    assert_eq!(report.exit_code(), 0, "{}", report.render());
    assert_eq!(report.hash.unwrap(), blake3_hex(&data()));
}

/// Runs one stranger against a keyed (or keyless) session of one good node,
/// returns the stranger's error; the good node must still be served.
fn stranger(server_secret: Option<&str>, good_secret: Option<&str>, their_secret: Option<&str>) -> Error {
    let server = keyed_server("guarded", 1, server_secret);
    let addr = server.control_addr();
    let run = thread::spawn(move || server.run(Input::Reader(Box::new(Cursor::new(data())))));
    let intruder = keyed_client("guarded", addr, "intruder", their_secret);
    let err = intruder.run().expect_err("the stranger must be refused");
    let good = keyed_client("guarded", addr, "good", good_secret);
    let good = thread::spawn(move || good.run());
    let report = run.join().unwrap().unwrap();
    assert!(good.join().unwrap().unwrap().ok());
    let names: Vec<&str> = report.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["good"], "the stranger must not be a node of the session");
    err
}

#[test]
fn a_wrong_key_is_refused() {
    let e = stranger(Some("right"), Some("right"), Some("wrong")).to_string();
    assert!(e.contains("does not hold this node's key"), "{e}");
}

#[test]
fn no_key_is_refused_by_a_keyed_session() {
    let e = stranger(Some("right"), Some("right"), None).to_string();
    assert!(e.contains("this session requires a key"), "{e}");
}

#[test]
fn a_keyed_node_refuses_a_keyless_server() {
    let e = stranger(None, None, Some("mine")).to_string();
    assert!(e.contains("this server has no key but the node has one"), "{e}");
}

#[test]
fn a_recorded_handshake_cannot_be_replayed() {
    let server = keyed_server("replay", 2, Some("k"));
    let stats = server.stats();
    let real = server.control_addr();
    // A recording proxy between a genuine node and the server.
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let recorded = Arc::new(Mutex::new(Vec::new()));
    {
        let recorded = Arc::clone(&recorded);
        thread::spawn(move || {
            let (mut node, _) = proxy.accept().unwrap();
            let mut upstream = TcpStream::connect(real).unwrap();
            let (mut n2, mut u2) = (node.try_clone().unwrap(), upstream.try_clone().unwrap());
            thread::spawn(move || {
                let _ = std::io::copy(&mut u2, &mut n2);
            });
            let mut buf = [0u8; 4096];
            while let Ok(n) = node.read(&mut buf) {
                if n == 0 {
                    break;
                }
                recorded.lock().unwrap().extend_from_slice(&buf[..n]);
                if upstream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
    let run = thread::spawn(move || server.run(Input::Reader(Box::new(Cursor::new(data())))));
    let genuine = keyed_client("replay", proxy_addr, "genuine", Some("k"));
    let genuine = thread::spawn(move || genuine.run());
    let joined = (0..500).any(|_| {
        thread::sleep(Duration::from_millis(10));
        stats.joined.load(std::sync::atomic::Ordering::Relaxed) == 1
    });
    assert!(joined, "the genuine node never joined through the proxy");

    // Replay its hello and proof on a new connection.
    let replay = recorded.lock().unwrap().clone();
    let mut s = TcpStream::connect(real).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&replay).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let refusal = String::from_utf8_lossy(&answer);
    assert!(refusal.contains("wrong key, or a replayed handshake"), "server answered {answer:?}");
    assert_eq!(stats.joined.load(std::sync::atomic::Ordering::Relaxed), 1, "the replay must not join");

    let second = keyed_client("replay", real, "second", Some("k"));
    let second = thread::spawn(move || second.run());
    let report = run.join().unwrap().unwrap();
    assert!(genuine.join().unwrap().unwrap().ok());
    assert!(second.join().unwrap().unwrap().ok());
    assert_eq!(report.nodes.len(), 2);
    assert_eq!(report.exit_code(), 0);
}
