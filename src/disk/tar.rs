//! The tar streams of an install: GNU tar on both ends, with the options that
//! keep a system intact (checked case by case against GNU tar in
//! `tests/fidelity_selftest.rs`, and through the chain in `tests/clone.rs`).
//!
//! Why these options and not others:
//! - `--numeric-owner`: the node (an initrd) has no passwd of the clone to map
//!   names through; ids are what the clone's files must keep.
//! - `--xattrs --xattrs-include='*'` on **both** sides: without the pattern
//!   the extractor restores only `user.*`, losing `security.capability` (ping
//!   without setuid), SELinux labels and `trusted.*`.
//! - POSIX ACLs travel as their raw `system.posix_acl_*` xattrs, with numeric
//!   ids. `--acls` is **not** used: GNU tar 1.34 also stores them as text with
//!   user *names* and applies that copy last on extraction, so a name that
//!   maps to another id on the node changes the ACL.
//! - `--xattrs-exclude='trusted.SGI_ACL_*'`: XFS shows its internal copies of
//!   ACLs as these; written to ext4 or btrfs they would be junk.
//! - `--sparse` with `--format=posix`: holes stay holes (PAX sparse format).
//! - `--warning=no-timestamp`: a node whose clock is unset would warn for
//!   every file "in the future"; the times are restored all the same.
//! - `--delay-directory-restore`: directory times and modes are set after
//!   their contents, so a read-only directory can be filled.

use std::path::Path;

use super::compression::Compression;
use super::plan::Plan;

const XATTRS: &str = "--xattrs --xattrs-include='*' --xattrs-exclude='trusted.SGI_ACL_*'";

/// The golden side's tar: each filesystem of the plan read with
/// one-file-system semantics (a mount point inside it is sent as an empty
/// directory, like /proc), excluded directories left out. tar's exit status
/// 1 (a file changed while it was read — a live golden node) is a warning.
pub fn tar_create_command(root: &Path, plan: &Plan) -> String {
    let mut cmd = format!(
        "tar --create --file=- --directory={} --one-file-system --numeric-owner {XATTRS} --sparse --format=posix --warning=no-file-ignored --anchored --wildcards",
        sh_quote(&root.to_string_lossy())
    );
    // The contents, not the directory: it travels empty with its mode, owner
    // and mtime, so a recording is whole without the plan's excludes.
    for x in &plan.excludes {
        cmd.push_str(&format!(
            " --exclude={}",
            sh_quote(&format!("{}/*", escape_glob(&format!(".{}", x.path))))
        ));
    }
    for fs in plan.mount_order() {
        let m = fs.mount_point.as_deref().unwrap_or("/");
        let member = if m == "/" { ".".to_string() } else { format!(".{m}") };
        cmd.push(' ');
        cmd.push_str(&sh_quote(&member));
    }
    format!(
        "{cmd}; s=$?; if [ $s -eq 1 ]; then echo 'kacast: files changed while tar read them (tar exit 1); the clone has them as read' >&2; exit 0; fi; exit $s"
    )
}

/// The node side's tar: extracts into the mounted root keeping everything the
/// golden side sent.
pub fn extract_command(root: &Path, compression: Compression) -> String {
    let mut cmd = format!(
        "tar --extract --file=- --directory={} --numeric-owner --same-owner --preserve-permissions {XATTRS} --warning=no-timestamp --delay-directory-restore",
        sh_quote(&root.to_string_lossy())
    );
    if let Some(flag) = compression.tar_flag() {
        cmd.push(' ');
        cmd.push_str(flag);
    }
    cmd
}

/// Makes a path match only itself as a tar wildcard pattern.
fn escape_glob(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Quotes a word for `sh -c`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", sh_quote("it's $HOME")))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it's $HOME");
    }

    #[test]
    fn excluded_directories_are_sent_empty() {
        assert_eq!(escape_glob("./a*b[1]"), r"./a\*b\[1\]");
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("tmp/sub")).unwrap();
        std::fs::create_dir_all(root.join("tmpx")).unwrap();
        std::fs::write(root.join("tmp/.hidden"), "x").unwrap();
        std::fs::write(root.join("tmp/sub/f"), "x").unwrap();
        std::fs::write(root.join("tmpx/kept"), "x").unwrap();
        let mut plan = crate::disk::plan::tests::sample();
        plan.filesystems.retain(|f| f.mount_point.as_deref() == Some("/"));
        let list = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("( {} ) | tar -t", tar_create_command(&root, &plan)))
            .output()
            .unwrap();
        let names = String::from_utf8_lossy(&list.stdout);
        let names: Vec<&str> = names.lines().collect();
        assert!(names.contains(&"./tmp/") && names.contains(&"./tmpx/kept"), "{names:?}");
        assert!(!names.iter().any(|n| n.starts_with("./tmp/") && *n != "./tmp/"), "{names:?}");
    }

    #[test]
    fn extract_command_quotes_the_root() {
        let c = extract_command(Path::new("/mnt/it's"), Compression::None);
        assert!(c.contains(r"--directory='/mnt/it'\''s'"), "{c}");
        assert!(c.contains("--xattrs-include='*'") && !c.contains("--acls"), "{c}");
        assert!(extract_command(Path::new("/r"), Compression::Zstd).ends_with(" --zstd"));
    }
}
