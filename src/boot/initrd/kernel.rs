//! The kernel the nodes boot: Debian's, unpacked from its package without
//! installing it (installing `linux-image-amd64` on the golden node would pull
//! initramfs-tools, udev and more).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::InitrdError;

/// An unpacked kernel package: `ROOT/boot/vmlinuz-VERSION` and
/// `ROOT/lib/modules/VERSION` with its `modules.dep`.
#[derive(Debug, Clone)]
pub struct KernelTree {
    pub root: PathBuf,
    pub version: String,
}

/// Written last into a cache entry: an entry without it was interrupted.
const COMPLETE: &str = ".kacast-complete";

impl KernelTree {
    /// Debian's current kernel (the package `linux-image-amd64` depends on),
    /// downloaded and unpacked into `cache` unless already there.
    pub fn fetch(cache: &Path) -> Result<KernelTree, InitrdError> {
        let depends = tool("apt-cache", &["depends", "linux-image-amd64"], None)?;
        let package = depends
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-"))
            .ok_or_else(|| {
                InitrdError::Kernel("apt-cache names no linux-image-* for linux-image-amd64".into())
            })?
            .trim()
            .to_string();
        let version = package.trim_start_matches("linux-image-").to_string();
        let root = cache.join(&package);
        if root.join(COMPLETE).exists() {
            return KernelTree::from_dir(&root);
        }
        let download = cache.join("download");
        let _ = fs::remove_dir_all(&download);
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&download).map_err(|e| InitrdError::io(&download, e))?;
        tool("apt-get", &["download", "-q", &package], Some(&download))?;
        let deb = fs::read_dir(&download)
            .map_err(|e| InitrdError::io(&download, e))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| InitrdError::Kernel(format!("apt-get download {package} left no .deb")))?;
        tool("dpkg-deb", &["-x", &deb.to_string_lossy(), &root.to_string_lossy()], None)?;
        tool("depmod", &["-b", &root.to_string_lossy(), &version], None)?;
        let _ = fs::remove_dir_all(&download);
        fs::write(root.join(COMPLETE), &version).map_err(|e| InitrdError::io(&root, e))?;
        KernelTree::from_dir(&root)
    }

    /// A kernel package already unpacked (and `depmod`ed) into `root`.
    pub fn from_dir(root: &Path) -> Result<KernelTree, InitrdError> {
        let modules = root.join("lib/modules");
        let version = fs::read_dir(&modules)
            .map_err(|e| InitrdError::io(&modules, e))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .next()
            .ok_or_else(|| InitrdError::Kernel(format!("{}: no kernel version", modules.display())))?;
        let tree = KernelTree { root: root.to_path_buf(), version };
        for needed in [tree.vmlinuz(), tree.modules_dir().join("modules.dep")] {
            if !needed.exists() {
                return Err(InitrdError::Kernel(format!("{} is missing", needed.display())));
            }
        }
        Ok(tree)
    }

    pub fn vmlinuz(&self) -> PathBuf {
        self.root.join("boot").join(format!("vmlinuz-{}", self.version))
    }

    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.version)
    }
}

/// Runs a packaging tool; its stdout.
fn tool(program: &str, args: &[&str], dir: Option<&Path>) -> Result<String, InitrdError> {
    let mut c = Command::new(program);
    c.args(args);
    if let Some(d) = dir {
        c.current_dir(d);
    }
    let out = c.output().map_err(|e| InitrdError::Kernel(format!("{program}: {e} (is it installed?)")))?;
    if !out.status.success() {
        return Err(InitrdError::Kernel(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
