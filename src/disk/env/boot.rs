//! What a captured root tree boots: [`find_boot`] fills a description's boot
//! section with the image's kernel and initrd (Debian's links, else the newest
//! versioned kernel), resolving symbolic links inside the image, never on the
//! host. Only `kacast capture` needs it; reading and writing descriptions do
//! not, so it is kept out of their way.

use std::cmp::Ordering;
use std::ffi::OsString;
use std::fs;
use std::path::{Component, Path, PathBuf};

use super::Boot;

/// Most symbolic links followed while resolving one path inside an image;
/// Linux's own limit (MAXSYMLINKS), beyond which a path is taken as a loop.
const MAX_SYMLINKS: usize = 40;

/// `inside` (an absolute path in the image rooted at `root`) resolved the way
/// the booted image would see it: symbolic links are followed, absolute targets
/// from the image's root, never the host's. `Some` with the resolved in-image
/// path when it ends at a regular file.
fn resolve_in_image(root: &Path, inside: &Path) -> Option<PathBuf> {
    let mut todo: Vec<OsString> = Vec::new();
    let push_components = |todo: &mut Vec<OsString>, path: &Path| {
        let parts: Vec<OsString> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect();
        todo.extend(parts.into_iter().rev());
    };
    push_components(&mut todo, inside);
    let mut done = PathBuf::from("/");
    let mut links = 0;
    while let Some(part) = todo.pop() {
        if part == ".." {
            done.pop();
            continue;
        }
        let next = done.join(&part);
        let host = root.join(next.strip_prefix("/").ok()?);
        let meta = fs::symlink_metadata(&host).ok()?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_SYMLINKS {
                return None;
            }
            let target = fs::read_link(&host).ok()?;
            if target.is_absolute() {
                done = PathBuf::from("/");
            }
            push_components(&mut todo, &target);
        } else {
            done = next;
        }
    }
    let host = root.join(done.strip_prefix("/").ok()?);
    fs::symlink_metadata(host).ok().filter(|m| m.is_file()).map(|_| done)
}

