//! Kascade's command line, as Kadeploy3 and people's scripts type it.
//!
//! The option list is Kascade v1.5's (addons/kascade/kascade in Kadeploy 3.3),
//! plus the options of its earlier revisions that were renamed or dropped
//! (`-A`, `--check-md5`, `-f`, `--nodefile`...), since a drop-in must not fail
//! on a site's old `kascade_options`. Options that drive Kascade internals kacast
//! does not have are parsed and ignored with a warning, never rejected: a
//! rejected option would turn a whole deployment KO. Long options may be
//! shortened to any unambiguous prefix (`--node-f`), as Ruby's OptionParser allowed.
//!
//! | option | Kascade | here |
//! |---|---|---|
//! | `-i FILE\|-` | input, `-` for stdin | [`KascadeArgs::input`] |
//! | `-o FILE` / `-O CMD` | nodes write the stream to FILE / feed CMD (last wins) | `output`, `command` |
//! | `-n FILE`, `-N LIST` | node file, list `n1[:port],n2` | `node_file`, `nodes`, see `all_nodes` |
//! | `-k/--ok`, `-K/--ko` | result files | `ok`, `ko` |
//! | `-m HOST` | the master's name or address as the nodes reach it | `master` |
//! | `-S CMD` | connector used to start the agents | `ssh` |
//! | `-I`, `--[no-]use-ip` | without `-m`, nodes reach the master by IP rather than host name | `use_ips` |
//! | `-D ssh\|taktuk\|clush\|none` | how the agents are started | `launcher` |
//! | `-P PARAMS` | launcher parameters (TakTuk: `-d ARITY -s`) | `launcher_params`, [`KascadeArgs::arity`] |
//! | `-p PORT`, `--[no-]adjust-port` | base port (29015); the next one when busy | `port`, `adjust_port` |
//! | `-t SECS` | connection and send timeout (3 s) | `timeout` |
//! | `-r NUM` | connection attempts to the next node, 1 s apart, before it is skipped (10) | `retries` |
//! | `-R TIME,NUM` | after TIME seconds, `-r` becomes NUM (10,0) | ignored, warning |
//! | `-b SIZE` | bytes per read and packet (65536) | `buffer` (raw) |
//! | `-v [LEVEL]` | fatal, error, warn, info, debug or Ruby Logger's 4..0 | `verbose` |
//! | `-s`, `--[no-]sort` | natural sort and de-duplication of the list | `natural_sort` |
//! | `-?`, `-h`, `--help` | help | clap's help |
//! | others | see [`IGNORED`] | `extra`, warning |

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{ArgAction, CommandFactory, Parser};

use super::nodes::{self, natural_sort, parse_comma, read_nodes, Node, NodeSet, NodesError};

/// The largest tree arity kacast builds (its server's `--arity` is 1 to 4):
/// beyond four children a node's uplink is shared too thinly to keep up.
pub const MAX_ARITY: usize = 4;

/// How Kascade starts its agents on the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Launcher {
    #[default]
    Ssh,
    Taktuk,
    Clush,
    None,
}

impl fmt::Display for Launcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Launcher::Ssh => "ssh",
            Launcher::Taktuk => "taktuk",
            Launcher::Clush => "clush",
            Launcher::None => "none",
        })
    }
}

/// `-D`'s value: a launcher name or, as Ruby's OptionParser completed it, an
/// unambiguous prefix of one (`-D tak`).
fn parse_launcher(s: &str) -> Result<Launcher, String> {
    const ALL: [Launcher; 4] = [Launcher::Ssh, Launcher::Taktuk, Launcher::Clush, Launcher::None];
    let want = s.to_ascii_lowercase();
    let hits: Vec<Launcher> =
        ALL.into_iter().filter(|l| !want.is_empty() && l.to_string().starts_with(&want)).collect();
    match hits[..] {
        [one] => Ok(one),
        _ => Err(format!("'{s}' is not a launcher: use ssh, taktuk, clush or none")),
    }
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("'{s}' is not a number of seconds above 0")),
    }
}

/// A Kascade option kacast accepts without acting on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredOption {
    /// As Kascade spells it: `-C/--chunk-size`.
    pub option: &'static str,
    pub value: Option<String>,
    /// What it did in Kascade and why kacast has no use for it.
    pub why: &'static str,
}

impl fmt::Display for IgnoredOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "kascade option {} '{v}' ignored: {}", self.option, self.why),
            None => write!(f, "kascade option {} ignored: {}", self.option, self.why),
        }
    }
}

