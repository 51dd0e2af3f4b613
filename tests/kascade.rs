//! kacast as Kadeploy3's broadcast tool, on hosts made of network namespaces
//! each running a real sshd: `kacast kascade` with the arguments Kadeploy3
//! builds, then the ok/ko files read back as Kadeploy reads them. Also
//! Kastafior's command line. Needs root, iproute2 and OpenSSH (client and
//! server); otherwise skips (fails under KACAST_REQUIRE_ALL_TESTS).

mod common;
#[path = "common/hosts.rs"]
mod hosts;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;

use hosts::Hosts;

const KACAST: &str = env!("CARGO_BIN_EXE_kacast");

fn cannot_run() -> Option<String> {
    if !common::is_root() {
        return Some("needs root for network namespaces and sshd".into());
    }
    hosts::TOOLS.iter().chain(&["tar", "gzip"]).find_map(|t| common::missing_tool(t))
}

/// A gzipped tarball of a small tree, as Kadeploy's tgz environments.
fn tgz(dir: &Path) -> std::path::PathBuf {
    let tree = dir.join("tree");
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::write(tree.join("etc/hostname"), "from-the-env\n").unwrap();
    fs::write(tree.join("big"), vec![7u8; 3 << 20]).unwrap();
    let out = dir.join("env.tgz");
    let ok = Command::new("tar").arg("-czf").arg(&out).arg("-C").arg(&tree).arg(".").status().unwrap();
    assert!(ok.success());
    out
}

