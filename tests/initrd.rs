//! The nodes' initrd and stage2, built for real: the cpio read back by cpio(1),
//! two builds compared byte for byte, the initrd booted under QEMU in both of
//! its modes, and a tool run from an unpacked stage2.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::vm::qemu_until;
use common::{is_root, kacast_bin, missing_tool, skip};
use kacast::boot::initrd::{self, cpio, InitrdSpec, KernelTree, Node, Tree};
use kacast::boot::stage2::{self, Stage2Spec};

/// A QEMU boot of the initrd under TCG takes ~8 s here and an install run
/// that gives up ~25 s; four builders share two cores.
const VM_DEADLINE: Duration = Duration::from_secs(180);

fn sh(cmd: &str) -> std::process::Output {
    Command::new("sh").arg("-c").arg(cmd).output().expect("run sh")
}

fn sample_tree() -> Tree {
    let mut t = Tree::new();
    t.insert("bin", Node::Symlink { target: "usr/bin".into() });
    t.insert("usr/bin/tool", Node::File { mode: 0o755, data: b"#!/bin/sh\necho hi\n".to_vec() });
    t.insert("bin/alias", Node::Symlink { target: "/usr/bin/tool".into() });
    t.insert("etc/secret", Node::File { mode: 0o600, data: vec![7; 1000] });
    t.insert("etc/empty", Node::File { mode: 0o644, data: Vec::new() });
    t.insert("tmp", Node::Dir { mode: 0o1777 });
    t.insert("dev/console", Node::CharDev { mode: 0o600, major: 5, minor: 1 });
    t.insert("dev/null", Node::CharDev { mode: 0o666, major: 1, minor: 3 });
    t
}

