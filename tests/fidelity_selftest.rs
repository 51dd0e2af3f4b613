//! Checks the fidelity tree and the tree comparison themselves: a GNU tar copy
//! between two loop-mounted ext4 filesystems (the way kacast copies) must compare
//! equal, and deliberate damage to the copy must be reported.

mod common;

use common::{fidelity, is_root, skip, tree};

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn have(tool: &str) -> bool {
    common::missing_tool(tool).is_none()
}

/// The flags kacast's sender gives `tar --create` (then `--directory=SRC .`).
///
/// No `--acls`: GNU tar 1.34 writes `SCHILY.acl.*` as text with user and group
/// *names* even under `--numeric-owner`, and `tar --extract --acls` resolves those
/// names again on the receiving side, after restoring the raw
/// `system.posix_acl_*` xattrs, so a node whose user database differs (a stage2
/// initrd) gets wrong or no ACL entries. `--xattrs --xattrs-include=*` already
/// carries both ACL xattrs in their binary form with numeric ids.
///
/// `--xattrs-exclude=trusted.SGI_ACL_*`: an XFS golden lists its on-disk ACL
/// copies as these trusted xattrs; restored elsewhere (ext4, btrfs) they are junk,
/// and an XFS node rebuilds them from `system.posix_acl_*` anyway.
const TAR_CREATE: &[&str] = &[
    "--create",
    "--file=-",
    "--one-file-system",
    "--numeric-owner",
    "--xattrs",
    "--xattrs-include=*",
    "--xattrs-exclude=trusted.SGI_ACL_*",
    "--sparse",
    "--format=posix",
];

/// The flags kacast's receivers give `tar --extract` (then `--directory=DST`).
///
/// `--xattrs-include=*` is needed here (not only when creating): without it the
/// extractor restores only `user.*` and drops `security.capability` and `trusted.*`.
/// `--warning=no-timestamp`: a node booted with an unset clock would otherwise
/// complain about every file "in the future" (and real trees hold pre-1970 times).
const TAR_EXTRACT: &[&str] = &[
    "--extract",
    "--file=-",
    "--numeric-owner",
    "--same-owner",
    "--preserve-permissions",
    "--xattrs",
    "--xattrs-include=*",
    "--warning=no-timestamp",
];

/// The golden node's user database: names for the ids the fidelity tree uses.
const GOLDEN_PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nalice:x:1001:1001::/home/alice:/bin/sh\n\
    carol:x:12345:23456::/home/carol:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n";
const GOLDEN_GROUP: &str = "root:x:0:\nalice:x:1001:\nstaff:x:1002:\ncarol:x:23456:\nnogroup:x:65534:\n";
/// The receiving node's (an initrd's): the same names with other ids, some missing.
const NODE_PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nalice:x:2001:2001::/:/bin/sh\n\
    carol:x:3000:3000::/:/bin/sh\n";
const NODE_GROUP: &str = "root:x:0:\nalice:x:2001:\ncarol:x:3000:\n";

/// `tar ARGS` in a private mount namespace whose /etc/passwd and /etc/group are
/// `passwd` and `group`, so that name lookups see another machine's users.
fn tar_as_machine(dir: &Path, machine: &str, passwd: &str, group: &str) -> Command {
    let (p, g) = (dir.join(format!("{machine}.passwd")), dir.join(format!("{machine}.group")));
    fs::write(&p, passwd).unwrap();
    fs::write(&g, group).unwrap();
    let script =
        "mount --bind \"$1\" /etc/passwd && mount --bind \"$2\" /etc/group && shift 2 && exec tar \"$@\"";
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", script, "sh"]).arg(p).arg(g);
    cmd
}

/// A loop-mounted ext4 image, unmounted on drop.
struct Mounted {
    dir: PathBuf,
}

