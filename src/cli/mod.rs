//! The `kacast` binary: argument parsing, logging, progress and exit codes over
//! the library. Nothing here that another program embedding kacast would need.

mod args;
mod boot;
mod clone;
mod interrupt;
mod lab;
mod progress;
mod pxe;

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use kacast::auth::Key;
use kacast::chain::{ChunkSize, ImageSink, Sink};
use kacast::demo::{self, DemoConfig};
use kacast::disk::Desc;
use kacast::session::{self, Client, ClientConfig, Input, Server, ServerConfig};
use kacast::size::human;
use kacast::size::parse_size;

use args::{Cli, ClientArgs, Cmd, DemoArgs, DescArgs, Locate, ServeArgs, ServerArgs, StatusArgs};

/// Ends the process with the command's exit code; a signal being handled
/// ends it instead, once its cleanup is done.
pub fn exit(code: i32) -> ! {
    interrupt::exit(code)
}

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    // Installed as (or linked to) `kascade` or `kastafior`: Kadeploy3 runs
    // kacast as its broadcast tool with their command lines.
    let argv: Vec<String> = std::env::args().collect();
    let invoked_as = argv.first().and_then(|a| std::path::Path::new(a).file_name()).and_then(|n| n.to_str());
    match invoked_as {
        Some("kascade") => return kascade(&argv[1..]),
        Some("kastafior") => return kastafior(&argv[1..]),
        _ => {}
    }
    // Their command lines whole: kacast's own -v/-h must not take theirs.
    match argv.get(1).map(String::as_str) {
        Some("kascade") => return kascade(&argv[2..]),
        Some("kastafior") => return kastafior(&argv[2..]),
        _ => {}
    }
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let result = match cli.command {
        Cmd::Server(a) => server(a),
        Cmd::Client(a) => client(a),
        Cmd::Go(a) => go(a.locate),
        Cmd::Demo(a) => run_demo(a),
        Cmd::Desc(a) => desc(a),
        Cmd::Clone(a) => clone::run_clone(a),
        Cmd::Install(a) => clone::run_install(a),
        Cmd::Capture(a) => clone::run_capture(a),
        Cmd::Kascade(a) => return kascade(&a.args),
        Cmd::Kastafior(a) => return kastafior(&a.args),
        Cmd::Pxe(a) => pxe::run(a),
        Cmd::Status(a) => status(a),
        Cmd::Lab(a) => lab::run(a),
        Cmd::Initrd(a) => boot::run_initrd(a),
        Cmd::Stage2(a) => boot::run_stage2(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // An error that a signal's cleanup caused is not news.
            interrupt::settle();
            eprintln!("kacast: {e:#}");
            1
        }
    }
}

/// Kascade's command line: a bad one still leaves every node it names in
/// the ko file, because Kadeploy reads both files whatever the exit status.
fn kascade(argv: &[String]) -> i32 {
    let full = std::iter::once("kascade".to_string()).chain(argv.iter().cloned());
    match kacast::kascade::KascadeArgs::parse_from(full.clone()) {
        Ok(args) => {
            let level = args.tracing_level().map(|l| l.to_string().to_lowercase()).unwrap_or("info".into());
            init_logging_at(&level);
            kacast::kascade::run(&args)
        }
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            let _ = e.print();
            0
        }
        Err(e) => {
            let _ = e.print();
            let s = kacast::kascade::salvage(full);
            kacast::kascade::write_all_ko(
                &s.nodes,
                &format!("bad kascade command line: {}", e.kind()),
                s.ok.as_deref(),
                s.ko.as_deref(),
            );
            1
        }
    }
}

fn kastafior(argv: &[String]) -> i32 {
    init_logging_at("info");
    kacast::kascade::kastafior(argv)
}

fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    init_logging_at(level);
}

fn init_logging_at(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KACAST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // The status layer sends an install's log lines to the golden node
    // (only while `kacast install` has a status connection).
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    // Colours only for a person at a terminal: a log file or Kadeploy's
    // capture of our stderr gets plain text to read and grep.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).with_ansi(ansi),
        )
        .with(kacast::session::StatusLayer)
        .try_init()
        .ok();
}

