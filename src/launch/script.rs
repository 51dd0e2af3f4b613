//! The shell text sent to a node: quoting, and the three remote scripts (probe,
//! copy, watchdog wrapper).
//!
//! Every script is one line of POSIX `sh`, run as `sh -c 'SCRIPT' NAME ARGS…`
//! with its data passed as positional parameters, never spliced into the
//! script: whatever a path or an argument holds, it stays one word. The whole
//! line is single-quoted for the remote login shell, whatever it is (sh, bash,
//! even csh reads single quotes the same way as long as there is no newline in
//! them).

/// Printed by the probe: `PROBE_TAG` + one of the three words below.
pub(crate) const PROBE_TAG: &str = "kacast-launch:";
pub(crate) const PROBE_INSTALLED: &str = "installed";
pub(crate) const PROBE_COPIED: &str = "copied";
pub(crate) const PROBE_ABSENT: &str = "absent";

/// Is the agent there? `$1` the agent path (a name looked up on the remote
/// PATH, or an absolute path), `$2` the copy's path. The copy only counts when
/// it is a regular executable file owned by the remote user: a file another
/// user planted in the shared /tmp is never run.
const PROBE: &str = "if command -v \"$1\" >/dev/null 2>&1; then echo kacast-launch:installed; \
elif test -f \"$2\" && test -x \"$2\" && test -O \"$2\"; then echo kacast-launch:copied; \
else echo kacast-launch:absent; fi";

/// Writes stdin to `$1` (the copy's path) atomically. `$2` is the expected
/// size, `$3` a nonce unique to this run. The bytes go to a temporary name
/// unique per run (`$$` is unique on the node, the nonce across masters), so
/// concurrent runs never write the same file; noclobber (`set -C`) refuses to
/// write through anything already at that name. The size check matters: a
/// connection cut mid-copy is an EOF for `cat`, and a truncated binary must
/// never get the final name. `mv` is a rename, atomic, and leaves a copy that
/// is already running untouched (its inode lives on), so a second master
/// replacing it with identical bytes does no harm.
const COPY: &str = "set -C; umask 077; t=\"$1.part.$$.$3\"; \
if cat >\"$t\" && test \"$(wc -c <\"$t\")\" -eq \"$2\" && chmod 755 \"$t\" && mv -f \"$t\" \"$1\"; \
then exit 0; fi; rm -f \"$t\"; echo \"kacast-launch: copying the agent to $1 failed\" >&2; exit 1";

/// The watchdog wrapper: runs `"$@"` (the agent) so that it ends with the
/// connector's session, in both directions.
///
/// - Master gone: the connector process (ssh) is the only holder of the write
///   end of the remote command's stdin. Kadeploy killing its local process
///   tree, the master dying, the connection dropping, or the master closing
///   the pipe on purpose all end that stdin with EOF. A background `cat` reads
///   it (from a copy on fd 3: a background job's own stdin is /dev/null);
///   when it returns, the watchdog sends the agent SIGTERM, says so on stderr
///   (with SIGPIPE ignored: there may be nobody left to read it), and sends
///   SIGKILL after a grace period (an agent that ignores SIGTERM still goes;
///   the grace `sleep` writes nowhere, so it never holds the session open).
///   The agent is still a child of the wrapper (the wrapper is blocked in
///   `wait` for it), so its pid cannot have been reused; the one window is
///   the agent exiting on its own at the very instant the master goes away,
///   where the pid would have to be recycled within microseconds.
/// - Agent done first: the wrapper's `wait` returns its status; the wrapper
///   kills the watchdog (its own child, not yet reaped: pid safe), reaps it and
///   exits with the agent's status, which becomes the connector's exit status.
///   Nothing left holds the session's stdout or stderr (the agent has no copy
///   of fd 3, `cat` writes to /dev/null), so the session ends at once; the
///   orphaned `cat` gets its EOF when the session closes and exits.
///
/// The agent's stdin is /dev/null: it must never eat the watchdog's input.
/// Once both children run, the wrapper's own stdout and stderr go to
/// /dev/null: `sh` reports a child killed by a signal ("Terminated") on
/// stderr, and with the master gone that write would raise SIGPIPE and kill
/// the wrapper before it could reap the agent and stop the watchdog.
const WRAPPER: &str = "exec 3<&0 </dev/null; \"$@\" 3<&- & a=$!; \
{ cat <&3 >/dev/null 2>&1; trap '' PIPE; kill -TERM $a 2>/dev/null; \
echo \"kacast-launch: the master closed the connection: agent stopped\" >&2; \
sleep 5 >/dev/null 2>&1; kill -KILL $a 2>/dev/null; } & w=$!; \
exec 3<&- >/dev/null 2>&1; wait $a; s=$?; kill -KILL $w 2>/dev/null; wait $w 2>/dev/null; exit $s";

/// Shell-quotes `args` for the remote shell: each becomes exactly one word,
/// whatever it holds. Plain words stay readable (`kacast client --name n1`);
/// anything else is single-quoted, a `'` inside written as `'\''`.
pub fn quote_remote(args: &[String]) -> String {
    args.iter().map(|a| quote_one(a)).collect::<Vec<_>>().join(" ")
}

fn quote_one(arg: &str) -> String {
    // `=` is left out: a first word `A=B` would be an assignment, not a command.
    let plain = |c: char| {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ':' | ',' | '+' | '@' | '%')
    };
    if !arg.is_empty() && arg.chars().all(plain) {
        return arg.to_string();
    }
    format!("'{}'", arg.replace('\'', "'\\''"))
}