/// Compares version strings the way people read them: runs of digits as
/// numbers, so `6.1.0-10` is newer than `6.1.0-9`.
fn version_cmp(a: &str, b: &str) -> Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for ((da, sa), (db, sb)) in ca.iter().zip(cb.iter()) {
        let ord = if *da && *db {
            let (ta, tb) = (sa.trim_start_matches('0'), sb.trim_start_matches('0'));
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            sa.cmp(sb)
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    ca.len().cmp(&cb.len())
}

/// The links distributions keep to the current kernel and initrd: Debian's at
/// the root (`link_in_boot = no`, the default) or in /boot, SUSE's in /boot.
const KERNEL_LINKS: &[&str] = &["/vmlinuz", "/boot/vmlinuz"];
const INITRD_LINKS: &[&str] = &["/initrd.img", "/boot/initrd.img", "/boot/initrd"];

/// The initrd names that go with kernel `/boot/vmlinuz-VERSION`: Debian's,
/// Red Hat's and Arch's, SUSE's.
fn initrd_names(version: &str) -> [String; 3] {
    [format!("initrd.img-{version}"), format!("initramfs-{version}.img"), format!("initrd-{version}")]
}

/// What `kacast capture` finds in a root tree for the description's boot
/// section: the kernel and initrd (Debian's /vmlinuz and /initrd.img symlinks,
/// else the newest /boot/vmlinuz-* with its matching initrd.img-*), as paths
/// inside the image. The links are kept as links (Grid'5000's descriptions say
/// `/vmlinuz`), so a kernel upgrade in the image needs no new description.
/// kernel_params from /proc/cmdline is NOT read: the golden node's own `root=`
/// and console settings would be wrong on the clones.
pub fn find_boot(root: &Path) -> Boot {
    let resolves = |p: &str| resolve_in_image(root, Path::new(p));
    let kernel_link = KERNEL_LINKS.iter().find_map(|l| resolves(l).map(|target| (*l, target)));
    let initrd_link = INITRD_LINKS.iter().copied().find(|l| resolves(l).is_some());

    let (kernel, version) = match &kernel_link {
        Some((link, target)) => {
            let version = target
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(str::to_string);
            (link.to_string(), version)
        }
        None => match newest_kernel(root) {
            Some(version) => (format!("/boot/vmlinuz-{version}"), Some(version)),
            None => return Boot::default(),
        },
    };
    let initrd = match (kernel_link.is_some(), initrd_link) {
        (true, Some(link)) => Some(link.to_string()),
        _ => version.and_then(|v| {
            initrd_names(&v)
                .into_iter()
                .map(|n| format!("/boot/{n}"))
                .find(|p| resolve_in_image(root, Path::new(p)).is_some())
        }),
    };
    Boot { kernel: Some(kernel), initrd, kernel_params: None }
}

/// The VERSION of the newest `/boot/vmlinuz-VERSION` that is a kernel file,
/// leaving out rescue kernels (Red Hat's `vmlinuz-0-rescue-MACHINEID`, generic
/// and huge) and package-manager leftovers.
fn newest_kernel(root: &Path) -> Option<String> {
    let entries = fs::read_dir(root.join("boot")).ok()?;
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| name.strip_prefix("vmlinuz-").map(str::to_string))
        .filter(|v| !v.contains("rescue") && !v.ends_with(".old") && !v.contains(".dpkg-"))
        .filter(|v| resolve_in_image(root, &Path::new("/boot").join(format!("vmlinuz-{v}"))).is_some())
        .max_by(|a, b| version_cmp(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn versions_sort_naturally() {
        assert_eq!(version_cmp("6.1.0-10-amd64", "6.1.0-9-amd64"), Ordering::Greater);
        assert_eq!(version_cmp("5.10.0-21-amd64", "6.1.0-9-amd64"), Ordering::Less);
        assert_eq!(version_cmp("6.1.0-9-amd64", "6.1.0-9-amd64"), Ordering::Equal);
        assert_eq!(version_cmp("6.1", "6.1.0"), Ordering::Less);
    }

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, b"x").unwrap();
    }

    #[test]
    fn find_boot_prefers_debian_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(root, "boot/vmlinuz-6.1.0-9-amd64");
        touch(root, "boot/initrd.img-6.1.0-9-amd64");
        touch(root, "boot/vmlinuz-6.1.0-10-amd64");
        // An absolute target is the image's /boot, not the host's.
        symlink("/boot/vmlinuz-6.1.0-9-amd64", root.join("vmlinuz")).unwrap();
        symlink("boot/initrd.img-6.1.0-9-amd64", root.join("initrd.img")).unwrap();
        let boot = find_boot(root);
        assert_eq!(boot.kernel.as_deref(), Some("/vmlinuz"));
        assert_eq!(boot.initrd.as_deref(), Some("/initrd.img"));
        assert_eq!(boot.kernel_params, None);

        // Without the initrd link, the kernel link's own initrd.
        fs::remove_file(root.join("initrd.img")).unwrap();
        assert_eq!(find_boot(root).initrd.as_deref(), Some("/boot/initrd.img-6.1.0-9-amd64"));

        // A dangling link is not a kernel: the newest versioned one is.
        fs::remove_file(root.join("vmlinuz")).unwrap();
        symlink("boot/vmlinuz-gone", root.join("vmlinuz")).unwrap();
        assert_eq!(find_boot(root).kernel.as_deref(), Some("/boot/vmlinuz-6.1.0-10-amd64"));
    }

    #[test]
    fn find_boot_picks_the_newest_versioned_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for v in ["5.10.0-21-amd64", "6.1.0-9-amd64", "6.1.0-10-amd64"] {
            touch(root, &format!("boot/vmlinuz-{v}"));
            touch(root, &format!("boot/initrd.img-{v}"));
        }
        touch(root, "boot/vmlinuz-0-rescue-0123456789abcdef");
        touch(root, "boot/config-6.1.0-99-amd64");
        let boot = find_boot(root);
        assert_eq!(boot.kernel.as_deref(), Some("/boot/vmlinuz-6.1.0-10-amd64"));
        assert_eq!(boot.initrd.as_deref(), Some("/boot/initrd.img-6.1.0-10-amd64"));

        // Red Hat's initramfs name.
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "boot/vmlinuz-5.14.0-362.el9.x86_64");
        touch(dir.path(), "boot/initramfs-5.14.0-362.el9.x86_64.img");
        assert_eq!(
            find_boot(dir.path()).initrd.as_deref(),
            Some("/boot/initramfs-5.14.0-362.el9.x86_64.img")
        );

        // Nothing to boot.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(find_boot(empty.path()), Boot::default());
    }
}