/// `kacast status DIR`: the table of an install's nodes, or one node's log.
fn status(a: StatusArgs) -> Result<i32> {
    if let Some(node) = a.node {
        let path = a.dir.join(format!("{node}.log"));
        let log = std::fs::read_to_string(&path).with_context(|| format!("no log of node '{node}'"))?;
        print!("{log}");
        return Ok(0);
    }
    let views = session::status::read_board(&a.dir)?;
    if views.is_empty() {
        bail!("{}: no node has reported its status here yet", a.dir.display());
    }
    println!("{}", session::status::render(&views, session::status::now()));
    let failed = views.iter().any(|v| v.state == "failed" || v.state == "lost");
    Ok(if failed { 2 } else { 0 })
}

/// `--chunk auto|SIZE`.
fn chunk_size(arg: &str) -> Result<ChunkSize> {
    if arg == "auto" {
        return Ok(ChunkSize::Auto);
    }
    let size =
        usize::try_from(parse_size(arg).with_context(|| format!("--chunk {arg}: not auto or a size"))?)
            .context("--chunk is too large")?;
    if size < 1024 {
        bail!("--chunk {arg}: chunks under 1K cost more in frames than they save");
    }
    Ok(ChunkSize::Fixed(size))
}

fn seconds(v: f64, option: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(v).with_context(|| format!("invalid {option} {v}"))
}

fn buffer(s: &str) -> Result<usize> {
    usize::try_from(parse_size(s)?).context("--buffer is too large")
}

fn server(a: ServerArgs) -> Result<i32> {
    let input = match (a.exec, a.input.as_deref()) {
        (Some(_), None) if a.sparse => {
            bail!("--sparse needs --input FILE: a sparse image is read from a file or device")
        }
        (Some(cmd), None) => Input::Command(cmd),
        (None, Some("-")) if a.sparse => {
            bail!("--sparse needs --input FILE: a sparse image is read from a file or device")
        }
        (None, Some("-")) => Input::Stdin,
        (None, Some(path)) => kacast::clone::image_input(path.into(), a.sparse, None),
        (None, None) => bail!("nothing to stream: give -e CMD or -i FILE (or -i - for stdin)"),
        (Some(_), Some(_)) => unreachable!("clap refuses -e with -i"),
    };
    if a.nodes.is_none() && a.start_after.is_none() {
        eprintln!("kacast: no -n or --start-after: waiting for `kacast go -s {}`", a.session);
    }
    let mut c = ServerConfig::new(a.session);
    c.nodes = a.nodes;
    c.min_nodes = a.min;
    c.start_after = a.start_after.map(|s| seconds(s, "--start-after")).transpose()?;
    serve(&a.serve, &mut c)?;
    c.buffer = buffer(&a.buffer)?;
    c.chunk = chunk_size(&a.chunk)?;
    c.max_rate = a.max_rate.as_deref().map(parse_size).transpose()?;
    c.slow_after = Some(seconds(a.slow_after, "--slow-after")?).filter(|d| !d.is_zero());
    let server = Server::bind(c)?;
    let stats = server.stats();
    let (done, watching) = std::sync::mpsc::channel();
    let watcher = std::thread::spawn(move || progress::watch(stats, watching));
    let report = server.run(input);
    drop(done);
    let _ = watcher.join();
    let report = report?;
    println!("{}", report.render());
    if let Some(p) = &a.ok {
        report.write_ok(p)?;
    }
    if let Some(p) = &a.ko {
        report.write_ko(p)?;
    }
    if let Some(p) = &a.report {
        report.write_json(p)?;
    }
    Ok(report.exit_code())
}

/// What `kacast server` and `kacast clone` share: how a session is served.
fn serve(s: &ServeArgs, c: &mut ServerConfig) -> Result<()> {
    c.order = s.order.parse()?;
    c.arity = s.arity;
    c.key = key(s.key_file.as_deref(), false)?;
    c.control_port = s.port;
    c.bind = s.bind;
    c.discovery_port = (!s.no_discovery).then_some(s.discovery_port);
    c.timeout = seconds(s.timeout, "--timeout")?;
    // The name is checked with the rest of the configuration, by the library.
    c.congestion = Some(s.congestion.clone()).filter(|name| name != "system");
    Ok(())
}

fn locate_config(l: &Locate, sink: Sink) -> Result<ClientConfig> {
    let mut c = ClientConfig::new(l.session.clone(), sink);
    c.server = l.server.as_deref().map(str::parse).transpose()?;
    c.tries = l.tries;
    c.retry_interval = seconds(l.retry_interval, "--retry-interval")?;
    c.discovery_port = l.discovery_port;
    c.key = key(l.key_file.as_deref(), l.key_from_cmdline)?;
    Ok(c)
}

