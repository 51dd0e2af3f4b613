//! Running the system tools a clone is made of (sfdisk, mkfs.*, blkid, tar,
//! grub-*), with errors that say which tool, on what, and what it printed.

use std::io::Write;
use std::process::{Command, Stdio};

use tracing::debug;

use super::error::{DiskError, Result};

/// Lines of a failing tool's stderr kept in the error: the last ones say why.
const STDERR_TAIL: usize = 6;

/// Whether `tool` can be run: an absolute path that exists, or a name on PATH.
pub fn exists(tool: &str) -> bool {
    if tool.contains('/') {
        return std::path::Path::new(tool).is_file();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false)
}

/// Fails with [`DiskError::MissingTool`] unless `tool` can be run.
pub fn require(tool: &str, purpose: &str) -> Result<()> {
    if exists(tool) {
        Ok(())
    } else {
        Err(DiskError::MissingTool { tool: tool.into(), purpose: purpose.into() })
    }
}

/// Runs `program args…` on `target` (named in errors), feeding `stdin` if
/// given, and returns its stdout. A non-zero exit is an error carrying the tail
/// of stderr.
pub fn run(program: &str, args: &[&str], target: &str, stdin: Option<&[u8]>) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_command(cmd, program, target, stdin)
}

/// As [`run`], for a command built by the caller (environment, chroot…);
/// `tool` names it in errors.
pub fn run_command(mut cmd: Command, tool: &str, target: &str, stdin: Option<&[u8]>) -> Result<String> {
    debug!("running {cmd:?}");
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DiskError::MissingTool { tool: tool.into(), purpose: format!("work on {target}") }
        } else {
            DiskError::Tool { tool: tool.into(), target: target.into(), detail: format!("cannot start: {e}") }
        }
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A tool that exits early closes its stdin; its exit status says why.
        let _ = pipe.write_all(input);
    }
    let out = child.wait_with_output().map_err(|e| DiskError::Tool {
        tool: tool.into(),
        target: target.into(),
        detail: e.to_string(),
    })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(STDERR_TAIL)..].join(" | ");
    let status = match out.status.code() {
        Some(c) => format!("exit status {c}"),
        None => "killed by a signal".to_string(),
    };
    let detail = if tail.is_empty() { status } else { format!("{status}: {tail}") };
    Err(DiskError::Tool { tool: tool.into(), target: target.into(), detail })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_tool_names_itself_and_its_stderr() {
        let e = run("sh", &["-c", "echo boom >&2; exit 3"], "/dev/x", None).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("sh failed on /dev/x"), "{s}");
        assert!(s.contains("exit status 3") && s.contains("boom"), "{s}");
    }

    #[test]
    fn missing_tool_is_named() {
        let e = run("kacast-no-such-tool", &[], "/dev/x", None).unwrap_err();
        assert!(matches!(e, DiskError::MissingTool { .. }), "{e}");
        assert!(!exists("kacast-no-such-tool"));
        assert!(exists("sh"));
    }

    #[test]
    fn stdin_reaches_the_tool() {
        assert_eq!(run("cat", &[], "-", Some(b"abc")).unwrap(), "abc");
    }
}