/// Every option kacast accepts and ignores, with the reason given in its warning.
pub const IGNORED: [(&str, &str); 12] = [
    (
        "-A/--[no-]aggressive",
        "Kascade killed whatever held its port; kacast never kills, --adjust-port moves on",
    ),
    ("-c/--disable-check-master", "Kascade dropped its own host from the list; the list is used as given"),
    ("-C/--chunk-size", "Kascade's bytes between packet headers; kacast frames its stream itself"),
    ("--[no-]check-md5", "an early Kascade's md5 check; kacast always verifies a hash of the whole stream"),
    ("-f/--filesize", "an early Kascade's input size; kacast learns it from the input"),
    ("-H/--[no-]disable-handshake", "Kascade's version handshake; kacast's protocol always has one"),
    ("-M/--[no-]mr-proper", "Kascade deleted the copy of itself it left on the nodes; kacast leaves none"),
    ("-R/--retry2", "Kascade lowered -r to NUM after TIME seconds; kacast bypasses a dead node after -t"),
    ("-u/--number-of-buffer", "Kascade's replay ring in packets; kacast sizes its buffer in bytes"),
    (
        "-w/--[no-]wait-deploy",
        "Kascade waited for its launcher to exit; kacast waits for every node's report",
    ),
    ("-W/--who-i-am", "Kascade told an agent its place in the list; kacast's server assigns places"),
    ("ARGS", "Kascade left words that were not options unused"),
];

fn why(option: &str) -> &'static str {
    IGNORED.iter().find(|(o, _)| *o == option).map(|(_, w)| *w).unwrap_or("")
}

/// The command line as clap sees it, before Kascade's rules are applied.
#[derive(Parser, Debug)]
#[command(
    name = "kascade",
    about = "kacast answering to Kascade's command line (Kadeploy3's broadcast step)",
    disable_help_flag = true,
    infer_long_args = true,
    args_override_self = true
)]
struct Raw {
    /// Input file, or - for standard input
    #[arg(short = 'i', long = "input", value_name = "FILE|-", required = true)]
    input: String,
    /// Each node writes the stream to FILE
    #[arg(short = 'o', long = "output", value_name = "FILE", overrides_with = "command")]
    output: Option<PathBuf>,
    /// Each node feeds the stream to CMD's standard input
    #[arg(
        short = 'O',
        long = "output-cmd",
        alias = "outputcmd",
        value_name = "CMD",
        allow_hyphen_values = true,
        overrides_with = "output"
    )]
    command: Option<String>,
    /// Node file, one node per line (- for standard input)
    #[arg(short = 'n', long = "node-file", alias = "nodefile", value_name = "FILE")]
    node_file: Option<String>,
    /// Nodes: n1[:port],n2,gdx-[1-9] (repeatable)
    #[arg(short = 'N', long = "node", value_name = "n1[:p1],n2[:p2],...")]
    nodes: Vec<String>,
    /// Write the nodes that succeeded to FILE (a YAML array)
    #[arg(short = 'k', long = "ok", value_name = "FILE")]
    ok: Option<PathBuf>,
    /// Write the nodes that failed to FILE (a YAML map node -> error)
    #[arg(short = 'K', long = "ko", value_name = "FILE")]
    ko: Option<PathBuf>,
    /// The master's name or address as the nodes reach it
    #[arg(short = 'm', long = "master", value_name = "HOST")]
    master: Option<String>,
    /// Connector used to reach the nodes
    #[arg(short = 'S', long = "ssh-command", value_name = "SSH", allow_hyphen_values = true)]
    ssh: Option<String>,
    /// Without -m, nodes reach the master by its IP address
    #[arg(short = 'I', long = "use-ip", overrides_with = "no_use_ip")]
    use_ip: bool,
    #[arg(long = "no-use-ip", hide = true, overrides_with = "use_ip")]
    no_use_ip: bool,
    /// How the agents are started: ssh, taktuk, clush or none
    #[arg(short = 'D', long = "deploy", value_name = "LAUNCHER", value_parser = parse_launcher)]
    launcher: Option<Launcher>,
    /// Parameters for the launcher ('-d ARITY -s' for taktuk)
    #[arg(short = 'P', long = "deploy-parameter", value_name = "PARAMETERS", allow_hyphen_values = true)]
    launcher_params: Option<String>,
    /// Base port
    #[arg(short = 'p', long = "port", value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,
    /// Take the next port when the port is busy (default)
    #[arg(long = "adjust-port", overrides_with = "no_adjust_port")]
    adjust_port: bool,
    /// Fail when the port is busy
    #[arg(long = "no-adjust-port", overrides_with = "adjust_port")]
    no_adjust_port: bool,
    /// Seconds before a silent node is checked and bypassed
    #[arg(short = 't', long = "timeout", value_name = "SECS", value_parser = parse_seconds)]
    timeout: Option<f64>,
    /// Connection attempts to a node before it is given up
    #[arg(short = 'r', long = "retry", value_name = "NUM")]
    retries: Option<u32>,
    /// Kascade: after TIME seconds, -r becomes NUM (accepted, ignored)
    #[arg(short = 'R', long = "retry2", value_name = "TIME,NUM")]
    retry2: Option<String>,
    /// Kascade: bytes per read
    #[arg(short = 'b', long = "buffer-size", alias = "buffersize", value_name = "SIZE")]
    buffer: Option<String>,
    /// Log level: fatal, error, warn, info, debug, or 4 to 0
    #[arg(
        short = 'v',
        long = "verbose",
        value_name = "LEVEL",
        num_args = 0..=1,
        default_missing_value = "info"
    )]
    verbose: Option<String>,
    /// Sort the node list naturally (n2 before n10) and drop duplicates
    #[arg(short = 's', long = "sort", overrides_with = "no_sort")]
    sort: bool,
    #[arg(long = "no-sort", hide = true, overrides_with = "sort")]
    no_sort: bool,
    /// Print help
    #[arg(short = '?', short_alias = 'h', long = "help", action = ArgAction::Help)]
    help: Option<bool>,

    // Accepted and ignored (see IGNORED).
    #[arg(short = 'A', long = "aggressive", alias = "agressive", hide = true)]
    aggressive: bool,
    #[arg(long = "no-aggressive", alias = "no-agressive", hide = true)]
    no_aggressive: bool,
    #[arg(short = 'c', long = "disable-check-master", alias = "check", hide = true)]
    disable_check_master: bool,
    #[arg(short = 'C', long = "chunk-size", hide = true)]
    chunk_size: Option<String>,
    #[arg(long = "check-md5", alias = "checkmd5", hide = true)]
    check_md5: bool,
    #[arg(long = "no-check-md5", alias = "no-checkmd5", hide = true)]
    no_check_md5: bool,
    #[arg(short = 'f', long = "filesize", hide = true)]
    filesize: Option<String>,
    #[arg(short = 'H', long = "disable-handshake", hide = true)]
    disable_handshake: bool,
    #[arg(long = "no-disable-handshake", hide = true)]
    no_disable_handshake: bool,
    #[arg(short = 'M', long = "mr-proper", hide = true)]
    mr_proper: bool,
    #[arg(long = "no-mr-proper", hide = true)]
    no_mr_proper: bool,
    #[arg(short = 'u', long = "number-of-buffer", alias = "number-of-chunk", hide = true)]
    number_of_buffer: Option<String>,
    #[arg(short = 'w', long = "wait-deploy", hide = true)]
    wait_deploy: bool,
    #[arg(long = "no-wait-deploy", hide = true)]
    no_wait_deploy: bool,
    #[arg(short = 'W', long = "who-i-am", hide = true)]
    who_i_am: Option<String>,
    /// Words that are not options (Kascade ignored them)
    #[arg(hide = true)]
    rest: Vec<String>,
}

