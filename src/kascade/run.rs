//! A Kascade run on kacast's chain: the master serves one session, an agent
//! is started on every node through the launcher, and every node ends up in
//! exactly one of the ok and ko files, even when the run fails early.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use tracing::{info, warn};

use super::args::{KascadeArgs, Launcher as Kind};
use super::results::{write_all_ko, Outcome};
use crate::chain::Sink;
use crate::launch::{client_args, route_address, Agent, LaunchConfig, Launcher};
use crate::session::{Client, ClientConfig, Input, Order, Server, ServerConfig, SessionReport};
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
    config.order = Order::List(nodes.to_vec());
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
    let server = Server::bind(config).map_err(|e| e.to_string())?;
    let port = server.control_addr().port();
    let launches = launches(args, nodes, &session, port)?;
    let here = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port);
    // The agents start while the session already serves: a node that answers
    // late (or never) must not keep the others' hellos waiting.
    std::thread::scope(|s| {
        let watchers: Vec<_> = launches
            .agents
            .iter()
            .map(|a| {
                let (cfg, session) = (&launches.config, &session);
                s.spawn(move || {
                    let agent = crate::launch::start(&a.target, &a.argv, cfg).map_err(|e| e.to_string());
                    watch_agent(here, session, a.node.clone(), agent)
                })
            })
            .collect();
        let report = server.run(input).map_err(|e| e.to_string());
        let launch_errors: Vec<(String, String)> =
            watchers.into_iter().filter_map(|w| w.join().ok().flatten()).collect();
        Ok(outcome(&report?, launch_errors))
    })
}

/// The agents to start.
struct Launches {
    config: LaunchConfig,
    agents: Vec<AgentLaunch>,
}

/// One agent: the node as listed (its name in the report), where the
/// connector reaches it, and the agent's arguments.
struct AgentLaunch {
    node: String,
    target: String,
    argv: Vec<String>,
}

/// The agents to start, each told the master's address on its own route.
fn launches(args: &KascadeArgs, nodes: &[String], session: &str, port: u16) -> Result<Launches, String> {
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
    let config = LaunchConfig::new(launcher.connector().unwrap_or_default());
    if launcher == Launcher::None {
        info!("-D none: nodes join session '{session}' on port {port} by themselves");
        return Ok(Launches { config, agents: Vec::new() });
    }
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
    let agents = nodes
        .iter()
        .map(|node| AgentLaunch {
            node: node.clone(),
            target: ssh_target(&host_of(node), use_ips),
            argv: agent_args(node),
        })
        .collect();
    Ok(Launches { config, agents })
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

/// Waits for one agent. One that could not be started, or ended without
/// joining (an unreachable node, a missing shell), is reported to the session
/// in its name, so the session stops waiting for it and lists it ko with the
/// launcher's reason. Returns that reason.
fn watch_agent(
    server: SocketAddr,
    session: &str,
    node: String,
    agent: Result<Agent, String>,
) -> Option<(String, String)> {
    let why = match agent {
        Ok(a) => a.wait().reason()?,
        Err(why) => why,
    };
    let mut c = ClientConfig::loopback(session, server, &node, Sink::Discard);
    c.tries = 1;
    // Refused when the node did join (its own report stands) or the session is over: either is fine.
    if let Ok(client) = Client::bind(c) {
        let _ = client.report_only(Err(why.clone()));
    }
    Some((node, why))
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
