//! Small socket helpers that std lacks.

use std::os::fd::RawFd;
use std::time::Duration;

/// A read that ended because its timeout passed (the kernel says EAGAIN or
/// ETIMEDOUT depending on the socket): silence, not a broken connection.
pub fn is_timeout(err: &std::io::Error) -> bool {
    matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

/// Waits until one of `fds` is readable (a connection to accept, data to read,
/// a wake-up) or the timeout passes; returns the index of the first ready one.
/// Used instead of polling loops with sleeps.
pub fn wait_any(fds: &[RawFd], timeout: Duration) -> Option<usize> {
    let mut pfds: Vec<libc::pollfd> =
        fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    loop {
        // SAFETY: `pfds` is a valid array of `pfds.len()` pollfds for the call.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if r > 0 {
            return pfds.iter().position(|p| p.revents != 0);
        }
        if r == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return None;
        }
    }
}

/// Sends on `stream` with the TCP congestion control `name` (`cubic`, `bbr`).
/// The chain's hops are one bulk flow each over links of equal rate, where
/// a hop never makes up the time its link idled: BBR's periodic ProbeRTT
/// (200 ms at a 4-segment window every 10 s) costs every hop that time,
/// while a loss-based control keeps the link full (docs/PERFORMANCE.md).
pub fn set_congestion(stream: &std::net::TcpStream, name: &str) -> std::io::Result<()> {
    socket2::SockRef::from(stream).set_tcp_congestion(name.as_bytes())
}
