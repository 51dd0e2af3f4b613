//! The normal way on real hardware and VMs: the clone's own grub-install
//! (and, when asked, update-initramfs or dracut) run chrooted into the
//! target, with the binds of [`super::binds`] mounted, so the boot code
//! matches the clone's GRUB modules and distribution.

use std::path::Path;
use std::process::Command;

use super::{esp_in_clone, in_clone, Firmware, GrubTarget};
use crate::disk::error::{DiskError, Result};
use crate::disk::tool;

/// PATH inside the clone: the stage2's PATH may name directories it lacks.
const CLONE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub(super) fn install_in_clone(t: &GrubTarget, firmware: Firmware, installer: &str) -> Result<Vec<String>> {
    let disk = t.disk.to_string_lossy().into_owned();
    let runs: Vec<Vec<String>> = match firmware {
        Firmware::Bios => vec![vec!["--target=i386-pc".into(), disk.clone()]],
        Firmware::Uefi => {
            let esp = esp_in_clone(t.root, t.esp.expect("checked by check_target"))?;
            let named =
                vec!["--target=x86_64-efi".into(), format!("--efi-directory={esp}"), "--no-nvram".into()];
            // The removable-media path is what firmware without an NVRAM
            // entry for this disk (a freshly cloned node) boots.
            let removable = [named.clone(), vec!["--removable".into()]].concat();
            vec![named, removable]
        }
    };
    let mut done = Vec::new();
    for args in runs {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_in_clone(t.root, installer, &args, &disk)?;
        done.push(format!("{} {} run in the clone for {disk}", tool_name(installer), args.join(" ")));
    }
    Ok(done)
}

/// The clone's initramfs tools, Debian's first.
const UPDATE_INITRAMFS: &[&str] = &["/usr/sbin/update-initramfs", "/sbin/update-initramfs"];
const DRACUT: &[&str] = &["/usr/bin/dracut", "/usr/sbin/dracut", "/sbin/dracut", "/bin/dracut"];