#[test]
fn cpio_reads_back_the_tree() {
    if let Some(why) = missing_tool("cpio") {
        return skip(&why);
    }
    if !is_root() {
        return skip("cpio -idm makes device nodes: needs root");
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = sample_tree();
    let archive = dir.path().join("a.cpio");
    let mut bytes = Vec::new();
    cpio::write_newc(&tree, 1_000_000, &mut bytes).unwrap();
    fs::write(&archive, &bytes).unwrap();

    let listed = sh(&format!("cpio -t --quiet <{}", archive.display()));
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let listed: Vec<String> = String::from_utf8(listed.stdout).unwrap().lines().map(String::from).collect();
    let expected: Vec<String> = tree.iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(listed, expected);

    let out = dir.path().join("x");
    fs::create_dir(&out).unwrap();
    let unpacked = sh(&format!("cd {} && cpio -idm --quiet <{}", out.display(), archive.display()));
    assert!(unpacked.status.success(), "{}", String::from_utf8_lossy(&unpacked.stderr));
    for (path, node) in tree.iter() {
        let p = out.join(path);
        let meta = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mode = meta.permissions().mode() & 0o7777;
        match node {
            Node::Dir { mode: m } => assert!(meta.is_dir() && mode == *m, "{path}: {mode:o}"),
            Node::File { mode: m, data } => {
                assert!(meta.is_file() && mode == *m, "{path}: {mode:o}");
                assert_eq!(&fs::read(&p).unwrap(), data, "{path}");
                assert_eq!(meta.mtime(), 1_000_000, "{path}: cpio -m keeps the archive's time");
            }
            Node::Symlink { target } => assert_eq!(fs::read_link(&p).unwrap(), Path::new(target), "{path}"),
            Node::CharDev { mode: m, major, minor } => {
                assert!(meta.file_type().is_char_device() && mode == *m, "{path}: {mode:o}");
                let rdev = meta.rdev();
                assert_eq!((libc::major(rdev), libc::minor(rdev)), (*major, *minor), "{path}");
            }
        }
    }
}

/// A kernel tree with the layout of Debian's package and fake module files:
/// enough for everything but booting.
fn fake_kernel(dir: &Path) -> KernelTree {
    let v = "6.1.0-0-test";
    let m = dir.join("lib/modules").join(v);
    fs::create_dir_all(m.join("kernel/fs")).unwrap();
    fs::create_dir_all(dir.join("boot")).unwrap();
    fs::write(dir.join("boot").join(format!("vmlinuz-{v}")), "kernel").unwrap();
    // One compressed, as Debian's newer kernels ship them all.
    let mut gz = cpio::fixed_gzip(fs::File::create(m.join("kernel/fs/jbd2.ko.gz")).unwrap());
    std::io::Write::write_all(&mut gz, b"jbd2 module").unwrap();
    gz.finish().unwrap();
    fs::write(m.join("kernel/fs/ext4.ko"), "ext4 module").unwrap();
    fs::write(m.join("modules.dep"), "kernel/fs/ext4.ko: kernel/fs/jbd2.ko.gz\nkernel/fs/jbd2.ko.gz:\n")
        .unwrap();
    fs::write(m.join("modules.builtin"), "kernel/net/packet/af_packet.ko\n").unwrap();
    KernelTree::from_dir(dir).unwrap()
}

#[test]
fn two_builds_are_byte_identical_and_hold_the_init() {
    if !Path::new(initrd::DEFAULT_BUSYBOX).exists() {
        return skip("no /bin/busybox (apt-get install busybox-static)");
    }
    if let Some(why) = missing_tool("cpio") {
        return skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut spec = InitrdSpec::new(fake_kernel(&dir.path().join("k")));
    spec.modules = vec!["ext4".into(), "af_packet".into(), "no_such_module".into()];
    spec.client = Some(kacast_bin());
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    let report = initrd::build(&spec, &a).unwrap();
    initrd::build(&spec, &b).unwrap();
    let (bytes_a, bytes_b) = (fs::read(&a).unwrap(), fs::read(&b).unwrap());
    assert!(bytes_a == bytes_b, "two builds of the same inputs differ");
    assert_eq!(report.size, bytes_a.len() as u64);
    assert_eq!(&bytes_a[..2], &[0x1f, 0x8b], "gzip");
    assert_eq!(&bytes_a[4..8], &[0; 4], "no time in the gzip header");
    assert_eq!(report.modules, ["jbd2", "ext4"]);
    assert_eq!(report.builtin, ["af_packet"]);
    assert_eq!(report.skipped, ["no_such_module"]);

    let listed = sh(&format!("gzip -dc {} | cpio -t --quiet", a.display()));
    let listed = String::from_utf8(listed.stdout).unwrap();
    let has = |p: &str| listed.lines().any(|l| l == p);
    for p in [
        "init",
        "dev/console",
        "usr/bin/busybox",
        "usr/bin/kacast",
        "usr/sbin/udhcpc",
        "usr/sbin/switch_root",
        "lib64",
        "etc/kacast/modules",
        "etc/kacast/udhcpc.script",
        "lib/modules/6.1.0-0-test/kernel/fs/ext4.ko",
    ] {
        let p = p.replace("lib/modules", "usr/lib/modules");
        assert!(has(&p), "{p} not in the initrd:\n{listed}");
    }
    assert!(listed.lines().any(|l| l.ends_with("/libc.so.6")), "kacast's libc not in the initrd");
    let list = sh(&format!(
        "cd {} && gzip -dc {} | cpio -i --quiet --to-stdout etc/kacast/modules",
        dir.path().display(),
        a.display()
    ));
    assert_eq!(
        String::from_utf8(list.stdout).unwrap(),
        "/lib/modules/6.1.0-0-test/kernel/fs/jbd2.ko\n/lib/modules/6.1.0-0-test/kernel/fs/ext4.ko\n"
    );
    let jbd2 = sh(&format!(
        "gzip -dc {} | cpio -i --quiet --to-stdout usr/lib/modules/6.1.0-0-test/kernel/fs/jbd2.ko",
        a.display()
    ));
    assert_eq!(jbd2.stdout, b"jbd2 module", "a compressed module is stored decompressed");
}

/// Why a QEMU test cannot run here, if it cannot.
fn vm_missing() -> Option<String> {
    if !Path::new(initrd::DEFAULT_BUSYBOX).exists() {
        return Some("no /bin/busybox (apt-get install busybox-static)".into());
    }
    ["qemu-system-x86_64", "apt-get", "dpkg-deb", "depmod"].iter().find_map(|t| missing_tool(t))
}

/// Debian's current kernel, fetched once per test process into a cache under
/// target/ that later runs reuse.
fn kernel() -> Result<KernelTree, String> {
    static KERNEL: OnceLock<Result<KernelTree, String>> = OnceLock::new();
    KERNEL
        .get_or_init(|| {
            let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kacast-cache");
            fs::create_dir_all(&cache).unwrap();
            KernelTree::fetch(&cache).map_err(|e| format!("cannot fetch Debian's kernel: {e}"))
        })
        .clone()
}

#[test]
fn boot_mode_mounts_root_by_uuid_and_switches_to_it() {
    if let Some(why) = vm_missing().or_else(|| missing_tool("mkfs.ext4")) {
        return skip(&why);
    }
    let kernel = match kernel() {
        Ok(k) => k,
        Err(why) => return skip(&why),
    };
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("initrd.img");
    let report = initrd::build(&InitrdSpec::new(kernel.clone()), &img).unwrap();
    for m in ["virtio_blk", "ext4", "virtio_net"] {
        assert!(report.modules.iter().any(|x| x == m), "{m} not among {:?}", report.modules);
    }

    // A root filesystem holding only a static busybox and an init that proves
    // it ran, then powers off.
    let root = dir.path().join("root");
    for d in ["bin", "sbin", "dev", "proc", "sys", "run"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy(initrd::DEFAULT_BUSYBOX, root.join("bin/busybox")).unwrap();
    let marker = "KACAST-TEST-ROOT-INIT-RAN";
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\n\
         echo \"{marker} pid=$$ root=$(/bin/busybox awk '$2 == \"/\" {{print $1}}' /proc/mounts | /bin/busybox tail -n 1)\"\n\
         /bin/busybox poweroff -f\n"
    );
    fs::write(root.join("sbin/init"), init).unwrap();
    fs::set_permissions(root.join("sbin/init"), fs::Permissions::from_mode(0o755)).unwrap();
    let disk = dir.path().join("disk.img");
    let uuid = "5a1e2b3c-4d5e-4f60-8a9b-0c1d2e3f4a5b";
    let made = sh(&format!("mkfs.ext4 -q -d {} -U {uuid} {} 32M", root.display(), disk.display()));
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));

    let serial = dir.path().join("serial.log");
    let append = format!("console=ttyS0 root=UUID={uuid} rw panic=-1");
    let drive = format!("file={},format=raw,if=virtio", disk.display());
    let (vmlinuz, initrd) = (kernel.vmlinuz().display().to_string(), img.display().to_string());
    let started = std::time::Instant::now();
    let run = qemu_until(
        &["-kernel", &vmlinuz, "-initrd", &initrd, "-append", &append, "-drive", &drive, "-nic", "none"],
        Some(marker),
        &serial,
        VM_DEADLINE,
    );
    eprintln!(
        "boot mode: marker after {:.1} s, initrd {} bytes",
        started.elapsed().as_secs_f64(),
        report.size
    );
    assert!(
        run.log.contains(&format!("{marker} pid=1 root=/dev/vda")),
        "root init did not run as PID 1 from /dev/vda:\n{}",
        run.log
    );
    assert!(run.log.contains("kacast-init: root /dev/vda mounted (rw)"), "{}", run.log);
    assert!(run.log.contains("kacast-init: modules:") && run.log.contains(", 0 failed"), "{}", run.log);
}

