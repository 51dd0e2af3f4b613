//! Mounting and unmounting, by system call: the node's filesystems under the
//! target root, and the running system's /dev, /proc, /sys bound into a clone
//! for its own tools. One place for the unsafe calls and their errors.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tracing::warn;

use super::error::{DiskError, Result};

/// `path` for a system call.
pub(crate) fn c_path(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| DiskError::Other(format!("{}: path contains a NUL byte", p.display())))
}

/// Mounts `dev` (of type `fstype`, with filesystem `data` options) on `dir`.
pub fn mount(dev: &Path, dir: &Path, fstype: &str, data: &str) -> Result<()> {
    let what = || format!("mount {} ({fstype}) on {}", dev.display(), dir.display());
    let (src, target) = (c_path(dev)?, c_path(dir)?);
    let name = |s: &str| CString::new(s).map_err(|_| DiskError::Other(format!("{}: a NUL byte", what())));
    let (fstype_c, data_c) = (name(fstype)?, name(data)?);
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let r =
        unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype_c.as_ptr(), 0, data_c.as_ptr().cast()) };
    if r == 0 {
        Ok(())
    } else {
        Err(DiskError::io(what(), io::Error::last_os_error()))
    }
}

/// Unmounts `dir`, failing if it is busy.
pub fn unmount(dir: &Path) -> io::Result<()> {
    let target = c_path(dir).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(target.as_ptr(), 0) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A non-recursive bind mount (submounts such as /dev/pts stay out, so one
/// unmount undoes it), made private so nothing mounted in the clone
/// propagates to the host.
pub fn bind_private(src: &Path, dst: &Path) -> Result<()> {
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
        let _ = unmount_or_detach(dst);
        return Err(DiskError::io(what(), e));
    }
    Ok(())
}

/// Unmounts `path`; lazily (detached now, freed when no longer busy) when a
/// process still uses it, which is better than leaving the host's /dev
/// mounted in a clone about to be unmounted itself.
pub fn unmount_or_detach(path: &Path) -> Result<()> {
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
