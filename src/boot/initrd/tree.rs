//! The file tree of an initrd or a stage2, held in memory before it is written
//! as a cpio or a tar archive.
//!
//! Paths are relative to the archive's root and kept sorted, so an archive
//! lists parents before children and comes out the same from the same inputs.
//! Host files are added with their symlinks mirrored (`/lib64 -> usr/lib64`,
//! `mkfs.ext4 -> mke2fs`): the copied binaries then find their interpreter and
//! libraries at the very paths they were linked against.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Symlinks followed while resolving one path before it is called a loop
/// (the kernel's own limit, MAXSYMLINKS).
const MAX_SYMLINKS: usize = 40;

/// One entry of the tree. Owner is always root and the time is the archive's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        data: Vec<u8>,
    },
    Symlink {
        target: String,
    },
    /// A character device (`/dev/console` must exist before devtmpfs is
    /// mounted: the kernel opens it as PID 1's stdin/stdout).
    CharDev {
        mode: u32,
        major: u32,
        minor: u32,
    },
}

#[derive(Debug, Default, Clone)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }

    /// Adds `node` at `path`, through the symlinks already in the tree and
    /// creating missing parents (mode 0755). Returns false, leaving the tree
    /// unchanged, when a different entry is already there: the first one wins.
    pub fn insert(&mut self, path: &str, node: Node) -> bool {
        let path = self.resolve_parents(path);
        if path.is_empty() {
            return false;
        }
        let parts: Vec<&str> = path.split('/').collect();
        for i in 1..parts.len() {
            let parent = parts[..i].join("/");
            match self.nodes.get(&parent) {
                None => {
                    self.nodes.insert(parent, Node::Dir { mode: 0o755 });
                }
                Some(Node::Dir { .. }) => {}
                Some(_) => return false,
            }
        }
        match self.nodes.get(&path) {
            None => {
                self.nodes.insert(path, node);
                true
            }
            Some(old) => *old == node || matches!((old, &node), (Node::Dir { .. }, Node::Dir { .. })),
        }
    }

    /// The entry at `path` (through the tree's symlinks in its parents).
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(&self.resolve_parents(path))
    }

    /// Every entry, sorted by path: parents come before their children.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.nodes.iter().map(|(p, n)| (p.as_str(), n))
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// `path` with each parent component that is a symlink in the tree
    /// replaced by where it points, so that `bin/ash` lands in `usr/bin/ash`
    /// when `bin -> usr/bin`: archive unpackers do not all follow symlinks.
    fn resolve_parents(&self, path: &str) -> String {
        let mut parts = normalize(&[], path);
        'again: for _ in 0..MAX_SYMLINKS {
            for i in 0..parts.len().saturating_sub(1) {
                if let Some(Node::Symlink { target }) = self.nodes.get(&parts[..=i].join("/")) {
                    let mut resolved = normalize(&parts[..i], target);
                    resolved.extend_from_slice(&parts[i + 1..]);
                    parts = resolved;
                    continue 'again;
                }
            }
            break;
        }
        parts.join("/")
    }

    /// Adds the host's `path` (absolute) at the same place, mirroring every
    /// symlink met on the way, in its parents and at the end, and the entries
    /// they point to. A directory is added empty (see [`Tree::add_host_tree`]).
    pub fn add_host(&mut self, path: &Path) -> io::Result<()> {
        let parts = normalize(&[], &path.to_string_lossy());
        self.add_host_parts(parts, 0)
    }

    fn add_host_parts(&mut self, parts: Vec<String>, depth: usize) -> io::Result<()> {
        if depth > MAX_SYMLINKS {
            return Err(io::Error::other(format!("/{}: too many levels of symlinks", parts.join("/"))));
        }
        for i in 0..parts.len() {
            let host = PathBuf::from(format!("/{}", parts[..=i].join("/")));
            let meta = fs::symlink_metadata(&host)?;
            if meta.is_symlink() {
                let target = fs::read_link(&host)?.to_string_lossy().into_owned();
                self.insert(&parts[..=i].join("/"), Node::Symlink { target: target.clone() });
                let mut resolved = normalize(&parts[..i], &target);
                resolved.extend_from_slice(&parts[i + 1..]);
                return self.add_host_parts(resolved, depth + 1);
            }
            if i + 1 == parts.len() {
                let mode = meta.permissions().mode() & 0o7777;
                let node = if meta.is_dir() {
                    Node::Dir { mode }
                } else if meta.is_file() {
                    Node::File { mode, data: fs::read(&host)? }
                } else {
                    return Err(io::Error::other(format!(
                        "{}: not a file, directory or symlink",
                        host.display()
                    )));
                };
                self.insert(&parts.join("/"), node);
            }
        }
        Ok(())
    }

    /// Adds the host's `path` as [`Tree::add_host`] does and, for a
    /// directory, everything under it; symlinks inside are copied as symlinks,
    /// not followed. Sockets, fifos and devices are left out: data
    /// directories have none worth carrying.
    pub fn add_host_tree(&mut self, path: &Path) -> io::Result<()> {
        self.add_host(path)?;
        let real = fs::canonicalize(path)?;
        if !real.is_dir() {
            return Ok(());
        }
        let rel = real.to_string_lossy().trim_start_matches('/').to_string();
        self.add_dir_contents(&real, &rel)
    }

    fn add_dir_contents(&mut self, host: &Path, at: &str) -> io::Result<()> {
        let mut entries: Vec<_> = fs::read_dir(host)?.collect::<io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let name = format!("{at}/{}", e.file_name().to_string_lossy());
            let meta = fs::symlink_metadata(&path)?;
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_symlink() {
                self.insert(&name, Node::Symlink { target: fs::read_link(&path)?.to_string_lossy().into() });
            } else if meta.is_dir() {
                self.insert(&name, Node::Dir { mode });
                self.add_dir_contents(&path, &name)?;
            } else if meta.is_file() {
                self.insert(&name, Node::File { mode, data: fs::read(&path)? });
            }
        }
        Ok(())
    }
}