#[test]
fn install_mode_without_a_server_tries_five_times_then_powers_off() {
    if let Some(why) = vm_missing() {
        return skip(&why);
    }
    let kernel = match kernel() {
        Ok(k) => k,
        Err(why) => return skip(&why),
    };
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("initrd.img");
    let mut spec = InitrdSpec::new(kernel.clone());
    spec.client = Some(kacast_bin());
    initrd::build(&spec, &img).unwrap();

    let serial = dir.path().join("serial.log");
    // slirp answers DHCP with 10.0.2.15; nothing listens on 10.0.2.2:1.
    let append = "console=ttyS0 panic=-1 kamethod kacast.onfail=poweroff kacast.server=10.0.2.2:1";
    let (vmlinuz, initrd) = (kernel.vmlinuz().display().to_string(), img.display().to_string());
    let started = std::time::Instant::now();
    let run = qemu_until(
        &["-kernel", &vmlinuz, "-initrd", &initrd, "-append", append, "-nic", "user,model=virtio-net-pci"],
        None,
        &serial,
        VM_DEADLINE,
    );
    eprintln!("install mode: gave up and powered off after {:.1} s", started.elapsed().as_secs_f64());
    let log = &run.log;
    assert!(log.contains("kacast-init: install mode (kamethod)"), "{log}");
    assert!(log.contains("kacast-init: eth0: DHCP address 10.0.2.15/24 router 10.0.2.2"), "{log}");
    for n in 1..=5 {
        assert!(
            log.contains(&format!("kacast-init: golden node not found (try {n} of 5)")),
            "try {n}:\n{log}"
        );
    }
    assert!(!log.contains("try 6 of"), "{log}");
    assert!(
        log.contains("kacast-init: Can't reach a valid kacast server (golden node) after 5 tries."),
        "{log}"
    );
    assert!(log.contains("kacast-init: powering off (kacast.onfail=poweroff)"), "{log}");
    assert!(run.exited, "QEMU did not power off by itself:\n{log}");
}

