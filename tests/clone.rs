//! Cloning for real, on loop devices: a golden disk is built and filled with
//! every case a clone must keep, then `kacast clone` and `kacast install`
//! (the binary, as an admin runs them) clone it through the chain onto target
//! loop disks of this host, and every target is compared with the golden one:
//! partition table, filesystem types/UUIDs/labels, the file trees with all
//! metadata, boot code, node identity. Needs root and the disk tools;
//! otherwise skips (fails under KACAST_REQUIRE_ALL_TESTS).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;

use common::disks::{sh, LoopDisk, Mounts};
use common::{fidelity, tree};
use kacast::disk::blockdev::Disk;
use kacast::disk::bootloader::has_grub_boot_code;
use kacast::disk::Desc;

const KACAST: &str = env!("CARGO_BIN_EXE_kacast");

/// The clones are heavy (several loop disks, mkfs, a chain): one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const TOOLS: &[&str] = &[
    "losetup",
    "partx",
    "sfdisk",
    "wipefs",
    "blkid",
    "mkfs.ext4",
    "mkfs.xfs",
    "mkfs.vfat",
    "mkswap",
    "tar",
    "grub-mkimage",
    "mount",
    "mcopy",
    "zstd",
    "qemu-system-x86_64",
];

fn cannot_run() -> Option<String> {
    if !common::is_root() {
        return Some("needs root for loop devices and mounts".into());
    }
    if let Some(t) = TOOLS.iter().find_map(|t| common::missing_tool(t)) {
        return Some(t);
    }
    ["/usr/lib/grub/i386-pc", "/usr/lib/grub/x86_64-efi"]
        .iter()
        .find(|d| !Path::new(d).is_dir())
        .map(|d| format!("{d} is missing (grub-pc-bin, grub-efi-amd64-bin)"))
}

/// ka-deploy's example shape: a root, a swap, an extended partition with a
/// separate /boot and a /home (xfs needs 300 MiB).
const MBR_DESC: &str =
    "# golden for the clone test\nlinux 160\nswap 16\nextended fill\nlogical linux 48\nlogical linux fill\n";
const MBR_BYTES: u64 = 560 << 20;

const GPT_DESC: &str = "label gpt\nesp 34\nlinux fill\n";
const GPT_BYTES: u64 = 160 << 20;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A golden disk, partitioned from its desc by kacast's own layout.
fn golden_disk(desc: &str, bytes: u64) -> LoopDisk {
    let disk = LoopDisk::new(bytes);
    let layout = Desc::parse(desc, "golden desc").unwrap().layout(bytes).unwrap();
    Disk::open(&disk.dev).unwrap().write_table(&layout).unwrap();
    disk
}

fn uuid(dev: &Path) -> String {
    sh("blkid", &["-p", "-s", "UUID", "-o", "value", dev.to_str().unwrap()]).unwrap().trim().to_string()
}

/// What every golden system has that makes a node a copy rather than a node.
fn write_identity(root: &Path) {
    let w = |p: &str, s: &str| {
        let path = root.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, s).unwrap();
    };
    w("etc/machine-id", "0123456789abcdef0123456789abcdef\n");
    w("etc/hostname", "golden\n");
    w("etc/hosts", "127.0.0.1 localhost\n127.0.1.1 golden\n");
    w("var/lib/dhcp/dhclient.eth0.leases", "lease { fixed-address 10.0.0.1; }\n");
    w("etc/udev/rules.d/70-persistent-net.rules", "SUBSYSTEM==\"net\", NAME=\"eth0\"\n");
    w("etc/ssh/ssh_host_ed25519_key", "golden private key\n");
    w("etc/ssh/ssh_host_ed25519_key.pub", "ssh-ed25519 AAAAgolden golden\n");
    w("tmp/scratch", "not to be cloned\n");
    fs::set_permissions(root.join("tmp"), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
}

/// Paths that a clone changes on purpose, compared separately.
fn identity_paths() -> Vec<PathBuf> {
    [
        "lost+found",
        "etc/machine-id",
        "etc/hostname",
        "etc/hosts",
        "etc/ssh",
        "var/lib/dhcp",
        "etc/udev/rules.d",
        "tmp",
        "boot/lost+found",
        "boot/grub/i386-pc",
        "boot/grub/x86_64-efi",
        "boot/efi/EFI/BOOT",
        "boot/efi/EFI",
    ]
    .iter()
    .map(PathBuf::from)
    .collect()
}