/// Kascade's command line, with Kascade's meaning.
#[derive(Debug, Clone, PartialEq)]
pub struct KascadeArgs {
    /// `-i FILE|-`: what to stream; `-` is standard input (which cannot be
    /// re-read to repair a node that fell too far behind).
    pub input: String,
    /// `-o FILE`: each node writes the stream to FILE. `None` when `-O` came later.
    pub output: Option<PathBuf>,
    /// `-O CMD`: each node feeds the stream to CMD's standard input (Kadeploy's
    /// `tar -C /mnt/dest -xz`); a non-zero exit makes that node KO.
    pub command: Option<String>,
    /// `-n NODEFILE` (`-` = standard input).
    pub node_file: Option<String>,
    /// `-N` lists as given, one string per `-N`. Kascade kept only the last of
    /// `-n`/`-N`; kacast takes them all, which only matters when several are given.
    pub nodes: Vec<String>,
    /// `-m MASTER`: the master's name or address as the nodes should reach it.
    pub master: Option<String>,
    /// `-S SSHCMD`: the connector, e.g. `ssh -o StrictHostKeyChecking=no -o BatchMode=yes`.
    pub ssh: Option<String>,
    pub ok: Option<PathBuf>,
    pub ko: Option<PathBuf>,
    /// `-I`: without `-m`, the nodes reach the master at its IP address (the one
    /// on the route to the first node) rather than its host name. Kadeploy sets
    /// it when the cluster deploys by IP, and then its node file holds IPs.
    pub use_ips: bool,
    /// `-D`; Kadeploy always passes `taktuk`.
    pub launcher: Launcher,
    /// `-P` as given (`-d 4 -s`). For TakTuk `-d N` is the arity of its launch
    /// tree and `-s` self-propagation (not Kascade's `-s`!); see [`KascadeArgs::arity`].
    pub launcher_params: Option<String>,
    /// `-p`: Kascade's base port (29015, and +1000 for its ping server).
    pub port: Option<u16>,
    /// `-t`: seconds Kascade waited on a connection or a blocked write before
    /// checking the node and bypassing it (3). Kascade took whole seconds; kacast
    /// takes fractions too.
    pub timeout: Option<f64>,
    /// `-r`: connection attempts, 1 s apart, Kascade made to reach the next node
    /// before skipping it (10; 0 was refused, so it reads as 1 here). kacast's
    /// nodes connect to the server rather than to each other: it bounds their
    /// attempts to join (as `kacast client --tries`). Kascade's `-R TIME,NUM`,
    /// which lowered `-r` to NUM after TIME seconds, is accepted and ignored:
    /// kacast bypasses a dead node after `-t` instead, whenever it dies.
    pub retries: Option<u32>,
    /// `-b` as given: Kascade's bytes per read and packet (65536), its memory per
    /// node being this times `-u` (1600). Not kacast's `--buffer` (memory).
    pub buffer: Option<String>,
    /// `-v`, in Ruby Logger's numbers (0 debug, 1 info, 2 warn, 3 error, 4 fatal):
    /// `-v` alone or an unknown level is info, as in Kascade. `None`: Kascade's
    /// default, errors only. See [`KascadeArgs::tracing_level`].
    pub verbose: Option<u8>,
    /// `-s`: natural sort and de-duplication of the node list.
    pub natural_sort: bool,
    /// `--[no-]adjust-port`: take the next port when the port is busy (default true).
    pub adjust_port: bool,
    /// Kascade options accepted and ignored.
    pub extra: Vec<IgnoredOption>,
    /// Everything the user should be told: one line per ignored option, and
    /// values read differently than written. The caller logs them.
    pub warnings: Vec<String>,
}