#[test]
fn stage2_tools_run_from_the_unpacked_tar() {
    if !is_root() {
        return skip("chroot into the unpacked stage2 needs root");
    }
    if let Some(why) = missing_tool("sfdisk") {
        return skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("stage2.tar");
    let report = stage2::build(&Stage2Spec::default(), &tar).unwrap();
    assert!(report.tools.iter().any(|t| t.ends_with("sfdisk")), "{:?}", report.tools);
    let again = dir.path().join("again.tar");
    stage2::build(&Stage2Spec::default(), &again).unwrap();
    assert!(fs::read(&tar).unwrap() == fs::read(&again).unwrap(), "two stage2 builds differ");

    // A bare chroot: the closure alone must be enough.
    let bare = dir.path().join("bare");
    fs::create_dir(&bare).unwrap();
    let unpacked = sh(&format!("tar -x -C {} <{}", bare.display(), tar.display()));
    assert!(unpacked.status.success(), "{}", String::from_utf8_lossy(&unpacked.stderr));
    let ran = Command::new("chroot").arg(&bare).args(["/usr/sbin/sfdisk", "--version"]).output().unwrap();
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    assert!(String::from_utf8_lossy(&ran.stdout).contains("util-linux"), "{ran:?}");

    // As the init does it: the initrd's own busybox tar unpacks the stage2
    // over the initrd's root, and the real tools then come first on PATH.
    if !Path::new(initrd::DEFAULT_BUSYBOX).exists() {
        return skip("no /bin/busybox (apt-get install busybox-static)");
    }
    if let Some(why) = missing_tool("cpio") {
        return skip(&why);
    }
    let mut spec = InitrdSpec::new(fake_kernel(&dir.path().join("k")));
    spec.modules = vec!["ext4".into()];
    spec.client = Some(kacast_bin());
    let img = dir.path().join("initrd.img");
    initrd::build(&spec, &img).unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    let unpacked = sh(&format!("cd {} && gzip -dc {} | cpio -idm --quiet", root.display(), img.display()));
    assert!(unpacked.status.success(), "{}", String::from_utf8_lossy(&unpacked.stderr));
    let in_initrd = |script: &str| {
        let out = Command::new("chroot")
            .arg(&root)
            .args(["/bin/sh", "-c", &format!("PATH=/usr/sbin:/usr/bin:/sbin:/bin; {script}")])
            .stdin(fs::File::open(&tar).unwrap())
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(in_initrd("tar --version 2>&1 | head -n 1").contains("busybox"), "before: busybox's tar");
    in_initrd("tar -x -C /");
    let after = in_initrd("tar --version | head -n 1; sfdisk --version; mkfs.ext4 -V 2>&1; kacast --version");
    assert!(after.contains("GNU tar"), "{after}");
    assert!(after.contains("sfdisk from util-linux"), "{after}");
    assert!(after.contains("mke2fs"), "{after}");
    assert!(after.contains("kacast"), "the initrd's kacast still runs after the stage2's libc:\n{after}");
}