/// The session key from `--key-file` or `--key-from-cmdline`, if any.
fn key(file: Option<&std::path::Path>, from_cmdline: bool) -> Result<Option<Key>> {
    Ok(match (file, from_cmdline) {
        (Some(path), _) => Some(Key::from_file(path)?),
        (None, true) => {
            let cmdline = std::fs::read_to_string("/proc/cmdline").context("read /proc/cmdline")?;
            match Key::from_cmdline(&cmdline) {
                Some(key) => Some(key?),
                None => bail!("--key-from-cmdline: no kacast.key= on the kernel command line"),
            }
        }
        (None, false) => None,
    })
}

fn client(a: ClientArgs) -> Result<i32> {
    if a.sparse && a.to_file.is_none() {
        bail!("--sparse needs --to-file PATH: a sparse image is written to a file or device");
    }
    let sink = if let Some(cmd) = a.exec {
        Sink::Command(cmd)
    } else if let Some(dir) = a.to_dir {
        Sink::Dir(dir)
    } else if let Some(path) = a.to_file {
        Sink::Image(ImageSink { path, sparse: a.sparse, decompress: None })
    } else {
        Sink::Discard
    };
    let mut c = locate_config(&a.locate, sink)?;
    if let Some(name) = a.name {
        c.name = name;
    }
    // The sink command can tell which node it runs for (hosts that share a
    // filesystem, per-node paths): still one thread here, nothing reads the
    // environment concurrently.
    std::env::set_var("KACAST_NODE", &c.name);
    c.buffer = buffer(&a.buffer)?;
    c.bind = a.bind;
    c.data_port = a.data_port;
    c.timeout = seconds(a.timeout, "--timeout")?;
    let report = Client::bind(c)?.run()?;
    let o = &report.outcome;
    if report.ok() {
        eprintln!(
            "Total data received = {:.1} MB in {:.1} s ({:.1} MB/s), hash verified; position {}/{}",
            o.bytes as f64 / 1e6,
            report.duration.as_secs_f64(),
            o.bytes as f64 / 1e6 / report.duration.as_secs_f64().max(1e-3),
            report.position,
            report.total
        );
        Ok(0)
    } else {
        eprintln!("kacast: node '{}' failed: {}", report.name, o.error.as_deref().unwrap_or("hash mismatch"));
        Ok(1)
    }
}

fn go(l: Locate) -> Result<i32> {
    session::go(&locate_config(&l, Sink::Discard)?)?;
    eprintln!("session '{}' told to start", l.session);
    Ok(0)
}

fn desc(a: DescArgs) -> Result<i32> {
    if let Some(path) = a.check {
        let desc = Desc::from_file(&path)?;
        let size = parse_size(a.disk_size.as_deref().unwrap_or_default())?;
        let layout =
            desc.layout(size).with_context(|| format!("{} on a disk of {}", path.display(), human(size)))?;
        println!("{}: valid; on a disk of {}:", path.display(), human(size));
        println!("{}", layout.render_table());
        return Ok(0);
    }
    let device = a.device.expect("clap requires a device or --check");
    let json = kacast::disk::blockdev::table_json_of(&device)?;
    let desc = Desc::from_sfdisk_json(&json)?;
    println!("# desc of {}, by kacast desc", device.display());
    print!("{desc}");
    Ok(0)
}

fn run_demo(a: DemoArgs) -> Result<i32> {
    let size = parse_size(&a.size)?;
    eprintln!(
        "kacast demo: a server and {} nodes on loopback, streaming {} of generated data",
        a.nodes,
        kacast::size::human(size)
    );
    let keep = a.keep.clone();
    interrupt::on_interrupt("kacast demo", move || match keep {
        Some(d) => format!("the copies so far stay in {} (--keep)", d.display()),
        None => match demo::remove_temp_dirs().as_slice() {
            [] => "nothing was left".to_string(),
            dirs => format!(
                "removed {}",
                dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
        },
    })?;
    let outcome = demo::run(
        DemoConfig { nodes: a.nodes, size, arity: a.arity, buffer: buffer(&a.buffer)?, dir: a.keep },
        progress::watch,
    );
    interrupt::settle();
    let outcome = outcome?;
    println!("{}", outcome.report.render());
    let bad: Vec<&str> = outcome.verified.iter().filter(|(_, ok)| !ok).map(|(n, _)| n.as_str()).collect();
    if bad.is_empty() {
        println!("Every copy re-read from {} matches the source hash.", outcome.dir.display());
        Ok(outcome.report.exit_code())
    } else {
        println!("Copies that do NOT match the source: {}", bad.join(", "));
        Ok(1)
    }
}