/// `kacast kascade ARGS` run as the master (in the master namespace).
fn kascade(h: &Hosts, args: &[&str], stdin: Option<&Path>) -> Output {
    let mut cmd = Command::new(KACAST);
    cmd.arg("kascade").args(args);
    let mut cmd = h.master_exec(&cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(f) = stdin {
        cmd.stdin(fs::File::open(f).unwrap());
    }
    let out = cmd.output().unwrap();
    eprintln!("--- kascade {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

/// The ok and ko files as Kadeploy loads them: an array and a map, or bust.
fn results(dir: &Path) -> (Vec<String>, BTreeMap<String, String>) {
    let ok: Vec<String> =
        serde_yaml::from_str(&fs::read_to_string(dir.join("ok")).unwrap()).expect("ok is an array");
    let ko: BTreeMap<String, String> =
        serde_yaml::from_str(&fs::read_to_string(dir.join("ko")).unwrap()).expect("ko is a map");
    (ok, ko)
}

/// Kadeploy3's BroadcastEnvKascade command line, with `-O` extracting into a
/// per-node directory (the hosts share this machine's filesystem).
fn kadeploy_args<'a>(
    h: &Hosts,
    input: &'a str,
    nodefile: &'a str,
    dest: &'a str,
    dir: &'a Path,
) -> Vec<String> {
    let ok = dir.join("ok").display().to_string();
    let ko = dir.join("ko").display().to_string();
    let decompress = format!("mkdir -p {dest}/$KACAST_NODE && tar -C {dest}/$KACAST_NODE -xz");
    // Kadeploy's own connector carries a connect timeout too.
    let connector = format!("{} -o ConnectTimeout=5", h.ssh_connector());
    [
        "-i",
        input,
        "-n",
        nodefile,
        "-O",
        &decompress,
        "-S",
        &connector,
        "--ok",
        &ok,
        "--ko",
        &ko,
        "-I",
        "-D",
        "taktuk",
        "-P",
        "-d 2 -s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn kadeploys_command_line_delivers_to_every_host_and_reports_failures() {
    if let Some(why) = cannot_run() {
        return common::skip(&why);
    }
    let h = Hosts::new(4).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = tgz(dir.path());
    let dest = dir.path().join("dest");
    // Host 2 cannot write where the command says (a file stands there), host 3 is unplugged.
    fs::create_dir_all(&dest).unwrap();
    fs::write(dest.join(h.node(2)), "not a directory").unwrap();
    h.cut(3);
    let nodefile = dir.path().join("nodes");
    let names: Vec<String> = (0..4).map(|i| h.node(i)).collect();
    fs::write(&nodefile, names.join("\n") + "\n").unwrap();
    let args = kadeploy_args(
        &h,
        env.to_str().unwrap(),
        nodefile.to_str().unwrap(),
        dest.to_str().unwrap(),
        dir.path(),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = kascade(&h, &args, None);
    assert_eq!(out.status.code(), Some(2), "some nodes failed");
    let (ok, ko) = results(dir.path());
    assert_eq!(ok, [h.node(0), h.node(1)]);
    assert_eq!(ko.len(), 2, "{ko:?}");
    assert!(ko[&h.node(2)].contains("exited with status"), "{ko:?}");
    assert!(!ko[&h.node(3)].is_empty(), "{ko:?}");
    for i in 0..2 {
        let got = fs::read(dest.join(h.node(i)).join("big")).unwrap();
        assert_eq!(got, vec![7u8; 3 << 20], "host {i}");
    }
}

#[test]
fn stdin_input_and_two_runs_at_once_from_one_master() {
    if let Some(why) = cannot_run() {
        return common::skip(&why);
    }
    let h = Hosts::new(2).unwrap();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let runs: Vec<Output> = thread::scope(|s| {
        let handles: Vec<_> = dirs
            .iter()
            .map(|dir| {
                let h = &h;
                s.spawn(move || {
                    let env = tgz(dir.path());
                    let nodes = format!("{},{}", h.node(0), h.node(1));
                    let dest = dir.path().join("dest");
                    let args = kadeploy_args(h, "-", "unused", dest.to_str().unwrap(), dir.path());
                    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
                    // -N instead of -n: the node list on the command line.
                    args[2] = "-N";
                    args[3] = &nodes;
                    kascade(h, &args, Some(&env))
                })
            })
            .collect();
        handles.into_iter().map(|j| j.join().unwrap()).collect()
    });
    for (run, dir) in runs.iter().zip(&dirs) {
        assert_eq!(run.status.code(), Some(0));
        let (ok, ko) = results(dir.path());
        assert_eq!((ok.len(), ko.len()), (2, 0));
        for i in 0..2 {
            let hostname = dir.path().join("dest").join(h.node(i)).join("etc/hostname");
            assert_eq!(fs::read_to_string(hostname).unwrap(), "from-the-env\n");
        }
    }
}

#[test]
fn a_bad_command_line_still_writes_every_node_to_ko() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, ko) = (dir.path().join("ok"), dir.path().join("ko"));
    let out = Command::new(KACAST)
        .args(["kascade", "-i", "/no/such/env.tgz", "-N", "n1,n2", "-O", "cat", "--ok"])
        .arg(&ok)
        .arg("--ko")
        .arg(&ko)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let (ok, ko) = results(dir.path());
    assert!(ok.is_empty());
    assert_eq!(ko.keys().collect::<Vec<_>>(), ["n1", "n2"]);
    assert!(ko["n1"].contains("/no/such/env.tgz"), "{ko:?}");
}

#[test]
fn kastafior_command_line() {
    if let Some(why) = cannot_run() {
        return common::skip(&why);
    }
    let h = Hosts::new(2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = tgz(dir.path());
    let dest = dir.path().join("dest");
    let nodefile = dir.path().join("nodes");
    fs::write(&nodefile, format!("{}\n{}\n", h.node(0), h.node(1))).unwrap();
    let source = format!("cat {}", env.display());
    let command = format!("mkdir -p {0}/$KACAST_NODE && tar -C {0}/$KACAST_NODE -xz", dest.display());
    let mut cmd = Command::new(KACAST);
    cmd.args(["kastafior", "-c", &h.ssh_connector(), "--", "-s", &source, "-c", &command, "-n"])
        .arg(&nodefile);
    let out = h.master_exec(&cmd).output().unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0));
    for i in 0..2 {
        assert_eq!(fs::read(dest.join(h.node(i)).join("big")).unwrap().len(), 3 << 20);
    }
}
