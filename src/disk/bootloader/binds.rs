//! The running system's /dev, /proc, /sys (and efivars) bind-mounted into
//! the clone for the chrooted tools, private so nothing propagates back to
//! the host, and always unmounted again, on error and on a panic too.

use std::fs;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::in_clone;
use crate::disk::error::{DiskError, Result};
use crate::disk::mount::{bind_private, unmount_or_detach};

/// What the chrooted tools need from the running system, in mount order.
/// efivars only when present (a UEFI-booted stage2): grub-install and dracut
/// read it on UEFI.
const BINDS: &[&str] = &["/dev", "/proc", "/sys", "/sys/firmware/efi/efivars"];

/// Runs `f` with [`BINDS`] bind-mounted into `root`, and unmounts them
/// whatever `f` returns.
pub(super) fn with_binds<T>(root: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let binds = Binds::mount(root)?;
    let out = f();
    let released = binds.release();
    match (out, released) {
        (Err(e), Err(u)) => {
            warn!("{u}");
            Err(e)
        }
        (out, released) => released.and(out),
    }
}

/// Bind mounts made in the clone, unmounted in reverse order by
/// [`Binds::release`] or, on a panic, by `Drop`.
struct Binds {
    mounted: Vec<PathBuf>,
}

impl Binds {
    fn mount(root: &Path) -> Result<Binds> {
        let mut binds = Binds { mounted: Vec::new() };
        for src in BINDS {
            let src = Path::new(src);
            if !src.is_dir() {
                continue;
            }
            let dst = in_clone(root, &src.to_string_lossy());
            prepare_mount_point(&dst)?;
            // On error, dropping `binds` unmounts what is already mounted.
            bind_private(src, &dst)?;
            binds.mounted.push(dst);
        }
        Ok(binds)
    }

    /// Unmounts everything; an error only when a mount could not even be
    /// detached lazily.
    fn release(mut self) -> Result<()> {
        self.unmount_all()
    }

    fn unmount_all(&mut self) -> Result<()> {
        let mut first_error = None;
        while let Some(path) = self.mounted.pop() {
            if let Err(e) = unmount_or_detach(&path) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Binds {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_all() {
            warn!("{e}");
        }
    }
}

/// Creates a missing mount point; refuses a symlink, which would carry the
/// mount (and its unmount) outside the clone.
fn prepare_mount_point(dst: &Path) -> Result<()> {
    match fs::symlink_metadata(dst) {
        Ok(m) if m.file_type().is_symlink() => Err(DiskError::Other(format!(
            "{} is a symlink in the clone: refusing to mount over it",
            dst.display()
        ))),
        Ok(_) => Ok(()),
        Err(_) => {
            fs::create_dir_all(dst).map_err(|e| DiskError::io(format!("creating {}", dst.display()), e))
        }
    }
}
