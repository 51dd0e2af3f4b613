//! A tree holding every case a clone must preserve, each in its own directory
//! under `fidelity/`: odd modes, foreign numeric owners, nanosecond mtimes, hard
//! links, symlinks, devices, a FIFO, sparse files, awkward names, xattrs in the
//! user and trusted namespaces, a file capability and POSIX ACLs.
//!
//! Needs root and a real filesystem (ext4, btrfs, xfs) with xattr and ACL support.
#![allow(dead_code)]

use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

/// Fixed times used by the `mtimes` case (seconds, nanoseconds).
pub const FILE_MTIME: (i64, i64) = (1_234_567_890, 123_456_789);
pub const DIR_MTIME: (i64, i64) = (1_300_000_000, 987_654_321);
pub const SYMLINK_MTIME: (i64, i64) = (1_111_111_111, 1);
/// After 2038-01-19 (needs 256-byte ext4 inodes) and before 1970.
pub const FUTURE_MTIME: (i64, i64) = (4_102_444_800, 500_000_000);
pub const PAST_MTIME: (i64, i64) = (-86_400 * 365, 250_000_000);

/// `security.capability` for `cap_net_raw+ep`, exactly what `setcap` writes:
/// `struct vfs_cap_data` revision 2, all fields little-endian u32:
/// `magic_etc` = VFS_CAP_REVISION_2 (0x0200_0000) | VFS_CAP_FLAGS_EFFECTIVE (1),
/// then `{permitted, inheritable}` for capabilities 0–31 and for 32–63.
/// CAP_NET_RAW is capability 13.
pub fn cap_net_raw_ep() -> Vec<u8> {
    let words: [u32; 5] = [0x0200_0001, 1 << 13, 0, 0, 0];
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// POSIX ACL tags and permission bits of the xattr format (linux/posix_acl_xattr.h).
pub const ACL_USER_OBJ: u16 = 0x01;
pub const ACL_USER: u16 = 0x02;
pub const ACL_GROUP_OBJ: u16 = 0x04;
pub const ACL_GROUP: u16 = 0x08;
pub const ACL_MASK: u16 = 0x10;
pub const ACL_OTHER: u16 = 0x20;
pub const ACL_UNDEFINED_ID: u32 = u32::MAX;

/// The raw value of `system.posix_acl_access` / `system.posix_acl_default`:
/// a little-endian u32 version (2), then one 8-byte entry per ACL entry:
/// `u16 e_tag, u16 e_perm (r=4 w=2 x=1), u32 e_id` (uid or gid for ACL_USER /
/// ACL_GROUP, ACL_UNDEFINED_ID otherwise). The kernel wants entries sorted by tag,
/// then by id, with exactly one USER_OBJ, GROUP_OBJ, OTHER, and a MASK whenever
/// named USER/GROUP entries exist.
pub fn acl_xattr(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// `user::rw-, user:1001:rwx, group::r--, group:1002:r--, mask::rwx, other::r--`
pub fn access_acl() -> Vec<u8> {
    acl_xattr(&[
        (ACL_USER_OBJ, 6, ACL_UNDEFINED_ID),
        (ACL_USER, 7, 1001),
        (ACL_GROUP_OBJ, 4, ACL_UNDEFINED_ID),
        (ACL_GROUP, 4, 1002),
        (ACL_MASK, 7, ACL_UNDEFINED_ID),
        (ACL_OTHER, 4, ACL_UNDEFINED_ID),
    ])
}

/// `default:user::rwx, default:user:1001:rwx, default:group::r-x, default:mask::rwx, default:other::r-x`
pub fn default_acl() -> Vec<u8> {
    acl_xattr(&[
        (ACL_USER_OBJ, 7, ACL_UNDEFINED_ID),
        (ACL_USER, 7, 1001),
        (ACL_GROUP_OBJ, 5, ACL_UNDEFINED_ID),
        (ACL_MASK, 7, ACL_UNDEFINED_ID),
        (ACL_OTHER, 5, ACL_UNDEFINED_ID),
    ])
}

/// The binary user xattr value (NULs and high bytes).
pub const BINARY_XATTR: &[u8] = b"\0\x01\x02\xff\0kacast\0\xfe";

pub const SPARSE_SIZE: u64 = 64 << 20;

/// Makes one case in its (empty) directory.
type MakeCase = fn(&Path) -> io::Result<()>;

/// Creates every case under `root/fidelity/` and returns the names of the cases
/// made. Cases the filesystem refuses (no xattr / ACL support) are left out of the
/// list with a note on stderr; anything else failing panics.
pub fn populate(root: &Path) -> Vec<&'static str> {
    let top = root.join("fidelity");
    mkdir(&top, 0o755);
    let mut made = Vec::new();
    let cases: [(&'static str, MakeCase); 14] = [
        ("etc", etc),
        ("modes", modes),
        ("owners", owners),
        ("hardlinks", hardlinks),
        ("symlinks", symlinks),
        ("devices", devices),
        ("sparse", sparse),
        ("names", names),
        ("empty", empty),
        ("xattrs", xattrs),
        ("trusted_xattrs", trusted_xattrs),
        ("capability", capability),
        ("acls", acls),
        // Last: fixes times, also of the case directories made before it.
        ("mtimes", mtimes),
    ];
    for (name, make) in cases {
        let dir = top.join(name);
        mkdir(&dir, 0o755);
        match make(&dir) {
            Ok(()) => made.push(name),
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {
                eprintln!("fidelity: case {name} not supported here ({e}), left out");
                fs::remove_dir_all(&dir).unwrap();
            }
            Err(e) => panic!("fidelity case {name}: {e}"),
        }
    }
    made
}

fn mkdir(p: &Path, mode: u32) {
    fs::create_dir(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
    chmod(p, mode).unwrap();
}

fn chmod(p: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
}

fn write(p: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    fs::write(p, data)?;
    chmod(p, mode)
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `lchown`: owns a symlink itself, not its target.
pub fn lchown(p: &Path, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: valid NUL-terminated path.
    check(unsafe { libc::lchown(cpath(p).as_ptr(), uid, gid) })
}

/// Sets atime and mtime of `p` itself (symlinks not followed).
pub fn set_mtime(p: &Path, (sec, nsec): (i64, i64)) -> io::Result<()> {
    let t = libc::timespec { tv_sec: sec as libc::time_t, tv_nsec: nsec as _ };
    let times = [t, t];
    // SAFETY: valid path and a two-element timespec array.
    check(unsafe {
        libc::utimensat(libc::AT_FDCWD, cpath(p).as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
    })
}

/// `lsetxattr`: on `p` itself.
pub fn set_xattr(p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let n = CString::new(name).unwrap();
    // SAFETY: valid path, name and value buffer.
    check(unsafe { libc::lsetxattr(cpath(p).as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) })
}

fn mknod(p: &Path, kind: libc::mode_t, mode: u32, major: u32, minor: u32) -> io::Result<()> {
    // SAFETY: valid path; makedev is pure arithmetic.
    check(unsafe {
        libc::mknod(cpath(p).as_ptr(), kind | mode as libc::mode_t, libc::makedev(major, minor))
    })?;
    chmod(p, mode) // undo the umask
}

/// A few KiB of ordinary, distinct content, so that hashes matter.
fn etc(d: &Path) -> io::Result<()> {
    let mut hosts = String::from("127.0.0.1 localhost\n::1 localhost ip6-localhost\n");
    for i in 1..=120u32 {
        hosts.push_str(&format!("10.0.{}.{} node{i:03}.rack.example node{i:03}\n", i / 250, i % 250));
    }
    write(&d.join("hosts"), hosts.as_bytes(), 0o644)?;
    write(&d.join("hostname"), b"golden\n", 0o644)?;
    let mut fstab = String::new();
    for (i, m) in ["/", "/home", "/var", "/boot", "/srv"].iter().enumerate() {
        fstab.push_str(&format!(
            "UUID=0000000{i}-aaaa-bbbb-cccc-dddddddddddd {m} ext4 defaults 0 {}\n",
            i.min(2)
        ));
    }
    write(&d.join("fstab"), fstab.as_bytes(), 0o644)?;
    mkdir(&d.join("ssh"), 0o755);
    write(&d.join("ssh/sshd_config"), "PermitRootLogin no\n".repeat(200).as_bytes(), 0o600)?;
    let key: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    write(&d.join("ssh/ssh_host_ed25519_key"), &key, 0o600)?;
    mkdir(&d.join("profile.d"), 0o755);
    for i in 0..8 {
        let body = format!("# script {i}\nexport KACAST_{i}={}\n", "x".repeat(300 + i * 17));
        write(&d.join(format!("profile.d/{i:02}-env.sh")), body.as_bytes(), 0o644)?;
    }
    Ok(())
}

fn modes(d: &Path) -> io::Result<()> {
    for (name, mode) in [
        ("f0600", 0o600),
        ("f0755", 0o755),
        ("setuid-04755", 0o4755),
        ("setgid-02755", 0o2755),
        ("all-07777", 0o7777),
        ("f0000", 0o000),
        ("f0444", 0o444),
    ] {
        write(&d.join(name), format!("mode {mode:o}\n").as_bytes(), mode)?;
    }
    mkdir(&d.join("sticky-01777"), 0o1777);
    mkdir(&d.join("setgid-dir-02775"), 0o2775);
    mkdir(&d.join("d0700"), 0o700);
    // An unreadable, unsearchable directory with content: only root can walk it.
    let closed = d.join("d0000");
    mkdir(&closed, 0o755);
    write(&closed.join("inside"), b"behind a 0000 directory\n", 0o644)?;
    chmod(&closed, 0o000)
}

fn owners(d: &Path) -> io::Result<()> {
    let f = d.join("u12345-g23456");
    write(&f, b"foreign owner\n", 0o644)?;
    lchown(&f, 12345, 23456)?;
    let f = d.join("nobody-65534");
    write(&f, b"nobody\n", 0o644)?;
    lchown(&f, 65534, 65534)?;
    let f = d.join("setuid-foreign");
    write(&f, b"setuid survives chown only if set after it\n", 0o644)?;
    lchown(&f, 12345, 23456)?;
    chmod(&f, 0o6755)?;
    let sub = d.join("dir-12345");
    mkdir(&sub, 0o750);
    lchown(&sub, 12345, 12345)?;
    let l = d.join("symlink-23456");
    symlink("u12345-g23456", &l)?;
    lchown(&l, 23456, 23456)
}

fn hardlinks(d: &Path) -> io::Result<()> {
    let a = d.join("one");
    write(&a, b"one inode, three names\n", 0o640)?;
    fs::hard_link(&a, d.join("two"))?;
    fs::hard_link(&a, d.join("three"))?;
    mkdir(&d.join("x"), 0o755);
    mkdir(&d.join("y"), 0o755);
    let x = d.join("x/across");
    write(&x, b"linked across directories\n", 0o644)?;
    fs::hard_link(&x, d.join("y/across-too"))?;
    // A hard-linked empty file and a hard-linked symlink (GNU tar keeps both).
    write(&d.join("empty-a"), b"", 0o644)?;
    fs::hard_link(d.join("empty-a"), d.join("empty-b"))?;
    symlink("one", d.join("symlink-a"))?;
    fs::hard_link(d.join("symlink-a"), d.join("symlink-b"))
    // Not here: hard-linked FIFOs and device nodes. GNU tar (1.34, create.c:
    // file_count_links() is only called for regular files and symlinks) archives
    // every name of such an inode as an independent FIFO/device, so they come out
    // as separate inodes on the clone.
}

fn symlinks(d: &Path) -> io::Result<()> {
    symlink("../etc/hosts", d.join("relative"))?;
    symlink("/nonexistent-outside-the-tree/target", d.join("absolute-outside"))?;
    symlink("does-not-exist", d.join("dangling"))?;
    symlink("../modes", d.join("to-dir"))?;
    symlink(".", d.join("self-dir"))?;
    symlink("a".repeat(1000), d.join("long-target"))?;
    mkdir(&d.join("real"), 0o755);
    symlink("real", d.join("dir-link"))
}

fn devices(d: &Path) -> io::Result<()> {
    mknod(&d.join("null"), libc::S_IFCHR, 0o666, 1, 3)?;
    mknod(&d.join("loop200"), libc::S_IFBLK, 0o660, 7, 200)?;
    mknod(&d.join("big-minor"), libc::S_IFCHR, 0o600, 259, 70000)?;
    let c = cpath(&d.join("fifo"));
    // SAFETY: valid path.
    check(unsafe { libc::mkfifo(c.as_ptr(), 0o600) })?;
    chmod(&d.join("fifo"), 0o620)
}

fn sparse(d: &Path) -> io::Result<()> {
    let block: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut f = File::create(d.join("two-blocks-64M"))?;
    f.write_all(&block)?;
    f.seek(SeekFrom::Start(32 << 20))?;
    f.write_all(&block)?;
    f.set_len(SPARSE_SIZE)?;
    File::create(d.join("all-hole-16M"))?.set_len(16 << 20)?;
    let mut f = File::create(d.join("data-then-hole"))?;
    f.write_all(&block)?;
    f.set_len(8 << 20)?;
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(d.join("hole-then-data"))?;
    f.seek(SeekFrom::Start(8 << 20))?;
    f.write_all(&block)?;
    Ok(())
}

fn names(d: &Path) -> io::Result<()> {
    write(&d.join("n".repeat(200)), b"200-character name\n", 0o644)?;
    write(&d.join("m".repeat(255)), b"255-character name\n", 0o644)?;
    let mut deep = d.join("deep");
    mkdir(&deep, 0o755);
    for i in 0..6 {
        deep.push(format!("{i}{}", "d".repeat(59)));
        mkdir(&deep, 0o755);
    }
    write(&deep.join("leaf-beyond-255-bytes"), b"deep\n", 0o644)?;
    for name in [
        "with space",
        " leading space",
        "trailing space ",
        "naïve-日本語-файл-😀",
        "back\\slash",
        "new\nline",
        "tab\there",
        "-dash",
        "quote\"'",
        "star*?[x]",
    ] {
        write(&d.join(name), name.as_bytes(), 0o644)?;
    }
    // Not valid UTF-8 (ISO-8859-1 "café").
    let latin1 = d.join(OsStr::from_bytes(b"caf\xe9"));
    write(&latin1, b"latin-1 name\n", 0o644)?;
    mkdir(&d.join("dir with space"), 0o755);
    write(&d.join("dir with space/ünïcödé"), b"inside\n", 0o644)
}

fn empty(d: &Path) -> io::Result<()> {
    write(&d.join("empty-file"), b"", 0o644)?;
    mkdir(&d.join("empty-dir"), 0o755);
    Ok(())
}

fn xattrs(d: &Path) -> io::Result<()> {
    let f = d.join("file");
    write(&f, b"has user xattrs\n", 0o644)?;
    set_xattr(&f, "user.kacast", b"value")?;
    set_xattr(&f, "user.binary", BINARY_XATTR)?;
    set_xattr(&f, "user.empty", b"")?;
    set_xattr(&f, "user.big", &[b'x'; 512])?; // fits a 1 KiB-block ext4
    let sub = d.join("dir");
    mkdir(&sub, 0o755);
    set_xattr(&sub, "user.kacast", b"on a directory")?;
    // Xattrs on a hard-linked inode.
    fs::hard_link(&f, d.join("file-link"))?;
    Ok(())
}

fn trusted_xattrs(d: &Path) -> io::Result<()> {
    let f = d.join("file");
    write(&f, b"has a trusted xattr\n", 0o644)?;
    set_xattr(&f, "trusted.kacast", b"root only")?;
    // trusted.* is also allowed on symlinks (user.* is not).
    let l = d.join("link");
    symlink("file", &l)?;
    set_xattr(&l, "trusted.kacast", b"on a symlink")
}

fn capability(d: &Path) -> io::Result<()> {
    let f = d.join("ping");
    write(&f, b"#!/bin/sh\necho pretend ping\n", 0o755)?;
    set_xattr(&f, "security.capability", &cap_net_raw_ep())?;
    // A capability on a file with a foreign owner and user xattrs too.
    let g = d.join("foreign-ping");
    write(&g, b"#!/bin/sh\necho pretend ping\n", 0o750)?;
    lchown(&g, 12345, 23456)?;
    set_xattr(&g, "user.kacast", b"and a capability")?;
    set_xattr(&g, "security.capability", &cap_net_raw_ep())
}

fn acls(d: &Path) -> io::Result<()> {
    let f = d.join("file");
    write(&f, b"has an access ACL\n", 0o644)?;
    // Setting the access ACL also sets the mode's group bits to the mask (0674).
    set_xattr(&f, "system.posix_acl_access", &access_acl())?;
    let sub = d.join("dir");
    mkdir(&sub, 0o755);
    set_xattr(&sub, "system.posix_acl_default", &default_acl())?;
    // Inherits an access ACL (and a default one for the subdirectory).
    write(&sub.join("inherited"), b"inherits the default ACL\n", 0o640)?;
    fs::create_dir(sub.join("inherited-dir"))?;
    let both = d.join("both");
    mkdir(&both, 0o755);
    set_xattr(&both, "system.posix_acl_access", &access_acl())?;
    set_xattr(&both, "system.posix_acl_default", &default_acl())
}

/// Fixed nanosecond times on a file, a directory, symlinks and a FIFO, then on
/// every case directory (their mtimes changed as they were filled).
fn mtimes(d: &Path) -> io::Result<()> {
    let f = d.join("file");
    write(&f, b"fixed mtime\n", 0o644)?;
    set_mtime(&f, FILE_MTIME)?;
    let future = d.join("after-2038");
    write(&future, b"y2038\n", 0o644)?;
    set_mtime(&future, FUTURE_MTIME)?;
    let past = d.join("before-1970");
    write(&past, b"pre-epoch\n", 0o644)?;
    set_mtime(&past, PAST_MTIME)?;
    let l = d.join("symlink");
    symlink("file", &l)?;
    set_mtime(&l, SYMLINK_MTIME)?;
    let dangling = d.join("dangling");
    symlink("nowhere", &dangling)?;
    set_mtime(&dangling, SYMLINK_MTIME)?;
    let sub = d.join("dir");
    mkdir(&sub, 0o755);
    write(&sub.join("inside"), b"x\n", 0o644)?;
    set_mtime(&sub, DIR_MTIME)?;
    let fifo = cpath(&d.join("fifo"));
    // SAFETY: valid path.
    check(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) })?;
    set_mtime(&d.join("fifo"), FILE_MTIME)?;
    let top = d.parent().unwrap();
    for entry in fs::read_dir(top)? {
        let p: PathBuf = entry?.path();
        if p != d {
            set_mtime(&p, DIR_MTIME)?;
        }
    }
    set_mtime(d, DIR_MTIME)?;
    set_mtime(top, DIR_MTIME)
}
