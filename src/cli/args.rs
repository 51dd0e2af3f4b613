//! The command line. Short options follow ka-deploy's where it had them
//! (`-s` session, `-n` nodes, `-e` command, `-g` go).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "kacast", version, about = "Clone a golden node onto a whole rack at wire speed")]
pub struct Cli {
    /// More log output (-v debug, -vv trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Golden node: wait for the nodes of a session and stream to them
    Server(ServerArgs),
    /// Node: join a session, write the stream locally and relay it
    Client(ClientArgs),
    /// Start a waiting session now with the nodes already joined (ka's -g)
    Go(GoArgs),
    /// Run a server and N clients on loopback, stream generated data, verify every copy
    Demo(DemoArgs),
    /// Print a disk's desc (ka's fdisk_to_desc), or check a desc file against a disk size
    Desc(DescArgs),
    /// Golden node: clone this system onto N nodes (ka-d.sh -n N -p sda desc)
    Clone(CloneArgs),
    /// Node: join an install, partition, format, receive, restore the bootloader
    Install(InstallArgs),
    /// Golden node: record this system as an image + Kadeploy environment description
    Capture(CaptureArgs),
    /// Kascade's command line (Kadeploy3's broadcast tool): kacast kascade -i FILE -n NODEFILE -O CMD …
    Kascade(PassThrough),
    /// Kastafior's command line: kacast kastafior [-c CONNECTOR] -- -s SRC -c CMD -n NODEFILE
    Kastafior(PassThrough),
    /// Network boot: PXE/iPXE/GRUB files and dnsmasq configurations; per-node kamethod or local disk
    Pxe(super::pxe::PxeArgs),
    /// Golden node: each node's live state and last line during an install (clone --log-dir DIR)
    Status(StatusArgs),
    /// A virtual rack on this machine: N QEMU VMs PXE-boot, clone a small golden disk, boot it
    Lab(super::lab::LabArgs),
    /// The nodes' initrd: busybox, kernel modules, kacast and the kamethod init
    Initrd(super::boot::InitrdArgs),
    /// The tools the nodes fetch from the golden node before they install (ka's stage2)
    Stage2(super::boot::Stage2Args),
}

#[derive(Args)]
pub struct StatusArgs {
    /// The install's log directory (kacast clone --log-dir)
    pub dir: PathBuf,
    /// Print this node's whole log instead of the table
    #[arg(long)]
    pub node: Option<String>,
}

/// Arguments handed on unparsed, to a tool's own command line.
#[derive(Args)]
pub struct PassThrough {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Args)]
pub struct CaptureArgs {
    /// Name of the environment (and of the files written)
    #[arg(long)]
    pub name: String,
    /// Directory to write NAME.tar.zst, NAME.yaml and NAME.desc to
    #[arg(short, long, default_value = ".")]
    pub output: PathBuf,
    /// Root of the golden system to record
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Record DIR empty (repeatable)
    #[arg(short = 'x', long = "exclude", value_name = "DIR")]
    pub exclude: Vec<PathBuf>,
    /// Leave out the disks whose name matches this regular expression
    #[arg(short = 'X', long = "leave-out", value_name = "REGEX")]
    pub leave_out: Option<String>,
}