/// Rebuilds every initramfs of the clone with its own tool (binds mounted).
pub(super) fn rebuild_initramfs_in(root: &Path) -> Result<String> {
    let find =
        |paths: &[&'static str]| paths.iter().copied().find(|p| in_clone(root, p).symlink_metadata().is_ok());
    let (program, args): (&str, &[&str]) = if let Some(p) = find(UPDATE_INITRAMFS) {
        (p, &["-u", "-k", "all"])
    } else if let Some(p) = find(DRACUT) {
        (p, &["--regenerate-all", "-f"])
    } else {
        return Err(DiskError::Other(format!(
            "cannot rebuild the initramfs of the clone in {}: it has neither update-initramfs nor dracut",
            root.display()
        )));
    };
    run_in_clone(root, program, args, &root.display().to_string())?;
    Ok(format!("initramfs rebuilt in the clone ({} {})", tool_name(program), args.join(" ")))
}

fn tool_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Runs `program` (a path in the clone) chrooted into `root`.
fn run_in_clone(root: &Path, program: &str, args: &[&str], target: &str) -> Result<String> {
    tool::require("chroot", &format!("run {} in the clone", tool_name(program)))?;
    let mut cmd = Command::new("chroot");
    cmd.arg(root).arg(program).args(args).env("PATH", CLONE_PATH).env("LC_ALL", "C");
    tool::run_command(cmd, &format!("{} (in the clone)", tool_name(program)), target, None)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;

    use super::super::binds::with_binds;
    use super::super::test_util::{is_root, target};
    use super::*;

    /// A clone with a shell (the host's dash and its libraries) and `tools`:
    /// scripts recording their arguments and what they see in /calls.
    fn mini_clone(root: &Path, tools: &[(&str, &str)]) -> bool {
        let Ok(out) = Command::new("ldd").arg("/bin/dash").output() else { return false };
        let libs = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
            .map(PathBuf::from)
            .collect::<Vec<_>>();
        if libs.is_empty() || !Path::new("/bin/dash").is_file() {
            return false;
        }
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::copy("/bin/dash", root.join("bin/sh")).unwrap();
        for lib in libs {
            let dst = root.join(lib.strip_prefix("/").unwrap());
            fs::create_dir_all(dst.parent().unwrap()).unwrap();
            fs::copy(&lib, &dst).unwrap();
        }
        for (path, tail) in tools {
            let dst = in_clone(root, path);
            fs::create_dir_all(dst.parent().unwrap()).unwrap();
            let script = format!(
                "#!/bin/sh\necho \"$0 $*\" >> /calls\ntest -r /proc/self/status && echo proc >> /calls\n\
                 test -d /sys/class && echo sys >> /calls\ntest -c /dev/null && echo dev >> /calls\n{tail}\n"
            );
            fs::write(&dst, script).unwrap();
            std::os::unix::fs::PermissionsExt::set_mode(
                &mut fs::metadata(&dst).unwrap().permissions(),
                0o755,
            );
            fs::set_permissions(&dst, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
        true
    }

    /// Mount points at or below `root`, from the kernel's table.
    fn mounts_under(root: &Path) -> Vec<String> {
        let root = fs::canonicalize(root).unwrap();
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| Path::new(m).starts_with(&root))
            .collect()
    }

    #[test]
    fn grub_install_runs_in_the_clone_with_binds_that_go_away() {
        if !is_root() {
            return crate::testing::skip("needs root to bind-mount");
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        if !mini_clone(root, &[("/usr/sbin/grub-install", "exit 0")]) {
            return crate::testing::skip("cannot build a clone with /bin/dash");
        }
        fs::create_dir_all(root.join("boot/efi")).unwrap();
        let disk = Path::new("/dev/sdz");
        let esp = Path::new("/boot/efi");
        let t = target(root, disk, Some(esp));
        let done =
            with_binds(root, || install_in_clone(&t, Firmware::Bios, "/usr/sbin/grub-install")).unwrap();
        assert_eq!(done, ["grub-install --target=i386-pc /dev/sdz run in the clone for /dev/sdz"]);
        assert_eq!(mounts_under(root), Vec::<String>::new());
        with_binds(root, || install_in_clone(&t, Firmware::Uefi, "/usr/sbin/grub-install")).unwrap();
        assert_eq!(mounts_under(root), Vec::<String>::new());
        let calls = fs::read_to_string(root.join("calls")).unwrap();
        assert_eq!(
            calls,
            "/usr/sbin/grub-install --target=i386-pc /dev/sdz\nproc\nsys\ndev\n\
             /usr/sbin/grub-install --target=x86_64-efi --efi-directory=/boot/efi --no-nvram\nproc\nsys\ndev\n\
             /usr/sbin/grub-install --target=x86_64-efi --efi-directory=/boot/efi --no-nvram --removable\n\
             proc\nsys\ndev\n"
        );
    }

    #[test]
    fn a_failing_tool_in_the_clone_still_leaves_no_mounts() {
        if !is_root() {
            return crate::testing::skip("needs root to bind-mount");
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let fail = "echo 'grub-install: error: boom' >&2; exit 3";
        if !mini_clone(root, &[("/usr/sbin/grub-install", fail)]) {
            return crate::testing::skip("cannot build a clone with /bin/dash");
        }
        let t = target(root, Path::new("/dev/sdz"), None);
        let e =
            with_binds(root, || install_in_clone(&t, Firmware::Bios, "/usr/sbin/grub-install")).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("grub-install (in the clone) failed on /dev/sdz") && s.contains("boom"), "{s}");
        assert_eq!(mounts_under(root), Vec::<String>::new());
    }

    #[test]
    fn initramfs_is_rebuilt_with_the_clones_own_tool() {
        if !is_root() {
            return crate::testing::skip("needs root to bind-mount");
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        if !mini_clone(root, &[("/usr/bin/dracut", "exit 0")]) {
            return crate::testing::skip("cannot build a clone with /bin/dash");
        }
        let line = with_binds(root, || rebuild_initramfs_in(root)).unwrap();
        assert_eq!(line, "initramfs rebuilt in the clone (dracut --regenerate-all -f)");
        mini_clone(root, &[("/usr/sbin/update-initramfs", "exit 0")]);
        let line = with_binds(root, || rebuild_initramfs_in(root)).unwrap();
        assert_eq!(line, "initramfs rebuilt in the clone (update-initramfs -u -k all)");
        let calls = fs::read_to_string(root.join("calls")).unwrap();
        assert!(calls.contains("/usr/bin/dracut --regenerate-all -f\nproc\nsys\ndev\n"), "{calls}");
        assert!(calls.ends_with("/usr/sbin/update-initramfs -u -k all\nproc\nsys\ndev\n"), "{calls}");
        assert_eq!(mounts_under(root), Vec::<String>::new());

        let bare = tempfile::tempdir().unwrap();
        let e = rebuild_initramfs_in(bare.path()).unwrap_err().to_string();
        assert!(e.contains("neither update-initramfs nor dracut"), "{e}");
    }
}
