//! The stage2: the golden node's own install tools and their libraries, in a
//! tar the nodes fetch through the chain (`getstage2`) and unpack over their
//! initrd. See `stage2/README.md`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::initrd::{libs, InitrdError};

/// The default tool list, one per line (`stage2/tools.list`).
pub const TOOLS: &str = include_str!("../../stage2/tools.list");

/// GRUB's images and modules (by-hand restoration builds core.img and
/// BOOTX64.EFI from them), mke2fs's defaults, and the codepage mtools
/// converts FAT names with (without it every mtools command fails with
/// "Error converting to codepage 850").
const EXTRA: &[&str] = &[
    "/usr/lib/grub/i386-pc",
    "/usr/lib/grub/x86_64-efi",
    "/etc/mke2fs.conf",
    "/usr/lib/x86_64-linux-gnu/gconv/IBM850.so",
    "/usr/lib/x86_64-linux-gnu/gconv/gconv-modules",
    "/usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache",
    "/usr/lib/x86_64-linux-gnu/gconv/gconv-modules.d",
];

/// Where tools are looked for, in the initrd's PATH order.
const PATH: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

#[derive(Debug, Clone, Default)]
pub struct Stage2Spec {
    /// Tools to include; empty: [`TOOLS`].
    pub tools: Vec<String>,
    /// More files or directories, at the same paths.
    pub extra: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Stage2Report {
    pub bytes: u64,
    pub files: usize,
    pub tools: Vec<String>,
    /// Tools this host lacks.
    pub missing: Vec<String>,
}

/// Tools named in a list: one per line, `#` comments.
pub fn parse_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Builds the stage2 tar into `out`.
pub fn build(spec: &Stage2Spec, out: &Path) -> Result<Stage2Report, InitrdError> {
    let tools = if spec.tools.is_empty() { parse_list(TOOLS) } else { spec.tools.clone() };
    // Archive path → host file, sorted so that the archive is reproducible.
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    let (mut found, mut missing) = (Vec::new(), Vec::new());
    for tool in &tools {
        let Some(path) = PATH.iter().map(|d| Path::new(d).join(tool)).find(|p| p.is_file()) else {
            missing.push(tool.clone());
            continue;
        };
        for lib in libs::closure(&path)? {
            files.insert(rel(&lib), lib);
        }
        files.insert(rel(&path), path);
        found.push(tool.clone());
    }
    if !missing.is_empty() {
        warn!("stage2: not on this host (skipped): {}", missing.join(", "));
    }
    for extra in EXTRA.iter().map(PathBuf::from).chain(spec.extra.iter().cloned()) {
        add_tree(&extra, &mut files)?;
    }
    let file = fs::File::create(out).map_err(|e| io(out, e))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(true);
    for (name, from) in &files {
        tar.append_path_with_name(from, name).map_err(|e| io(from, e))?;
    }
    tar.into_inner().and_then(|w| w.into_inner().map_err(|e| e.into_error())).map_err(|e| io(out, e))?;
    let bytes = fs::metadata(out).map_err(|e| io(out, e))?.len();
    info!("{}: {} tools, {} files, {bytes} bytes", out.display(), found.len(), files.len());
    Ok(Stage2Report { bytes, files: files.len(), tools: found, missing })
}

/// A file, or every file under a directory; a missing one is skipped.
fn add_tree(path: &Path, files: &mut BTreeMap<String, PathBuf>) -> Result<(), InitrdError> {
    let Ok(meta) = fs::metadata(path) else {
        warn!("stage2: {} not on this host (skipped)", path.display());
        return Ok(());
    };
    if meta.is_file() {
        files.insert(rel(path), path.to_path_buf());
        return Ok(());
    }
    for e in fs::read_dir(path).map_err(|e| io(path, e))?.flatten() {
        add_tree(&e.path(), files)?;
    }
    Ok(())
}

fn rel(p: &Path) -> String {
    p.to_string_lossy().trim_start_matches('/').to_string()
}

fn io(path: &Path, source: std::io::Error) -> InitrdError {
    InitrdError::Io { path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_list_names_what_install_runs() {
        let tools = parse_list(TOOLS);
        for t in ["sfdisk", "mkfs.ext4", "mkswap", "tar", "zstd", "grub-mkimage", "mcopy", "ssh-keygen"] {
            assert!(tools.iter().any(|x| x == t), "{t} missing from stage2/tools.list");
        }
        assert!(tools.iter().all(|t| !t.contains(' ') && !t.starts_with('#')));
    }
}