impl Mounted {
    fn new(image: &Path, dir: &Path) -> Mounted {
        run(Command::new("truncate").arg("-s").arg("200M").arg(image));
        // 256-byte inodes (nanosecond and post-2038 times) and 4 KiB blocks, as on
        // a real root filesystem rather than mke2fs's "small" defaults.
        run(Command::new("mkfs.ext4").args(["-q", "-F", "-b", "4096", "-I", "256"]).arg(image));
        fs::create_dir(dir).unwrap();
        run(Command::new("mount").args(["-o", "loop"]).arg(image).arg(dir));
        Mounted { dir: dir.to_path_buf() }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.dir).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `tar --create … | tar --extract …`, asserting both succeed and stay silent. The
/// two run with different user databases, as a golden node and a receiving node do.
fn tar_copy(src: &Path, dst: &Path, scratch: &Path) {
    let mut create = tar_as_machine(scratch, "golden", GOLDEN_PASSWD, GOLDEN_GROUP)
        .args(TAR_CREATE)
        .arg(format!("--directory={}", src.display()))
        .arg(".")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let extract = tar_as_machine(scratch, "node", NODE_PASSWD, NODE_GROUP)
        .args(TAR_EXTRACT)
        .arg(format!("--directory={}", dst.display()))
        .stdin(create.stdout.take().unwrap())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let created = create.wait_with_output().unwrap();
    let (cerr, xerr) = (String::from_utf8_lossy(&created.stderr), String::from_utf8_lossy(&extract.stderr));
    assert!(created.status.success() && cerr.is_empty(), "tar create: {}\n{cerr}", created.status);
    assert!(extract.status.success() && xerr.is_empty(), "tar extract: {}\n{xerr}", extract.status);
}

fn assert_reports(lines: &[String], want: &str) {
    assert!(lines.iter().any(|l| l == want), "expected {want:?} in the diff, got {lines:#?}");
}

#[test]
fn tar_copy_of_fidelity_tree_compares_equal() {
    if !is_root() {
        return skip("needs root to mount loop filesystems");
    }
    for tool in ["tar", "mkfs.ext4", "mount", "umount", "truncate", "unshare"] {
        if !have(tool) {
            return skip(&format!("'{tool}' is not installed"));
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = Mounted::new(&tmp.path().join("src.img"), &tmp.path().join("src"));
    let dst = Mounted::new(&tmp.path().join("dst.img"), &tmp.path().join("dst"));

    let cases = fidelity::populate(&src.dir);
    let all = [
        "etc",
        "modes",
        "owners",
        "hardlinks",
        "symlinks",
        "devices",
        "sparse",
        "names",
        "empty",
        "xattrs",
        "trusted_xattrs",
        "capability",
        "acls",
        "mtimes",
    ];
    assert_eq!(cases, all, "ext4 supports every case");
    let f = src.dir.join("fidelity");

    // The raw values written are what the standard tools make of them.
    if have("getcap") {
        let out = run(Command::new("getcap").arg(f.join("capability/ping")));
        assert!(out.contains("cap_net_raw=ep"), "getcap: {out}");
    }
    if have("getfacl") {
        let out = run(Command::new("getfacl").arg("-n").arg(f.join("acls/file")));
        for want in ["user::rw-", "user:1001:rwx", "group::r--", "group:1002:r--", "mask::rwx", "other::r--"]
        {
            assert!(out.lines().any(|l| l == want), "getfacl lacks {want}: {out}");
        }
        let out = run(Command::new("getfacl").arg("-n").arg(f.join("acls/dir")));
        for want in ["default:user::rwx", "default:user:1001:rwx", "default:group::r-x", "default:mask::rwx"]
        {
            assert!(out.lines().any(|l| l == want), "getfacl lacks {want}: {out}");
        }
    }

    let opts = tree::Options::fs_root();
    let golden = tree::snapshot(&src.dir, &opts);
    sanity_check(&golden);

    tar_copy(&src.dir, &dst.dir, tmp.path());
    let clone = tree::snapshot(&dst.dir, &opts);
    let d = tree::diff(&golden, &clone, &opts);
    assert!(d.is_empty(), "the tar copy differs:\n{}", d.join("\n"));

    // Damage the clone in every way the comparison must notice.
    let c = dst.dir.join("fidelity");
    fs::set_permissions(c.join("modes/f0600"), fs::Permissions::from_mode(0o644)).unwrap();
    let name = std::ffi::CString::new(c.join("xattrs/file").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: valid NUL-terminated path and name.
    assert_eq!(unsafe { libc::lremovexattr(name.as_ptr(), c"user.kacast".as_ptr()) }, 0);
    // Break a hard link, keeping content, mode and times.
    let two = c.join("hardlinks/two");
    let meta = fs::metadata(&two).unwrap();
    fs::remove_file(&two).unwrap();
    fs::copy(c.join("hardlinks/one"), &two).unwrap();
    fs::set_permissions(&two, meta.permissions()).unwrap();
    fidelity::set_mtime(&two, (meta.mtime(), meta.mtime_nsec())).unwrap();
    // Fill the hole with zeros: same content, all blocks allocated.
    let sparse = c.join("sparse/all-hole-16M");
    let mtime = fs::metadata(&sparse).unwrap().modified().unwrap();
    fs::write(&sparse, vec![0u8; 16 << 20]).unwrap();
    fs::File::options().write(true).open(&sparse).unwrap().set_modified(mtime).unwrap();
    // A symlink's own mtime.
    fidelity::set_mtime(&c.join("mtimes/symlink"), (1, 2)).unwrap();

    let damaged = tree::snapshot(&dst.dir, &opts);
    let d = tree::diff(&golden, &damaged, &opts);
    eprintln!("damaged clone:\n{}", d.join("\n"));
    assert_reports(&d, "fidelity/modes/f0600: mode 0600 != 0644");
    assert_reports(&d, "fidelity/xattrs/file: xattr user.kacast missing");
    assert_reports(&d, "fidelity/hardlinks/two: hard link group fidelity/hardlinks/one != (single)");
    assert!(d.iter().any(|l| l.starts_with("fidelity/sparse/all-hole-16M: allocated ")), "{d:#?}");
    assert!(!d.iter().any(|l| l.starts_with("fidelity/sparse/all-hole-16M: content")), "{d:#?}");
    assert_reports(&d, "fidelity/mtimes/symlink: mtime 1111111111.000000001 != 1.000000002");
    // The file content and every unrelated entry still match.
    assert!(
        d.iter().all(|l| !l.starts_with("fidelity/hardlinks/one:") && !l.starts_with("fidelity/hardlinks/three:")),
        "{d:#?}"
    );
    // One line per damage, plus the mtime of the directory the link was broken in
    // and the xattr again on the other name of the damaged inode.
    assert!(d.iter().any(|l| l.starts_with("fidelity/hardlinks: mtime ")), "{d:#?}");
    assert_reports(&d, "fidelity/xattrs/file-link: xattr user.kacast missing");
    assert_eq!(d.len(), 7, "{d:#?}");
}

/// The snapshot of the golden tree records what populate() made.
fn sanity_check(t: &std::collections::BTreeMap<PathBuf, tree::Entry>) {
    let e = |p: &str| t.get(Path::new("fidelity").join(p).as_path()).unwrap_or_else(|| panic!("no {p}"));
    assert_eq!(e("modes/setuid-04755").mode, 0o4755);
    assert_eq!(e("modes/sticky-01777").mode, 0o1777);
    assert_eq!(e("modes/f0000").mode, 0);
    assert_eq!(e("owners/setuid-foreign").mode, 0o6755);
    assert_eq!((e("owners/u12345-g23456").uid, e("owners/u12345-g23456").gid), (12345, 23456));
    assert_eq!(e("owners/symlink-23456").uid, 23456);
    assert_eq!(e("mtimes/file").mtime, fidelity::FILE_MTIME);
    assert_eq!(e("mtimes/symlink").mtime, fidelity::SYMLINK_MTIME);
    assert_eq!(e("mtimes/dir").mtime, fidelity::DIR_MTIME);
    assert_eq!(e("mtimes/after-2038").mtime, fidelity::FUTURE_MTIME);
    assert_eq!(e("mtimes/before-1970").mtime, fidelity::PAST_MTIME);
    let one = Some(PathBuf::from("fidelity/hardlinks/one"));
    for n in ["one", "two", "three"] {
        assert_eq!(e(&format!("hardlinks/{n}")).link_group, one);
    }
    assert_eq!(e("hardlinks/y/across-too").link_group, Some(PathBuf::from("fidelity/hardlinks/x/across")));
    assert_eq!(e("devices/null").rdev, Some((1, 3)));
    assert_eq!(e("devices/loop200").kind, tree::Kind::Block);
    assert_eq!(e("devices/loop200").rdev, Some((7, 200)));
    assert_eq!(e("devices/fifo").kind, tree::Kind::Fifo);
    let sparse = e("sparse/two-blocks-64M");
    assert_eq!(sparse.size, fidelity::SPARSE_SIZE);
    assert!(sparse.allocated <= 64 << 10, "sparse file allocates {}", sparse.allocated);
    assert!(e("sparse/all-hole-16M").allocated == 0);
    assert_eq!(e("symlinks/dangling").target, Some(PathBuf::from("does-not-exist")));
    let x = &e("xattrs/file").xattrs;
    assert_eq!(x.get("user.kacast").map(Vec::as_slice), Some(&b"value"[..]));
    assert_eq!(x.get("user.binary").map(Vec::as_slice), Some(fidelity::BINARY_XATTR));
    assert_eq!(
        e("trusted_xattrs/link").xattrs.get("trusted.kacast").map(Vec::as_slice),
        Some(&b"on a symlink"[..])
    );
    assert_eq!(e("capability/ping").xattrs.get("security.capability"), Some(&fidelity::cap_net_raw_ep()));
    assert_eq!(e("acls/file").xattrs.get("system.posix_acl_access"), Some(&fidelity::access_acl()));
    assert_eq!(e("acls/file").mode, 0o674);
    assert_eq!(e("acls/dir").xattrs.get("system.posix_acl_default"), Some(&fidelity::default_acl()));
    assert!(e("acls/dir/inherited").xattrs.contains_key("system.posix_acl_access"));
    assert!(t.keys().any(|p| p.as_os_str().len() > 255 + "fidelity/".len()));
}

/// Without root: two snapshots of an ordinary directory agree, and a change shows.
#[test]
fn snapshot_diff_detects_changes_in_a_plain_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::write(root.join("a"), b"alpha").unwrap();
    fs::create_dir(root.join("d")).unwrap();
    fs::write(root.join("d/b"), b"beta").unwrap();
    std::os::unix::fs::symlink("a", root.join("l")).unwrap();
    let sock = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
    let opts = tree::Options::default();
    let before = tree::snapshot(root, &opts);
    assert_eq!(before.len(), 6);
    assert_eq!(before[Path::new("sock")].kind, tree::Kind::Socket);
    assert!(tree::diff(&before, &tree::snapshot(root, &opts), &opts).is_empty());

    fs::write(root.join("d/b"), b"BETA").unwrap();
    fs::remove_file(root.join("l")).unwrap();
    fs::write(root.join("new"), b"").unwrap();
    drop(sock);
    fs::remove_file(root.join("sock")).unwrap(); // tar leaves sockets out: not reported
    let after = tree::snapshot(root, &opts);
    let d = tree::diff(&before, &after, &opts);
    assert_reports(&d, "d/b: content differs");
    assert_reports(&d, "missing: l");
    assert_reports(&d, "extra: new");
    assert!(d.iter().all(|l| !l.contains("sock")), "{d:#?}");
    let no_dir_mtime = tree::Options { compare_dir_mtime: false, ..opts };
    let d = tree::diff(&before, &after, &no_dir_mtime);
    assert!(d.iter().all(|l| !l.starts_with(".: mtime") && !l.starts_with("d: mtime")), "{d:#?}");
}
