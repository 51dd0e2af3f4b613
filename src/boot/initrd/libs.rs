//! The shared libraries a dynamically linked binary loads, so that a copy of
//! it runs in the initrd or the stage2 (the kacast binary itself is linked
//! against glibc; mke2fs, sfdisk, grub-* against their own libraries).
//!
//! Read from `ldd`, which asks the binary's own dynamic loader: it knows the
//! search path, `$ORIGIN` and the transitive closure better than any parser
//! of ours would.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::{BuildError, Result};

/// The host paths of every library `binary` loads, its interpreter
/// (`/lib64/ld-linux-x86-64.so.2`) included; empty for a static binary or a
/// script.
pub fn closure(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            BuildError::MissingTool {
                tool: "ldd".into(),
                purpose: format!("list the libraries of {}", binary.display()),
                package: "libc-bin".into(),
            }
        } else {
            BuildError::io("start ldd", e)
        }
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let all = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
        if all.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        return Err(BuildError::Tool {
            tool: format!("ldd {}", binary.display()),
            detail: all.trim().into(),
        });
    }
    parse_ldd(&text).map_err(|missing| BuildError::MissingLibs { binary: binary.into(), missing })
}

/// The library paths of `ldd`'s output, in its order; or the names it could
/// not find. The vDSO is the kernel's and has no file.
pub fn parse_ldd(out: &str) -> std::result::Result<Vec<PathBuf>, Vec<String>> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (name, rest) = match line.split_once(" => ") {
            Some((name, rest)) => (name, rest),
            None => (line, line),
        };
        if rest.starts_with("not found") {
            missing.push(name.to_string());
            continue;
        }
        let path = rest.split(" (").next().unwrap_or(rest).trim();
        if path.starts_with('/') {
            found.push(PathBuf::from(path));
        }
    }
    if missing.is_empty() {
        Ok(found)
    } else {
        Err(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SFDISK: &str = "\tlinux-vdso.so.1 (0x00007fee749a4000)
\tlibfdisk.so.1 => /lib/x86_64-linux-gnu/libfdisk.so.1 (0x00007fee748f5000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fee7464c000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007fee749a6000)
";

    #[test]
    fn libraries_and_interpreter_no_vdso() {
        let libs = parse_ldd(SFDISK).unwrap();
        assert_eq!(
            libs,
            [
                "/lib/x86_64-linux-gnu/libfdisk.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn missing_libraries_are_named() {
        let out = "\tlibgone.so.3 => not found\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n";
        assert_eq!(parse_ldd(out), Err(vec!["libgone.so.3".to_string()]));
    }

    #[test]
    fn a_real_binary_and_a_static_one() {
        let libs = closure(Path::new("/bin/sh")).unwrap();
        assert!(libs.iter().any(|l| l.to_string_lossy().contains("libc.so")), "{libs:?}");
        if Path::new("/bin/busybox").exists() && closure(Path::new("/bin/busybox")).unwrap().is_empty() {
            return;
        }
        crate::testing::skip("no static /bin/busybox (busybox-static) to check a static binary");
    }
}
