//! Embedding kacast in another program: a deployer that broadcasts a stream to
//! its nodes in-process, then reads the per-node report instead of parsing output.
//!
//! Here the "nodes" are three clients on loopback writing to files in a temporary
//! directory; in a real deployer they run on the nodes (`kacast client` from the
//! initrd, or `Client` in an agent) and only the server part lives in the program.
//!
//! Run with `cargo run --example embed`.

use std::io::Cursor;
use std::thread;

use kacast::chain::Sink;
use kacast::session::{Client, ClientConfig, Input, Server, ServerConfig};

fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("kacast-embed-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    // The server side: a session of three nodes, on loopback, no broadcast.
    // (A real deployment starts from `ServerConfig::new` and listens on the rack.)
    let mut config = ServerConfig::loopback("embedded");
    config.nodes = Some(3);
    let server = Server::bind(config)?;
    let addr = server.control_addr();

    // The node side, normally on other machines.
    let nodes: Vec<_> = (1..=3)
        .map(|i| {
            let sink = Sink::File(dir.join(format!("node{i}.img")));
            let client = Client::bind(ClientConfig::loopback("embedded", addr, &format!("node{i}"), sink))?;
            Ok(thread::spawn(move || client.run()))
        })
        .collect::<anyhow::Result<_>>()?;

    // Any `Read` can be the stream: a file, a decompressor, a generated image.
    let image = b"pretend this is a filesystem image\n".repeat(100_000);
    let report = server.run(Input::Reader(Box::new(Cursor::new(image))))?;
    for n in nodes {
        n.join().expect("node thread")?;
    }

    for node in &report.nodes {
        println!("{:<6} {:>9} bytes  {}", node.name, node.bytes, if node.ok() { "ok" } else { "FAILED" });
    }
    println!("exit code a wrapper would return: {}", report.exit_code());
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
