//! `kacast clone` and `kacast install`: the two ends of an install.

use std::path::Path;
use std::sync::{mpsc, Arc};

use anyhow::{bail, Context, Result};
use kacast::chain::Sink;
use kacast::clone::{self, CaptureConfig, CloneConfig, InstallConfig, Source, Stage2};
use kacast::disk::apply::DiskMap;
use kacast::disk::bootloader::Firmware;
use kacast::disk::env::{local_path, Environment, ImageKind};
use kacast::disk::golden::{read_golden, GoldenSpec, Sessions, TreeSource};
use kacast::disk::recorded::RecordedImage;
use kacast::disk::PreparePlan;
use kacast::disk::{BootEntry, BootKind};
use kacast::session::{ClientConfig, ServerConfig, Stats, StatusBoard};

use super::args::{CaptureArgs, CloneArgs, InstallArgs};
use super::{key, progress, seconds, serve};

pub fn run_clone(a: CloneArgs) -> Result<i32> {
    let descs: Vec<(String, std::path::PathBuf)> =
        a.desc.chunks(2).map(|p| (p[0].clone(), p[1].clone().into())).collect();
    let mut prepare = PreparePlan {
        hostname_from_node: a.hostname_from_node,
        keep_ssh_host_keys: a.keep_ssh_host_keys,
        ..PreparePlan::default()
    };
    if let Some(path) = &a.hostnames {
        prepare.hostnames = read_hostnames(path)?;
    }
    let sessions = Sessions { base: a.session.clone() };
    let firmware = a.firmware.as_deref().map(|f| if f == "uefi" { Firmware::Uefi } else { Firmware::Bios });
    let source = match &a.env {
        Some(env) => Source::Recorded(recorded(env, &a, descs, firmware, prepare, sessions.clone())?),
        None => Source::Live(GoldenSpec {
            root: a.root.clone(),
            descs,
            leave_out: a.leave_out.clone(),
            excludes: a.exclude.clone(),
            raw: a.raw.clone(),
            bootloader: a.bootloader.clone(),
            firmware,
            new_uuids: a.new_uuids,
            prepare,
            sessions: sessions.clone(),
            compress: compress_level(a.compress.as_deref())?,
            sparse: !a.no_sparse,
        }),
    };
    if a.dry_run {
        let g = match &source {
            Source::Live(spec) => read_golden(spec)?,
            Source::Recorded(image) => image.plan()?,
        };
        println!("{}", g.plan.to_json());
        match g.tree {
            Some(TreeSource::Command(cmd)) => eprintln!("files stream: {cmd}"),
            Some(TreeSource::File(f)) => eprintln!("files stream: {}", f.display()),
            None => {}
        }
        return Ok(0);
    }
    let mut server = ServerConfig::new(a.session);
    server.nodes = Some(a.nodes);
    serve(&a.serve, &mut server)?;
    if let Some(dir) = &a.log_dir {
        server.status = Some(StatusBoard::open(&sessions.base, dir)?);
        eprintln!("kacast: nodes' status and logs in {} (kacast status {0})", dir.display());
    }
    let config = CloneConfig {
        source,
        sessions,
        server,
        phase_timeout: seconds(a.phase_timeout, "--phase-timeout")?,
        stage2: a.stage2.map(|archive| Stage2 { session: a.stage2_session, archive }),
        pxe_root: a.pxe_root,
    };
    let report = clone::run_golden(config, watch)?;
    println!("{}", report.render());
    if let Some(p) = &a.report {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(p, json).with_context(|| format!("write {}", p.display()))?;
    }
    Ok(report.exit_code())
}

/// Default zstd level: level 3 compresses an OS tree to about a third at
/// several hundred MB/s per core, well above what a link carries.
const ZSTD_LEVEL: u32 = 3;

/// `--compress none|zstd|zstd:LEVEL`.
fn compress_level(arg: Option<&str>) -> Result<Option<u32>> {
    match arg {
        None | Some("none") => Ok(None),
        Some("zstd") => Ok(Some(ZSTD_LEVEL)),
        Some(other) => match other.strip_prefix("zstd:").map(str::parse::<u32>) {
            Some(Ok(level)) if (1..=19).contains(&level) => Ok(Some(level)),
            _ => bail!("--compress {other}: expected none, zstd or zstd:LEVEL (1 to 19)"),
        },
    }
}

