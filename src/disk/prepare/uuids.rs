//! Making the boot configuration follow the fresh file system UUIDs of
//! `--new-uuids` ([`rewrite_uuids`], see "UUID references" in the module doc
//! of [`super`]): whole-token matching, so a UUID inside another name is
//! never touched, blkid's case, and GRUB environment blocks kept at their
//! size.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::atomic::write_atomic;
use super::safe_path::Tree;
use super::CONFIG_MODE;
use crate::disk::error::{DiskError, Result};

/// vfat's `ABCD-1234` is the shortest UUID blkid prints; a shorter "UUID"
/// would match ordinary numbers in a configuration file.
const UUID_MIN_LEN: usize = 9;

/// A GRUB environment block is exactly this long, padded with `#`.
const GRUBENV_SIZE: usize = 1024;
const GRUBENV_HEADER: &[u8] = b"# GRUB Environment Block\n";

/// The files that name file systems by UUID at boot, `*` matching within one
/// path component (names starting with `.` excepted).
pub const UUID_FILES: &[&str] = &[
    "etc/fstab",
    "etc/crypttab",
    "etc/default/grub",
    "etc/default/grub.d/*.cfg",
    "etc/initramfs-tools/conf.d/resume",
    "etc/kernel/cmdline",
    "boot/grub/grub.cfg",
    "boot/grub2/grub.cfg",
    "boot/efi/EFI/*/grub.cfg",
    "boot/grub/grubenv",
    "boot/grub2/grubenv",
    "boot/efi/EFI/*/grubenv",
    "boot/loader/entries/*.conf",
    "boot/efi/loader/entries/*.conf",
    "efi/loader/entries/*.conf",
];

/// Replaces each old UUID of `map` (old, new) by its new one in the clone's
/// [`UUID_FILES`] (see the module doc of [`super`]); returns the files
/// changed, each once, by its real path under `root` (symlinks resolved
/// in-root). The ESP must be mounted at `root/boot/efi` (or `root/efi`) for
/// its files to be seen.
pub fn rewrite_uuids(root: &Path, map: &[(String, String)]) -> Result<Vec<PathBuf>> {
    let map = UuidMap::new(map)?;
    let tree = Tree::new(root)?;
    let mut seen = HashSet::new();
    let mut changed = Vec::new();
    for pattern in UUID_FILES {
        for path in tree.expand(pattern)? {
            if seen.insert(path.clone()) && rewrite_file(&tree, &path, &map)? {
                changed.push(path);
            }
        }
    }
    Ok(changed)
}

/// Old UUID (lowercase) → new UUID (in blkid's case).
struct UuidMap(HashMap<Vec<u8>, Vec<u8>>);

impl UuidMap {
    fn new(pairs: &[(String, String)]) -> Result<UuidMap> {
        let mut map = HashMap::new();
        for (old, new) in pairs {
            for uuid in [old, new] {
                if !is_uuid_token(uuid) {
                    return Err(DiskError::Other(format!(
                        "'{uuid}' is not a file system UUID (at least {UUID_MIN_LEN} hex digits and '-')"
                    )));
                }
            }
            let new = blkid_case(new).into_bytes();
            match map.insert(old.to_ascii_lowercase().into_bytes(), new.clone()) {
                Some(other) if other != new => {
                    return Err(DiskError::Other(format!("UUID {old} is mapped to two new UUIDs")));
                }
                _ => {}
            }
        }
        Ok(UuidMap(map))
    }

    fn get(&self, token: &[u8]) -> Option<&[u8]> {
        self.0.get(&token.to_ascii_lowercase()).map(Vec::as_slice)
    }
}