/// `path` taken from the directory `base` (ignored when `path` is absolute),
/// with `.`, `..` and empty components resolved away lexically.
fn normalize(base: &[String], path: &str) -> Vec<String> {
    let mut parts: Vec<String> = if path.starts_with('/') { Vec::new() } else { base.to_vec() };
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c.to_string()),
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(data: &str) -> Node {
        Node::File { mode: 0o644, data: data.into() }
    }

    #[test]
    fn parents_are_created_and_symlinked_parents_followed() {
        let mut t = Tree::new();
        assert!(t.insert("bin", Node::Symlink { target: "usr/bin".into() }));
        assert!(t.insert("bin/ash", Node::Symlink { target: "/usr/bin/busybox".into() }));
        assert!(t.insert("lib64", Node::Symlink { target: "/usr/lib64".into() }));
        assert!(t.insert("lib64/../etc/./x", file("x")));
        let paths: Vec<&str> = t.iter().map(|(p, _)| p).collect();
        assert_eq!(paths, ["bin", "etc", "etc/x", "lib64", "usr", "usr/bin", "usr/bin/ash"]);
        assert_eq!(t.get("bin/ash"), Some(&Node::Symlink { target: "/usr/bin/busybox".into() }));
    }

    #[test]
    fn first_entry_wins() {
        let mut t = Tree::new();
        assert!(t.insert("a/b", file("1")));
        assert!(t.insert("a/b", file("1")), "the same entry again is fine");
        assert!(!t.insert("a/b", file("2")));
        assert!(!t.insert("a/b/c", file("3")), "a file cannot be a parent");
        assert_eq!(t.get("a/b"), Some(&file("1")));
    }

    #[test]
    fn host_symlinks_are_mirrored() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("usr/lib")).unwrap();
        fs::write(d.join("usr/lib/libx.so.1.2"), "elf").unwrap();
        std::os::unix::fs::symlink("usr/lib", d.join("lib")).unwrap();
        std::os::unix::fs::symlink("libx.so.1.2", d.join("usr/lib/libx.so.1")).unwrap();
        let mut t = Tree::new();
        t.add_host(&d.join("lib/libx.so.1")).unwrap();
        let rel = d.to_string_lossy().trim_start_matches('/').to_string();
        assert_eq!(t.get(&format!("{rel}/lib")), Some(&Node::Symlink { target: "usr/lib".into() }));
        assert_eq!(
            t.get(&format!("{rel}/usr/lib/libx.so.1")),
            Some(&Node::Symlink { target: "libx.so.1.2".into() })
        );
        assert!(
            matches!(t.get(&format!("{rel}/usr/lib/libx.so.1.2")), Some(Node::File { data, .. }) if data == b"elf")
        );
    }
}
