//! Paths inside the clone's root, resolved the way the node will resolve
//! them once booted, so that no symlink of the golden tree ever leads a read,
//! a write or a removal out of the root (see "Symlinks never lead out of the
//! root" in the module doc of [`super`]). [`Tree`] is the one way every other
//! part of the preparation touches the clone.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use super::atomic::write_atomic;
use crate::disk::error::{DiskError, Result};

/// Symlinks followed while resolving one path: the kernel's limit (`ELOOP`
/// after 40), so a path the node can open is one we can resolve.
pub const MAX_SYMLINKS: usize = 40;

/// The clone's root; every path in it is resolved the way the node will
/// resolve it once booted, so never outside (see the module doc of
/// [`super`]).
pub(super) struct Tree<'a> {
    pub(super) root: &'a Path,
}

impl<'a> Tree<'a> {
    /// Any directory but the running system's root.
    pub(super) fn new(root: &'a Path) -> Result<Tree<'a>> {
        let real = fs::canonicalize(root).map_err(|e| DiskError::io(root.display().to_string(), e))?;
        if real == Path::new("/") {
            return Err(DiskError::Other(format!(
                "{}: refusing to prepare the running system's root",
                root.display()
            )));
        }
        if !real.is_dir() {
            return Err(DiskError::Other(format!("{}: not a directory", root.display())));
        }
        Ok(Tree { root })
    }

    /// As [`Tree::new`], for a whole system tree: one with an `etc`.
    pub(super) fn system(root: &'a Path) -> Result<Tree<'a>> {
        let tree = Tree::new(root)?;
        if tree.dir("etc")?.is_none() {
            return Err(DiskError::Other(format!("{}: no etc/, not a system tree", root.display())));
        }
        Ok(tree)
    }

    /// `rel` resolved under the root with chroot semantics: every symlink
    /// followed (the last one only with `follow_last`), an absolute target
    /// restarting at the root, `..` stopping there. Components that do not
    /// exist are kept as they are, so the result may not exist.
    pub(super) fn resolve(&self, rel: impl AsRef<Path>, follow_last: bool) -> Result<PathBuf> {
        let rel = rel.as_ref();
        let mut todo: Vec<Step> = steps(rel);
        let mut done = self.root.to_path_buf();
        let mut depth = 0usize;
        let mut links = 0usize;
        while let Some(step) = todo.pop() {
            let name = match step {
                Step::Up => {
                    if depth > 0 {
                        done.pop();
                        depth -= 1;
                    }
                    continue;
                }
                Step::Name(name) => name,
            };
            let next = done.join(&name);
            let follow = follow_last || !todo.is_empty();
            let is_link = fs::symlink_metadata(&next).is_ok_and(|m| m.file_type().is_symlink());
            if !(follow && is_link) {
                done = next;
                depth += 1;
                continue;
            }
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(DiskError::Other(format!(
                    "{}: more than {MAX_SYMLINKS} symbolic links",
                    self.show(&self.root.join(rel))
                )));
            }
            let target = fs::read_link(&next).map_err(|e| DiskError::io(self.show(&next), e))?;
            if target.is_absolute() {
                done = self.root.to_path_buf();
                depth = 0;
            }
            todo.extend(steps(&target));
        }
        Ok(done)
    }

    /// `rel` resolved, if it is a directory.
    pub(super) fn dir(&self, rel: impl AsRef<Path>) -> Result<Option<PathBuf>> {
        let path = self.resolve(rel, true)?;
        Ok(fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()).then_some(path))
    }

