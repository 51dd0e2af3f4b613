//! Ctrl-C, `kill` or a closed terminal during a command that made things on
//! this machine (`kacast demo`'s copies, `kacast lab`'s namespace, VMs, mount
//! and loop device): they go with the command instead of staying behind.
//!
//! A thread waits for the signals rather than a handler taking them, because
//! the cleanup runs programs and frees memory, which a handler may not do.

use std::io;
use std::sync::{Mutex, MutexGuard};
use std::thread;

use anyhow::{bail, Result};

/// What the shell, `kill` and a closing terminal send.
const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Held by whoever ends the process: the signal's thread from the signal to
/// its exit, or the command's thread from its last word to its exit. The
/// cleanup kills what the command waits for, which wakes it up; this keeps
/// the woken command from reporting a run cut short, or exiting with its
/// own code while the cleanup is half done.
static ENDING: Mutex<()> = Mutex::new(());

fn ending() -> MutexGuard<'static, ()> {
    ENDING.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits here for good if a signal is being handled (its thread ends the
/// process); returns at once otherwise. For a command about to report.
pub fn settle() {
    drop(ending());
}

/// Exits with `code`, unless a signal's cleanup has begun: then that ends
/// the process, with its own code.
pub fn exit(code: i32) -> ! {
    let _last_word = ending();
    std::process::exit(code)
}

/// Blocks the signals in the calling thread (and so in every thread it
/// starts afterwards; std gives spawned programs an empty mask again) and
/// starts the thread that waits for them. On the first one it runs
/// `cleanup`, prints what that returns, and exits as a process killed by the
/// signal would look to a shell: 128 + its number. Signals that come during
/// the cleanup wait until it is over. Call it before the command starts any
/// thread.
pub fn on_interrupt(command: &'static str, cleanup: impl FnOnce() -> String + Send + 'static) -> Result<()> {
    // SAFETY: sigemptyset initialises the set before sigaddset reads it.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    };
    // SAFETY: the set is initialised; the old mask is not asked for.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        bail!("cannot block SIGINT, SIGTERM and SIGHUP: {}", io::Error::from_raw_os_error(rc));
    }
    thread::Builder::new().name("interrupt".into()).spawn(move || {
        let mut signal = 0;
        // SAFETY: the set is initialised and `signal` is a valid out-pointer.
        if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
            return;
        }
        // Never released: this thread ends the process.
        let _ending = ending();
        eprintln!("{command}: interrupted by {}, cleaning up", name(signal));
        let done = cleanup();
        eprintln!("{command}: {done}");
        std::process::exit(128 + signal);
    })?;
    Ok(())
}

fn name(signal: libc::c_int) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}
