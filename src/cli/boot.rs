//! `kacast initrd build` and `kacast stage2 build`: what nodes boot on.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use kacast::boot::initrd::{self, InitrdSpec, KernelTree};
use kacast::boot::stage2::{self, Stage2Spec};

#[derive(Args)]
pub struct InitrdArgs {
    #[command(subcommand)]
    pub cmd: InitrdCmd,
}

#[derive(Subcommand)]
pub enum InitrdCmd {
    /// Build the kamethod initrd: Debian kernel modules, busybox, kacast, init (initrd/README.md)
    Build(InitrdBuildArgs),
}

#[derive(Args)]
pub struct InitrdBuildArgs {
    /// The initrd to write
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Also copy the kernel here (the one whose modules the initrd holds)
    #[arg(long, value_name = "FILE")]
    pub vmlinuz_out: Option<PathBuf>,
    /// An unpacked kernel package (boot/vmlinuz-V, lib/modules/V), instead of Debian's current one
    #[arg(long, value_name = "DIR")]
    pub kernel_dir: Option<PathBuf>,
    /// Where Debian's kernel package is kept between builds
    #[arg(long, value_name = "DIR", default_value = "/var/cache/kacast")]
    pub cache: PathBuf,
    /// Kernel modules to include instead of the default list (repeatable)
    #[arg(long = "module", value_name = "NAME")]
    pub modules: Vec<String>,
    /// A boot-only initramfs (root= then switch_root), without the kacast client
    #[arg(long)]
    pub no_client: bool,
    /// The static busybox to use
    #[arg(long, value_name = "PATH", default_value = "/bin/busybox")]
    pub busybox: PathBuf,
}

#[derive(Args)]
pub struct Stage2Args {
    #[command(subcommand)]
    pub cmd: Stage2Cmd,
}

#[derive(Subcommand)]
pub enum Stage2Cmd {
    /// Build the stage2 tar of this host's install tools (stage2/README.md)
    Build(Stage2BuildArgs),
}

#[derive(Args)]
pub struct Stage2BuildArgs {
    /// The tar to write
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Tools to include instead of stage2/tools.list (repeatable)
    #[arg(long = "tool", value_name = "NAME")]
    pub tools: Vec<String>,
    /// More files or directories to include (repeatable)
    #[arg(long = "extra", value_name = "PATH")]
    pub extra: Vec<PathBuf>,
}

pub fn initrd(a: InitrdArgs) -> Result<i32> {
    let InitrdCmd::Build(a) = a.cmd;
    let kernel = match &a.kernel_dir {
        Some(dir) => KernelTree::from_dir(dir)?,
        None => KernelTree::fetch(&a.cache)?,
    };
    let client = if a.no_client { None } else { Some(std::env::current_exe().context("the kacast binary")?) };
    let spec = InitrdSpec { kernel: kernel.clone(), modules: a.modules, busybox: a.busybox, client };
    let report = initrd::build(&spec, &a.out)?;
    if let Some(v) = &a.vmlinuz_out {
        std::fs::copy(kernel.vmlinuz(), v).with_context(|| format!("copy the kernel to {}", v.display()))?;
    }
    println!(
        "{}: {} bytes, {} entries, kernel {}, {} modules{}",
        a.out.display(),
        report.bytes,
        report.entries,
        kernel.version,
        report.modules.len(),
        if report.skipped.is_empty() {
            String::new()
        } else {
            format!(" (not in this kernel: {})", report.skipped.join(", "))
        }
    );
    Ok(0)
}

pub fn stage2(a: Stage2Args) -> Result<i32> {
    let Stage2Cmd::Build(a) = a.cmd;
    let report = stage2::build(&Stage2Spec { tools: a.tools, extra: a.extra }, &a.out)?;
    println!(
        "{}: {} bytes, {} files, {} tools",
        a.out.display(),
        report.bytes,
        report.files,
        report.tools.len()
    );
    if !report.missing.is_empty() {
        println!("not on this host: {}", report.missing.join(", "));
    }
    Ok(0)
}