    /// `rel` resolved, if it is a regular file.
    pub(super) fn file(&self, rel: impl AsRef<Path>) -> Result<Option<PathBuf>> {
        let path = self.resolve(rel, true)?;
        Ok(fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()).then_some(path))
    }

    /// The contents of `rel` (through symlinks, in-root), if a regular file.
    pub(super) fn read(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        match self.file(rel)? {
            Some(path) => fs::read(&path).map(Some).map_err(|e| DiskError::io(self.show(&path), e)),
            None => Ok(None),
        }
    }

    /// Writes `rel` atomically; a symlink there is replaced by the file,
    /// never written through (see the module doc of [`super`]).
    pub(super) fn replace(
        &self,
        rel: &str,
        data: &[u8],
        mode_if_new: u32,
        log: &mut Vec<String>,
    ) -> Result<()> {
        let path = self.resolve(rel, false)?;
        let link = fs::symlink_metadata(&path)
            .is_ok_and(|m| m.file_type().is_symlink())
            .then(|| fs::read_link(&path).unwrap_or_default());
        write_atomic(&path, data, mode_if_new)
            .map_err(|e| DiskError::io(format!("writing {}", self.show(&path)), e))?;
        if let Some(target) = link {
            log.push(format!(
                "{} was a symlink to {}: replaced by a regular file, not written through",
                self.show(&path),
                target.display()
            ));
        }
        Ok(())
    }

    /// Removes the entry `rel` (the link itself if it is one) unless it is a
    /// directory; whether there was one.
    pub(super) fn remove(&self, rel: &str) -> Result<bool> {
        let path = self.resolve(rel, false)?;
        match fs::symlink_metadata(&path) {
            Ok(m) if !m.is_dir() => {
                fs::remove_file(&path)
                    .map_err(|e| DiskError::io(format!("removing {}", self.show(&path)), e))?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The names of the non-directory entries of directory `rel`
    /// (resolved), sorted; none when it is not there.
    pub(super) fn entries(&self, rel: &str) -> Result<Vec<String>> {
        let Some(dir) = self.dir(rel)? else { return Ok(Vec::new()) };
        let entries = list(&dir).map_err(|e| DiskError::io(format!("reading {}", self.show(&dir)), e))?;
        Ok(entries.into_iter().map(|(name, _)| name).collect())
    }

    /// The regular files matching `pattern` (`*` within a component), resolved.
    pub(super) fn expand(&self, pattern: &str) -> Result<Vec<PathBuf>> {
        let mut rels = vec![PathBuf::new()];
        for part in pattern.split('/') {
            if !part.contains('*') {
                rels.iter_mut().for_each(|r| r.push(part));
                continue;
            }
            let mut next = Vec::new();
            for rel in &rels {
                let Some(dir) = self.dir(rel)? else { continue };
                let names =
                    names(&dir).map_err(|e| DiskError::io(format!("reading {}", self.show(&dir)), e))?;
                next.extend(names.into_iter().filter(|n| glob(part, n)).map(|n| rel.join(n)));
            }
            rels = next;
        }
        rels.iter().filter_map(|rel| self.file(rel).transpose()).collect()
    }

    /// `path` as the node will see it: `/etc/hostname`.
    pub(super) fn show(&self, path: &Path) -> String {
        match path.strip_prefix(self.root) {
            Ok(rel) => format!("/{}", rel.display()),
            Err(_) => path.display().to_string(),
        }
    }
}

/// One step of a path walk.
enum Step {
    Up,
    Name(OsString),
}

/// The steps of `path`, last first (so `pop` gives the next).
fn steps(path: &Path) -> Vec<Step> {
    let mut steps: Vec<Step> = path
        .components()
        .filter_map(|c| match c {
            Component::ParentDir => Some(Step::Up),
            Component::Normal(name) => Some(Step::Name(name.to_os_string())),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    steps.reverse();
    steps
}

/// Every name in `dir`, sorted, so reports and tests are stable.
pub(super) fn names(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// The entries of `dir` that are not directories (links not followed), sorted.
pub(super) fn list(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            out.push((entry.file_name().to_string_lossy().into_owned(), entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// One `*` in `pattern` matches any run of characters (all [`UUID_FILES`](super::UUID_FILES)
/// need); hidden names only match a pattern that starts with `.`, as in the
/// shell.
fn glob(pattern: &str, name: &str) -> bool {
    if name.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    match pattern.split_once('*') {
        Some((head, tail)) => {
            name.len() >= head.len() + tail.len() && name.starts_with(head) && name.ends_with(tail)
        }
        None => pattern == name,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::super::hostname::{HOSTNAME, HOSTS};
    use super::super::identity::MACHINE_ID;
    use super::super::test_util::{is_machine_id, named, read, system};
    use super::super::{prepare_node, rewrite_uuids, Prepare};
    use super::*;

    #[test]
    fn symlinks_out_of_the_root_are_replaced_not_written_through() {
        let root = system();
        let outside = tempfile::tempdir().unwrap();
        let r = root.path();
        let golden = "0123456789abcdef0123456789abcdef\n";
        // Each link's absolute target exists outside (the running system)
        // and inside the clone (what the node would see).
        let inside = r.join(outside.path().strip_prefix("/").unwrap());
        fs::create_dir_all(&inside).unwrap();
        for (rel, text) in
            [(HOSTNAME, "golden\n"), (HOSTS, "127.0.0.1 localhost golden\n"), (MACHINE_ID, golden)]
        {
            let name = rel.replace('/', "-");
            fs::write(outside.path().join(&name), format!("outside {text}")).unwrap();
            fs::write(inside.join(&name), text).unwrap();
            symlink(outside.path().join(&name), r.join(rel)).unwrap();
        }
        let log = prepare_node(r, &named("node07")).unwrap();
        for (name, text) in [("etc-hostname", "golden\n"), ("etc-hosts", "127.0.0.1 localhost golden\n")] {
            assert_eq!(fs::read_to_string(outside.path().join(name)).unwrap(), format!("outside {text}"));
            assert_eq!(fs::read_to_string(inside.join(name)).unwrap(), text);
        }
        assert_eq!(
            fs::read_to_string(outside.path().join("etc-machine-id")).unwrap(),
            format!("outside {golden}")
        );
        for rel in [HOSTNAME, HOSTS, MACHINE_ID] {
            assert!(fs::symlink_metadata(r.join(rel)).unwrap().is_file(), "{rel}");
        }
        assert_eq!(read(r, HOSTNAME), "node07\n");
        // Read in-root: the golden's name came from the clone's own target.
        assert_eq!(read(r, HOSTS), "127.0.0.1\tlocalhost node07\n127.0.1.1\tnode07\n");
        let id = read(r, MACHINE_ID);
        assert!(is_machine_id(&id) && id != golden, "{id:?}");
        assert_eq!(log.iter().filter(|l| l.contains("was a symlink")).count(), 3, "{log:?}");
    }

    #[test]
    fn resolution_stays_in_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let tree = Tree::new(r).unwrap();
        fs::create_dir_all(r.join("usr/lib")).unwrap();
        fs::create_dir(r.join("etc")).unwrap();
        symlink("/usr/lib", r.join("lib")).unwrap();
        symlink("../../../../../../../../etc", r.join("usr/up")).unwrap();
        symlink("loop", r.join("loop")).unwrap();
        assert_eq!(tree.resolve("lib/x", true).unwrap(), r.join("usr/lib/x"));
        assert_eq!(tree.resolve("usr/up/hosts", true).unwrap(), r.join("etc/hosts"));
        assert_eq!(tree.resolve("../../etc", true).unwrap(), r.join("etc"));
        assert_eq!(tree.resolve("lib", false).unwrap(), r.join("lib"));
        let e = tree.resolve("loop/x", true).unwrap_err().to_string();
        assert!(e.contains("symbolic links"), "{e}");
    }

    #[test]
    fn the_running_system_and_non_trees_are_refused() {
        let e = prepare_node(Path::new("/"), &Prepare::default()).unwrap_err().to_string();
        assert!(e.contains("running system"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = prepare_node(empty.path(), &Prepare::default()).unwrap_err().to_string();
        assert!(e.contains("not a system tree"), "{e}");
        assert!(rewrite_uuids(Path::new("/"), &[]).is_err());
    }
}
