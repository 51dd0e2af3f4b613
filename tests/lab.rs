//! End to end on a virtual rack (`kacast lab`): QEMU VMs PXE-boot through
//! dnsmasq and iPXE into the kamethod initrd, fetch the stage2 from the golden
//! node, install its disk onto theirs, reboot, leave the network boot (their
//! PXE files now say `local`) and boot their clone, which names itself on the
//! console.
//!
//! Needs root, QEMU, dnsmasq, busybox-static, grub and a Debian kernel
//! package (fetched once into the test's target tmp dir); skips with the reason
//! otherwise (a failure under CI's KACAST_REQUIRE_ALL_TESTS). One rack at a
//! time: TCG VMs on two cores measure the machine, not kacast.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kacast::lab::{self, Firmware, Lab, LabConfig, NodeBoot};
use kacast::session::status::read_board;

static ONE_RACK: Mutex<()> = Mutex::new(());

/// Under TCG a rack of three installs and reboots in a few minutes here;
/// these only stop a stuck run.
const INSTALL: Duration = Duration::from_secs(900);
const BOOT: Duration = Duration::from_secs(300);

fn config(nodes: usize, firmware: Firmware) -> Option<(LabConfig, tempfile::TempDir)> {
    let gaps = lab::missing(firmware);
    if !gaps.is_empty() {
        common::skip(&format!("no virtual rack here: {}", gaps.join(", ")));
        return None;
    }
    let work = tempfile::Builder::new().prefix("kacast-lab-test-").tempdir().unwrap();
    // The same cache as tests/initrd.rs: the kernel package is fetched once.
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kacast-cache");
    let mut c = LabConfig::new(nodes, env!("CARGO_BIN_EXE_kacast").into(), work.path().to_path_buf(), cache);
    c.firmware = firmware;
    Some((c, work))
}

/// On failure, what the consoles and the golden node said.
fn dump(lab: &Lab) -> String {
    let mut out = String::new();
    for f in ["clone.log", "clone.out"] {
        out +=
            &format!("--- {f}\n{}\n", std::fs::read_to_string(lab.config.work.join(f)).unwrap_or_default());
    }
    for name in &lab.names {
        for (what, path) in [
            ("console", lab.config.work.join(format!("{name}.serial"))),
            ("status log", lab.logs.join(format!("{name}.log"))),
        ] {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out += &format!("--- {name} {what} (last lines)\n");
            for l in tail.iter().rev() {
                out += &format!("{l}\n");
            }
        }
    }
    out
}

/// Each booted clone names itself and has its own machine-id.
fn check_boots(boots: &[NodeBoot], expect: &[&str], lab: &Lab) {
    let mut ids = BTreeSet::new();
    for b in boots.iter().filter(|b| expect.contains(&b.name.as_str())) {
        let line =
            b.booted.as_deref().unwrap_or_else(|| panic!("{} did not boot its clone\n{}", b.name, dump(lab)));
        assert!(line.contains(&format!("host={}", b.name)), "{line}");
        let id = line.split("machine-id=").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("");
        assert_eq!(id.len(), 32, "{line}");
        assert!(ids.insert(id.to_string()), "two clones share machine-id {id}");
        assert!(lab.pxe_is_local(&b.mac), "{}'s PXE file does not say local", b.name);
    }
    assert!(!ids.contains(&lab.golden_machine_id()), "a clone kept the golden machine-id");
}

