//! Snapshots of whole file trees with every piece of metadata a clone must
//! preserve, and a human-readable comparison of two snapshots.
//!
//! The walk is `lstat`-based: symlinks are recorded, never followed. It does cross
//! into other mounted filesystems below the root (a clone's `/home` may be its own
//! filesystem and must be compared too); leave pseudo filesystems out with
//! [`Options::skip`]. Access and change times are never recorded.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What kind of inode an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Char,
    Block,
    Fifo,
    Socket,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Kind::File => "file",
            Kind::Dir => "directory",
            Kind::Symlink => "symlink",
            Kind::Char => "char device",
            Kind::Block => "block device",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
        };
        f.write_str(s)
    }
}

/// Everything recorded about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time: seconds and nanoseconds.
    pub mtime: (i64, i64),
    /// `st_size`; compared for files only (directory sizes are filesystem-specific).
    pub size: u64,
    /// BLAKE3 (hex) of the whole content, files only.
    pub hash: Option<String>,
    /// Symlink target, symlinks only.
    pub target: Option<PathBuf>,
    /// (major, minor) of char and block devices.
    pub rdev: Option<(u32, u32)>,
    /// Every extended attribute `llistxattr` lists, any namespace, raw values.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// For a non-directory whose inode has several names inside the snapshot: the
    /// first of those names (sorted). `None` when the inode has one name in the tree.
    pub link_group: Option<PathBuf>,
    /// Allocated bytes (`st_blocks * 512`), files only (0 otherwise).
    pub allocated: u64,
    /// Device and inode number: identity within one snapshot, never compared.
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
}

/// What to leave out of a snapshot or a comparison.
#[derive(Debug, Clone)]
pub struct Options {
    /// Relative paths left out, with everything below them (`lost+found`, `etc/machine-id`).
    pub skip: Vec<PathBuf>,
    /// Compare directory mtimes (GNU tar restores them after filling the directory).
    pub compare_dir_mtime: bool,
    /// Report a clone file that allocates noticeably more than the golden one.
    pub compare_sparseness: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { skip: Vec::new(), compare_dir_mtime: true, compare_sparseness: true }
    }
}

impl Options {
    /// Defaults, leaving out `lost+found` at the root.
    pub fn fs_root() -> Self {
        Options { skip: vec![PathBuf::from("lost+found")], ..Options::default() }
    }

    fn skipped(&self, rel: &Path) -> bool {
        self.skip.iter().any(|s| !s.as_os_str().is_empty() && rel.starts_with(s))
    }
}

/// How much more a clone file may allocate than its golden twin before the
/// difference is reported as lost holes (filesystems differ in preallocation and
/// extent-tree blocks).
pub const SPARSE_TOLERANCE: u64 = 64 * 1024;

/// Walks `root` (included as the empty path) and records every entry not skipped.
/// Panics on any I/O error, naming the path.
pub fn snapshot(root: &Path, opts: &Options) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = if rel.as_os_str().is_empty() { root.to_path_buf() } else { root.join(&rel) };
        let entry = read_entry(&abs).unwrap_or_else(|e| panic!("snapshot {}: {e}", abs.display()));
        if entry.kind == Kind::Dir {
            let children = fs::read_dir(&abs).unwrap_or_else(|e| panic!("read_dir {}: {e}", abs.display()));
            for child in children {
                let child = child.unwrap_or_else(|e| panic!("read_dir {}: {e}", abs.display()));
                let child_rel = rel.join(child.file_name());
                if !opts.skipped(&child_rel) {
                    stack.push(child_rel);
                }
            }
        }
        out.insert(rel, entry);
    }
    normalise_links(&mut out);
    out
}

/// Sets `link_group` of every multiply-named inode to its first name in the tree.
fn normalise_links(tree: &mut BTreeMap<PathBuf, Entry>) {
    let mut groups: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
    for (path, e) in tree.iter() {
        if e.kind != Kind::Dir && e.nlink > 1 {
            groups.entry((e.dev, e.ino)).or_default().push(path.clone());
        }
    }
    for names in groups.into_values() {
        if names.len() < 2 {
            continue;
        }
        // BTreeMap iteration is sorted, so names[0] is the smallest.
        let first = names[0].clone();
        for n in names {
            tree.get_mut(&n).unwrap().link_group = Some(first.clone());
        }
    }
}

