//! `kacast pxe`: the network-boot files for the nodes, and the per-node switch
//! between the kacast installer (kamethod) and the local disk.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use kacast::boot::pxe::{self, PxeConfig};

#[derive(Args)]
pub struct PxeArgs {
    #[command(subcommand)]
    pub command: PxeCmd,
}

#[derive(Subcommand)]
pub enum PxeCmd {
    /// Write pxelinux, iPXE and GRUB EFI boot files (and dnsmasq configurations) into a TFTP root
    Render(RenderArgs),
    /// Make these nodes boot their local disk next time (a per-MAC override)
    Local(MacArgs),
    /// Make these nodes boot the kacast installer again (removes the per-MAC override)
    Kamethod(MacArgs),
}

#[derive(Args)]
pub struct RenderArgs {
    /// The TFTP root to write into
    #[arg(long, env = "KACAST_TFTP_ROOT", default_value = "/srv/tftp")]
    pub tftp_root: PathBuf,
    /// The kernel, as a path inside the TFTP root
    #[arg(long)]
    pub kernel: String,
    /// The initrd with kacast, as a path inside the TFTP root
    #[arg(long)]
    pub initrd: String,
    /// Session the nodes join (kacast.session=)
    #[arg(short, long, default_value = "kainstall")]
    pub session: String,
    /// Server the nodes contact (kacast.server=; default: found by broadcast)
    #[arg(long, value_name = "HOST:PORT")]
    pub server: Option<String>,
    /// Session key file: its secret goes on the nodes' command line (kacast.key=)
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// More kernel arguments for the nodes
    #[arg(long, value_name = "ARGS", default_value = "")]
    pub append: String,
    /// Interface dnsmasq serves (with --range: also write the dnsmasq configurations)
    #[arg(long, value_name = "IF", requires = "range")]
    pub interface: Option<String>,
    /// DHCP range START,END[,LEASE] of dnsmasq-full.conf; dnsmasq-proxy.conf serves START's network
    #[arg(long, value_name = "A,B", requires = "interface")]
    pub range: Option<String>,
    /// Directory for the dnsmasq configurations (default: the TFTP root)
    #[arg(long, value_name = "DIR")]
    pub dnsmasq_dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct MacArgs {
    /// The TFTP root the boot files are in
    #[arg(long, env = "KACAST_TFTP_ROOT", default_value = "/srv/tftp")]
    pub tftp_root: PathBuf,
    /// MAC addresses of the nodes (52:54:00:ab:cd:01 or 52-54-00-ab-cd-01)
    #[arg(required = true, value_name = "MAC")]
    pub macs: Vec<String>,
}

pub fn run(a: PxeArgs) -> Result<i32> {
    match a.command {
        PxeCmd::Render(r) => render(r),
        PxeCmd::Local(m) => {
            // Every MAC checked before any file changes.
            for mac in &m.macs {
                pxe::mac_config_name(mac)?;
            }
            for mac in &m.macs {
                let p = pxe::set_local(&m.tftp_root, mac)?;
                println!("{mac}: boots its local disk ({})", p.display());
            }
            Ok(0)
        }
        PxeCmd::Kamethod(m) => {
            for mac in &m.macs {
                pxe::mac_config_name(mac)?;
            }
            for mac in &m.macs {
                pxe::set_kamethod(&m.tftp_root, mac)?;
                println!("{mac}: boots the kacast installer (kamethod)");
            }
            Ok(0)
        }
    }
}

/// The secret of a key file as `kacast.key=` carries it: the file's bytes, one
/// trailing newline dropped (as [`kacast::auth::Key::from_file`] reads it).
fn key_secret(path: &std::path::Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read key file {}", path.display()))?;
    let secret = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    let Ok(secret) = std::str::from_utf8(secret) else {
        bail!("key file {}: not text, cannot go on a kernel command line", path.display());
    };
    // The same key the server derives from the file.
    let from_file = kacast::auth::Key::from_file(path)?;
    let from_cmdline = kacast::auth::Key::from_cmdline(&format!("kacast.key={secret}"));
    if secret.contains(char::is_whitespace) || from_cmdline.and_then(|k| k.ok()) != Some(from_file) {
        bail!("key file {}: its secret must be one word to go on a kernel command line", path.display());
    }
    Ok(secret.to_string())
}

fn render(r: RenderArgs) -> Result<i32> {
    let mut c = PxeConfig::new(&r.tftp_root, &r.kernel, &r.initrd);
    c.session = r.session;
    c.server = r.server;
    c.key = r.key_file.as_deref().map(key_secret).transpose()?;
    c.extra_append = r.append;
    c.interface = r.interface;
    c.range = r.range;
    c.dnsmasq_dir = r.dnsmasq_dir;
    if c.key.is_some() {
        eprintln!("kacast: the session key is in the boot files: anyone who can read the TFTP root has it");
    }
    for path in pxe::install(&c)? {
        println!("{}", path.display());
    }
    Ok(0)
}