/// Hex digits and `-`, as long as a vfat serial at least: what blkid prints
/// for any file system.
fn is_uuid_token(s: &str) -> bool {
    s.len() >= UUID_MIN_LEN && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// Lowercase for a standard 8-4-4-4-12 UUID, uppercase otherwise (vfat,
/// exfat, NTFS serials), as blkid prints them.
fn blkid_case(uuid: &str) -> String {
    let standard = uuid.len() == 36
        && uuid.bytes().enumerate().all(|(i, b)| matches!(i, 8 | 13 | 18 | 23) == (b == b'-'));
    if standard {
        uuid.to_ascii_lowercase()
    } else {
        uuid.to_ascii_uppercase()
    }
}

/// Bytes a UUID reference is made of; a token is a maximal run of them.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

/// `text` with every whole token found in `map` replaced; `None` if none was.
fn replace_uuids(text: &[u8], map: &UuidMap) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut changed = false;
    let mut i = 0;
    while i < text.len() {
        let len = text[i..].iter().take_while(|&&b| is_token_byte(b)).count();
        if len == 0 {
            out.push(text[i]);
            i += 1;
            continue;
        }
        let token = &text[i..i + len];
        match map.get(token) {
            Some(new) => {
                changed |= new != token;
                out.extend_from_slice(new);
            }
            None => out.extend_from_slice(token),
        }
        i += len;
    }
    changed.then_some(out)
}

/// Rewrites one file (already resolved); whether it changed.
fn rewrite_file(tree: &Tree, path: &Path, map: &UuidMap) -> Result<bool> {
    let old = fs::read(path).map_err(|e| DiskError::io(tree.show(path), e))?;
    let Some(mut new) = replace_uuids(&old, map) else { return Ok(false) };
    if path.file_name().is_some_and(|n| n == "grubenv") {
        new = refit_grubenv(tree, path, &old, new)?;
    }
    write_atomic(path, &new, CONFIG_MODE)
        .map_err(|e| DiskError::io(format!("writing {}", tree.show(path)), e))?;
    Ok(true)
}

/// A GRUB environment block stays [`GRUBENV_SIZE`] bytes: the `#` padding
/// after its last line absorbs the change. Anything else is left as is.
fn refit_grubenv(tree: &Tree, path: &Path, old: &[u8], new: Vec<u8>) -> Result<Vec<u8>> {
    if old.len() != GRUBENV_SIZE || !old.starts_with(GRUBENV_HEADER) {
        return Ok(new);
    }
    let body = new.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if body > GRUBENV_SIZE {
        return Err(DiskError::Other(format!(
            "{}: the new UUIDs do not fit in the {GRUBENV_SIZE}-byte GRUB environment block",
            tree.show(path)
        )));
    }
    let mut block = new[..body].to_vec();
    block.resize(GRUBENV_SIZE, b'#');
    Ok(block)
}

#[cfg(test)]
mod tests {
    use std::fs::{self, Permissions};
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::super::safe_path::names;
    use super::super::test_util::{map, mode, read, write, ROOT_NEW, ROOT_OLD};
    use super::*;

    const ESP_OLD: &str = "1234-ABCD";
    const ESP_NEW: &str = "5678-ef01";

