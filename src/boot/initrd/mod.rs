//! The kamethod initrd: a small initramfs that brings a node from PXE to
//! `kacast install` (ka-deploy's initrd + its init script).
//!
//! It holds a Debian kernel's modules for common NICs and disks, busybox,
//! `initrd/init` and `initrd/udhcpc.script`, and the kacast binary with the
//! libraries it links to. Everything else the install needs (sfdisk, mkfs,
//! grub…) comes over the chain as the stage2 ([`super::stage2`]), so the
//! initrd stays small. The same builder without the client makes the boot
//! initramfs of a small system (`root=` then switch_root): `kacast lab` boots
//! its clones with it.
//!
//! The archive is reproducible: the same inputs give the same bytes (sorted
//! entries, one mtime, `gzip -n`).

mod cpio;
mod kernel;
pub mod libs;
mod modules;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use thiserror::Error;
use tracing::{info, warn};

pub use cpio::{Entry, Writer};
pub use kernel::KernelTree;
pub use modules::{name_of, DepTable, DEFAULT as DEFAULT_MODULES};

/// The init script: PID 1 of the initrd.
pub const INIT: &str = include_str!("../../../initrd/init");
/// busybox's udhcpc calls this with each lease (busybox-static ships none).
pub const UDHCPC_SCRIPT: &str = include_str!("../../../initrd/udhcpc.script");

#[derive(Debug, Error)]
pub enum InitrdError {
    #[error("kernel: {0}")]
    Kernel(String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

impl InitrdError {
    fn io(path: &Path, source: std::io::Error) -> InitrdError {
        InitrdError::Io { path: path.to_path_buf(), source }
    }
}

#[derive(Debug, Clone)]
pub struct InitrdSpec {
    pub kernel: KernelTree,
    /// Modules to include (with their dependencies); empty: [`DEFAULT_MODULES`].
    pub modules: Vec<String>,
    /// A static busybox (Debian's busybox-static: `/bin/busybox`).
    pub busybox: PathBuf,
    /// The kacast binary; `None` makes a boot-only initramfs.
    pub client: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct InitrdReport {
    pub bytes: u64,
    pub entries: usize,
    pub modules: Vec<String>,
    /// Wanted modules this kernel has neither as a module nor built in.
    pub skipped: Vec<String>,
}

/// Builds the initrd into `out` (gzip-compressed newc cpio).
pub fn build(spec: &InitrdSpec, out: &Path) -> Result<InitrdReport, InitrdError> {
    let mut tree = Tree::default();
    for d in ["bin", "dev", "etc/kacast", "mnt", "proc", "root", "run", "sys", "tmp", "usr/bin", "usr/sbin"] {
        tree.dir(d);
    }
    tree.put("dev/console", Entry::CharDev { major: 5, minor: 1 });
    tree.put("dev/null", Entry::CharDev { major: 1, minor: 3 });
    tree.put("init", Entry::File { data: INIT.as_bytes().to_vec(), executable: true });
    tree.put(
        "etc/kacast/udhcpc.script",
        Entry::File { data: UDHCPC_SCRIPT.as_bytes().to_vec(), executable: true },
    );

    // busybox and one link per applet, all in /bin: the stage2's real tools
    // (in /usr/sbin, /usr/bin, first on init's PATH) win over the applets.
    tree.file("bin/busybox", &spec.busybox, true)?;
    for applet in applets(&spec.busybox)? {
        if applet != "busybox" {
            tree.put(&format!("bin/{applet}"), Entry::Symlink("busybox".into()));
        }
    }
    tree.put("sbin", Entry::Symlink("bin".into()));

    // Modules, in load order.
    let mdir = spec.kernel.modules_dir();
    let read =
        |name: &str| fs::read_to_string(mdir.join(name)).map_err(|e| InitrdError::io(&mdir.join(name), e));
    let table = DepTable::parse(&read("modules.dep")?, &read("modules.builtin").unwrap_or_default());
    let wanted: Vec<&str> = if spec.modules.is_empty() {
        DEFAULT_MODULES.to_vec()
    } else {
        spec.modules.iter().map(String::as_str).collect()
    };
    let (order, skipped) = table.resolve(&wanted);
    if !skipped.is_empty() {
        warn!("modules not in kernel {} (skipped): {}", spec.kernel.version, skipped.join(", "));
    }
    let prefix = format!("lib/modules/{}", spec.kernel.version);
    let mut list = String::new();
    for path in &order {
        tree.file(&format!("{prefix}/{path}"), &mdir.join(path), false)?;
        list.push_str(&format!("/{prefix}/{path}\n"));
    }
    tree.put("etc/kacast/modules", Entry::File { data: list.into_bytes(), executable: false });

    if let Some(client) = &spec.client {
        tree.put("bin/kacast", Entry::File { data: stripped(client)?, executable: true });
        for lib in libs::closure(client)? {
            let rel = lib.to_string_lossy().trim_start_matches('/').to_string();
            tree.file(&rel, &lib, true)?;
        }
    }

    let mtime = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut w = Writer::new(Vec::new(), mtime);
    for (path, entry) in &tree.0 {
        w.add(path, entry).map_err(|e| InitrdError::io(out, e))?;
    }
    let archive = w.finish().map_err(|e| InitrdError::io(out, e))?;
    let bytes = gzip(&archive, out)?;
    let modules: Vec<String> = order.iter().map(|p| name_of(p)).collect();
    info!("{}: {} entries, {} modules, {bytes} bytes", out.display(), tree.0.len(), modules.len());
    Ok(InitrdReport { bytes, entries: tree.0.len(), modules, skipped })
}

/// The archive's entries by path: sorted, parents before children.
#[derive(Default)]
struct Tree(BTreeMap<String, Entry>);

impl Tree {
    fn dir(&mut self, path: &str) {
        let mut at = String::new();
        for part in path.split('/') {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            self.0.entry(at.clone()).or_insert(Entry::Dir);
        }
    }

    fn put(&mut self, path: &str, entry: Entry) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.0.insert(path.to_string(), entry);
    }

    fn file(&mut self, path: &str, from: &Path, executable: bool) -> Result<(), InitrdError> {
        let data = fs::read(from).map_err(|e| InitrdError::io(from, e))?;
        self.put(path, Entry::File { data, executable });
        Ok(())
    }
}

fn applets(busybox: &Path) -> Result<Vec<String>, InitrdError> {
    let out = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| InitrdError::Kernel(format!("{}: {e} (package busybox-static)", busybox.display())))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|a| !a.contains('/'))
        .collect())
}

