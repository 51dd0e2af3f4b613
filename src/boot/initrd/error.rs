//! What can stop an initrd or stage2 build. Each message names the file, tool
//! or package involved and, where there is one, the fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A host tool the build needs is not installed.
    #[error("'{tool}' is not installed, needed to {purpose} (apt-get install {package})")]
    MissingTool { tool: String, purpose: String, package: String },
    /// A host tool ran and failed.
    #[error("{tool} failed: {detail}")]
    Tool { tool: String, detail: String },
    #[error("no kernel in {}: {why}", root.display())]
    Kernel { root: PathBuf, why: String },
    /// A binary to copy needs a library the host does not have.
    #[error("{}: shared libraries not found: {}", binary.display(), missing.join(", "))]
    MissingLibs { binary: PathBuf, missing: Vec<String> },
}

impl BuildError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> BuildError {
        BuildError::Io { what: what.into(), source }
    }
}

pub type Result<T, E = BuildError> = std::result::Result<T, E>;

/// Runs a host tool for the build and returns its stdout as text; a tool that
/// is not there is a [`BuildError::MissingTool`] naming the package that has it.
pub(crate) fn run_tool(
    cmd: &mut std::process::Command,
    tool: &str,
    purpose: &str,
    package: &str,
) -> Result<String> {
    run_tool_bytes(cmd, tool, purpose, package).map(|out| String::from_utf8_lossy(&out).into_owned())
}

/// As [`run_tool`], for a tool whose output is binary (a decompressor).
pub(crate) fn run_tool_bytes(
    cmd: &mut std::process::Command,
    tool: &str,
    purpose: &str,
    package: &str,
) -> Result<Vec<u8>> {
    tracing::debug!("running {cmd:?}");
    let out = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            BuildError::MissingTool { tool: tool.into(), purpose: purpose.into(), package: package.into() }
        } else {
            BuildError::io(format!("start {tool}"), e)
        }
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let detail = format!("could not {purpose}: {}: {}", out.status, stderr.trim());
        return Err(BuildError::Tool { tool: tool.into(), detail });
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn errors_name_the_tool_the_purpose_and_the_package() {
        let e = run_tool(&mut Command::new("kacast-no-such-tool"), "kacast-no-such-tool", "fetch", "pkg");
        let e = e.unwrap_err().to_string();
        assert!(
            e.contains("'kacast-no-such-tool' is not installed, needed to fetch (apt-get install pkg)"),
            "{e}"
        );
        let e = run_tool(
            Command::new("sh").args(["-c", "echo E: offline >&2; exit 100"]),
            "sh",
            "download x",
            "p",
        );
        let e = e.unwrap_err().to_string();
        assert!(e.contains("sh failed: could not download x") && e.contains("E: offline"), "{e}");
    }
}