fn spawn(args: &[&str]) -> Child {
    Command::new(KACAST).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

fn finish(child: Child, what: &str) -> Output {
    let out = child.wait_with_output().unwrap();
    eprintln!(
        "--- {what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `kacast clone` on the golden root and `kacast install` for each target,
/// returning the golden node's output and each node's.
fn clone_through_chain(
    work: &Path,
    session: &str,
    golden: &LoopDisk,
    golden_root: &Path,
    desc: &str,
    targets: &[&LoopDisk],
    extra: &[&str],
) -> (Output, Vec<Output>) {
    let desc_file = work.join("desc");
    fs::write(&desc_file, desc).unwrap();
    let name = golden.name();
    let mut args =
        vec!["-p", &name, desc_file.to_str().unwrap(), "-x", "/tmp", "--root", golden_root.to_str().unwrap()];
    args.extend(extra);
    run_rack(work, session, &args, &name, targets)
}

/// `kacast clone -n N ARGS` on loopback and `kacast install` for each target,
/// the plan's disk `disk` mapped to the target; returns the golden node's
/// output and each node's.
fn run_rack(
    work: &Path,
    session: &str,
    args: &[&str],
    disk: &str,
    targets: &[&LoopDisk],
) -> (Output, Vec<Output>) {
    let port = free_port().to_string();
    let n = targets.len().to_string();
    let mut clone_args = vec!["clone", "-n", &n];
    clone_args.extend(args);
    clone_args.extend(["--session", session, "--bind", "127.0.0.1", "--port", &port, "--no-discovery"]);
    clone_args.extend(["--timeout", "10", "--phase-timeout", "60"]);
    // Every install keeps its nodes' status, and switches the PXE files of
    // those cloned to their disks.
    let (logs, tftp) = (work.join(format!("{session}-logs")), work.join(format!("{session}-tftp")));
    fs::create_dir_all(&tftp).unwrap();
    let (logs, tftp) = (logs.to_str().unwrap().to_string(), tftp.to_str().unwrap().to_string());
    clone_args.extend(["--log-dir", &logs, "--pxe-root", &tftp]);
    let clone = spawn(&clone_args);
    let server = format!("127.0.0.1:{port}");
    let nodes: Vec<Child> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let map = format!("{disk}={}", t.dev.display());
            let root = work.join(format!("{session}-node{i}"));
            let plan_dir = work.join(format!("{session}-plan{i}"));
            spawn(&[
                "install",
                "--session",
                session,
                "--server",
                &server,
                "--name",
                &format!("node{i}"),
                "--disk",
                &map,
                "--root",
                root.to_str().unwrap(),
                "--bind",
                "127.0.0.1",
                "--tries",
                "30",
                "--timeout",
                "10",
                "--work-dir",
                plan_dir.to_str().unwrap(),
            ])
        })
        .collect();
    let nodes: Vec<Output> =
        nodes.into_iter().enumerate().map(|(i, c)| finish(c, &format!("node{i}"))).collect();
    (finish(clone, "kacast clone"), nodes)
}

/// Mounts a clone's filesystems like its fstab would (parents first).
fn mount_clone(mounts: &mut Mounts, disk: &LoopDisk, at: &Path, parts: &[(u32, &str, &[&str])]) {
    for (n, mp, opts) in parts {
        mounts.mount(&disk.part(*n), &at.join(mp.trim_start_matches('/')), opts);
    }
}

fn machine_id(root: &Path) -> String {
    fs::read_to_string(root.join("etc/machine-id")).unwrap().trim().to_string()
}

/// What must hold of every clone beyond the identical tree.
fn check_identity(golden_root: &Path, clone_root: &Path, ids: &mut BTreeSet<String>) {
    let id = machine_id(clone_root);
    assert_eq!(id.len(), 32, "machine-id '{id}'");
    assert!(ids.insert(id), "machine-id repeated across golden and clones");
    assert!(!clone_root.join("var/lib/dhcp/dhclient.eth0.leases").exists(), "DHCP lease kept");
    assert!(
        !clone_root.join("etc/udev/rules.d/70-persistent-net.rules").exists(),
        "persistent net rules kept"
    );
    let key = fs::read_to_string(clone_root.join("etc/ssh/ssh_host_ed25519_key.pub")).unwrap_or_default();
    let golden_key = fs::read_to_string(golden_root.join("etc/ssh/ssh_host_ed25519_key.pub")).unwrap();
    assert_ne!(key, golden_key, "ssh host key not regenerated");
    let tmp = fs::metadata(clone_root.join("tmp")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&tmp.permissions()) & 0o7777, 0o1777);
    assert_eq!(fs::read_dir(clone_root.join("tmp")).unwrap().count(), 0, "excluded /tmp not empty");
}

