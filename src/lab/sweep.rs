//! What a lab would leave on this machine if a signal stopped its process
//! before its values were dropped: the namespace and everything running in
//! it (the VMs, dnsmasq, the golden server), the golden disk's mount and its
//! loop device. A sweep finds them by name rather than by value, so the
//! thread that waits for the signal can run it wherever the lab's own thread
//! is in its work.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::net;
use super::run;

/// What a sweep removed.
#[derive(Debug, Default)]
pub struct Swept {
    /// The namespace, when it was still there.
    pub namespace: Option<String>,
    pub mounts: Vec<PathBuf>,
    pub loops: Vec<PathBuf>,
}

impl Swept {
    pub fn is_empty(&self) -> bool {
        self.namespace.is_none() && self.mounts.is_empty() && self.loops.is_empty()
    }
}

impl fmt::Display for Swept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(ns) = &self.namespace {
            parts.push(format!("network namespace {ns} and what ran in it"));
        }
        for m in &self.mounts {
            parts.push(format!("mount {}", m.display()));
        }
        for l in &self.loops {
            parts.push(format!("loop device {}", l.display()));
        }
        if parts.is_empty() {
            f.write_str("nothing was left")
        } else {
            write!(f, "removed {}", parts.join(", "))
        }
    }
}

/// Removes what the lab of this process made, given its work directory
/// (which is kept: it holds the logs and consoles).
pub fn sweep(work: &Path) -> Swept {
    sweep_lab(&net::namespace_of_this_process(), Some(work))
}

/// Removes what labs whose process is gone left behind (killed by SIGKILL,
/// the OOM killer, a crash): their namespaces, and the mounts and loops in
/// their work directories (the default ones, named for the process, and
/// `work` if given, which the caller vouches is no running lab's). Labs
/// still running are left alone.
pub fn sweep_stale(work: Option<&Path>) -> Vec<Swept> {
    let listed = Command::new("ip").args(["netns", "list"]).stderr(Stdio::null()).output();
    let listed = listed.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let mut dead: Vec<u32> = listed.lines().filter_map(|l| lab_pid(l.split_whitespace().next()?)).collect();
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        dead.extend(entries.flatten().filter_map(|e| lab_pid(&e.file_name().to_string_lossy())));
    }
    dead.retain(|pid| !Path::new(&format!("/proc/{pid}")).exists());
    dead.sort_unstable();
    dead.dedup();
    let mut swept: Vec<Swept> = dead
        .into_iter()
        .map(|pid| {
            let default_work = std::env::temp_dir().join(format!("{}{pid}", net::NAMESPACE_PREFIX));
            sweep_lab(&format!("{}{pid}", net::NAMESPACE_PREFIX), Some(&default_work))
        })
        .collect();
    if let Some(w) = work {
        swept.push(sweep_lab("", Some(w)));
    }
    swept.retain(|s| !s.is_empty());
    swept
}

/// The pid in a lab's name (`kacast-lab-PID`), for its namespace and its
/// default work directory alike.
fn lab_pid(name: &str) -> Option<u32> {
    name.strip_prefix(net::NAMESPACE_PREFIX)?.parse().ok()
}

fn sweep_lab(namespace: &str, work: Option<&Path>) -> Swept {
    let mut swept = Swept::default();
    // The processes first: a VM holds its disk image open, the golden server
    // reads the mounted golden root.
    if !namespace.is_empty() && net::remove_namespace(namespace) {
        swept.namespace = Some(namespace.to_string());
    }
    let Some(Ok(work)) = work.map(fs::canonicalize) else { return swept };
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for point in mount_points_under(&mountinfo, &work) {
        let p = point.to_string_lossy().into_owned();
        if run("unmount", "umount", &[&p]).or_else(|_| run("unmount lazily", "umount", &["-l", &p])).is_ok() {
            swept.mounts.push(point);
        }
    }
    for dev in loops_backed_under(&work) {
        let d = dev.to_string_lossy().into_owned();
        let _ = run("forget the partitions", "partx", &["-d", &d]);
        if run("detach", "losetup", &["-d", &d]).is_ok() {
            swept.loops.push(dev);
        }
    }
    swept
}

/// Mount points inside `dir`, from `/proc/self/mountinfo`, deepest first so
/// that each is unmounted before the one it sits in. A point mounted over
/// twice appears twice: it takes two unmounts.
fn mount_points_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points
}

/// The kernel writes space, tab, newline and backslash in mountinfo paths as
/// `\` and three octal digits.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Loop devices whose backing file is inside `dir`.
fn loops_backed_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/sys/block") else { return Vec::new() };
    let mut devs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .filter(|e| {
            fs::read_to_string(e.path().join("loop/backing_file"))
                .is_ok_and(|f| backing_file(&f).starts_with(dir))
        })
        .map(|e| Path::new("/dev").join(e.file_name()))
        .collect();
    devs.sort();
    devs
}

/// A loop's `backing_file` as a path: the kernel ends it with a newline, and
/// with ` (deleted)` once the file is gone.
fn backing_file(sysfs: &str) -> PathBuf {
    let f = sysfs.trim_end_matches('\n');
    PathBuf::from(f.strip_suffix(" (deleted)").unwrap_or(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
61 22 7:3 / /tmp/lab/golden rw,relatime shared:30 - ext4 /dev/loop3p2 rw
62 61 0:5 / /tmp/lab/golden/dev rw shared:31 - devtmpfs udev rw
63 22 7:4 / /tmp/lab\\040two/golden rw shared:32 - ext4 /dev/loop4p2 rw
64 22 7:5 / /tmp/labx/golden rw shared:33 - ext4 /dev/loop5p2 rw
";

    #[test]
    fn mounts_inside_the_work_directory_come_deepest_first() {
        let got = mount_points_under(MOUNTINFO, Path::new("/tmp/lab"));
        assert_eq!(got, [PathBuf::from("/tmp/lab/golden/dev"), PathBuf::from("/tmp/lab/golden")]);
    }

    #[test]
    fn escaped_spaces_in_mount_points_are_read_back() {
        let got = mount_points_under(MOUNTINFO, Path::new("/tmp/lab two"));
        assert_eq!(got, [PathBuf::from("/tmp/lab two/golden")]);
        assert_eq!(unescape(r"a\134b\011c\"), "a\\b\tc\\");
    }

    #[test]
    fn a_deleted_backing_file_still_names_its_directory() {
        assert_eq!(backing_file("/tmp/lab/golden.img (deleted)\n"), PathBuf::from("/tmp/lab/golden.img"));
        assert_eq!(backing_file("/tmp/lab/golden.img\n"), PathBuf::from("/tmp/lab/golden.img"));
    }

    #[test]
    fn only_lab_names_give_a_pid() {
        assert_eq!(lab_pid("kacast-lab-4242"), Some(4242));
        assert_eq!(lab_pid("kacast-lab-test-abc"), None);
        assert_eq!(lab_pid("krk-4242-n1"), None);
    }

    #[test]
    fn nothing_swept_says_so() {
        assert_eq!(Swept::default().to_string(), "nothing was left");
        assert!(Swept::default().is_empty());
        let s = Swept { namespace: Some("kacast-lab-7".into()), mounts: vec!["/w/g".into()], loops: vec![] };
        assert_eq!(s.to_string(), "removed network namespace kacast-lab-7 and what ran in it, mount /w/g");
    }
}