/// The binary without its debug information (a debug build is ten times
/// larger, and every node downloads it by TFTP), when objcopy is there.
fn stripped(binary: &Path) -> Result<Vec<u8>, InitrdError> {
    let tmp = std::env::temp_dir().join(format!("kacast-initrd-strip-{}", std::process::id()));
    let ok = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(binary)
        .arg(&tmp)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let from = if ok { tmp.as_path() } else { binary };
    let data = fs::read(from).map_err(|e| InitrdError::io(from, e));
    let _ = fs::remove_file(&tmp);
    data
}

/// `gzip -n`: no name or time in the header, so the output is reproducible.
fn gzip(data: &[u8], out: &Path) -> Result<u64, InitrdError> {
    let file = fs::File::create(out).map_err(|e| InitrdError::io(out, e))?;
    let mut child = Command::new("gzip")
        .args(["-n", "-6", "-c"])
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .map_err(|e| InitrdError::Kernel(format!("gzip: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let written = stdin.write_all(data);
    drop(stdin);
    let status = child.wait().map_err(|e| InitrdError::io(out, e))?;
    written.map_err(|e| InitrdError::io(out, e))?;
    if !status.success() {
        return Err(InitrdError::Kernel(format!("gzip failed writing {}", out.display())));
    }
    Ok(fs::metadata(out).map_err(|e| InitrdError::io(out, e))?.len())
}
