//! Finding the server of a session by UDP broadcast, as ka-deploy did, but
//! answering to the asking socket (so many clients may share a host) and letting
//! several servers share the discovery port (each answers only its own session).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tracing::{debug, warn};

use crate::error::{IoContext, Result};
use crate::net::is_timeout;
use crate::protocol::{Frame, Offer, MAX_DATAGRAM};

/// Answers discovery broadcasts for one session until dropped.
pub struct DiscoveryResponder {
    stop: Arc<AtomicBool>,
}

/// How often the responder looks at its stop flag between datagrams.
const STOP_CHECK: Duration = Duration::from_millis(200);

impl DiscoveryResponder {
    /// Answers for `session` on UDP `port`, announcing `control_port`. With a
    /// specific `bind` address, answers leave from that address, since nodes
    /// connect to wherever the answer came from.
    pub fn start(session: &str, port: u16, control_port: u16, bind: IpAddr) -> Result<DiscoveryResponder> {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
            .context(|| "create discovery socket".into())?;
        // Every server on the host gets a copy of each broadcast.
        socket.set_reuse_address(true).context(|| "discovery socket SO_REUSEADDR".into())?;
        socket.set_reuse_port(true).context(|| "discovery socket SO_REUSEPORT".into())?;
        let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
        socket.bind(&any.into()).context(|| format!("bind discovery port UDP {port}"))?;
        let socket: UdpSocket = socket.into();
        let reply = if bind.is_unspecified() {
            socket.try_clone().context(|| "clone discovery socket".into())?
        } else {
            UdpSocket::bind((bind, 0)).context(|| format!("bind discovery replies to {bind}"))?
        };
        socket.set_read_timeout(Some(STOP_CHECK)).context(|| "discovery socket timeout".into())?;
        let stop = Arc::new(AtomicBool::new(false));
        let offer = Frame::Offer(Offer { session: session.to_string(), control_port }).encode();
        let session = session.to_string();
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut buf = [0u8; MAX_DATAGRAM];
            while !flag.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                match Frame::parse(&buf[..n]) {
                    Ok(Frame::Discover { session: s }) if s == session => {
                        debug!("discovery request for '{s}' from {from}: answering");
                        if let Err(e) = reply.send_to(&offer, from) {
                            warn!("cannot answer discovery request from {from}: {e}");
                        }
                    }
                    Ok(Frame::Discover { session: s }) => {
                        debug!("ignoring discovery for session '{s}' from {from}")
                    }
                    Ok(other) => debug!("ignoring {} datagram from {from}", other.kind()),
                    Err(e) => debug!("ignoring malformed datagram from {from}: {e}"),
                }
            }
        });
        drop(thread);
        Ok(DiscoveryResponder { stop })
    }
}

impl Drop for DiscoveryResponder {
    fn drop(&mut self) {
        // The thread sees the flag within STOP_CHECK and exits on its own; the
        // session's end is not held up for it.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Broadcasts a request for `session` and waits up to `wait` for the first
/// offer. Returns the server's control address.
pub fn discover(session: &str, port: u16, wait: Duration) -> Result<Option<SocketAddr>> {
    let socket =
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context(|| "bind discovery client socket".into())?;
    socket.set_broadcast(true).context(|| "enable broadcast".into())?;
    let request = Frame::Discover { session: session.to_string() }.encode();
    let targets = broadcast_targets();
    let mut sent = 0;
    for ip in &targets {
        match socket.send_to(&request, (*ip, port)) {
            Ok(_) => sent += 1,
            Err(e) => debug!("discovery broadcast to {ip}: {e}"),
        }
    }
    if sent == 0 {
        warn!("could not send the discovery broadcast on any interface");
    }
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; MAX_DATAGRAM];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        socket.set_read_timeout(Some(left)).context(|| "discovery timeout".into())?;
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if is_timeout(&e) => return Ok(None),
            Err(e) => return Err(e).context(|| "receive discovery offer".into()),
        };
        match Frame::parse(&buf[..n]) {
            Ok(Frame::Offer(Offer { session: s, control_port })) if s == session => {
                return Ok(Some(SocketAddr::new(from.ip(), control_port)))
            }
            Ok(_) => debug!("ignoring a datagram from {from} that is not an offer for '{session}'"),
            Err(e) => debug!("ignoring malformed datagram from {from}: {e}"),
        }
    }
}

/// The limited broadcast, every interface's own broadcast address (the limited
/// one leaves by one interface only, and a node brings up every link), and the
/// loopback broadcast so a server on the same host answers too.
fn broadcast_targets() -> BTreeSet<Ipv4Addr> {
    let mut out = BTreeSet::from([Ipv4Addr::BROADCAST, Ipv4Addr::new(127, 255, 255, 255)]);
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we walk read-only and free once.
    unsafe {
        if libc::getifaddrs(&mut addrs) != 0 {
            return out;
        }
        let mut cur = addrs;
        while !cur.is_null() {
            let ifa = &*cur;
            let up = ifa.ifa_flags & (libc::IFF_UP as u32) != 0;
            let bcast = ifa.ifa_flags & (libc::IFF_BROADCAST as u32) != 0;
            let dst = ifa.ifa_ifu;
            if up && bcast && !dst.is_null() && (*dst).sa_family as i32 == libc::AF_INET {
                let sin = &*(dst as *const libc::sockaddr_in);
                out.insert(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(addrs);
    }
    out
}
