//! A Rust deployer broadcasting to remote nodes in-process: its own server,
//! with kacast agents started on the nodes over SSH by `kacast::launch` —
//! what `kacast kascade` does, without going through a command line.
//!
//! `cargo run --example broadcast -- FILE NODE… ` streams FILE to every NODE
//! (reachable with `ssh NODE`), where each agent writes it to
//! /tmp/kacast-broadcast.out; the per-node result comes back as data.

use std::net::SocketAddr;

use kacast::launch::{client_args, route_address, start, LaunchConfig};
use kacast::session::{Input, Server, ServerConfig};

fn main() -> anyhow::Result<()> {
    let mut argv = std::env::args().skip(1);
    let file = argv.next().ok_or_else(|| anyhow::anyhow!("usage: broadcast FILE NODE…"))?;
    let nodes: Vec<String> = argv.collect();

    // Port 0 and a session of our own: runs from one host never clash.
    let session = format!("broadcast-{}", std::process::id());
    let mut config = ServerConfig::new(session.clone());
    config.nodes = Some(nodes.len());
    config.control_port = Some(0);
    config.discovery_port = None;
    let server = Server::bind(config)?;
    let port = server.control_addr().port();

    // One agent per node, told where we are on its route and who it is; the
    // launcher copies kacast to nodes that lack it and ties each agent's life
    // to its SSH session.
    let launch = LaunchConfig::default();
    let sink = ["--to-file".to_string(), "/tmp/kacast-broadcast.out".to_string()];
    let mut agents = Vec::new();
    for node in &nodes {
        let master = SocketAddr::new(route_address(node)?, port);
        agents.push(start(node, &client_args(&session, master, node, &sink), &launch)?);
    }

    let report = server.run(Input::File(file.into()))?;
    for agent in agents {
        let _ = agent.wait();
    }
    for n in &report.nodes {
        println!("{}: {}", n.name, if n.ok() { "ok".to_string() } else { format!("{:?}", n.error) });
    }
    std::process::exit(report.exit_code());
}
