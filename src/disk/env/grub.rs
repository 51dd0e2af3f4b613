//! A grub.cfg written from a description: [`minimal_grub_cfg`] boots the
//! environment's kernel and initrd from its root filesystem by UUID, for
//! recorded images that carry no grub.cfg of their own. It only needs the boot
//! section and the filesystem of an [`Environment`], hence its own file.

use super::error::{field_error, EnvError};
use super::Environment;

/// grub's module reading each filesystem kacast makes (ext2 reads ext3/4).
fn grub_fs_module(fstype: &str) -> Option<&'static str> {
    Some(match fstype {
        "ext2" | "ext3" | "ext4" => "ext2",
        "xfs" => "xfs",
        "btrfs" => "btrfs",
        "vfat" => "fat",
        "jfs" => "jfs",
        "reiserfs" => "reiserfs",
        _ => return None,
    })
}

/// A minimal grub.cfg booting `boot` from the filesystem with UUID `root_uuid`
/// (used when a recorded image has no grub.cfg of its own): `search
/// --no-floppy --fs-uuid --set=root UUID`, `linux KERNEL root=UUID=... ro
/// PARAMS`, `initrd INITRD`, timeout 0 (nobody watches a rack's consoles), a
/// menuentry named after the environment. A `root=` in the description's
/// kernel_params comes after kacast's and wins, as on any kernel command line.
pub fn minimal_grub_cfg(env: &Environment, root_uuid: &str) -> Result<String, EnvError> {
    let origin = format!("environment '{}'", env.name);
    let kernel = env.boot.kernel.as_deref().ok_or_else(|| {
        field_error(&origin, "boot.kernel", "missing: cannot write a grub.cfg without a kernel")
    })?;
    if root_uuid.is_empty() || !root_uuid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(field_error(&origin, "root UUID", format!("'{root_uuid}' is not a filesystem UUID")));
    }
    // grub paths are absolute within the filesystem; unquoted, a space would
    // split the path.
    let grub_path = |field: &str, p: &str| {
        if p.chars().any(|c| c.is_whitespace() || c == '\'' || c == '"') {
            Err(field_error(&origin, field, format!("'{p}' has spaces or quotes, grub.cfg cannot name it")))
        } else if p.starts_with('/') {
            Ok(p.to_string())
        } else {
            Ok(format!("/{p}"))
        }
    };
    let kernel = grub_path("boot.kernel", kernel)?;
    let initrd = env.boot.initrd.as_deref().map(|i| grub_path("boot.initrd", i)).transpose()?;
    let title = env.name.replace('\'', "'\\''");

    let mut cfg = format!("# Written by kacast: the image of '{title}' has no grub.cfg of its own.\n");
    cfg.push_str("set timeout=0\nset default=0\n\n");
    cfg.push_str(&format!("menuentry '{title}' {{\n"));
    cfg.push_str("    insmod part_msdos\n    insmod part_gpt\n");
    if let Some(module) = env.filesystem.as_deref().and_then(grub_fs_module) {
        cfg.push_str(&format!("    insmod {module}\n"));
    }
    cfg.push_str(&format!("    search --no-floppy --fs-uuid --set=root {root_uuid}\n"));
    let mut linux = format!("    linux {kernel} root=UUID={root_uuid} ro");
    if let Some(params) = env.boot.kernel_params.as_deref().filter(|p| !p.trim().is_empty()) {
        linux.push(' ');
        linux.push_str(params.trim());
    }
    cfg.push_str(&linux);
    cfg.push('\n');
    if let Some(initrd) = initrd {
        cfg.push_str(&format!("    initrd {initrd}\n"));
    }
    cfg.push_str("}\n");
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{field_of, g5k};
    use super::super::Boot;
    use super::*;

    #[test]
    fn grub_cfg_boots_the_environment() {
        let mut env = g5k();
        env.boot.kernel_params = Some("console=ttyS0,115200".into());
        let cfg = minimal_grub_cfg(&env, "0a1b2c3d-0000-4000-8000-123456789abc").unwrap();
        assert!(cfg.contains("set timeout=0\n"), "{cfg}");
        assert!(cfg.contains("menuentry 'debian11-min' {\n"), "{cfg}");
        assert!(cfg.contains("    insmod ext2\n"), "{cfg}");
        assert!(
            cfg.contains(
                "    search --no-floppy --fs-uuid --set=root 0a1b2c3d-0000-4000-8000-123456789abc\n"
            ),
            "{cfg}"
        );
        assert!(
            cfg.contains(
                "    linux /vmlinuz root=UUID=0a1b2c3d-0000-4000-8000-123456789abc ro console=ttyS0,115200\n"
            ),
            "{cfg}"
        );
        assert!(cfg.contains("    initrd /initrd.img\n}\n"), "{cfg}");
        let search = cfg.find("search").unwrap();
        assert!(search < cfg.find("linux ").unwrap());

        // Without params or initrd.
        env.boot = Boot { kernel: Some("boot/vmlinuz-6.1".into()), initrd: None, kernel_params: None };
        let cfg = minimal_grub_cfg(&env, "ABCD-1234").unwrap();
        assert!(cfg.contains("    linux /boot/vmlinuz-6.1 root=UUID=ABCD-1234 ro\n"), "{cfg}");
        assert!(!cfg.contains("initrd"), "{cfg}");

        env.boot.kernel = None;
        let err = minimal_grub_cfg(&env, "ABCD-1234").unwrap_err();
        assert_eq!(field_of(&err), "boot.kernel");
        env.boot.kernel = Some("/vmlinuz".into());
        assert!(minimal_grub_cfg(&env, "x y").is_err());
    }
}
