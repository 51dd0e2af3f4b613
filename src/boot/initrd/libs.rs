//! The shared libraries a dynamically linked program needs, so that it runs
//! in the initrd or the stage2 as it does on the host it came from.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::InitrdError;

/// Every library `ldd` resolves for `program`, the dynamic loader included;
/// empty for a static program.
pub fn closure(program: &Path) -> Result<BTreeSet<PathBuf>, InitrdError> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .map_err(|e| InitrdError::Kernel(format!("ldd: {e} (package libc-bin)")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable": nothing to add.
        return Ok(BTreeSet::new());
    }
    let mut libs = BTreeSet::new();
    for line in text.lines() {
        if line.contains("=> not found") {
            return Err(InitrdError::Kernel(format!("{}: {}", program.display(), line.trim())));
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next().filter(|w| w.starts_with('/')),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.insert(PathBuf::from(p));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_program_needs_libc_and_the_loader() {
        let libs = closure(Path::new("/bin/sh")).unwrap();
        assert!(libs.iter().any(|l| l.to_string_lossy().contains("libc.so")), "{libs:?}");
        assert!(libs.iter().any(|l| l.to_string_lossy().contains("ld-linux")), "{libs:?}");
    }
}