fn compare_trees(golden_root: &Path, clone_root: &Path) {
    let opts = tree::Options { skip: identity_paths(), compare_dir_mtime: true, compare_sparseness: true };
    let golden = tree::snapshot(golden_root, &opts);
    let mut clone = tree::snapshot(clone_root, &opts);
    // The bootloader adds its modules directory to /boot/grub, as grub-install
    // does: that directory's mtime moves on purpose.
    // Node preparation rewrites files of /etc (by rename), which moves its mtime.
    for dir in ["boot/grub", "etc"] {
        if let (Some(g), Some(c)) = (golden.get(Path::new(dir)), clone.get_mut(Path::new(dir))) {
            c.mtime = g.mtime;
        }
    }
    let diff = tree::diff(&golden, &clone, &opts);
    assert!(diff.is_empty(), "clone {} differs from golden:\n{}", clone_root.display(), diff.join("\n"));
}

#[test]
fn an_mbr_golden_disk_clones_onto_three_nodes_and_a_too_small_one_is_refused_untouched() {
    if let Some(why) = cannot_run() {
        return common::skip(&why);
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let work = tempfile::tempdir().unwrap();
    let golden = golden_disk(MBR_DESC, MBR_BYTES);
    sh("mkfs.ext4", &["-q", "-F", "-L", "root", golden.part(1).to_str().unwrap()]).unwrap();
    sh("mkswap", &["-L", "swap", golden.part(2).to_str().unwrap()]).unwrap();
    sh("mkfs.ext4", &["-q", "-F", "-L", "boot", golden.part(5).to_str().unwrap()]).unwrap();
    sh("mkfs.xfs", &["-q", "-f", "-L", "home", golden.part(6).to_str().unwrap()]).unwrap();
    let g = work.path().join("golden");
    let mut mounts = Mounts::default();
    mount_clone(&mut mounts, &golden, &g, &[(1, "/", &[]), (5, "/boot", &[]), (6, "/home", &[])]);
    let fstab = format!(
        "# golden fstab\nUUID={} / ext4 errors=remount-ro 0 1\nUUID={} /boot ext4 defaults 0 2\nUUID={} /home xfs defaults 0 2\nUUID={} none swap sw 0 0\ntmpfs /run/shm tmpfs defaults 0 0\n",
        uuid(&golden.part(1)),
        uuid(&golden.part(5)),
        uuid(&golden.part(6)),
        uuid(&golden.part(2))
    );
    fs::create_dir_all(g.join("etc")).unwrap();
    fs::write(g.join("etc/fstab"), fstab).unwrap();
    fs::create_dir_all(g.join("boot/grub")).unwrap();
    fs::write(g.join("boot/grub/grub.cfg"), MARKER_CFG).unwrap();
    write_identity(&g);
    let cases = fidelity::populate(&g);
    fidelity::populate(&g.join("home"));
    assert!(cases.len() >= 10, "{cases:?}");

    let targets: Vec<LoopDisk> = (0..3).map(|_| LoopDisk::new(MBR_BYTES)).collect();
    let small = LoopDisk::new(200 << 20);
    let small_before = small.hash();
    let mut all: Vec<&LoopDisk> = targets.iter().collect();
    all.push(&small);
    // The files travel zstd-compressed: relays forward compressed bytes, each
    // node decompresses for its own disk; the trees must still be identical.
    let (golden_out, nodes) =
        clone_through_chain(work.path(), "mbrclone", &golden, &g, MBR_DESC, &all, &["--compress", "zstd"]);
    let golden_log = String::from_utf8_lossy(&golden_out.stderr);
    assert!(golden_log.contains(r#""tree_compression": "zstd""#), "{golden_log}");

    // The too-small node refused the plan before writing, and the others went on.
    assert_eq!(golden_out.status.code(), Some(2), "3 of 4 nodes cloned");
    let report = String::from_utf8_lossy(&golden_out.stdout);
    assert!(report.contains("3 of 4 nodes cloned"), "{report}");
    let small_line = report.lines().find(|l| l.starts_with("node3")).unwrap();
    assert!(
        small_line.contains("FAILED")
            && small_line.contains("plan refused")
            && small_line.contains("200.0 MiB"),
        "{small_line}"
    );
    assert_eq!(nodes[3].status.code(), Some(1));
    assert_eq!(small.hash(), small_before, "a refused plan wrote to the disk");

    // Each node's live status reached the golden node: `kacast status`.
    let logs = work.path().join("mbrclone-logs");
    let status = Command::new(KACAST).arg("status").arg(&logs).output().unwrap();
    let table = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.status.code(), Some(2), "one node failed:\n{table}");
    for i in 0..3 {
        let line = table.lines().find(|l| l.starts_with(&format!("node{i} "))).unwrap_or("");
        assert!(line.contains(" done "), "node{i}: {table}");
    }
    let line3 = table.lines().find(|l| l.starts_with("node3 ")).unwrap_or("");
    assert!(line3.contains(" failed ") && line3.contains("200.0 MiB"), "{table}");
    assert!(table.contains("4 nodes: 3 done, 0 running, 1 failed, 0 lost"), "{table}");
    let log0 = fs::read_to_string(logs.join("node0.log")).unwrap();
    for step in ["[hello]", "plan checked", "mbrclone2", "done"] {
        assert!(log0.contains(step), "node0's log lacks '{step}':\n{log0}");
    }
    // The nodes (all on this host) switched to their local disks by MAC.
    for mac in kacast::session::status::local_macs() {
        let name = kacast::boot::mac_config_name(&mac).unwrap();
        let cfg = work.path().join("mbrclone-tftp/pxelinux.cfg").join(name);
        let text = fs::read_to_string(&cfg).unwrap_or_default();
        assert!(text.contains("LOCALBOOT 0"), "{}: {text}", cfg.display());
    }

    let golden_table = golden.table();
    let mut ids = BTreeSet::from([machine_id(&g)]);
    for (i, t) in targets.iter().enumerate() {
        assert_eq!(nodes[i].status.code(), Some(0), "node{i}");
        assert_eq!(t.table(), golden_table, "partition table of node{i}");
        for n in [1, 2, 5, 6] {
            assert_eq!(t.ids(n), golden.ids(n), "type/UUID/label of partition {n} on node{i}");
        }
        let mbr = fs::read(&t.dev).map(|b| b[..512].to_vec()).unwrap_or_default();
        assert!(has_grub_boot_code(&mbr), "no grub boot code in node{i}'s MBR");
        let root = work.path().join(format!("check{i}"));
        let mut m = Mounts::default();
        mount_clone(&mut m, t, &root, &[(1, "/", &[]), (5, "/boot", &[]), (6, "/home", &["nouuid"])]);
        assert!(root.join("boot/grub/grub.cfg").is_file());
        assert!(root.join("boot/grub/i386-pc/normal.mod").is_file());
        compare_trees(&g, &root);
        check_identity(&g, &root, &mut ids);
        if i == 0 {
            // The clone boots: BIOS → its MBR → core.img → its own /boot.
            m.unmount_all();
            let log = boot_until(t, "KACAST-CLONE-BOOTED-FROM-", work.path());
            assert!(
                log.contains("KACAST-CLONE-BOOTED-FROM-hd0,msdos5"),
                "node0 does not boot its clone:\n{log}"
            );
        }
    }
}

/// A grub.cfg that proves GRUB found it: it names the partition it was read from.
const MARKER_CFG: &str =
    "serial --unit=0 --speed=115200\nterminal_output serial\necho KACAST-CLONE-BOOTED-FROM-$root\nhalt\n";

/// mtools on a FAT partition: the ESP is read and written without mounting
/// it, as kacast does when the kernel has no FAT (this machine's).
fn mtools(program: &str, dev: &Path, args: &[&str]) -> Vec<u8> {
    let out =
        Command::new(program).env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(dev).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn a_gpt_uefi_golden_disk_clones_with_its_esp() {
    if let Some(why) = cannot_run() {
        return common::skip(&why);
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let work = tempfile::tempdir().unwrap();
    let golden = golden_disk(GPT_DESC, GPT_BYTES);
    let esp = golden.part(1);
    sh("mkfs.vfat", &["-n", "ESP", esp.to_str().unwrap()]).unwrap();
    sh("mkfs.ext4", &["-q", "-F", "-L", "root", golden.part(2).to_str().unwrap()]).unwrap();
    let stub = format!("search.fs_uuid {} root\n", uuid(&golden.part(2)));
    let stub_file = work.path().join("stub.cfg");
    fs::write(&stub_file, &stub).unwrap();
    mtools("mmd", &esp, &["::/EFI", "::/EFI/debian"]);
    mtools("mcopy", &esp, &[stub_file.to_str().unwrap(), "::/EFI/debian/grub.cfg"]);
    let g = work.path().join("golden");
    let mut mounts = Mounts::default();
    mount_clone(&mut mounts, &golden, &g, &[(2, "/", &[])]);
    let fstab = format!(
        "UUID={} / ext4 defaults 0 1\nUUID={} /boot/efi vfat umask=0077 0 1\n",
        uuid(&golden.part(2)),
        uuid(&esp)
    );
    fs::create_dir_all(g.join("etc")).unwrap();
    fs::create_dir_all(g.join("boot/efi")).unwrap();
    fs::write(g.join("etc/fstab"), fstab).unwrap();
    fs::create_dir_all(g.join("boot/grub")).unwrap();
    fs::write(g.join("boot/grub/grub.cfg"), "set timeout=0\n").unwrap();
    write_identity(&g);
    fidelity::populate(&g);

    let targets: Vec<LoopDisk> = (0..2).map(|_| LoopDisk::new(GPT_BYTES)).collect();
    let all: Vec<&LoopDisk> = targets.iter().collect();
    let (golden_out, nodes) = clone_through_chain(work.path(), "gptclone", &golden, &g, GPT_DESC, &all, &[]);
    assert_eq!(golden_out.status.code(), Some(0));
    let mut ids = BTreeSet::from([machine_id(&g)]);
    for (i, t) in targets.iter().enumerate() {
        assert_eq!(nodes[i].status.code(), Some(0), "node{i}");
        assert_eq!(t.table(), golden.table(), "GPT of node{i}");
        assert_eq!((t.ids(1), t.ids(2)), (golden.ids(1), golden.ids(2)), "filesystem ids of node{i}");
        let efi = mtools("mtype", &t.part(1), &["::/EFI/BOOT/BOOTX64.EFI"]);
        assert_eq!(&efi[..2], b"MZ", "BOOTX64.EFI is not a PE image");
        assert_eq!(mtools("mtype", &t.part(1), &["::/EFI/debian/grub.cfg"]), stub.as_bytes());
        let fsck = Command::new("fsck.vfat").arg("-n").arg(t.part(1)).output().unwrap();
        assert!(fsck.status.success(), "ESP of node{i}: {}", String::from_utf8_lossy(&fsck.stdout));
        let root = work.path().join(format!("check{i}"));
        let mut m = Mounts::default();
        mount_clone(&mut m, t, &root, &[(2, "/", &[])]);
        assert!(root.join("boot/grub/x86_64-efi/normal.mod").is_file());
        compare_trees(&g, &root);
        check_identity(&g, &root, &mut ids);
    }
}

#[test]
fn a_bad_desc_is_named_before_anything_is_read() {
    let work = tempfile::tempdir().unwrap();
    let desc = work.path().join("bad.desc");
    fs::write(&desc, "linux 100\nswap lots\n").unwrap();
    let out = Command::new(KACAST)
        .args(["clone", "-n", "1", "-p", "sda", desc.to_str().unwrap(), "--dry-run", "--root"])
        .arg(work.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("{}:2:", desc.display())) && err.contains("lots"), "{err}");
}

/// A plan for one disk named `sda`, with a root and a swap.
fn small_plan() -> kacast::disk::Plan {
    let json = r#"{"format":"kacast-plan","version":1,"golden":"g",
        "disks":[{"name":"sda","desc":"linux 40\nswap 8\n","origin":"test"}],
        "filesystems":[{"disk":"sda","partition":1,"fstype":"ext4","mount_point":"/","uuid":null,"label":null},
                       {"disk":"sda","partition":2,"fstype":"swap","mount_point":null,"uuid":null,"label":null}],
        "bootloader":{"kind":"none","disk":null,"firmware":null},"tree_session":"t2"}"#;
    kacast::disk::Plan::parse(json.as_bytes()).unwrap()
}

#[test]
fn a_missing_a_mounted_or_a_small_disk_is_refused_and_left_byte_identical() {
    use kacast::disk::apply::{check, DiskMap};
    if let Some(why) = cannot_run() {
        return common::skip(&why);
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("target");
    let check_on = |dev: &Path| {
        let mut map = DiskMap::default();
        map.add(&format!("sda={}", dev.display())).unwrap();
        check(small_plan(), &map, &root, "node1").map(|_| ()).unwrap_err().to_string()
    };

    let missing = check_on(Path::new("/dev/kacast-no-such-disk"));
    assert!(missing.contains("/dev/kacast-no-such-disk: no such disk"), "{missing}");

    let small = LoopDisk::new(30 << 20);
    let before = small.hash();
    let e = check_on(&small.dev);
    assert!(e.contains("plan refused: disk sda") && e.contains("30.0 MiB"), "{e}");
    assert_eq!(small.hash(), before);

    let busy = LoopDisk::new(64 << 20);
    let layout = Desc::parse("linux fill\n", "busy").unwrap().layout(64 << 20).unwrap();
    Disk::open(&busy.dev).unwrap().write_table(&layout).unwrap();
    sh("mkfs.ext4", &["-q", "-F", busy.part(1).to_str().unwrap()]).unwrap();
    // Read-only, so the mount itself writes nothing either.
    let before = busy.hash();
    let mut mounts = Mounts::default();
    mounts.mount(&busy.part(1), &work.path().join("busy"), &["ro"]);
    let e = check_on(&busy.dev);
    assert!(e.contains("is in use") && e.contains("is mounted on"), "{e}");
    mounts.unmount_all();
    assert_eq!(busy.hash(), before, "a refused plan wrote to the mounted disk");
}

/// `kacast capture` records a golden root; `kacast clone --env` deploys the
/// recording (a tarball with a post-install archive) and a raw partition
/// image (Kadeploy's ddzst kind) onto fresh disks partitioned from a desc.
#[test]
fn a_recorded_image_and_a_raw_one_deploy_from_kadeploy_descriptions() {
    if let Some(why) = cannot_run() {
        return common::skip(&why);
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let work = tempfile::tempdir().unwrap();
    let desc = "linux 120\nswap 16\n";
    let golden = golden_disk(desc, 160 << 20);
    sh("mkfs.ext4", &["-q", "-F", "-L", "root", golden.part(1).to_str().unwrap()]).unwrap();
    let g = work.path().join("golden");
    let mut mounts = Mounts::default();
    mount_clone(&mut mounts, &golden, &g, &[(1, "/", &[])]);
    fs::create_dir_all(g.join("etc")).unwrap();
    fs::write(g.join("etc/fstab"), format!("UUID={} / ext4 defaults 0 1\n", uuid(&golden.part(1)))).unwrap();
    fs::create_dir_all(g.join("boot")).unwrap();
    fs::write(g.join("boot/vmlinuz-6.1.0-9-amd64"), "kernel").unwrap();
    fs::write(g.join("boot/initrd.img-6.1.0-9-amd64"), "initrd").unwrap();
    std::os::unix::fs::symlink("boot/vmlinuz-6.1.0-9-amd64", g.join("vmlinuz")).unwrap();
    std::os::unix::fs::symlink("boot/initrd.img-6.1.0-9-amd64", g.join("initrd.img")).unwrap();
    write_identity(&g);
    fidelity::populate(&g);

    // Record it.
    let out = work.path().join("images");
    let rec = finish(
        spawn(&[
            "capture",
            "--name",
            "golden-env",
            "-o",
            out.to_str().unwrap(),
            "--root",
            g.to_str().unwrap(),
            "-x",
            "/tmp",
        ]),
        "kacast capture",
    );
    assert_eq!(rec.status.code(), Some(0));
    let yaml = fs::read_to_string(out.join("golden-env.yaml")).unwrap();
    assert!(yaml.contains("golden-env.tar.zst") && yaml.contains("zstd") && yaml.contains("ext4"), "{yaml}");
    assert!(yaml.contains("/vmlinuz"), "{yaml}");
    assert!(fs::read_to_string(out.join("golden-env.desc")).unwrap().contains("linux 120"));

    // A post-install archive, run with the clone mounted (Kadeploy's contract).
    let post = work.path().join("post");
    fs::create_dir_all(&post).unwrap();
    fs::write(post.join("run.sh"), "echo \"$(pwd)\" > \"$KADEPLOY_ENV_EXTRACTION_DIR/postinstall-ran\"\n")
        .unwrap();
    sh("tar", &["-czf", out.join("post.tgz").to_str().unwrap(), "-C", post.to_str().unwrap(), "run.sh"])
        .unwrap();
    let env = out.join("deploy.yaml");
    fs::write(
        &env,
        "---\nname: golden-env\nversion: 1\nos: linux\nimage:\n  file: golden-env.tar.zst\n  kind: tar\n  compression: zstd\npostinstalls:\n- archive: post.tgz\n  compression: gzip\n  script: sh run.sh\nboot:\n  kernel: /vmlinuz\n  initrd: /initrd.img\n  kernel_params: console=ttyS0\nfilesystem: ext4\npartition_type: 131\nmultipart: false\n",
    )
    .unwrap();
    mounts.unmount_all();

    let targets: Vec<LoopDisk> = (0..2).map(|_| LoopDisk::new(160 << 20)).collect();
    let all: Vec<&LoopDisk> = targets.iter().collect();
    let (golden_out, nodes) = deploy(work.path(), "envdeploy", &["--env", env.to_str().unwrap()], desc, &all);
    assert_eq!(golden_out.status.code(), Some(0));
    mount_clone(&mut mounts, &golden, &g, &[(1, "/", &["ro"])]);
    let mut ids = BTreeSet::from([machine_id(&g)]);
    for (i, t) in targets.iter().enumerate() {
        assert_eq!(nodes[i].status.code(), Some(0), "node{i}");
        assert_eq!(t.table(), golden.table());
        assert_eq!(t.ids(2).split(' ').next(), Some("swap"));
        let mbr = fs::read(&t.dev).map(|b| b[..512].to_vec()).unwrap();
        assert!(has_grub_boot_code(&mbr), "node{i}");
        let root = work.path().join(format!("env{i}"));
        let mut m = Mounts::default();
        mount_clone(&mut m, t, &root, &[(1, "/", &[])]);
        let fstab = fs::read_to_string(root.join("etc/fstab")).unwrap();
        assert!(fstab.contains(&format!("UUID={} / ext4", uuid(&t.part(1)))), "{fstab}");
        assert!(fstab.contains(&format!("UUID={} none swap", uuid(&t.part(2)))), "{fstab}");
        let cfg = fs::read_to_string(root.join("boot/grub/grub.cfg")).unwrap();
        assert!(
            cfg.contains(&format!("linux /vmlinuz root=UUID={} ro console=ttyS0", uuid(&t.part(1)))),
            "{cfg}"
        );
        assert!(root.join("postinstall-ran").is_file(), "post-install script did not run");
        let mut opts = identity_paths();
        opts.extend(["etc/fstab", "boot/grub", "postinstall-ran"].map(PathBuf::from));
        let opts = tree::Options { skip: opts, compare_dir_mtime: false, compare_sparseness: true };
        let diff = tree::diff(&tree::snapshot(&g, &opts), &tree::snapshot(&root, &opts), &opts);
        assert!(diff.is_empty(), "node{i} differs from the recorded golden:\n{}", diff.join("\n"));
        check_identity(&g, &root, &mut ids);
    }

    // A raw partition image, compressed (Kadeploy's ddzst): the node writes it
    // through zstd onto its partition, golden UUID and all.
    mounts.unmount_all();
    let raw = out.join("root.img.zst");
    sh("zstd", &["-q", "-f", golden.part(1).to_str().unwrap(), "-o", raw.to_str().unwrap()]).unwrap();
    let raw_env = out.join("raw.yaml");
    fs::write(
        &raw_env,
        "name: rawroot\nimage:\n  file: root.img.zst\n  kind: dd\n  compression: zstd\nos: linux\n",
    )
    .unwrap();
    let target = LoopDisk::new(160 << 20);
    let (golden_out, nodes) = deploy(
        work.path(),
        "rawdeploy",
        &["--env", raw_env.to_str().unwrap(), "--env-partition", "1", "-r", "none"],
        desc,
        &[&target],
    );
    assert_eq!((golden_out.status.code(), nodes[0].status.code()), (Some(0), Some(0)));
    assert_eq!(target.ids(1), golden.ids(1), "the raw image keeps its filesystem's identity");
}

/// `kacast clone ARGS -p sda desc` onto the targets.
fn deploy(
    work: &Path,
    session: &str,
    args: &[&str],
    desc: &str,
    targets: &[&LoopDisk],
) -> (Output, Vec<Output>) {
    let desc_file = work.join(format!("{session}.desc"));
    fs::write(&desc_file, desc).unwrap();
    let mut all = vec!["-p", "sda", desc_file.to_str().unwrap()];
    all.extend(args);
    run_rack(work, session, &all, "sda", targets)
}

/// Boots a target disk until `marker` shows on its serial port.
fn boot_until(disk: &LoopDisk, marker: &str, work: &Path) -> String {
    common::vm::boot_until(&disk.dev, marker, &work.join(format!("{}.serial", disk.name())))
}

/// `--new-uuids`: every node gets its own filesystem UUIDs, its fstab and
/// grub.cfg follow, and its disk still boots through GRUB (under QEMU).
#[test]
fn new_uuids_give_each_node_its_own_and_the_clone_still_boots() {
    if let Some(why) = cannot_run() {
        return common::skip(&why);
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let work = tempfile::tempdir().unwrap();
    let desc = "linux 100\nswap 16\n";
    let golden = golden_disk(desc, 128 << 20);
    sh("mkfs.ext4", &["-q", "-F", "-L", "root", golden.part(1).to_str().unwrap()]).unwrap();
    sh("mkswap", &["-L", "swap", golden.part(2).to_str().unwrap()]).unwrap();
    let g = work.path().join("golden");
    let mut mounts = Mounts::default();
    mount_clone(&mut mounts, &golden, &g, &[(1, "/", &[])]);
    let (root_uuid, swap_uuid) = (uuid(&golden.part(1)), uuid(&golden.part(2)));
    fs::create_dir_all(g.join("etc")).unwrap();
    fs::write(
        g.join("etc/fstab"),
        format!("UUID={root_uuid} / ext4 defaults 0 1\nUUID={swap_uuid} none swap sw 0 0\n"),
    )
    .unwrap();
    fs::create_dir_all(g.join("boot/grub")).unwrap();
    let cfg = format!(
        "serial --unit=0 --speed=115200\nterminal_output serial\nsearch --no-floppy --fs-uuid --set=root {root_uuid}\necho KACAST-CLONE-BOOTED-FROM-$root\nhalt\n"
    );
    fs::write(g.join("boot/grub/grub.cfg"), cfg).unwrap();
    write_identity(&g);

    let targets: Vec<LoopDisk> = (0..2).map(|_| LoopDisk::new(128 << 20)).collect();
    let all: Vec<&LoopDisk> = targets.iter().collect();
    let name = golden.name();
    let desc_file = work.path().join("desc");
    fs::write(&desc_file, desc).unwrap();
    let args = ["-p", &name, desc_file.to_str().unwrap(), "--root", g.to_str().unwrap(), "--new-uuids"];
    let (golden_out, nodes) = run_rack(work.path(), "newuuids", &args, &name, &all);
    assert_eq!(golden_out.status.code(), Some(0));
    let mut seen = BTreeSet::from([root_uuid.clone(), swap_uuid.clone()]);
    for (i, t) in targets.iter().enumerate() {
        assert_eq!(nodes[i].status.code(), Some(0), "node{i}");
        let (r, s) = (uuid(&t.part(1)), uuid(&t.part(2)));
        assert!(seen.insert(r.clone()) && seen.insert(s.clone()), "node{i} reuses a UUID");
        assert_eq!(t.ids(1).rsplit(' ').next(), Some("root"), "labels are kept");
        let root = work.path().join(format!("check{i}"));
        let mut m = Mounts::default();
        mount_clone(&mut m, t, &root, &[(1, "/", &[])]);
        let fstab = fs::read_to_string(root.join("etc/fstab")).unwrap();
        assert!(
            fstab.contains(&format!("UUID={r} /")) && fstab.contains(&format!("UUID={s} none")),
            "{fstab}"
        );
        let grub = fs::read_to_string(root.join("boot/grub/grub.cfg")).unwrap();
        assert!(grub.contains(&r) && !grub.contains(&root_uuid), "{grub}");
        m.unmount_all();
        let log = boot_until(t, "KACAST-CLONE-BOOTED-FROM-", work.path());
        assert!(
            log.contains("KACAST-CLONE-BOOTED-FROM-hd0,msdos1"),
            "node{i}'s disk did not boot its clone:\n{log}"
        );
    }
}
