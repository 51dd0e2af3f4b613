//! Shared helpers for the integration tests.
#![allow(dead_code)]

pub mod disks;
pub mod fidelity;
pub mod tree;
pub mod vm;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::thread::{self, JoinHandle};

use kacast::chain::Sink;
use kacast::session::{Client, ClientConfig, ClientReport, ServerConfig};

/// Set by `.ci/run`: a test that would skip (no root, a missing tool) fails instead.
pub const REQUIRE_ENV: &str = "KACAST_REQUIRE_ALL_TESTS";

/// Skips the calling test with a printed reason, or fails it when CI demands that
/// every test really runs. Use as `if let Some(why) = ... { return skip(why); }`.
pub fn skip(why: &str) {
    if std::env::var_os(REQUIRE_ENV).is_some_and(|v| v != "0") {
        panic!("{REQUIRE_ENV} is set but this test cannot run: {why}");
    }
    eprintln!("SKIPPED: {why}");
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `None` when `tool` is on PATH, else why the test cannot run.
pub fn missing_tool(tool: &str) -> Option<String> {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output();
    match found {
        Ok(o) if o.status.success() => None,
        _ => Some(format!("'{tool}' is not installed")),
    }
}

/// A server config for loopback tests: no discovery, any free port.
pub fn loopback_server(session: &str, nodes: usize) -> ServerConfig {
    let mut c = ServerConfig::loopback(session);
    c.nodes = Some(nodes);
    c
}

pub fn loopback_client(session: &str, server: SocketAddr, name: &str, sink: Sink) -> ClientConfig {
    ClientConfig::loopback(session, server, name, sink)
}

/// Starts one client per sink on its own thread, named node01, node02…
pub fn spawn_clients(
    session: &str,
    server: SocketAddr,
    sinks: Vec<Sink>,
) -> Vec<JoinHandle<kacast::Result<ClientReport>>> {
    spawn_clients_named(session, server, sinks, |i| format!("node{i:02}"))
}

/// As [`spawn_clients`], node `i` (from 1) named `name(i)`.
pub fn spawn_clients_named(
    session: &str,
    server: SocketAddr,
    sinks: Vec<Sink>,
    name: impl Fn(usize) -> String,
) -> Vec<JoinHandle<kacast::Result<ClientReport>>> {
    sinks
        .into_iter()
        .enumerate()
        .map(|(i, sink)| {
            let client =
                Client::bind(loopback_client(session, server, &name(i + 1), sink)).expect("client binds");
            thread::spawn(move || client.run())
        })
        .collect()
}

/// `len` reproducible incompressible bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    std::io::Read::read_to_end(&mut kacast::demo::Pattern::new(seed, len as u64), &mut v).unwrap();
    v
}

pub fn kacast_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kacast"))
}

pub fn blake3_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}