impl KascadeArgs {
    /// Parses a command line, program name first (as `std::env::args_os()` gives it).
    /// Help (`-?`, `-h`, `--help`) comes back as an error of kind `DisplayHelp`.
    pub fn parse_from<I, T>(args: I) -> Result<KascadeArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let raw = Raw::try_parse_from(args)?;
        let usage_error = |kind, msg: &str| Raw::command().error(kind, msg);
        if raw.output.is_none() && raw.command.is_none() {
            return Err(usage_error(
                ErrorKind::MissingRequiredArgument,
                "no output: give -O CMD (each node feeds the stream to CMD) or -o FILE",
            ));
        }
        if raw.input == "-" && raw.node_file.as_deref() == Some("-") {
            return Err(usage_error(
                ErrorKind::ArgumentConflict,
                "-i - and -n - both read standard input: give one of them a file",
            ));
        }

        let mut warnings = Vec::new();
        let mut extra = Vec::new();
        let mut ignore = |option: &'static str, value: Option<String>| {
            extra.push(IgnoredOption { option, value, why: why(option) })
        };
        let flags = [
            ("-A/--[no-]aggressive", raw.aggressive || raw.no_aggressive),
            ("-c/--disable-check-master", raw.disable_check_master),
            ("--[no-]check-md5", raw.check_md5 || raw.no_check_md5),
            ("-H/--[no-]disable-handshake", raw.disable_handshake || raw.no_disable_handshake),
            ("-M/--[no-]mr-proper", raw.mr_proper || raw.no_mr_proper),
            ("-w/--[no-]wait-deploy", raw.wait_deploy || raw.no_wait_deploy),
        ];
        for (option, given) in flags {
            if given {
                ignore(option, None);
            }
        }
        let values = [
            ("-C/--chunk-size", raw.chunk_size),
            ("-f/--filesize", raw.filesize),
            ("-R/--retry2", raw.retry2),
            ("-u/--number-of-buffer", raw.number_of_buffer),
            ("-W/--who-i-am", raw.who_i_am),
        ];
        for (option, value) in values {
            if value.is_some() {
                ignore(option, value);
            }
        }
        if !raw.rest.is_empty() {
            ignore("ARGS", Some(raw.rest.join(" ")));
        }
        warnings.extend(extra.iter().map(IgnoredOption::to_string));

        let verbose = raw.verbose.as_deref().map(|level| {
            log_level(level).unwrap_or_else(|| {
                warnings.push(format!("-v '{level}' is not a log level: using info"));
                LOG_INFO
            })
        });
        let retries = raw.retries.map(|r| {
            if r == 0 {
                warnings.push("-r 0: a node needs at least one attempt, using 1".to_string());
            }
            r.max(1)
        });
        let launcher = raw.launcher.unwrap_or_default();
        if let Some(params) = &raw.launcher_params {
            match (launcher, taktuk_dynamic(params)) {
                (Launcher::Taktuk, Err(bad)) => {
                    warnings.push(format!("-P '{params}': TakTuk's -d needs a number, not '{bad}': arity 1"))
                }
                (Launcher::Taktuk, Ok(Some(d)))
                    if !(1..=MAX_ARITY as i64).contains(&d) && d != 0 && d != -1 =>
                {
                    let clamped = d.clamp(1, MAX_ARITY as i64);
                    warnings.push(format!(
                        "-P '{params}': arity {d} read as {clamped} (kacast builds 1 to {MAX_ARITY})"
                    ))
                }
                _ => {}
            }
        }

        Ok(KascadeArgs {
            input: raw.input,
            output: raw.output,
            command: raw.command,
            node_file: raw.node_file,
            nodes: raw.nodes,
            master: raw.master,
            ssh: raw.ssh,
            ok: raw.ok,
            ko: raw.ko,
            use_ips: raw.use_ip,
            launcher,
            launcher_params: raw.launcher_params,
            port: raw.port,
            timeout: raw.timeout,
            retries,
            buffer: raw.buffer,
            verbose,
            natural_sort: raw.sort,
            adjust_port: !raw.no_adjust_port,
            extra,
            warnings,
        })
    }

    /// The data tree's arity, from TakTuk's `-d N` in `-P` (Kadeploy's
    /// `tree_arity`), clamped to 1..=[`MAX_ARITY`]; 1, a chain, otherwise.
    ///
    /// Kascade's data always went down a chain and `-d` only shaped TakTuk's
    /// launch tree; kacast reads it as the arity of its own tree, which keeps
    /// Kadeploy's default (`-d 0`: TakTuk picks) and `-d -1` (no limit) a chain.
    pub fn arity(&self) -> usize {
        if self.launcher != Launcher::Taktuk {
            return 1;
        }
        match self.launcher_params.as_deref().map(taktuk_dynamic) {
            Some(Ok(Some(d))) => d.clamp(1, MAX_ARITY as i64) as usize,
            _ => 1,
        }
    }

    /// The `-n` file's nodes, then the `-N` lists', without duplicates, in
    /// natural order with `-s`.
    pub fn all_nodes(&self) -> Result<Vec<Node>, NodesError> {
        if self.node_file.is_none() && self.nodes.is_empty() {
            return Err(NodesError::NoList);
        }
        let mut set = NodeSet::default();
        let mut origins = Vec::new();
        if let Some(path) = &self.node_file {
            origins.push(format!("node file '{path}'"));
            set.extend(read_nodes(path)?)
                .map_err(|()| NodesError::TooMany { origin: origins.join(" and ") })?;
        }
        for arg in &self.nodes {
            origins.push(format!("-N '{arg}'"));
            set.extend(parse_comma(arg)?)
                .map_err(|()| NodesError::TooMany { origin: origins.join(" and ") })?;
        }
        let mut list = set.nodes;
        if list.is_empty() {
            return Err(NodesError::Empty { origin: origins.join(" and ") });
        }
        if self.natural_sort {
            natural_sort(&mut list);
        }
        Ok(list)
    }

    /// `-v` as a tracing level; `None` without `-v`.
    pub fn tracing_level(&self) -> Option<tracing::Level> {
        self.verbose.map(|v| match v {
            0 => tracing::Level::DEBUG,
            1 => tracing::Level::INFO,
            2 => tracing::Level::WARN,
            _ => tracing::Level::ERROR,
        })
    }
}