/// `sh -c SCRIPT NAME ARGS…`, quoted for the remote shell.
fn sh_script(script: &str, name: &str, args: &[String]) -> String {
    let mut argv = vec!["sh".to_string(), "-c".to_string(), script.to_string(), name.to_string()];
    argv.extend_from_slice(args);
    quote_remote(&argv)
}

/// Remote command checking for the agent at `agent` or its copy at `copy`.
pub(crate) fn probe(agent: &str, copy: &str) -> String {
    sh_script(PROBE, "kacast-probe", &[agent.to_string(), copy.to_string()])
}

/// Remote command writing its stdin, `size` bytes, to `copy`.
pub(crate) fn copy(copy: &str, size: u64, nonce: &str) -> String {
    sh_script(COPY, "kacast-copy", &[copy.to_string(), size.to_string(), nonce.to_string()])
}

/// Remote command running `argv` under the watchdog wrapper.
pub(crate) fn wrapped(argv: &[String]) -> String {
    sh_script(WRAPPER, "kacast-launch", argv)
}

/// The watchdog wrapper itself, for a local check of its behaviour.
#[cfg(test)]
pub(crate) fn wrapper_script() -> &'static str {
    WRAPPER
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Read};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn plain_words_stay_readable() {
        assert_eq!(
            quote_remote(&s(&["kacast", "client", "--name", "n1", "10.0.0.1:30765"])),
            "kacast client --name n1 10.0.0.1:30765"
        );
        assert_eq!(quote_remote(&s(&["", "a b", "it's", "A=B", "~"])), "'' 'a b' 'it'\\''s' 'A=B' '~'");
    }

    /// Whatever the bytes, `sh` gives back exactly the words that were quoted.
    #[test]
    fn quoting_survives_a_shell() {
        let args = s(&[
            "plain",
            "",
            "two words",
            "it's",
            "\"dq\"",
            "$HOME `id` $(id) \\ ; | & * ? [a] ~ # !",
            "tab\there",
            "new\nline",
            "-n",
            "é ü",
        ]);
        let mut script = quote_remote(&s(&["printf", "%s\\0"]));
        script.push(' ');
        script.push_str(&quote_remote(&args));
        let out = Command::new("sh").arg("-c").arg(&script).output().expect("run sh");
        assert!(out.status.success());
        let words: Vec<String> =
            out.stdout.split(|&b| b == 0).map(|w| String::from_utf8_lossy(w).into_owned()).collect();
        assert_eq!(&words[..args.len()], &args[..]);
    }

    /// Runs the wrapper locally, as the remote login shell would.
    fn run_wrapped(argv: &[&str]) -> std::process::Child {
        Command::new("sh")
            .arg("-c")
            .arg(wrapped(&s(argv)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the wrapper")
    }

    fn wait_deadline(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                return Some(st);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The agent's own end ends the wrapper at once, with its status, though
    /// the master keeps stdin open; the agent never sees the watchdog's input.
    #[test]
    fn agent_exit_ends_the_wrapper_with_its_status() {
        let mut child =
            run_wrapped(&["sh", "-c", "read x && echo \"stole $x\"; echo out; echo err >&2; exit 7"]);
        let _stdin_kept_open = child.stdin.take();
        let status =
            wait_deadline(&mut child, Duration::from_secs(10)).expect("wrapper ended with its agent");
        assert_eq!(status.code(), Some(7));
        let mut out = String::new();
        child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        assert_eq!(out, "out\n");
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert_eq!(err, "err\n");
    }

    /// EOF on stdin (the master gone) stops the agent and the wrapper.
    #[test]
    fn stdin_eof_stops_the_agent() {
        let mut child = run_wrapped(&["sleep", "1000"]);
        drop(child.stdin.take());
        let status = wait_deadline(&mut child, Duration::from_secs(10)).expect("wrapper ended on EOF");
        assert_eq!(status.code(), Some(128 + libc::SIGTERM));
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert!(err.contains("master closed the connection"), "{err}");
    }

    /// With the master gone nobody reads the session's output either: the
    /// wrapper must still reap the agent and stop the watchdog, not die of
    /// SIGPIPE on its way (sh reports "Terminated" on stderr).
    #[test]
    fn wrapper_survives_a_closed_output() {
        let mut child = run_wrapped(&["sleep", "1000"]);
        drop(child.stdout.take());
        drop(child.stderr.take());
        drop(child.stdin.take());
        let status = wait_deadline(&mut child, Duration::from_secs(10)).expect("wrapper ended on EOF");
        assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status:?}");
    }

    /// An agent that ignores SIGTERM is killed after the grace period.
    #[test]
    fn stubborn_agent_is_killed() {
        let mut child = run_wrapped(&["sh", "-c", "trap '' TERM; echo deaf; exec sleep 1000"]);
        // The master goes only once the agent ignores SIGTERM: before that,
        // SIGTERM alone would stop it.
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line, "deaf\n");
        drop(child.stdin.take());
        let status = wait_deadline(&mut child, Duration::from_secs(20)).expect("wrapper ended after SIGKILL");
        assert_eq!(status.code(), Some(128 + libc::SIGKILL));
    }

    #[test]
    fn wrapper_is_one_line() {
        // A newline inside single quotes breaks csh, a possible login shell.
        for script in [PROBE, COPY, wrapper_script()] {
            assert!(!script.contains('\n'));
        }
    }
}