fn read_entry(abs: &Path) -> io::Result<Entry> {
    let md = fs::symlink_metadata(abs)?;
    let ft = md.file_type();
    let kind = if ft.is_file() {
        Kind::File
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_char_device() {
        Kind::Char
    } else if ft.is_block_device() {
        Kind::Block
    } else if ft.is_fifo() {
        Kind::Fifo
    } else {
        Kind::Socket
    };
    let hash = if kind == Kind::File { Some(hash_file(abs)?) } else { None };
    let target = if kind == Kind::Symlink { Some(fs::read_link(abs)?) } else { None };
    let rdev = if matches!(kind, Kind::Char | Kind::Block) {
        let r = md.rdev();
        Some((libc::major(r), libc::minor(r)))
    } else {
        None
    };
    Ok(Entry {
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: (md.mtime(), md.mtime_nsec()),
        size: md.size(),
        hash,
        target,
        rdev,
        xattrs: read_xattrs(abs)?,
        link_group: None,
        allocated: if kind == Kind::File { md.blocks() * 512 } else { 0 },
        dev: md.dev(),
        ino: md.ino(),
        nlink: md.nlink(),
    })
}

/// BLAKE3 of a file's content, streamed (holes read as zeros).
fn hash_file(abs: &Path) -> io::Result<String> {
    let mut f = File::open(abs)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_hex().to_string())
}

fn c_path(abs: &Path) -> io::Result<CString> {
    CString::new(abs.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// All extended attributes of `abs` itself (not of a symlink's target).
/// A filesystem without xattr support yields an empty map.
pub fn read_xattrs(abs: &Path) -> io::Result<BTreeMap<String, Vec<u8>>> {
    let path = c_path(abs)?;
    let mut out = BTreeMap::new();
    let names = loop {
        // SAFETY: a null buffer of size 0 asks for the needed size.
        let len = unsafe { libc::llistxattr(path.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOTSUP) => Ok(out),
                _ => Err(e),
            };
        }
        let mut buf = vec![0u8; len as usize];
        // SAFETY: buf is writable for buf.len() bytes.
        let got = unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue; // grew in between
            }
            return Err(e);
        }
        buf.truncate(got as usize);
        break buf;
    };
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).unwrap();
        if let Some(value) = get_xattr(&path, &cname)? {
            out.insert(String::from_utf8_lossy(name).into_owned(), value);
        }
    }
    Ok(out)
}

/// One attribute's value; `None` when it vanished between list and get.
fn get_xattr(path: &CString, name: &CString) -> io::Result<Option<Vec<u8>>> {
    loop {
        // SAFETY: size query with a null buffer.
        let len = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENODATA) => Ok(None),
                _ => Err(e),
            };
        }
        let mut buf = vec![0u8; len as usize];
        // SAFETY: buf is writable for buf.len() bytes.
        let got =
            unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ERANGE) => continue,
                Some(libc::ENODATA) => return Ok(None),
                _ => return Err(e),
            }
        }
        buf.truncate(got as usize);
        return Ok(Some(buf));
    }
}

fn show(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        ".".to_string()
    } else {
        path.display().to_string()
    }
}

fn show_bytes(v: &[u8]) -> String {
    if v.len() <= 64 && v.iter().all(|&b| (0x20..0x7f).contains(&b)) {
        format!("{:?}", String::from_utf8_lossy(v))
    } else {
        let hex: String = v.iter().take(64).map(|b| format!("{b:02x}")).collect();
        let more = if v.len() > 64 { "…" } else { "" };
        format!("0x{hex}{more} ({} bytes)", v.len())
    }
}

