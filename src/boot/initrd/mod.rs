//! The initrd the nodes PXE-boot (ka's stage1, `all.rdz`): busybox, the
//! kernel modules for common NICs, disks and filesystems, the kacast binary,
//! and an init that brings the network up, fetches the stage2 from the golden
//! node and runs `kacast install`. Without `kamethod` on the command line the
//! same init is a minimal initramfs that mounts `root=` and switches to it.
//!
//! Built without cpio, mkinitramfs or dracut on the host, and reproducibly:
//! the same kernel, busybox and kacast binary give the same bytes.

pub mod cpio;
pub mod error;
pub mod kernel;
pub mod libs;
pub mod modules;
pub mod tree;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use tracing::{info, warn};

pub use error::{BuildError, Result};
pub use kernel::KernelTree;
pub use modules::{ModuleIndex, DEFAULT_MODULES};
pub use tree::{Node, Tree};

/// PID 1 of the initrd (busybox sh).
pub const INIT_SCRIPT: &str = include_str!("../../../initrd/init");
/// busybox-static ships no udhcpc script; this one sets the address, routes
/// and resolv.conf, and records the lease for the init.
pub const UDHCPC_SCRIPT: &str = include_str!("../../../initrd/udhcpc.script");
/// Where the init reads the module load order from.
pub const MODULES_LIST: &str = "etc/kacast/modules";
/// busybox-static's binary, which needs nothing else to run.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";

/// Merged /usr as Debian has it: tools and libraries copied from the host
/// keep their paths, and busybox's `bin/ash` and stage2's `usr/bin/…` end up
/// in one directory, where stage2's real tools replace busybox's applets.
const MERGED_USR: &[(&str, &str)] =
    &[("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")];
/// Empty directories the init mounts on or writes to.
const DIRS: &[(&str, u32)] = &[
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("run", 0o755),
    ("tmp", 0o1777),
    ("root", 0o700),
    ("mnt", 0o755),
    ("newroot", 0o755),
    ("var", 0o755),
    ("usr/bin", 0o755),
    ("usr/sbin", 0o755),
    ("usr/lib", 0o755),
    ("usr/lib64", 0o755),
];
/// (path, mode, major, minor): the console the kernel opens for PID 1 before
/// devtmpfs is mounted, and /dev/null for redirections at that point.
const DEVICES: &[(&str, u32, u32, u32)] = &[("dev/console", 0o600, 5, 1), ("dev/null", 0o666, 1, 3)];
/// glibc's getpwuid (ssh-keygen, tar's owner names) needs root to exist.
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n";
const GROUP: &str = "root:x:0:\n";

/// What goes into an initrd.
#[derive(Debug, Clone)]
pub struct InitrdSpec {
    pub kernel: KernelTree,
    /// Module names; empty means [`DEFAULT_MODULES`].
    pub modules: Vec<String>,
    /// A static busybox (default [`DEFAULT_BUSYBOX`], from busybox-static).
    pub busybox: PathBuf,
    /// The kacast binary for `/bin/kacast`; `None` builds a boot-only initrd.
    pub client: Option<PathBuf>,
}

