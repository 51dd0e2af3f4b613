//! `kacast lab`: a virtual rack on this machine.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use kacast::lab::{self, Firmware, Lab, LabConfig};

#[derive(Args)]
pub struct LabArgs {
    /// Number of VMs in the rack
    #[arg(short, long, default_value_t = 3)]
    pub nodes: usize,
    /// UEFI VMs (OVMF) and a GPT golden disk with an ESP, instead of BIOS and MBR
    #[arg(long)]
    pub uefi: bool,
    /// Work directory: images, consoles, logs (kept afterwards)
    #[arg(long, value_name = "DIR")]
    pub work: Option<PathBuf>,
    /// Where the Debian kernel package is kept between runs
    #[arg(long, value_name = "DIR", default_value = "/var/cache/kacast/kernel")]
    pub cache: PathBuf,
    /// MiB of incompressible data in the golden system
    #[arg(long, default_value_t = 16)]
    pub filler: u64,
    /// Memory of each VM, MiB
    #[arg(long, default_value_t = 512)]
    pub memory: u32,
    /// Remove what labs killed without cleaning up left behind (their
    /// namespaces, VMs, mounts and loop devices) and exit; with --work, what
    /// is mounted or attached from that directory too
    #[arg(long)]
    pub clean: bool,
}

pub fn run(a: LabArgs) -> Result<i32> {
    if a.clean {
        let swept = lab::sweep_stale(a.work.as_deref());
        for s in &swept {
            println!("kacast lab --clean: {s}");
        }
        if swept.is_empty() {
            println!("kacast lab --clean: no lab left anything behind");
        }
        return Ok(0);
    }
    let work = a.work.unwrap_or_else(lab::default_work_dir);
    let mut config = LabConfig::new(a.nodes, std::env::current_exe()?, work.clone(), a.cache);
    config.firmware = if a.uefi { Firmware::Uefi } else { Firmware::Bios };
    config.filler_mib = a.filler;
    config.memory_mib = a.memory;
    eprintln!("kacast lab: {} VMs, work directory {}", a.nodes, work.display());
    let kept = work.clone();
    super::interrupt::on_interrupt("kacast lab", move || {
        format!("{}; the work directory stays: {}", lab::sweep(&kept), kept.display())
    })?;
    let mut lab = Lab::prepare(config)?;
    lab.start()?;
    eprintln!("kacast lab: nodes' status: kacast status {}", lab.logs.display());
    let outcome = lab.wait_clone(Instant::now() + lab::INSTALL_DEADLINE);
    super::interrupt::settle();
    let outcome = outcome?;
    println!("{}", outcome.table.trim_end());
    let boots = lab.wait_boots(Instant::now() + lab::BOOT_DEADLINE);
    super::interrupt::settle();
    println!("\nnode     mac                pxe    booted its clone");
    for b in &boots {
        let pxe = if lab.pxe_is_local(&b.mac) { "local" } else { "kamethod" };
        println!("{:<8} {}  {:<6} {}", b.name, b.mac, pxe, b.booted.as_deref().unwrap_or("no"));
    }
    let booted = boots.iter().filter(|b| b.booted.is_some()).count();
    println!("{booted} of {} VMs boot their clone; consoles and logs in {}", boots.len(), work.display());
    Ok(match booted {
        n if n == boots.len() => 0,
        0 => 1,
        _ => 2,
    })
}