/// Ruby Logger's INFO, what Kascade used for `-v` alone or an unknown level.
const LOG_INFO: u8 = 1;

fn log_level(level: &str) -> Option<u8> {
    Some(match level.to_ascii_lowercase().as_str() {
        "debug" | "0" => 0,
        "info" | "1" => LOG_INFO,
        "warn" | "2" => 2,
        "error" | "3" => 3,
        "fatal" | "4" => 4,
        _ => return None,
    })
}

/// TakTuk's `-d N` / `-dN` / `--dynamic N` / `--dynamic=N` in a `-P` string: the
/// last one given, `Ok(None)` when there is none, `Err(value)` when it is not a number.
fn taktuk_dynamic(params: &str) -> Result<Option<i64>, String> {
    let words: Vec<&str> = params.split_whitespace().collect();
    let mut found = None;
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        let value = if w == "-d" || w == "--dynamic" {
            i += 1;
            Some(words.get(i).copied().unwrap_or(""))
        } else {
            w.strip_prefix("--dynamic=").or_else(|| w.strip_prefix("-d"))
        };
        if let Some(v) = value {
            found = Some(v.parse::<i64>().map_err(|_| v.to_string())?);
        }
        i += 1;
    }
    Ok(found)
}

/// What can be recovered from a command line that does not parse: where the
/// ok/ko files go and which nodes to list in ko, so that Kadeploy still finds
/// both files (see [`super::write_all_ko`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Salvaged {
    pub ok: Option<PathBuf>,
    pub ko: Option<PathBuf>,
    /// Node names as Kadeploy wrote them; a node file that does not parse is
    /// read as blank-separated words.
    pub nodes: Vec<String>,
}

/// Options whose value is the next word, so that a value is never read as an option.
const TAKES_VALUE: &str = "iOonNkKmSDPptrRbCfuW";

