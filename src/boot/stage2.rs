//! The stage2: the tools `kacast install` runs on a node (sfdisk, mkfs.*,
//! GNU tar, grub-*, …) with their libraries and data, as a tar the initrd
//! fetches from the golden node and unpacks over its root (ka's
//! `rescue.sqfs`). The initrd stays small and kernel-only; the tools come
//! from the golden node itself, so they match what it cloned.
//!
//! Plain tar: the initrd unpacks it with busybox tar, which does not detect
//! compression by itself, and on a LAN the chain moves it in a second or two.

use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::boot::initrd::error::{BuildError, Result};
use crate::boot::initrd::{add_libraries, cpio::source_date_epoch, write_atomically, Node, Tree};

/// The default tools, one per line (`#` comments), see `stage2/tools.list`.
pub const TOOLS_LIST: &str = include_str!("../../stage2/tools.list");
/// Where a tool name is looked for, in the initrd's PATH order: `/usr/sbin`
/// first, so a merged-/usr host gives the canonical path, not `/sbin/…`.
const SEARCH_PATH: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];
/// Data the tools read at run time: GRUB's modules and images for both
/// firmwares, its scripts, mke2fs's defaults, and the codepage mtools
/// converts FAT names with (without it every mtools command fails with
/// "Error converting to codepage 850"). Missing ones are skipped.
const DATA: &[&str] = &[
    "/usr/lib/grub/i386-pc",
    "/usr/lib/grub/x86_64-efi",
    "/usr/share/grub",
    "/etc/mke2fs.conf",
    "/usr/lib/x86_64-linux-gnu/gconv/IBM850.so",
    "/usr/lib/x86_64-linux-gnu/gconv/gconv-modules",
    "/usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache",
    "/usr/lib/x86_64-linux-gnu/gconv/gconv-modules.d",
];

#[derive(Debug, Clone, Default)]
pub struct Stage2Spec {
    /// Tool names or absolute paths; empty means [`TOOLS_LIST`].
    pub tools: Vec<String>,
    /// More host directories (or files) to carry as they are.
    pub extra_dirs: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage2Report {
    /// Bytes of the tar.
    pub size: u64,
    /// Entries in the tar (directories and links included).
    pub files: usize,
    /// Host paths of the tools included.
    pub tools: Vec<PathBuf>,
    /// Tools not found on this host.
    pub missing: Vec<String>,
}

/// The tool names of a tools.list text.
pub fn parse_tools(list: &str) -> Vec<String> {
    list.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Where `tool` is on this host, by [`SEARCH_PATH`] (or as given if absolute).
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    if tool.starts_with('/') {
        return Path::new(tool).exists().then(|| tool.into());
    }
    SEARCH_PATH.iter().map(|d| Path::new(d).join(tool)).find(|p| p.is_file())
}

/// Builds the stage2 `spec` describes into `out` (a tar).
pub fn build(spec: &Stage2Spec, out: &Path) -> Result<Stage2Report> {
    let tools = if spec.tools.is_empty() { parse_tools(TOOLS_LIST) } else { spec.tools.clone() };
    let mut tree = Tree::new();
    let (mut found, mut missing) = (Vec::new(), Vec::new());
    for t in &tools {
        let Some(path) = find_tool(t) else {
            missing.push(t.clone());
            continue;
        };
        tree.add_host(&path).map_err(|e| BuildError::io(format!("copy {}", path.display()), e))?;
        add_libraries(&mut tree, &path)?;
        found.push(path);
    }
    if !missing.is_empty() {
        warn!("stage2: not on this host, left out: {}", missing.join(", "));
    }
    let data = DATA.iter().map(PathBuf::from).filter(|p| p.exists());
    for dir in data.chain(spec.extra_dirs.iter().cloned()) {
        tree.add_host_tree(&dir).map_err(|e| BuildError::io(format!("copy {}", dir.display()), e))?;
    }
    let mtime = u64::from(source_date_epoch());
    let size = write_atomically(out, |w| write_tar(&tree, mtime, w))?;
    info!("stage2 {}: {size} bytes, {} entries, {} tools", out.display(), tree.len(), found.len());
    Ok(Stage2Report { size, files: tree.len(), tools: found, missing })
}

/// `tree` as a tar: entries in path order, owner root, every time `mtime`
/// (long names as GNU extensions, which busybox tar reads).
fn write_tar(tree: &Tree, mtime: u64, w: &mut impl std::io::Write) -> std::io::Result<()> {
    let mut b = tar::Builder::new(w);
    for (path, node) in tree.iter() {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(mtime);
        h.set_uid(0);
        h.set_gid(0);
        match node {
            Node::Dir { mode } => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, format!("{path}/"), std::io::empty())?;
            }
            Node::File { mode, data } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, data.as_slice())?;
            }
            Node::Symlink { target } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, target)?;
            }
            Node::CharDev { .. } => {
                return Err(std::io::Error::other(format!("{path}: device nodes do not belong in a stage2")))
            }
        }
    }
    b.into_inner()?.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_list_parses_and_names_what_install_runs() {
        let tools = parse_tools(TOOLS_LIST);
        for t in
            ["sfdisk", "partx", "wipefs", "mkfs.ext4", "tar", "zstd", "grub-mkimage", "mcopy", "ssh-keygen"]
        {
            assert!(tools.iter().any(|x| x == t), "{t} missing from stage2/tools.list");
        }
        assert_eq!(parse_tools("# c\n a # b\n\nb\n"), ["a", "b"]);
    }
}