impl InitrdSpec {
    pub fn new(kernel: KernelTree) -> InitrdSpec {
        InitrdSpec { kernel, modules: Vec::new(), busybox: DEFAULT_BUSYBOX.into(), client: None }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitrdReport {
    /// Bytes of the compressed initrd.
    pub size: u64,
    /// Entries in the archive (directories and links included).
    pub files: usize,
    pub kernel_version: String,
    /// Module names in load order.
    pub modules: Vec<String>,
    /// Asked-for modules this kernel has built in.
    pub builtin: Vec<String>,
    /// Asked-for modules this kernel does not have at all.
    pub skipped: Vec<String>,
}

/// Builds the initrd `spec` describes into `out` (gzip'ed newc cpio).
pub fn build(spec: &InitrdSpec, out: &Path) -> Result<InitrdReport> {
    let mut tree = Tree::new();
    base_layout(&mut tree);
    add_busybox(&mut tree, &spec.busybox)?;
    tree.insert("init", Node::File { mode: 0o755, data: INIT_SCRIPT.into() });
    tree.insert("etc/kacast/udhcpc.script", Node::File { mode: 0o755, data: UDHCPC_SCRIPT.into() });
    let modules = add_modules(&mut tree, spec)?;
    if let Some(client) = &spec.client {
        let data = stripped(client, out)?;
        tree.insert("usr/bin/kacast", Node::File { mode: 0o755, data });
        add_libraries(&mut tree, client)?;
    }
    let size = write_atomically(out, |w| {
        let mut gz = cpio::fixed_gzip(w);
        cpio::write_newc(&tree, cpio::source_date_epoch(), &mut gz)?;
        gz.finish()?.flush()
    })?;
    let report = InitrdReport {
        size,
        files: tree.len(),
        kernel_version: spec.kernel.version.clone(),
        modules: modules.load.iter().map(|p| modules::module_name(p)).collect(),
        builtin: modules.builtin,
        skipped: modules.missing,
    };
    info!(
        "initrd {}: {} bytes, {} entries, {} modules for kernel {}",
        out.display(),
        report.size,
        report.files,
        report.modules.len(),
        report.kernel_version
    );
    Ok(report)
}

fn base_layout(tree: &mut Tree) {
    for (link, target) in MERGED_USR {
        tree.insert(link, Node::Symlink { target: (*target).into() });
    }
    for (dir, mode) in DIRS {
        tree.insert(dir, Node::Dir { mode: *mode });
    }
    for (dev, mode, major, minor) in DEVICES {
        tree.insert(dev, Node::CharDev { mode: *mode, major: *major, minor: *minor });
    }
    tree.insert("etc/passwd", Node::File { mode: 0o644, data: PASSWD.into() });
    tree.insert("etc/group", Node::File { mode: 0o644, data: GROUP.into() });
}

/// busybox at /usr/bin/busybox and a symlink to it for each applet at the
/// path busybox itself gives (`--list-full`), so scripts find `ip`, `udhcpc`
/// and `switch_root` where they expect them.
fn add_busybox(tree: &mut Tree, busybox: &Path) -> Result<()> {
    let data = fs::read(busybox).map_err(|e| {
        BuildError::io(format!("read {} (apt-get install busybox-static)", busybox.display()), e)
    })?;
    tree.insert("usr/bin/busybox", Node::File { mode: 0o755, data });
    add_libraries(tree, busybox)?;
    let list = error::run_tool(
        Command::new(busybox).arg("--list-full"),
        "busybox",
        "list its applets",
        "busybox-static",
    )?;
    for applet in list.lines().map(str::trim).filter(|a| a.contains('/')) {
        tree.insert(applet, Node::Symlink { target: "/usr/bin/busybox".into() });
    }
    Ok(())
}

/// The modules in load order under `lib/modules/VERSION`, and the list the
/// init reads (absolute paths, so it needs neither modprobe nor `uname -r`).
fn add_modules(tree: &mut Tree, spec: &InitrdSpec) -> Result<modules::Resolution> {
    let dir = spec.kernel.modules_dir();
    let index = ModuleIndex::load(&dir)?;
    let wanted: Vec<String> = if spec.modules.is_empty() {
        DEFAULT_MODULES.iter().map(|m| m.to_string()).collect()
    } else {
        spec.modules.clone()
    };
    let r = index.resolve(&wanted);
    if !r.missing.is_empty() {
        warn!("kernel {} has no module {}: skipped", spec.kernel.version, r.missing.join(", "));
    }
    let mut list = String::new();
    for rel in &r.load {
        let (rel_out, data) = module_file(&dir, rel)?;
        let at = format!("lib/modules/{}/{rel_out}", spec.kernel.version);
        tree.insert(&at, Node::File { mode: 0o644, data });
        list.push_str(&format!("/{at}\n"));
    }
    tree.insert(MODULES_LIST, Node::File { mode: 0o644, data: list.into() });
    Ok(r)
}

/// A module's bytes and its name in the initrd: compressed modules (Debian
/// from trixie on ships `.ko.xz`) are stored decompressed, as busybox insmod
/// hands the file to the kernel as it is.
fn module_file(dir: &Path, rel: &str) -> Result<(String, Vec<u8>)> {
    let host = dir.join(rel);
    let decompressor = [(".xz", "xz", "xz-utils"), (".zst", "zstd", "zstd"), (".gz", "gzip", "gzip")]
        .into_iter()
        .find(|(suffix, _, _)| rel.ends_with(suffix));
    let Some((suffix, tool, package)) = decompressor else {
        let data =
            fs::read(&host).map_err(|e| BuildError::io(format!("read module {}", host.display()), e))?;
        return Ok((rel.to_string(), data));
    };
    let out = error::run_tool_bytes(
        Command::new(tool).arg("-dc").arg(&host),
        tool,
        "decompress kernel modules",
        package,
    )?;
    Ok((rel.trim_end_matches(suffix).to_string(), out))
}

/// The shared libraries (and dynamic loader) `binary` needs, at their host paths.
pub(crate) fn add_libraries(tree: &mut Tree, binary: &Path) -> Result<()> {
    for lib in libs::closure(binary)? {
        tree.add_host(&lib).map_err(|e| BuildError::io(format!("copy {}", lib.display()), e))?;
    }
    Ok(())
}

/// The client binary without its debug sections: a debug build is ~80 MB, of
/// which the node needs ~10. Copied as is when binutils' strip is absent.
fn stripped(client: &Path, out: &Path) -> Result<Vec<u8>> {
    let tmp = out.with_extension("kacast-stripped.tmp");
    let done = Command::new("strip").arg("--strip-debug").arg("-o").arg(&tmp).arg(client).status();
    let data = match done {
        Ok(s) if s.success() => {
            fs::read(&tmp).map_err(|e| BuildError::io(format!("read {}", tmp.display()), e))
        }
        _ => {
            warn!("could not strip {} (binutils?): copied with its debug sections", client.display());
            fs::read(client).map_err(|e| BuildError::io(format!("read {}", client.display()), e))
        }
    };
    let _ = fs::remove_file(&tmp);
    data
}

/// Writes `out` through a temporary file renamed into place, so a failed
/// build never leaves a truncated initrd for PXE to serve. Returns its size.
pub(crate) fn write_atomically(
    out: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<fs::File>) -> std::io::Result<()>,
) -> Result<u64> {
    let tmp = out.with_extension("tmp");
    let what = || format!("write {}", out.display());
    let file = fs::File::create(&tmp).map_err(|e| BuildError::io(what(), e))?;
    let mut w = std::io::BufWriter::new(file);
    write(&mut w).and_then(|()| w.flush()).map_err(|e| BuildError::io(what(), e))?;
    drop(w);
    fs::rename(&tmp, out).map_err(|e| BuildError::io(what(), e))?;
    Ok(fs::metadata(out).map_err(|e| BuildError::io(what(), e))?.len())
}