/// Scans a command line the strict parser refused (arguments as for
/// [`KascadeArgs::parse_from`], program name first).
pub fn salvage<I, T>(args: I) -> Salvaged
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let words: Vec<String> =
        args.into_iter().skip(1).map(|a| a.into().to_string_lossy().into_owned()).collect();
    let mut out = Salvaged::default();
    let mut node_file = None;
    let mut lists = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = words[i].as_str();
        let (key, inline) = match w.strip_prefix("--") {
            Some(long) => match long.split_once('=') {
                Some((k, v)) => (long_to_short(k), Some(v.to_string())),
                None => (long_to_short(long), None),
            },
            None => match w.strip_prefix('-').and_then(|s| s.chars().next()) {
                Some(c) if TAKES_VALUE.contains(c) => {
                    (Some(c), Some(w[2..].to_string()).filter(|v: &String| !v.is_empty()))
                }
                _ => (None, None),
            },
        };
        i += 1;
        let Some(key) = key else { continue };
        if !TAKES_VALUE.contains(key) {
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => {
                let v = words.get(i).cloned().unwrap_or_default();
                i += 1;
                v
            }
        };
        match key {
            'k' => out.ok = Some(PathBuf::from(value)),
            'K' => out.ko = Some(PathBuf::from(value)),
            'n' => node_file = Some(value),
            'N' => lists.push(value),
            _ => {}
        }
    }
    let mut names = Vec::new();
    if let Some(path) = node_file.filter(|p| p != "-") {
        if let Ok(text) = std::fs::read_to_string(&path) {
            match nodes::parse_list(&text, &path) {
                Ok(list) => names.extend(list.iter().map(Node::to_string)),
                Err(_) => names.extend(
                    text.lines()
                        .flat_map(|l| l.split('#').next().unwrap_or("").split_whitespace())
                        .map(str::to_string),
                ),
            }
        }
    }
    for list in lists {
        match parse_comma(&list) {
            Ok(list) => names.extend(list.iter().map(Node::to_string)),
            Err(_) => {
                names.extend(list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string))
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.nodes = names.into_iter().filter(|n| seen.insert(n.clone())).collect();
    out
}

/// The short option a (possibly shortened) long option stands for, among those
/// that take a value.
fn long_to_short(long: &str) -> Option<char> {
    const LONGS: [(&str, char); 20] = [
        ("input", 'i'),
        ("output-cmd", 'O'),
        ("outputcmd", 'O'),
        ("output", 'o'),
        ("node-file", 'n'),
        ("nodefile", 'n'),
        ("node", 'N'),
        ("ok", 'k'),
        ("ko", 'K'),
        ("master", 'm'),
        ("ssh-command", 'S'),
        ("deploy-parameter", 'P'),
        ("deploy", 'D'),
        ("port", 'p'),
        ("timeout", 't'),
        ("retry2", 'R'),
        ("retry", 'r'),
        ("buffer-size", 'b'),
        ("chunk-size", 'C'),
        ("who-i-am", 'W'),
    ];
    if let Some((_, c)) = LONGS.iter().find(|(l, _)| *l == long) {
        return Some(*c);
    }
    let hits: Vec<char> =
        LONGS.iter().filter(|(l, _)| !long.is_empty() && l.starts_with(long)).map(|(_, c)| *c).collect();
    match hits[..] {
        [c, ..] if hits.iter().all(|h| *h == c) => Some(c),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kadeploy3's BroadcastEnvKascade, argument for argument.
    const KADEPLOY: [&str; 18] = [
        "kascade",
        "-i",
        "/tmp/env.tgz",
        "-n",
        "/tmp/nodes",
        "-O",
        "tar -C /mnt/dest -xz",
        "-S",
        "ssh -o StrictHostKeyChecking=no",
        "--ok",
        "/tmp/ok",
        "--ko",
        "/tmp/ko",
        "-I",
        "-D",
        "taktuk",
        "-P",
        "-d 4 -s",
    ];

    fn parse(args: &[&str]) -> KascadeArgs {
        let mut v = vec!["kascade"];
        v.extend_from_slice(args);
        KascadeArgs::parse_from(&v).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn base(more: &[&str]) -> KascadeArgs {
        let mut v = vec!["-i", "f", "-O", "cat", "-N", "n1"];
        v.extend_from_slice(more);
        parse(&v)
    }

    #[test]
    fn kadeploy_command_line() {
        let a = KascadeArgs::parse_from(KADEPLOY).unwrap();
        assert_eq!(a.input, "/tmp/env.tgz");
        assert_eq!(a.node_file.as_deref(), Some("/tmp/nodes"));
        assert_eq!(a.command.as_deref(), Some("tar -C /mnt/dest -xz"));
        assert_eq!(a.output, None);
        assert_eq!(a.ssh.as_deref(), Some("ssh -o StrictHostKeyChecking=no"));
        assert_eq!(a.ok, Some(PathBuf::from("/tmp/ok")));
        assert_eq!(a.ko, Some(PathBuf::from("/tmp/ko")));
        assert!(a.use_ips);
        assert_eq!(a.launcher, Launcher::Taktuk);
        assert_eq!(a.launcher_params.as_deref(), Some("-d 4 -s"));
        assert_eq!(a.arity(), 4);
        assert!(!a.natural_sort, "the -s inside -P is TakTuk's, not Kascade's");
        assert!(a.adjust_port);
        assert!(a.warnings.is_empty(), "{:?}", a.warnings);
        // Kadeploy's default tree_arity is 0; without use_ip_to_deploy there is no -I.
        let mut v = KADEPLOY.to_vec();
        v[17] = "-d 0 -s";
        v.remove(13);
        let a = KascadeArgs::parse_from(&v).unwrap();
        assert_eq!(a.arity(), 1);
        assert!(!a.use_ips);
        assert!(a.extra.is_empty() && a.warnings.is_empty(), "{:?}", a.warnings);
    }

    #[test]
    fn arity_from_taktuk_parameters() {
        let arity = |p: &str| base(&["-D", "taktuk", "-P", p]).arity();
        assert_eq!(arity("-d 2"), 2);
        assert_eq!(arity("-d3 -s"), 3);
        assert_eq!(arity("-s --dynamic 2"), 2);
        assert_eq!(arity("--dynamic=4"), 4);
        assert_eq!(arity("-d 9"), 4);
        assert_eq!(arity("-d -1"), 1);
        assert_eq!(arity("-d 0"), 1);
        assert_eq!(arity("-s"), 1);
        assert_eq!(arity("-d x"), 1);
        assert_eq!(base(&["-D", "ssh", "-P", "-d 4"]).arity(), 1, "-d is TakTuk's");
        assert_eq!(base(&["-D", "taktuk"]).arity(), 1);
        assert!(base(&["-D", "taktuk", "-P", "-d x"]).warnings[0].contains("needs a number, not 'x'"));
        assert!(base(&["-D", "taktuk", "-P", "-d 9"]).warnings[0].contains("arity 9 read as 4"));
    }

    #[test]
    fn kascade_options() {
        let a = parse(&[
            "--input=-",
            "-o",
            "/tmp/out",
            "-N",
            "n1,n2:3001",
            "--node",
            "gdx-[1-2]",
            "-m",
            "master:29015",
            "-p",
            "4000",
            "-t",
            "1.5",
            "-r",
            "3",
            "-b",
            "65536",
            "-v",
            "debug",
            "-s",
            "--no-adjust-port",
            "-D",
            "tak",
        ]);
        assert_eq!(a.input, "-");
        assert_eq!(a.output, Some(PathBuf::from("/tmp/out")));
        assert_eq!(a.command, None);
        assert_eq!(a.nodes, ["n1,n2:3001", "gdx-[1-2]"]);
        assert_eq!(a.master.as_deref(), Some("master:29015"));
        assert_eq!(a.port, Some(4000));
        assert_eq!(a.timeout, Some(1.5));
        assert_eq!(a.retries, Some(3));
        assert_eq!(a.buffer.as_deref(), Some("65536"));
        assert_eq!(a.verbose, Some(0));
        assert_eq!(a.tracing_level(), Some(tracing::Level::DEBUG));
        assert!(a.natural_sort);
        assert!(!a.adjust_port);
        assert_eq!(a.launcher, Launcher::Taktuk);
        assert!(a.warnings.is_empty(), "{:?}", a.warnings);
        // Defaults.
        let a = base(&[]);
        assert_eq!(
            (a.launcher, a.adjust_port, a.use_ips, a.natural_sort),
            (Launcher::Ssh, true, false, false)
        );
        assert_eq!((a.verbose, a.retries, a.timeout, a.port), (None, None, None, None));
    }

    #[test]
    fn last_of_a_pair_wins() {
        let a = base(&["-o", "/x", "-O", "tar -x"]);
        assert_eq!((a.output, a.command.as_deref()), (None, Some("tar -x")));
        let a = base(&["-O", "tar -x", "-o", "/x"]);
        assert_eq!((a.output, a.command), (Some(PathBuf::from("/x")), None));
        assert!(!base(&["-s", "--no-sort"]).natural_sort);
        assert!(base(&["--no-sort", "--sort"]).natural_sort);
        assert!(base(&["--no-adjust-port", "--adjust-port"]).adjust_port);
        assert!(!base(&["-I", "--no-use-ip"]).use_ips);
        assert_eq!(base(&["-p", "1", "-p", "2"]).port, Some(2));
    }

    #[test]
    fn verbosity_as_kascade_read_it() {
        assert_eq!(base(&["-v"]).verbose, Some(1));
        assert_eq!(base(&["-v", "-s"]).verbose, Some(1));
        assert_eq!(base(&["-v", "warn"]).verbose, Some(2));
        assert_eq!(base(&["-v4"]).verbose, Some(4));
        assert_eq!(base(&["--verbose=ERROR"]).verbose, Some(3));
        let a = base(&["-v", "loud"]);
        assert_eq!(a.verbose, Some(1));
        assert_eq!(a.warnings, ["-v 'loud' is not a log level: using info"]);
        let a = base(&["-r", "0"]);
        assert_eq!(a.retries, Some(1));
        assert_eq!(a.warnings.len(), 1);
    }

    #[test]
    fn every_tuning_option_is_accepted_and_ignored() {
        let a = base(&[
            "-A",
            "--no-agressive",
            "-c",
            "-C",
            "160",
            "--check-md5",
            "-f",
            "123",
            "-H",
            "-M",
            "-R",
            "10,0",
            "-u",
            "1600",
            "-w",
            "-W",
            "nil",
            "--number-of-chunk",
            "2",
            "--no-wait-deploy",
            "stray",
        ]);
        let ignored: Vec<&str> = a.extra.iter().map(|e| e.option).collect();
        assert_eq!(
            ignored,
            [
                "-A/--[no-]aggressive",
                "-c/--disable-check-master",
                "--[no-]check-md5",
                "-H/--[no-]disable-handshake",
                "-M/--[no-]mr-proper",
                "-w/--[no-]wait-deploy",
                "-C/--chunk-size",
                "-f/--filesize",
                "-R/--retry2",
                "-u/--number-of-buffer",
                "-W/--who-i-am",
                "ARGS",
            ]
        );
        assert_eq!(a.extra[8].value.as_deref(), Some("10,0"));
        assert_eq!(a.extra[9].value.as_deref(), Some("2"), "the last of -u/--number-of-chunk");
        assert_eq!(a.warnings.len(), a.extra.len());
        assert!(a.warnings[8].starts_with("kascade option -R/--retry2 '10,0' ignored: Kascade lowered -r"));
        assert!(a.extra.iter().all(|e| !e.why.is_empty()), "{:?}", a.extra);
        // Ruby's OptionParser took unambiguous prefixes; so does kacast.
        let a = parse(&["--inp", "f", "--output-c", "cat", "--node-f", "/n", "--mast", "m", "--wait-d"]);
        assert_eq!((a.node_file.as_deref(), a.master.as_deref()), (Some("/n"), Some("m")));
        assert_eq!(a.command.as_deref(), Some("cat"));
        assert_eq!(a.extra.len(), 1);
        // Old spellings.
        let a = parse(&["-i", "f", "--outputcmd", "cat", "--nodefile", "/n", "--buffersize", "8"]);
        assert_eq!(
            (a.command.as_deref(), a.node_file.as_deref(), a.buffer.as_deref()),
            (Some("cat"), Some("/n"), Some("8"))
        );
    }

    #[test]
    fn refusals_name_the_problem() {
        let err = |args: &[&str]| {
            let mut v = vec!["kascade"];
            v.extend_from_slice(args);
            KascadeArgs::parse_from(&v).unwrap_err()
        };
        assert!(err(&["-O", "cat"]).to_string().contains("--input"));
        let e = err(&["-i", "f", "-N", "n1"]);
        assert!(e.to_string().contains("no output: give -O CMD"), "{e}");
        let e = err(&["-i", "-", "-n", "-", "-O", "cat"]);
        assert!(e.to_string().contains("both read standard input"), "{e}");
        let e = err(&["-i", "f", "-O", "cat", "-D", "pdsh"]);
        assert!(e.to_string().contains("'pdsh' is not a launcher"), "{e}");
        let e = err(&["-i", "f", "-O", "cat", "-t", "0"]);
        assert!(e.to_string().contains("'0' is not a number of seconds above 0"), "{e}");
        let e = err(&["-i", "f", "-O", "cat", "-p", "0"]);
        assert_eq!(e.kind(), ErrorKind::ValueValidation, "{e}");
        let e = err(&["-i", "f", "-O", "cat", "--frobnicate"]);
        assert_eq!(e.kind(), ErrorKind::UnknownArgument, "{e}");
        assert_eq!(err(&["-?"]).kind(), ErrorKind::DisplayHelp);
        assert_eq!(err(&["-h"]).kind(), ErrorKind::DisplayHelp);
        assert_eq!(err(&["--help"]).kind(), ErrorKind::DisplayHelp);
    }

    #[test]
    fn nodes_from_file_and_lists() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nodes");
        std::fs::write(&file, "# Kadeploy's file\nn10\nn2\n").unwrap();
        let file = file.to_str().unwrap();
        let hosts = |a: &KascadeArgs| a.all_nodes().unwrap().iter().map(Node::to_string).collect::<Vec<_>>();
        let a = parse(&["-i", "f", "-O", "cat", "-n", file, "-N", "n1,n2", "-N", "gdx-[1-2]"]);
        assert_eq!(hosts(&a), ["n10", "n2", "n1", "gdx-1", "gdx-2"]);
        let a = parse(&["-i", "f", "-O", "cat", "-n", file, "-N", "n1,n2", "-s"]);
        assert_eq!(hosts(&a), ["n1", "n2", "n10"]);
        let a = parse(&["-i", "f", "-O", "cat"]);
        assert!(matches!(a.all_nodes(), Err(NodesError::NoList)));
        let a = parse(&["-i", "f", "-O", "cat", "-N", "n[3-1]"]);
        assert_eq!(a.all_nodes().unwrap_err().to_string(), "-N 'n[3-1]': 'n[3-1]': range goes backwards");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "# nobody\n").unwrap();
        let a = parse(&["-i", "f", "-O", "cat", "-n", empty.to_str().unwrap()]);
        let e = a.all_nodes().unwrap_err();
        assert_eq!(e.to_string(), format!("node file '{}': no node in it", empty.display()));
    }

    #[test]
    fn salvages_a_refused_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nodes");
        std::fs::write(&file, "n1\nn2\nbad/name\n").unwrap();
        let file = file.to_str().unwrap();
        let s = salvage([
            "kascade",
            "-i",
            "f",
            "-O",
            "-k not me",
            "-D",
            "pdsh",
            "--ok=/tmp/ok",
            "-K/tmp/ko",
            "-n",
            file,
            "--node",
            "x1,x[2-3]",
        ]);
        assert_eq!(s.ok, Some(PathBuf::from("/tmp/ok")));
        assert_eq!(s.ko, Some(PathBuf::from("/tmp/ko")));
        assert_eq!(s.nodes, ["n1", "n2", "bad/name", "x1", "x2", "x3"]);
        let s = salvage(KADEPLOY);
        assert_eq!((s.ok, s.ko), (Some(PathBuf::from("/tmp/ok")), Some(PathBuf::from("/tmp/ko"))));
        let s = salvage(["kascade", "--k", "a", "--o", "x", "--oK", "c"]);
        assert_eq!(s, Salvaged { ok: None, ko: Some(PathBuf::from("a")), nodes: vec![] }, "--o is ambiguous");
    }
}
