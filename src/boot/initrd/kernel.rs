//! The kernel the nodes boot and whose modules go into the initrd: Debian's
//! `linux-image-amd64`, downloaded as a package and unpacked into a cache
//! (never installed on the host: that would pull initramfs-tools and udev).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{info, warn};

use super::error::{run_tool, BuildError, Result};

/// The package that always depends on Debian's current kernel.
const META_PACKAGE: &str = "linux-image-amd64";
/// Written into a cache entry once it is complete (unpacked and depmod'ed):
/// an interrupted fetch is redone rather than half used.
const COMPLETE_MARK: &str = ".kacast-complete";
/// Tells apart the scratch directories of fetches within one process.
static SCRATCH: AtomicU64 = AtomicU64::new(0);

/// An unpacked kernel package: `root/boot/vmlinuz-VERSION` and
/// `root/lib/modules/VERSION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelTree {
    pub root: PathBuf,
    pub version: String,
}

impl KernelTree {
    /// Debian's current amd64 kernel, unpacked under `cache/VERSION`; reused
    /// when already there. Without apt (or its package lists) the newest tree
    /// already in the cache is used, with a warning.
    pub fn fetch(cache: &Path) -> Result<KernelTree> {
        let package = match current_package() {
            Ok(p) => p,
            Err(e) => {
                return newest_cached(cache)
                    .inspect(|k| warn!("{e}; using the cached kernel {}", k.version))
                    .ok_or(e)
            }
        };
        let version = package.trim_start_matches("linux-image-").to_string();
        let root = cache.join(&version);
        if root.join(COMPLETE_MARK).exists() {
            info!("kernel {version}: cached in {}", root.display());
            return KernelTree::from_dir(&root);
        }
        info!("kernel {version}: downloading {package} into {}", cache.display());
        // Per-process scratch names: two builds fetching at once (parallel
        // tests) must not unpack into each other; the first rename wins.
        let scratch = format!("{}.{}", std::process::id(), SCRATCH.fetch_add(1, Ordering::Relaxed));
        let download = cache.join(format!("download.{scratch}"));
        let partial = cache.join(format!("{version}.partial.{scratch}"));
        let fetched = unpack(&package, &version, &download, &partial);
        let _ = fs::remove_dir_all(&download);
        if let Err(e) = fetched {
            let _ = fs::remove_dir_all(&partial);
            return Err(e);
        }
        if root.exists() && !root.join(COMPLETE_MARK).exists() {
            let _ = fs::remove_dir_all(&root);
        }
        if fs::rename(&partial, &root).is_err() {
            let _ = fs::remove_dir_all(&partial);
        }
        KernelTree::from_dir(&root)
    }

    /// An already unpacked kernel tree (one version under `lib/modules`);
    /// depmod is run if its `modules.dep` is missing.
    pub fn from_dir(root: &Path) -> Result<KernelTree> {
        let no = |why: String| BuildError::Kernel { root: root.into(), why };
        let modules = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|d| root.join(d))
            .find(|d| d.is_dir())
            .ok_or_else(|| no("no lib/modules directory".into()))?;
        let mut versions: Vec<String> = fs::read_dir(&modules)
            .map_err(|e| BuildError::io(format!("read {}", modules.display()), e))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        versions.sort();
        let version = match versions.as_slice() {
            [v] => v.clone(),
            [] => return Err(no(format!("nothing in {}", modules.display()))),
            many => {
                return Err(no(format!("several kernels ({}): give one tree per kernel", many.join(", "))))
            }
        };
        let k = KernelTree { root: root.into(), version };
        if !k.vmlinuz().is_file() {
            return Err(no(format!("no {}", k.vmlinuz().display())));
        }
        if !k.modules_dir().join("modules.dep").is_file() {
            depmod(root, &k.version)?;
        }
        Ok(k)
    }

    pub fn vmlinuz(&self) -> PathBuf {
        self.root.join("boot").join(format!("vmlinuz-{}", self.version))
    }

    /// `lib/modules/VERSION` (or its merged-/usr place) inside the tree.
    pub fn modules_dir(&self) -> PathBuf {
        let lib = self.root.join("lib/modules").join(&self.version);
        if lib.is_dir() {
            lib
        } else {
            self.root.join("usr/lib/modules").join(&self.version)
        }
    }
}

/// Downloads `package` into `download` and unpacks it, depmod'ed and marked
/// complete, into `root`.
fn unpack(package: &str, version: &str, download: &Path, root: &Path) -> Result<()> {
    fs::create_dir_all(download).map_err(|e| BuildError::io(format!("create {}", download.display()), e))?;
    run_tool(
        Command::new("apt-get").args(["download", "-q", package]).current_dir(download),
        "apt-get",
        &format!("download {package} (is the network up?)"),
        "apt",
    )?;
    let deb = find_deb(download, package)?;
    run_tool(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(root),
        "dpkg-deb",
        "unpack the kernel package",
        "dpkg",
    )?;
    depmod(root, version)?;
    fs::write(root.join(COMPLETE_MARK), version)
        .map_err(|e| BuildError::io(format!("mark {} complete", root.display()), e))
}

/// `linux-image-6.x…-amd64`, the versioned package the meta package depends on.
fn current_package() -> Result<String> {
    let out = run_tool(
        Command::new("apt-cache").args(["depends", META_PACKAGE]),
        "apt-cache",
        "find the current Debian kernel",
        "apt",
    )?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p != &META_PACKAGE)
        .map(String::from)
        .ok_or_else(|| BuildError::Tool {
            tool: "apt-cache".into(),
            detail: format!(
                "no versioned kernel among the dependencies of {META_PACKAGE} (run apt-get update?)"
            ),
        })
}

fn find_deb(dir: &Path, package: &str) -> Result<PathBuf> {
    let entries = fs::read_dir(dir).map_err(|e| BuildError::io(format!("read {}", dir.display()), e))?;
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with(&format!("{package}_")) && name.ends_with(".deb")
        })
        .ok_or_else(|| BuildError::Tool {
            tool: "apt-get download".into(),
            detail: format!("no {package}_*.deb in {}", dir.display()),
        })
}

fn depmod(root: &Path, version: &str) -> Result<()> {
    run_tool(
        Command::new("depmod").arg("-b").arg(root).arg(version),
        "depmod",
        "index the kernel's modules",
        "kmod",
    )
    .map(drop)
}

fn newest_cached(cache: &Path) -> Option<KernelTree> {
    let mut complete: Vec<PathBuf> = fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(COMPLETE_MARK).exists() && !p.to_string_lossy().contains(".partial."))
        .collect();
    complete.sort();
    KernelTree::from_dir(complete.last()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_dir_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let e = KernelTree::from_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("no lib/modules"), "{e}");
        fs::create_dir_all(dir.path().join("lib/modules/6.1.0-9-amd64")).unwrap();
        let e = KernelTree::from_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("vmlinuz-6.1.0-9-amd64"), "{e}");
    }
}