/// ka-d.sh's options, with kacast's additions.
#[derive(Args)]
pub struct CloneArgs {
    /// Number of nodes to wait for
    #[arg(short, long)]
    pub nodes: usize,
    /// Partition DISK on the nodes from DESC instead of the golden table (repeatable)
    #[arg(short = 'p', long = "desc", num_args = 2, value_names = ["DISK", "DESC"], action = clap::ArgAction::Append)]
    pub desc: Vec<String>,
    /// Send DIR empty; it is recreated with its mode and owner (repeatable)
    #[arg(short = 'x', long = "exclude", value_name = "DIR")]
    pub exclude: Vec<PathBuf>,
    /// Leave out the disks whose name matches this regular expression ('sdb|sdc')
    #[arg(short = 'X', long = "leave-out", value_name = "REGEX")]
    pub leave_out: Option<String>,
    /// Also send this partition as a raw image (repeatable)
    #[arg(short = 'D', long = "raw", value_name = "PART")]
    pub raw: Vec<PathBuf>,
    /// Bootloader on the nodes: 'grub [initramfs options]' or 'none'
    #[arg(short = 'r', long = "bootloader", default_value = "grub")]
    pub bootloader: String,
    /// Firmware the nodes boot with (default: uefi when an ESP is mounted here)
    #[arg(long, value_parser = ["bios", "uefi"])]
    pub firmware: Option<String>,
    /// Root of the golden system to clone
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Give every node fresh filesystem UUIDs (fstab, crypttab and grub.cfg follow)
    #[arg(long)]
    pub new_uuids: bool,
    /// Compress the files' stream and raw images on the fly: none, zstd
    /// (level 3) or zstd:LEVEL
    #[arg(long, value_name = "HOW")]
    pub compress: Option<String>,
    /// Send raw images (-D, the ESP) byte for byte, runs of zeros included
    /// (default: sparse, zeros are not sent; ext2/3/4 read used blocks only)
    #[arg(long)]
    pub no_sparse: bool,
    /// Keep the golden SSH host keys on the nodes instead of new ones
    #[arg(long)]
    pub keep_ssh_host_keys: bool,
    /// File of 'NODE HOSTNAME' lines: the hostname each node gets
    #[arg(long, value_name = "FILE")]
    pub hostnames: Option<PathBuf>,
    /// Nodes not in --hostnames take the name they joined with as hostname
    #[arg(long)]
    pub hostname_from_node: bool,
    /// Deploy this recorded image (a Kadeploy environment description) instead of this system
    #[arg(long, value_name = "FILE")]
    pub env: Option<PathBuf>,
    /// With --env: the partition of the first -p disk the image goes on (default: the first Linux one)
    #[arg(long, value_name = "N", requires = "env")]
    pub env_partition: Option<u32>,
    /// Print the plan and stop
    #[arg(long)]
    pub dry_run: bool,
    /// Base name of the install's sessions (BASE1 plan, BASE2 files, BASE3… raw, BASE-end)
    #[arg(short, long, default_value = "kainstall")]
    pub session: String,
    /// Seconds each later step waits for nodes still busy with the previous one
    #[arg(long, default_value_t = 600.0, value_name = "SECS")]
    pub phase_timeout: f64,
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Write the whole report as JSON
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Keep each node's live status and log here (read with `kacast status DIR`)
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
    /// Serve this stage2 archive first, to nodes booted on the kacast initrd
    #[arg(long, value_name = "FILE")]
    pub stage2: Option<PathBuf>,
    /// Session name of the stage2 step
    #[arg(long, default_value = "getstage2", value_name = "NAME")]
    pub stage2_session: String,
    /// TFTP root: each cloned node's PXE configuration is switched to its local disk
    #[arg(long, value_name = "DIR")]
    pub pxe_root: Option<PathBuf>,
}

/// How the golden node serves each session.
#[derive(Args)]
pub struct ServeArgs {
    /// Chain order: ip, join or file:PATH
    #[arg(long, default_value = "ip")]
    pub order: String,
    /// Children per node: 1 is a chain (best), up to 4 builds a tree
    #[arg(long, default_value_t = 1)]
    pub arity: usize,
    /// Session key: nodes must hold the same, and every frame is authenticated
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Control TCP port (default: 30765 when free, else any)
    #[arg(long)]
    pub port: Option<u16>,
    /// Address to listen on
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: std::net::IpAddr,
    /// Do not answer discovery broadcasts (nodes then need --server)
    #[arg(long)]
    pub no_discovery: bool,
    /// UDP port for discovery broadcasts
    #[arg(long, default_value_t = kacast::protocol::DISCOVERY_PORT)]
    pub discovery_port: u16,
    /// Seconds after which a silent or stalling node is declared dead and bypassed
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
    /// TCP congestion control of every hop of the chain; "system" keeps each
    /// host's default (BBR's periodic ProbeRTT idles every hop: see docs/PERFORMANCE.md)
    #[arg(long, default_value = kacast::session::DEFAULT_CONGESTION, value_name = "NAME")]
    pub congestion: String,
}

