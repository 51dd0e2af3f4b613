//! `kacast initrd build` and `kacast stage2 build`: the files a node boots
//! (kernel + initrd, served by `kacast pxe render`) and the tools it fetches
//! from the golden node before it installs.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use kacast::boot::initrd::{self, InitrdSpec, KernelTree};
use kacast::boot::stage2::{self, Stage2Spec};

#[derive(Args)]
pub struct InitrdArgs {
    #[command(subcommand)]
    pub command: InitrdCmd,
}

#[derive(Subcommand)]
pub enum InitrdCmd {
    /// Build the nodes' initrd: busybox, kernel modules, this kacast binary and the kamethod init
    Build(InitrdBuildArgs),
}

#[derive(Args)]
pub struct InitrdBuildArgs {
    /// The initrd to write (gzip'ed cpio)
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// An unpacked kernel package (boot/vmlinuz-V, lib/modules/V) instead of Debian's current one
    #[arg(long, value_name = "DIR", conflicts_with = "cache")]
    pub kernel_dir: Option<PathBuf>,
    /// Where Debian's current kernel package is downloaded and unpacked (reused when there)
    #[arg(long, value_name = "DIR", default_value = "/var/cache/kacast/kernel")]
    pub cache: PathBuf,
    /// A kernel module to include (repeatable; default: virtio, common NICs and disks, ext4/xfs/btrfs)
    #[arg(long = "module", value_name = "NAME")]
    pub modules: Vec<String>,
    /// Leave the kacast binary out: an initrd that only boots a cloned disk (root=)
    #[arg(long)]
    pub no_client: bool,
    /// The static busybox to install (busybox-static)
    #[arg(long, value_name = "PATH", default_value = initrd::DEFAULT_BUSYBOX)]
    pub busybox: PathBuf,
    /// Also copy the kernel the initrd's modules belong to here
    #[arg(long, value_name = "FILE")]
    pub vmlinuz_out: Option<PathBuf>,
}

#[derive(Args)]
pub struct Stage2Args {
    #[command(subcommand)]
    pub command: Stage2Cmd,
}

#[derive(Subcommand)]
pub enum Stage2Cmd {
    /// Build the stage2 tar: this host's partitioning, mkfs, tar and grub tools with their libraries
    Build(Stage2BuildArgs),
}

#[derive(Args)]
pub struct Stage2BuildArgs {
    /// The stage2 to write (a plain tar, as the initrd's busybox tar reads it)
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// A tool to include instead of the default list (repeatable; a name or an absolute path)
    #[arg(long = "tool", value_name = "T")]
    pub tools: Vec<String>,
    /// A host directory or file to carry as it is (repeatable)
    #[arg(long = "extra", value_name = "PATH")]
    pub extra: Vec<PathBuf>,
}

pub fn run_initrd(a: InitrdArgs) -> Result<i32> {
    let InitrdCmd::Build(a) = a.command;
    let kernel = match &a.kernel_dir {
        Some(dir) => KernelTree::from_dir(dir)?,
        None => KernelTree::fetch(&a.cache)?,
    };
    let client = if a.no_client {
        None
    } else {
        Some(std::env::current_exe().context("find this kacast binary to put in the initrd")?)
    };
    let spec = InitrdSpec { kernel, modules: a.modules, busybox: a.busybox, client };
    let report = initrd::build(&spec, &a.out)?;
    if let Some(dest) = &a.vmlinuz_out {
        let src = spec.kernel.vmlinuz();
        std::fs::copy(&src, dest).with_context(|| format!("copy {} to {}", src.display(), dest.display()))?;
        println!("kernel {} -> {}", spec.kernel.version, dest.display());
    }
    println!(
        "initrd {}: {} ({} entries), kernel {}, {} modules{}",
        a.out.display(),
        kacast::size::human(report.size),
        report.files,
        report.kernel_version,
        report.modules.len(),
        if report.skipped.is_empty() {
            String::new()
        } else {
            format!(", not in this kernel: {}", report.skipped.join(" "))
        }
    );
    Ok(0)
}

pub fn run_stage2(a: Stage2Args) -> Result<i32> {
    let Stage2Cmd::Build(a) = a.command;
    let report = stage2::build(&Stage2Spec { tools: a.tools, extra_dirs: a.extra }, &a.out)?;
    println!(
        "stage2 {}: {} ({} entries), {} tools{}",
        a.out.display(),
        kacast::size::human(report.size),
        report.files,
        report.tools.len(),
        if report.missing.is_empty() {
            String::new()
        } else {
            format!(", not on this host: {}", report.missing.join(" "))
        }
    );
    Ok(0)
}