/// Every difference between `golden` and `clone`, one human-readable line each
/// ("golden value != clone value"); empty when the clone is faithful. Golden
/// sockets are ignored (tar cannot carry them); atime and ctime are never compared.
pub fn diff(
    golden: &BTreeMap<PathBuf, Entry>,
    clone: &BTreeMap<PathBuf, Entry>,
    opts: &Options,
) -> Vec<String> {
    let mut out = Vec::new();
    for (path, g) in golden {
        // Sockets are not archived by tar ("socket ignored"): nothing to compare.
        if opts.skipped(path) || g.kind == Kind::Socket {
            continue;
        }
        match clone.get(path) {
            None => out.push(format!("missing: {}", show(path))),
            Some(c) => diff_entry(path, g, c, opts, &mut out),
        }
    }
    for path in clone.keys() {
        if !golden.contains_key(path) && !opts.skipped(path) {
            out.push(format!("extra: {}", show(path)));
        }
    }
    out
}

fn diff_entry(path: &Path, g: &Entry, c: &Entry, opts: &Options, out: &mut Vec<String>) {
    let p = show(path);
    if g.kind != c.kind {
        out.push(format!("{p}: kind {} != {}", g.kind, c.kind));
        return;
    }
    if g.mode != c.mode {
        out.push(format!("{p}: mode {:04o} != {:04o}", g.mode, c.mode));
    }
    if (g.uid, g.gid) != (c.uid, c.gid) {
        out.push(format!("{p}: owner {}:{} != {}:{}", g.uid, g.gid, c.uid, c.gid));
    }
    if g.mtime != c.mtime && (g.kind != Kind::Dir || opts.compare_dir_mtime) {
        out.push(format!("{p}: mtime {}.{:09} != {}.{:09}", g.mtime.0, g.mtime.1, c.mtime.0, c.mtime.1));
    }
    if g.kind == Kind::File {
        if g.size != c.size {
            out.push(format!("{p}: size {} != {}", g.size, c.size));
        } else if g.hash != c.hash {
            out.push(format!("{p}: content differs"));
        }
        if opts.compare_sparseness {
            sparse_check(&p, g, c, out);
        }
    }
    if g.target != c.target {
        let t = |e: &Entry| e.target.as_deref().map(show).unwrap_or_default();
        out.push(format!("{p}: symlink target {} != {}", t(g), t(c)));
    }
    if g.rdev != c.rdev {
        let r = |e: &Entry| e.rdev.map(|(ma, mi)| format!("{ma},{mi}")).unwrap_or_default();
        out.push(format!("{p}: device {} != {}", r(g), r(c)));
    }
    for (name, gv) in g.xattrs.iter().filter(|(n, _)| compared_xattr(n)) {
        match c.xattrs.get(name) {
            None => out.push(format!("{p}: xattr {name} missing")),
            Some(cv) if cv != gv => {
                out.push(format!("{p}: xattr {name} differs: {} != {}", show_bytes(gv), show_bytes(cv)))
            }
            Some(_) => {}
        }
    }
    for name in c.xattrs.keys().filter(|n| compared_xattr(n) && !g.xattrs.contains_key(*n)) {
        out.push(format!("{p}: xattr {name} extra"));
    }
    if g.link_group != c.link_group {
        let l = |e: &Entry| e.link_group.as_deref().map(show).unwrap_or_else(|| "(single)".into());
        out.push(format!("{p}: hard link group {} != {}", l(g), l(c)));
    }
}

/// XFS lists its on-disk copies of POSIX ACLs (to root) as `trusted.SGI_ACL_FILE`
/// and `trusted.SGI_ACL_DEFAULT`; the ACLs themselves are compared through
/// `system.posix_acl_*`, and these mirrors exist or not by filesystem type.
pub const FS_INTERNAL_XATTRS: &[&str] = &["trusted.SGI_ACL_FILE", "trusted.SGI_ACL_DEFAULT"];

fn compared_xattr(name: &str) -> bool {
    !FS_INTERNAL_XATTRS.contains(&name)
}

/// The clone may not allocate much more than the golden file, and a file with a
/// large hole in the golden must keep a hole in the clone.
fn sparse_check(p: &str, g: &Entry, c: &Entry, out: &mut Vec<String>) {
    let too_much = c.allocated > g.allocated + SPARSE_TOLERANCE;
    let holey = g.allocated + SPARSE_TOLERANCE < g.size;
    if too_much || (holey && c.allocated >= c.size) {
        out.push(format!("{p}: allocated {} bytes, golden {} (holes lost)", c.allocated, g.allocated));
    }
}