#[derive(Args)]
pub struct InstallArgs {
    /// Base name of the install's sessions, as given to kacast clone
    #[arg(short, long, default_value = "kainstall")]
    pub session: String,
    /// Server HOST[:PORT] (default: find it by UDP broadcast)
    #[arg(long, value_name = "HOST[:PORT]")]
    pub server: Option<String>,
    /// Name of this node in the chain and the report (default: hostname)
    #[arg(long)]
    pub name: Option<String>,
    /// Write the plan's disk NAME to DEVICE instead of /dev/NAME (repeatable)
    #[arg(long = "disk", value_name = "NAME=DEVICE")]
    pub disks: Vec<String>,
    /// Where the clone is mounted while it is written
    #[arg(long, default_value = "/mnt/kacast")]
    pub root: PathBuf,
    /// Attempts to find the server for the plan (ka's stage1 made 5)
    #[arg(long, default_value_t = 5)]
    pub tries: u32,
    /// Session key, the same file as the golden node's
    #[arg(long, value_name = "FILE", conflicts_with = "key_from_cmdline")]
    pub key_file: Option<PathBuf>,
    /// Take the session key from `kacast.key=` on the kernel command line
    #[arg(long)]
    pub key_from_cmdline: bool,
    /// Address to listen on for this node's children
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: std::net::IpAddr,
    /// Seconds of silence from the server after which this node gives up
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
    /// Seconds to wait for each later step's session to start
    #[arg(long, default_value_t = 900.0, value_name = "SECS")]
    pub phase_timeout: f64,
    /// Directory for the plan while it is checked
    #[arg(long, default_value = "/tmp/kacast")]
    pub work_dir: PathBuf,
    /// Take kacast.session=, kacast.server= and kacast.key= from the kernel command line (PXE kamethod)
    #[arg(long)]
    pub from_cmdline: bool,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["device", "check"])))]
pub struct DescArgs {
    /// Disk (or image file) whose partition table to print as a desc
    pub device: Option<PathBuf>,
    /// Desc file to validate; prints the layout it gives on --disk-size
    #[arg(long, value_name = "FILE", requires = "disk_size")]
    pub check: Option<PathBuf>,
    /// Size of the target disk for --check (e.g. 20G)
    #[arg(long, value_name = "SIZE")]
    pub disk_size: Option<String>,
}

