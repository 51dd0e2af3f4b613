//! The running system's /dev, /proc, /sys (and efivars) bind-mounted into
//! the clone for the chrooted tools, private so nothing propagates back to
//! the host, and always unmounted again, on error and on a panic too.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::in_clone;
use crate::disk::error::{DiskError, Result};

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
            bind(src, &dst)?;
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
            if let Err(e) = unmount(&path) {
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

pub(super) fn c_path(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| DiskError::Other(format!("{}: path contains a NUL byte", p.display())))
}

/// A non-recursive bind mount (submounts such as /dev/pts stay out, so one
/// unmount undoes it), made private so nothing mounted in the clone
/// propagates to the host.
fn bind(src: &Path, dst: &Path) -> Result<()> {
    let (s, d) = (c_path(src)?, c_path(dst)?);
    let what = || format!("bind-mounting {} on {}", src.display(), dst.display());
    // SAFETY: NUL-terminated strings that outlive the call; MS_BIND ignores
    // the filesystem type and data, which may be null.
    let r = unsafe { libc::mount(s.as_ptr(), d.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) };
    if r != 0 {
        return Err(DiskError::io(what(), std::io::Error::last_os_error()));
    }
    // SAFETY: as above; a propagation change ignores the source.
    let r = unsafe {
        libc::mount(c"none".as_ptr(), d.as_ptr(), std::ptr::null(), libc::MS_PRIVATE, std::ptr::null())
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        let _ = unmount(dst);
        return Err(DiskError::io(what(), e));
    }
    Ok(())
}

/// Unmounts `path`; lazily (detached now, freed when no longer busy) when a
/// process still uses it, which is better than leaving the host's /dev
/// mounted in a clone about to be unmounted itself.
fn unmount(path: &Path) -> Result<()> {
    let p = c_path(path)?;
    // SAFETY: a NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(p.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let first = std::io::Error::last_os_error();
    // SAFETY: as above.
    if unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) } == 0 {
        warn!("{} was busy ({first}): unmounted lazily", path.display());
        return Ok(());
    }
    Err(DiskError::io(format!("unmounting {}", path.display()), first))
}
