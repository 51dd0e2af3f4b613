//! A Kascade run on kacast's chain: the master serves one session, an agent
//! is started on every node through the launcher, and every node ends up in
//! exactly one of the ok and ko files, even when the run fails early.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use tracing::{info, warn};

use super::args::{KascadeArgs, Launcher as Kind};
use super::results::{write_all_ko, Outcome};
use crate::launch::{client_args, route_address, Agent, LaunchConfig, Launcher};
use crate::session::{Input, Order, Server, ServerConfig, SessionReport};
use crate::size::parse_size;

/// How long the master waits for the agents to join after starting them:
/// long enough to copy the agent to a slow node (the launcher's own limit is
/// 300 s per node, most of which a live node never needs).
pub const JOIN_WINDOW: Duration = Duration::from_secs(120);

/// Runs Kascade's command line; returns Kascade's exit code (0 all nodes ok,
/// 2 some, 1 none) and has written `--ok`/`--ko` whatever happened.
pub fn run(args: &KascadeArgs) -> i32 {
    let input = match args.input.as_str() {
        "-" => Input::Stdin,
        path if Path::new(path).is_file() => Input::File(path.into()),
        path => return fail_all(args, &node_names(args), &format!("input {path}: no such file")),
    };
    run_with_input(args, input)
}

fn node_names(args: &KascadeArgs) -> Vec<String> {
    args.all_nodes().map(|n| n.iter().map(ToString::to_string).collect()).unwrap_or_default()
}

/// As [`run`], streaming `input` instead of `-i` (Kastafior's `-s CMD`).
pub fn run_with_input(args: &KascadeArgs, input: Input) -> i32 {
    for w in &args.warnings {
        warn!("{w}");
    }
    let nodes: Vec<String> = match args.all_nodes() {
        Ok(n) if !n.is_empty() => n.iter().map(ToString::to_string).collect(),
        Ok(_) => return fail_all(args, &[], "no node given (-n NODEFILE or -N n1,n2)"),
        Err(e) => return fail_all(args, &[], &e.to_string()),
    };
    match serve(args, &nodes, input) {
        Ok(outcome) => {
            let outcome = outcome.complete(&nodes, "never joined the chain");
            write(args, &outcome);
            outcome.exit_code()
        }
        Err(why) => fail_all(args, &nodes, &why),
    }
}

fn fail_all(args: &KascadeArgs, nodes: &[String], why: &str) -> i32 {
    eprintln!("kascade: {why}");
    write_all_ko(nodes, why, args.ok.as_deref(), args.ko.as_deref());
    1
}

fn write(args: &KascadeArgs, outcome: &Outcome) {
    let files = [(args.ok.as_deref(), true), (args.ko.as_deref(), false)];
    for (path, ok) in files {
        let Some(path) = path else { continue };
        let written = if ok { outcome.write_ok(path) } else { outcome.write_ko(path) };
        if let Err(e) = written {
            warn!("cannot write {}: {e}", path.display());
        }
    }
}

/// The session this run serves; unique per master process, so that two runs
/// from one master never take each other's agents.
fn session_name() -> String {
    format!("kascade-{}", std::process::id())
}

fn serve(args: &KascadeArgs, nodes: &[String], input: Input) -> Result<Outcome, String> {
    let session = session_name();
    let mut config = ServerConfig::new(session.clone());
    config.nodes = Some(nodes.len());
    config.min_nodes = 1;
    config.start_after = Some(JOIN_WINDOW);
    // Kascade's chain follows the node list (sorted with -s).
    let order_file = std::env::temp_dir().join(format!("{session}.nodes"));
    std::fs::write(&order_file, nodes.join("\n")).map_err(|e| format!("{}: {e}", order_file.display()))?;
    config.order = Order::File(order_file.clone());
    config.arity = args.arity();
    config.discovery_port = None;
    // Port 0 unless asked: two runs from one master never clash (Kascade's
    // --adjust-port, always).
    config.control_port = Some(args.port.unwrap_or(0));
    if let Some(t) = args.timeout {
        config.timeout = Duration::try_from_secs_f64(t.max(1.0)).map_err(|e| format!("-t {t}: {e}"))?;
    }
    if let Some(b) = &args.buffer {
        // Kascade's -b is its read size; kacast's buffer must hold at least two chunks.
        let bytes = parse_size(b).map_err(|e| format!("-b {b}: {e}"))?;
        config.buffer = config.buffer.max(usize::try_from(bytes).unwrap_or(usize::MAX));
    }
    let server = Server::bind(config).map_err(|e| e.to_string());
    let _ = std::fs::remove_file(&order_file);
    let server = server?;
    let port = server.control_addr().port();
    let agents = launch(args, nodes, &session, port)?;
    let report = server.run(input).map_err(|e| e.to_string());
    let launch_errors = finish_agents(agents);
    let report = report?;
    Ok(outcome(&report, launch_errors))
}