    #[test]
    fn uuids_are_rewritten_as_whole_tokens_in_blkid_case() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let fstab = format!(
            "UUID={ROOT_OLD} / ext4 defaults 0 1\n\
             UUID={ROOT_OLD}7 /data xfs defaults 0 2\n\
             # UUID=x{ROOT_OLD}\n\
             UUID={} /boot/efi vfat umask=0077 0 1\n\
             /dev/mapper/luks-{ROOT_OLD} /srv ext4 defaults 0 2\n",
            ESP_OLD.to_lowercase()
        );
        write(r, "etc/fstab", &fstab);
        fs::set_permissions(r.join("etc/fstab"), Permissions::from_mode(0o640)).unwrap();
        write(
            r,
            "boot/efi/EFI/debian/grub.cfg",
            &format!("search.fs_uuid {} root\n", ROOT_OLD.to_uppercase()),
        );
        write(r, "boot/loader/entries/x.conf", &format!("options root=UUID={ROOT_OLD} ro\n"));
        write(r, "boot/loader/entries/.hidden.conf", &format!("options root=UUID={ROOT_OLD}\n"));
        write(r, "boot/grub/grub.cfg", "menuentry 'no uuids here' {}\n");
        let changed = rewrite_uuids(r, &map(&[(ROOT_OLD, ROOT_NEW), (ESP_OLD, ESP_NEW)])).unwrap();
        let new = ROOT_NEW.to_lowercase();
        assert_eq!(
            read(r, "etc/fstab"),
            format!(
                "UUID={new} / ext4 defaults 0 1\n\
                 UUID={ROOT_OLD}7 /data xfs defaults 0 2\n\
                 # UUID=x{ROOT_OLD}\n\
                 UUID=5678-EF01 /boot/efi vfat umask=0077 0 1\n\
                 /dev/mapper/luks-{ROOT_OLD} /srv ext4 defaults 0 2\n"
            )
        );
        assert_eq!(mode(&r.join("etc/fstab")), 0o640);
        assert_eq!(read(r, "boot/efi/EFI/debian/grub.cfg"), format!("search.fs_uuid {new} root\n"));
        assert_eq!(read(r, "boot/loader/entries/x.conf"), format!("options root=UUID={new} ro\n"));
        assert!(read(r, "boot/loader/entries/.hidden.conf").contains(ROOT_OLD));
        let mut expected: Vec<PathBuf> =
            ["etc/fstab", "boot/efi/EFI/debian/grub.cfg", "boot/loader/entries/x.conf"]
                .map(|p| r.join(p))
                .into();
        let mut changed = changed;
        changed.sort();
        expected.sort();
        assert_eq!(changed, expected);
        assert!(names(&r.join("etc")).unwrap().iter().all(|n| !n.starts_with('.')), "temporary files left");
    }

    #[test]
    fn uuid_maps_apply_at_once() {
        // A→B and B→A swap, never A→B→A.
        let a = "11111111-1111-4111-8111-111111111111";
        let b = "22222222-2222-4222-8222-222222222222";
        let m = UuidMap::new(&map(&[(a, b), (b, a)])).unwrap();
        let text = format!("{a} {b}");
        assert_eq!(replace_uuids(text.as_bytes(), &m).unwrap(), format!("{b} {a}").into_bytes());
        assert!(replace_uuids(b"nothing", &m).is_none());
        assert!(UuidMap::new(&map(&[("not-a-uuid!", b)])).is_err());
        assert!(UuidMap::new(&map(&[("1234", b)])).is_err(), "would match any 1234");
        assert!(UuidMap::new(&map(&[(a, b), (&a.to_uppercase(), "33333333-3333-4333-8333-333333333333")]))
            .is_err());
    }

    #[test]
    fn grubenv_keeps_its_size_through_a_linked_path() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let body = format!("# GRUB Environment Block\nkernelopts=root=UUID={ESP_OLD} ro\n");
        let mut env = body.into_bytes();
        env.resize(GRUBENV_SIZE, b'#');
        write(r, "boot/efi/EFI/redhat/grubenv", "");
        fs::write(r.join("boot/efi/EFI/redhat/grubenv"), &env).unwrap();
        fs::create_dir_all(r.join("boot/grub2")).unwrap();
        symlink("../efi/EFI/redhat/grubenv", r.join("boot/grub2/grubenv")).unwrap();
        let longer = "0a1b2c3d-1111-4222-8333-444455556666";
        let changed = rewrite_uuids(r, &map(&[(ESP_OLD, longer)])).unwrap();
        assert_eq!(changed, vec![r.join("boot/efi/EFI/redhat/grubenv")], "once, at its target");
        assert!(fs::symlink_metadata(r.join("boot/grub2/grubenv")).unwrap().file_type().is_symlink());
        let new = fs::read(r.join("boot/efi/EFI/redhat/grubenv")).unwrap();
        assert_eq!(new.len(), GRUBENV_SIZE);
        let text = String::from_utf8(new).unwrap();
        let body = format!("# GRUB Environment Block\nkernelopts=root=UUID={longer} ro\n");
        assert!(text.starts_with(&body) && text[body.len()..].bytes().all(|b| b == b'#'), "{text}");
    }

    #[test]
    fn uuid_files_linked_out_of_the_root_are_not_touched() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let r = root.path();
        let target = outside.path().join("fstab");
        fs::write(&target, format!("UUID={ROOT_OLD} / ext4 defaults 0 1\n")).unwrap();
        fs::create_dir(r.join("etc")).unwrap();
        symlink(&target, r.join("etc/fstab")).unwrap();
        assert!(rewrite_uuids(r, &map(&[(ROOT_OLD, ROOT_NEW)])).unwrap().is_empty());
        assert!(fs::read_to_string(&target).unwrap().contains(ROOT_OLD));
    }
}