#[test]
fn three_bios_vms_pxe_boot_clone_the_golden_disk_and_boot_their_clones() {
    let Some((config, _work)) = config(3, Firmware::Bios) else { return };
    let _one = ONE_RACK.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = Lab::prepare(config).unwrap();
    lab.start().unwrap();
    let outcome = lab.wait_clone(Instant::now() + INSTALL).unwrap();
    assert_eq!(outcome.code, Some(0), "{}\n{}", outcome.table, dump(&lab));
    assert!(outcome.table.contains("3 of 3 nodes cloned"), "{}", outcome.table);
    let boots = lab.wait_boots(Instant::now() + BOOT);
    check_boots(&boots, &["node01", "node02", "node03"], &lab);

    // Every node's live status reached the golden node, and `kacast status` shows it.
    let views = read_board(&lab.logs).unwrap();
    assert_eq!(views.len(), 3, "{views:?}");
    for v in &views {
        assert_eq!(v.state, "done", "{v:?}");
        assert_eq!(v.macs, [lab::mac_of(v.name[4..].parse::<usize>().unwrap() - 1)], "{v:?}");
    }
    let status = Command::new(env!("CARGO_BIN_EXE_kacast")).arg("status").arg(&lab.logs).output().unwrap();
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success() && table.contains("3 nodes: 3 done"), "{table}");
    let log = std::fs::read_to_string(lab.logs.join("node02.log")).unwrap();
    for line in ["[hello]", "plan checked", "kainstall2", "this node is a clone"] {
        assert!(log.contains(line), "node02's log lacks '{line}':\n{log}");
    }
}

#[test]
fn a_vm_killed_mid_transfer_is_named_and_the_others_boot_their_clones() {
    let Some((mut config, _work)) = config(3, Firmware::Bios) else { return };
    // Enough data that the stream lasts a while under TCG.
    config.filler_mib = 64;
    let _one = ONE_RACK.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = Lab::prepare(config).unwrap();
    lab.start().unwrap();
    // node01 has its place in the files' stream: pull its plug.
    let deadline = Instant::now() + INSTALL;
    loop {
        let views = read_board(&lab.logs).unwrap_or_default();
        let streaming = views.iter().any(|v| v.name == "node01" && v.step == "kainstall2");
        if streaming {
            break;
        }
        assert!(Instant::now() < deadline, "node01 never reached the stream\n{}", dump(&lab));
        std::thread::sleep(Duration::from_millis(200));
    }
    lab.vm(0).kill();
    let outcome = lab.wait_clone(Instant::now() + INSTALL).unwrap();
    assert_eq!(outcome.code, Some(2), "{}\n{}", outcome.table, dump(&lab));
    assert!(outcome.table.contains("2 of 3 nodes cloned"), "{}\n{}", outcome.table, dump(&lab));
    let dead = outcome.table.lines().find(|l| l.starts_with("node01")).unwrap_or("");
    assert!(dead.contains("FAILED"), "{}", outcome.table);
    let boots = lab.wait_boots(Instant::now() + BOOT);
    check_boots(&boots, &["node02", "node03"], &lab);
    assert!(!lab.pxe_is_local(&lab::mac_of(0)), "the dead node must clone again on its next boot");
}

#[test]
fn a_uefi_vm_clones_a_gpt_disk_with_its_esp_and_boots_it() {
    let Some((config, _work)) = config(2, Firmware::Uefi) else { return };
    let _one = ONE_RACK.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = Lab::prepare(config).unwrap();
    lab.start().unwrap();
    let outcome = lab.wait_clone(Instant::now() + INSTALL).unwrap();
    assert_eq!(outcome.code, Some(0), "{}\n{}", outcome.table, dump(&lab));
    let boots = lab.wait_boots(Instant::now() + BOOT);
    check_boots(&boots, &["node01", "node02"], &lab);
}

/// A `kacast lab --nodes 1` whose VM has started (it says so): everything
/// it makes is there.
struct RunningLab {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
    said: Vec<String>,
    namespace: String,
    dir: String,
    /// What runs in its namespace.
    running: Vec<i32>,
}