/// A node and its agent, or why the agent could not be started.
type Started = (String, Result<Agent, String>);

/// Starts the agents, each told the master's address on its own route.
fn launch(args: &KascadeArgs, nodes: &[String], session: &str, port: u16) -> Result<Vec<Started>, String> {
    let kind = match args.launcher {
        Kind::Ssh | Kind::Clush => "ssh",
        Kind::Taktuk => "taktuk",
        Kind::None => "none",
    };
    let launcher = Launcher::parse(
        kind,
        args.ssh.as_deref().unwrap_or(""),
        args.launcher_params.as_deref().unwrap_or(""),
    )
    .map_err(|e| e.to_string())?;
    if launcher == Launcher::None {
        info!("-D none: nodes join session '{session}' on port {port} by themselves");
        return Ok(Vec::new());
    }
    let cfg = LaunchConfig::new(launcher.connector().unwrap_or_default());
    let sink = match (&args.command, &args.output) {
        (Some(cmd), _) => vec!["-e".to_string(), cmd.clone()],
        (None, Some(file)) => vec!["--to-file".to_string(), file.display().to_string()],
        (None, None) => vec!["--discard".to_string()],
    };
    let timeout = args.timeout.unwrap_or(5.0).max(1.0).to_string();
    let master = args.master.clone();
    let use_ips = args.use_ips;
    let agent_args = |node: &str| {
        let host = host_of(node);
        let ip = master_ip(master.as_deref(), &host);
        let mut extra =
            vec!["--timeout".to_string(), timeout.clone(), "--tries".to_string(), "30".to_string()];
        if let Some(p) = port_of(node) {
            extra.extend(["--data-port".to_string(), p.to_string()]);
        }
        extra.extend(sink.iter().cloned());
        client_args(session, SocketAddr::new(ip, port), node, &extra)
    };
    if let Launcher::Taktuk { .. } = launcher {
        info!("-D taktuk: each agent is started through its own connector (TakTuk's tree is not used)");
    }
    // All at once: a node that has to be copied the agent, or does not
    // answer, must not hold up the others.
    let started = std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|node| {
                let (cfg, agent_args) = (&cfg, &agent_args);
                s.spawn(move || {
                    let target = ssh_target(&host_of(node), use_ips);
                    crate::launch::start(&target, &agent_args(node), cfg).map_err(|e| e.to_string())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("launcher thread panicked".into())))
            .collect::<Vec<_>>()
    });
    Ok(nodes.iter().cloned().zip(started).collect())
}

fn host_of(node: &str) -> String {
    match node.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() && !h.ends_with(':') => {
            h.trim_matches(['[', ']']).to_string()
        }
        _ => node.to_string(),
    }
}

fn port_of(node: &str) -> Option<u16> {
    node.rsplit_once(':').and_then(|(h, p)| (!h.ends_with(':')).then(|| p.parse().ok()).flatten())
}

/// `-I`: connect to the node's address rather than its name.
fn ssh_target(host: &str, use_ips: bool) -> String {
    if !use_ips {
        return host.to_string();
    }
    (host, 22)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .map(|a| a.ip().to_string())
        .unwrap_or(host.into())
}

/// Where the agent on `host` reaches the master: `-m`, else this host's
/// address on the route to the node.
fn master_ip(master: Option<&str>, host: &str) -> IpAddr {
    if let Some(m) = master {
        if let Some(a) = (m, 0).to_socket_addrs().ok().and_then(|mut a| a.next()) {
            return a.ip();
        }
    }
    route_address(host).unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// Waits for every agent; returns why each failed one failed.
fn finish_agents(agents: Vec<Started>) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    for (node, agent) in agents {
        match agent {
            Ok(a) => {
                let exit = a.wait();
                if let Some(why) = exit.reason() {
                    errors.push((node, why));
                }
            }
            Err(why) => errors.push((node, why)),
        }
    }
    errors
}

/// The session's report, with the launcher's errors for nodes that never
/// reported (an unreachable node's ssh message says more than "missing").
fn outcome(report: &SessionReport, launch_errors: Vec<(String, String)>) -> Outcome {
    let mut ok = Vec::new();
    let mut ko = Vec::new();
    for n in &report.nodes {
        if n.ok() {
            ok.push(n.name.clone());
        } else {
            let why = n.error.clone().unwrap_or_else(|| "stream hash mismatch".into());
            ko.push((n.name.clone(), why));
        }
    }
    for (node, why) in launch_errors {
        if !report.nodes.iter().any(|n| n.name == node) {
            ko.push((node, why));
        }
    }
    Outcome { ok, ko }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_split_into_host_and_port() {
        assert_eq!((host_of("n1:3000"), port_of("n1:3000")), ("n1".to_string(), Some(3000)));
        assert_eq!((host_of("n1"), port_of("n1")), ("n1".to_string(), None));
        assert_eq!(host_of("[fe80::1]:3000"), "fe80::1");
        assert_eq!(port_of("fe80::1"), None);
    }
}
