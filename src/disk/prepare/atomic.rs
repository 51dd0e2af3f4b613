//! Atomic file writes: a new file next to the old one, renamed over it, so a
//! node losing power keeps the old or the new file, never half of one. An
//! existing file's mode, owner and extended attributes (SELinux label, ACLs)
//! are carried over, since the files rewritten here are the clone's own.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::random::{hex, random_bytes};

/// Bytes of randomness in temporary names: unguessable and unique enough for
/// a directory nobody else writes into.
pub(super) const TEMP_NAME_BYTES: usize = 6;

/// Writes `data` to `path` through a new file in the same directory renamed
/// over it, keeping an existing regular file's mode, owner and extended
/// attributes (a new file, or one replacing a symlink, gets `mode_if_new`).
pub(super) fn write_atomic(path: &Path, data: &[u8], mode_if_new: u32) -> io::Result<()> {
    let old = fs::symlink_metadata(path).ok().filter(|m| m.is_file());
    let temp = temp_name(path)?;
    // create_new: never opens something already there, a symlink included.
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp)?;
    let result =
        fill(&mut file, path, old.as_ref(), data, mode_if_new).and_then(|()| fs::rename(&temp, path));
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Fills the new file: the data, then the old file's extended attributes,
/// owner and mode; synced, so the rename never exposes an empty file.
fn fill(
    file: &mut File,
    path: &Path,
    old: Option<&fs::Metadata>,
    data: &[u8],
    mode_if_new: u32,
) -> io::Result<()> {
    file.write_all(data)?;
    let mode = match old {
        Some(old) => {
            copy_xattrs(path, file)?;
            let mine = file.metadata()?;
            if (mine.uid(), mine.gid()) != (old.uid(), old.gid()) {
                std::os::unix::fs::fchown(&*file, Some(old.uid()), Some(old.gid()))?;
            }
            old.mode() & 0o7777
        }
        None => mode_if_new,
    };
    // After chown, which clears set-id bits.
    file.set_permissions(Permissions::from_mode(mode))?;
    file.sync_all()
}

/// `.NAME.kacast-RANDOM` next to `path`: hidden, and never a name in use.
fn temp_name(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    Ok(path.with_file_name(format!(".{name}.kacast-{}", hex(&random_bytes(TEMP_NAME_BYTES)?))))
}

/// Copies every extended attribute of `from` (not followed) to `to`: SELinux
/// labels and ACLs must survive the rewrite. A file system without extended
/// attributes has none to copy.
fn copy_xattrs(from: &Path, to: &File) -> io::Result<()> {
    let path = CString::new(from.as_os_str().as_bytes())?;
    // SAFETY: the buffer is `len` bytes long; the path is NUL-terminated.
    let list = xattr_read(|buf, len| unsafe { libc::llistxattr(path.as_ptr(), buf.cast(), len) })?;
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = CString::new(name)?;
        // SAFETY: as above.
        let value =
            xattr_read(|buf, len| unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.cast(), len) })?;
        // SAFETY: `value` is valid for its length; the fd is open.
        let r =
            unsafe { libc::fsetxattr(to.as_raw_fd(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
        if r != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("copying attribute {}: {e}", name.to_string_lossy()),
            ));
        }
    }
    Ok(())
}

/// Calls a `*getxattr`/`*listxattr` function with a buffer of the size it
/// asks for (again if the attribute grew meanwhile). Unsupported: empty.
fn xattr_read(call: impl Fn(*mut u8, usize) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let size = call(std::ptr::null_mut(), 0);
        if size < 0 {
            return unsupported_is_empty(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize];
        let got = call(buf.as_mut_ptr(), buf.len());
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return unsupported_is_empty(e);
        }
    }
}

fn unsupported_is_empty(e: io::Error) -> io::Result<Vec<u8>> {
    match e.raw_os_error() {
        Some(libc::ENOTSUP) | Some(libc::ENODATA) => Ok(Vec::new()),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::super::rewrite_uuids;
    use super::super::test_util::{is_root, map, read, write, ROOT_NEW, ROOT_OLD};
    use super::*;

    #[test]
    fn rewrites_keep_owner_and_extended_attributes() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let path = r.join("etc/crypttab");
        write(r, "etc/crypttab", &format!("data UUID={ROOT_OLD} none luks\n"));
        let owner = if is_root() { Some((1234, 5678)) } else { None };
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
        }
        let cpath = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: NUL-terminated strings and a buffer of the given length.
        let set =
            unsafe { libc::setxattr(cpath.as_ptr(), c"user.kacast".as_ptr(), b"kept".as_ptr().cast(), 4, 0) };
        if set != 0 {
            eprintln!("extended attributes not checked: {}", io::Error::last_os_error());
        }
        rewrite_uuids(r, &map(&[(ROOT_OLD, ROOT_NEW)])).unwrap();
        assert!(read(r, "etc/crypttab").contains(&ROOT_NEW.to_lowercase()));
        let meta = fs::metadata(&path).unwrap();
        if let Some((uid, gid)) = owner {
            assert_eq!((meta.uid(), meta.gid()), (uid, gid));
        }
        if set == 0 {
            let value = xattr_read(|buf, len| unsafe {
                // SAFETY: as above.
                libc::lgetxattr(cpath.as_ptr(), c"user.kacast".as_ptr(), buf.cast(), len)
            })
            .unwrap();
            assert_eq!(value, b"kept");
        }
    }
}