#[derive(Args)]
pub struct ServerArgs {
    /// Session name the nodes join (getstage2, kainstall…)
    #[arg(short, long)]
    pub session: String,
    /// Start as soon as this many nodes have joined
    #[arg(short, long)]
    pub nodes: Option<usize>,
    /// With --start-after: the fewest nodes to start with
    #[arg(long, default_value_t = 1)]
    pub min: usize,
    /// Start this many seconds after the server came up (given --min nodes)
    #[arg(long, value_name = "SECS")]
    pub start_after: Option<f64>,
    /// Stream the stdout of this shell command
    #[arg(short = 'e', long = "exec", value_name = "CMD", conflicts_with = "input")]
    pub exec: Option<String>,
    /// Stream this file or block device ('-' for stdin)
    #[arg(short, long, value_name = "FILE")]
    pub input: Option<String>,
    /// Send -i FILE as a sparse image: runs of zeros are not sent, ext2/3/4
    /// are read through e2image (used blocks only); nodes need --sparse too
    #[arg(long)]
    pub sparse: bool,
    /// Stream bytes held in memory per process (e.g. 32M)
    #[arg(long, default_value = "32M")]
    pub buffer: String,
    /// Size of the chunks the stream is cut into: each hop forwards a chunk
    /// once it has it whole, so a chain of N nodes ends N-1 chunks late. auto:
    /// 64K, then 256K once the chain is measured faster than 40 MB/s; or a
    /// fixed size, 1K to 4M
    #[arg(long, default_value = "auto", value_name = "auto|SIZE")]
    pub chunk: String,
    /// Seconds a node may be much slower than the rest before it is fed on its own (0: never)
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub slow_after: f64,
    /// Stream at most this many bytes per second (e.g. 50M), to spare a shared network
    #[arg(long, value_name = "SIZE")]
    pub max_rate: Option<String>,
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Write the nodes that succeeded, one per line
    #[arg(long, value_name = "FILE")]
    pub ok: Option<PathBuf>,
    /// Write the nodes that failed, as node<TAB>reason
    #[arg(long, value_name = "FILE")]
    pub ko: Option<PathBuf>,
    /// Write the whole report as JSON
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

#[derive(Args)]
pub struct Locate {
    /// Session name to join
    #[arg(short, long)]
    pub session: String,
    /// Server HOST[:PORT] (default: find it by UDP broadcast)
    #[arg(long, value_name = "HOST[:PORT]")]
    pub server: Option<String>,
    /// Attempts to find the server before giving up
    #[arg(long, default_value_t = 5)]
    pub tries: u32,
    /// Seconds between attempts
    #[arg(long, default_value_t = 1.0)]
    pub retry_interval: f64,
    /// UDP port for discovery broadcasts
    #[arg(long, default_value_t = kacast::protocol::DISCOVERY_PORT)]
    pub discovery_port: u16,
    /// Session key, the same file as the server's
    #[arg(long, value_name = "FILE", conflicts_with = "key_from_cmdline")]
    pub key_file: Option<PathBuf>,
    /// Take the session key from `kacast.key=` on the kernel command line
    #[arg(long)]
    pub key_from_cmdline: bool,
}

#[derive(Args)]
#[group(id = "sink", required = true, multiple = false, args = ["exec", "to_dir", "to_file", "discard"])]
pub struct ClientArgs {
    #[command(flatten)]
    pub locate: Locate,
    /// Name of this node in the chain and the report (default: hostname)
    #[arg(long)]
    pub name: Option<String>,
    /// Feed the stream to this shell command's stdin ($KACAST_NODE is this node's name)
    #[arg(short = 'e', long = "exec", value_name = "CMD")]
    pub exec: Option<String>,
    /// Unpack the (tar) stream into this directory
    #[arg(long, value_name = "DIR")]
    pub to_dir: Option<PathBuf>,
    /// Write the raw stream to this file or block device
    #[arg(long, value_name = "PATH")]
    pub to_file: Option<PathBuf>,
    /// The stream is a sparse image (server's --sparse): --to-file makes the
    /// zeros it leaves out (holes in a file, BLKZEROOUT on a device)
    #[arg(long)]
    pub sparse: bool,
    /// Only receive, verify and relay
    #[arg(long)]
    pub discard: bool,
    /// Stream bytes held in memory (e.g. 32M)
    #[arg(long, default_value = "32M")]
    pub buffer: String,
    /// Address to listen on for this node's children
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: std::net::IpAddr,
    /// TCP port for this node's children (default: any free port)
    #[arg(long, default_value_t = 0)]
    pub data_port: u16,
    /// Seconds of silence from the server after which this node gives up
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
}

#[derive(Args)]
pub struct GoArgs {
    #[command(flatten)]
    pub locate: Locate,
}

#[derive(Args)]
pub struct DemoArgs {
    /// Number of nodes in the rack
    #[arg(long, default_value_t = 8)]
    pub nodes: usize,
    /// Bytes to stream (e.g. 512M, 1G)
    #[arg(long, default_value = "512M")]
    pub size: String,
    /// Children per node
    #[arg(long, default_value_t = 1)]
    pub arity: usize,
    /// Stream bytes held in memory per node
    #[arg(long, default_value = "32M")]
    pub buffer: String,
    /// Keep the nodes' copies in this directory (default: a temporary one, removed)
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
}