/// `--env FILE`: a Kadeploy environment description and its image.
fn recorded(
    path: &Path,
    a: &CloneArgs,
    descs: Vec<(String, std::path::PathBuf)>,
    firmware: Option<Firmware>,
    prepare: PreparePlan,
    sessions: Sessions,
) -> Result<RecordedImage> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let env = Environment::parse(&text, &path.display().to_string())?;
    env.check()?;
    let base = path.parent().unwrap_or(Path::new("."));
    let local = |file: &str| {
        local_path(file, base).with_context(|| format!("{}: {file} is not a local file", path.display()))
    };
    let postinstalls = env
        .postinstalls
        .iter()
        .map(|p| Ok((local(&p.archive)?, p.compression, p.script.clone())))
        .collect::<Result<Vec<_>>>()?;
    let bootloader = match a.bootloader.split_whitespace().next() {
        Some("none") => BootKind::None,
        _ => BootKind::Grub,
    };
    Ok(RecordedImage {
        name: env.name.clone(),
        file: local(&env.image.file)?,
        tar: env.image.kind == ImageKind::Tar,
        compression: env.image.compression,
        filesystem: env.filesystem.clone(),
        boot: env.boot.kernel.as_ref().map(|kernel| BootEntry {
            title: env.name.clone(),
            kernel: kernel.clone(),
            initrd: env.boot.initrd.clone(),
            kernel_params: env.boot.kernel_params.clone().unwrap_or_default(),
        }),
        postinstalls,
        descs,
        partition: a.env_partition,
        bootloader,
        firmware,
        prepare,
        sessions,
    })
}

pub fn run_capture(a: CaptureArgs) -> Result<i32> {
    let golden = GoldenSpec {
        root: a.root,
        descs: Vec::new(),
        leave_out: a.leave_out,
        excludes: a.exclude,
        raw: Vec::new(),
        bootloader: "none".into(),
        firmware: None,
        new_uuids: false,
        prepare: PreparePlan::default(),
        sessions: Sessions { base: "capture".into() },
        compress: None,
        sparse: false,
    };
    let done = clone::capture(&CaptureConfig { golden, name: a.name, output: a.output })?;
    println!(
        "recorded {} ({}), described in {}; its disk layout: {}",
        done.image.display(),
        kacast::size::human(done.bytes),
        done.description.display(),
        done.desc.display()
    );
    Ok(0)
}

fn watch(session: &str, stats: Arc<Stats>, until: mpsc::Receiver<()>) {
    eprintln!("session '{session}'");
    progress::watch(stats, until);
}

/// `NODE HOSTNAME` per line, `#` comments.
fn read_hostnames(path: &Path) -> Result<std::collections::BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut map = std::collections::BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        match line.split_whitespace().collect::<Vec<_>>()[..] {
            [node, host] => {
                map.insert(node.to_string(), host.to_string());
            }
            _ => bail!("{}:{}: expected 'NODE HOSTNAME', got '{line}'", path.display(), i + 1),
        }
    }
    Ok(map)
}

pub fn run_install(mut a: InstallArgs) -> Result<i32> {
    let mut from_cmdline_key = a.key_from_cmdline;
    if a.from_cmdline {
        let text = std::fs::read_to_string("/proc/cmdline").context("read /proc/cmdline")?;
        let k = kacast::boot::KernelArgs::parse(&text);
        a.session = k.session.unwrap_or(a.session);
        a.server = k.server.or(a.server);
        from_cmdline_key |= k.has_key && a.key_file.is_none();
    }
    let mut client = ClientConfig::new(a.session.clone(), Sink::Discard);
    client.server = a.server.as_deref().map(str::parse).transpose()?;
    client.tries = a.tries;
    client.key = key(a.key_file.as_deref(), from_cmdline_key)?;
    client.bind = a.bind;
    client.timeout = seconds(a.timeout, "--timeout")?;
    if let Some(name) = a.name {
        client.name = name;
    }
    let mut disks = DiskMap::default();
    for d in &a.disks {
        disks.add(d)?;
    }
    let config = InstallConfig {
        client,
        sessions: Sessions { base: a.session },
        root: a.root,
        disks,
        phase_timeout: seconds(a.phase_timeout, "--phase-timeout")?,
        work_dir: a.work_dir,
    };
    let outcome = clone::install(&config)?;
    match outcome.error {
        None => {
            eprintln!("kacast: this node is a clone of the golden node");
            Ok(0)
        }
        Some(e) => {
            eprintln!("kacast: install failed: {e}");
            Ok(1)
        }
    }
}