impl RunningLab {
    fn start(config: &LabConfig, work: &std::path::Path) -> RunningLab {
        use std::io::BufRead;
        let dir = work.to_str().unwrap().to_string();
        let mut child = Command::new(env!("CARGO_BIN_EXE_kacast"))
            .args(["lab", "--nodes", "1", "--work", &dir, "--cache"])
            .arg(&config.cache)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut said = Vec::new();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            said.push(line.clone());
            if line.contains("nodes' status") {
                break;
            }
        }
        let namespace = format!("kacast-lab-{}", child.id());
        let running = common::disks::sh("ip", &["netns", "pids", &namespace]).unwrap_or_default();
        let running: Vec<i32> = running.split_whitespace().filter_map(|p| p.parse().ok()).collect();
        let lab = RunningLab { child, lines, said, namespace, dir, running };
        assert!(lab.running.len() >= 2, "no VM or dnsmasq in {}: {:#?}", lab.namespace, lab.said);
        assert!(!lab.mounts().is_empty() && !lab.loops().is_empty(), "no golden disk: {:#?}", lab.said);
        lab
    }

    fn ours(&self, text: &str) -> Vec<String> {
        text.lines().filter(|l| l.contains(&self.dir)).map(str::to_string).collect()
    }

    fn mounts(&self) -> Vec<String> {
        self.ours(&std::fs::read_to_string("/proc/self/mountinfo").unwrap())
    }

    fn loops(&self) -> Vec<String> {
        self.ours(&common::disks::sh("losetup", &["-a"]).unwrap())
    }

    fn namespace_is_left(&self) -> bool {
        common::disks::sh("ip", &["netns", "list"]).unwrap().contains(&self.namespace)
    }

    /// Sends `signal` and waits for the lab to end: its exit code.
    fn signal(&mut self, signal: libc::c_int) -> Option<i32> {
        // SAFETY: kill has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
        self.said.extend(self.lines.by_ref().map_while(Result::ok));
        self.child.wait().unwrap().code()
    }

    /// Nothing of the lab is left but its work directory.
    fn check_gone(&self) {
        assert!(!self.namespace_is_left(), "{} is left: {:#?}", self.namespace, self.said);
        for pid in &self.running {
            // Gone, or dead and waiting for init to reap it.
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = state.rsplit(") ").next().and_then(|r| r.chars().next());
            assert!(matches!(state, None | Some('Z' | 'X')), "process {pid} still runs: {:#?}", self.said);
        }
        assert_eq!(self.mounts(), Vec::<String>::new(), "{:#?}", self.said);
        assert_eq!(self.loops(), Vec::<String>::new(), "{:#?}", self.said);
        assert!(
            std::path::Path::new(&self.dir).join("clone.log").exists(),
            "the work directory lost its logs"
        );
    }
}

/// Ctrl-C in the middle of `kacast lab`: the VMs, dnsmasq, the golden
/// server, the namespace, the golden disk's mount and its loop device all go
/// (a lab killed this way used to leave every one of them); the work
/// directory stays for its logs.
#[test]
fn an_interrupted_lab_leaves_nothing_running_mounted_or_attached() {
    let Some((config, work)) = config(1, Firmware::Bios) else { return };
    let _one = ONE_RACK.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = RunningLab::start(&config, work.path());
    assert_eq!(lab.signal(libc::SIGINT), Some(130), "{:#?}", lab.said);
    assert!(lab.said.iter().any(|l| l.contains("interrupted by SIGINT")), "{:#?}", lab.said);
    lab.check_gone();
}

/// SIGKILL leaves no time to clean up: `kacast lab --clean` removes what the
/// dead lab left, and only that.
#[test]
fn lab_clean_removes_what_a_killed_lab_left() {
    let Some((config, work)) = config(1, Firmware::Bios) else { return };
    let _one = ONE_RACK.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = RunningLab::start(&config, work.path());
    assert_eq!(lab.signal(libc::SIGKILL), None);
    assert!(lab.namespace_is_left() && !lab.mounts().is_empty() && !lab.loops().is_empty(), "nothing left");
    let out =
        Command::new(env!("CARGO_BIN_EXE_kacast")).args(["lab", "--clean", "--work", &lab.dir]).output();
    let out = out.unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains(&format!("network namespace {}", lab.namespace)), "{said}");
    lab.said.push(said.into_owned());
    lab.check_gone();
}
