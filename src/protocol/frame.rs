//! Frame layouts. `Header::parse` validates the 6 header bytes alone (kind, flags,
//! length against the kind's maximum) so a reader knows the payload is acceptable
//! before reading or allocating it; `Frame::check` then tells whether a buffer holds
//! a whole frame and `Frame::parse` decodes one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::wire::{put_string, validate_session, Fields};
use super::{
    ProtocolError, MAGIC, MAX_CONGESTION, MAX_CONTROL_PAYLOAD, MAX_DATAGRAM, MAX_DATA_PAYLOAD, VERSION,
};

/// `kind` (u8), `flags` (u8, reserved, must be 0), payload length (u32 BE).
pub const HEADER_LEN: usize = 6;

const MAX_NAME: usize = 255;
const MAX_SESSION: usize = 64;
const MAX_REASON: usize = 4096;
/// A node relays to at most this many children (`--arity` 1..4, with room to grow).
const MAX_CHILDREN: usize = 64;

/// Frame kinds, grouped by the connection they travel on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    // control connection (node <-> server)
    Hello = 0x01,
    Welcome = 0x02,
    Refuse = 0x03,
    Assign = 0x04,
    Progress = 0x05,
    Report = 0x06,
    Bye = 0x07,
    Abort = 0x08,
    Reattach = 0x09,
    Detach = 0x0a,
    Challenge = 0x0b,
    Proof = 0x0c,
    /// A node's live status line on its status connection.
    Status = 0x0d,
    // data connection (child <- parent)
    DataHello = 0x10,
    Data = 0x11,
    End = 0x12,
    // discovery datagrams
    Discover = 0x20,
    Offer = 0x21,
}

impl Kind {
    pub fn from_u8(b: u8) -> Result<Kind, ProtocolError> {
        use Kind::*;
        Ok(match b {
            0x01 => Hello,
            0x02 => Welcome,
            0x03 => Refuse,
            0x04 => Assign,
            0x05 => Progress,
            0x06 => Report,
            0x07 => Bye,
            0x08 => Abort,
            0x09 => Reattach,
            0x0a => Detach,
            0x0b => Challenge,
            0x0c => Proof,
            0x0d => Status,
            0x10 => DataHello,
            0x11 => Data,
            0x12 => End,
            0x20 => Discover,
            0x21 => Offer,
            other => return Err(ProtocolError::UnknownKind(other)),
        })
    }

    pub fn name(self) -> &'static str {
        use Kind::*;
        match self {
            Hello => "hello",
            Welcome => "welcome",
            Refuse => "refuse",
            Assign => "assign",
            Progress => "progress",
            Report => "report",
            Bye => "bye",
            Abort => "abort",
            Reattach => "reattach",
            Detach => "detach",
            Challenge => "challenge",
            Proof => "proof",
            Status => "status",
            DataHello => "data-hello",
            Data => "data",
            End => "end",
            Discover => "discover",
            Offer => "offer",
        }
    }

    /// The largest payload a peer may announce for this kind.
    pub fn max_payload(self) -> u32 {
        match self {
            Kind::Data => MAX_DATA_PAYLOAD,
            Kind::Discover | Kind::Offer => (MAX_DATAGRAM - HEADER_LEN) as u32,
            _ => MAX_CONTROL_PAYLOAD,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub len: u32,
    /// An authentication tag of [`TAG_LEN`] bytes follows the payload.
    pub tagged: bool,
}

/// Header flag: the frame carries an authentication tag (keyed sessions).
pub const FLAG_TAG: u8 = 0x01;
/// Length of the authentication tag after a tagged frame's payload: 128 bits of
/// a keyed BLAKE3 hash, beyond forgery for the length of any deployment.
pub const TAG_LEN: usize = 16;
/// Length of handshake nonces and proofs.
pub const NONCE_LEN: usize = 32;

impl Header {
    /// Validates a header on its own bytes: known kind, no reserved flag, length
    /// within the kind's maximum.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<Header, ProtocolError> {
        let kind = Kind::from_u8(b[0])?;
        if b[1] & !FLAG_TAG != 0 {
            return Err(ProtocolError::Flags { kind: kind.name(), flags: b[1] });
        }
        let len = u32::from_be_bytes([b[2], b[3], b[4], b[5]]);
        if len > kind.max_payload() {
            return Err(ProtocolError::TooLong { kind: kind.name(), len, max: kind.max_payload() });
        }
        Ok(Header { kind, len, tagged: b[1] & FLAG_TAG != 0 })
    }

    pub fn encode(kind: Kind, len: usize) -> [u8; HEADER_LEN] {
        Header { kind, len: len as u32, tagged: false }.to_bytes()
    }

    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let l = self.len.to_be_bytes();
        [self.kind as u8, if self.tagged { FLAG_TAG } else { 0 }, l[0], l[1], l[2], l[3]]
    }
}

/// What a connecting peer wants from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A node that wants to receive the stream.
    Node = 1,
    /// `kacast go`: start the session now with the nodes already joined.
    Go = 2,
    /// A node that only reports its result for the session, without a place
    /// in the chain: it withdraws (its disk could not be prepared) or reports
    /// the end of its install.
    Report = 3,
    /// A node's status connection for a whole install: it names the install
    /// (the sessions' base name) and sends [`Status`] lines until it ends,
    /// across the install's sessions.
    Status = 4,
}

/// Where a node stands in its install, as its status lines say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// The first line of a status connection: its text is the node's hardware
    /// addresses, space-separated, so the golden node can switch the node's
    /// PXE configuration once it is a clone.
    Hello = 1,
    Running = 2,
    Done = 3,
    Failed = 4,
}

/// One live status line from a node: the step it is in and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub state: NodeState,
    pub step: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub session: String,
    pub name: String,
    pub role: Role,
    /// TCP port the node listens on for its own children (0 for `go`).
    pub data_port: u16,
    /// The node's handshake nonce when it holds the session key.
    pub nonce: Option<[u8; NONCE_LEN]>,
}

/// The server's answer to a discovery broadcast for its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub session: String,
    pub control_port: u16,
}

/// The node's place in the chain, sent when the session starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assign {
    /// 1-based position in the chain order (the server is 0).
    pub index: u32,
    pub total: u32,
    /// Where to fetch the stream from: the server or the parent node.
    pub upstream: SocketAddr,
    /// Node ids that will connect to this node for the stream.
    pub children: Vec<u32>,
    /// The server's data address: where to resume when an upstream no longer
    /// holds this node's offset.
    pub source: SocketAddr,
    /// Stream length when the server knows it (a file input), for progress.
    pub stream_len: Option<u64>,
    /// The TCP congestion control this node sends to its children with;
    /// `None` keeps the node's default.
    pub congestion: Option<String>,
}

/// A node's outcome, sent once on its control connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub bytes: u64,
    pub hash_ok: bool,
    /// Exit status of the `-e` command, when there is one and it exited.
    pub sink_status: Option<i32>,
    pub duration_ms: u64,
    pub error: Option<String>,
}

/// End of stream: the total length and BLAKE3 hash every node verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    pub length: u64,
    pub hash: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Welcome {
        node_id: u32,
    },
    Refuse {
        reason: String,
    },
    Assign(Assign),
    /// Heartbeat with progress: from a node, bytes received, bytes its sink has
    /// taken, and the total time its sink waited for data (a sink that never
    /// waits is the chain's bottleneck); from the server, bytes sent (and 0s).
    Progress {
        received: u64,
        written: u64,
        idle_ms: u64,
    },
    Report(Report),
    Bye,
    Abort {
        reason: String,
    },
    /// Server to node: your upstream is gone, resume from this one.
    Reattach {
        upstream: SocketAddr,
    },
    /// Server to node: stop relaying to this child (dead or done).
    Detach {
        node_id: u32,
    },
    DataHello {
        session: String,
        node_id: u32,
        offset: u64,
        nonce: Option<[u8; NONCE_LEN]>,
    },
    /// Acceptor to connector, keyed sessions: its nonce and its proof of the key.
    Challenge {
        nonce: [u8; NONCE_LEN],
        proof: [u8; NONCE_LEN],
    },
    /// Connector to acceptor: its proof of the key.
    Proof {
        proof: [u8; NONCE_LEN],
    },
    Data(Vec<u8>),
    End(End),
    Discover {
        session: String,
    },
    Offer(Offer),
    Status(Status),
}

impl Frame {
    pub fn kind(&self) -> Kind {
        match self {
            Frame::Hello(_) => Kind::Hello,
            Frame::Welcome { .. } => Kind::Welcome,
            Frame::Refuse { .. } => Kind::Refuse,
            Frame::Assign(_) => Kind::Assign,
            Frame::Progress { .. } => Kind::Progress,
            Frame::Report(_) => Kind::Report,
            Frame::Bye => Kind::Bye,
            Frame::Abort { .. } => Kind::Abort,
            Frame::Reattach { .. } => Kind::Reattach,
            Frame::Detach { .. } => Kind::Detach,
            Frame::Challenge { .. } => Kind::Challenge,
            Frame::Proof { .. } => Kind::Proof,
            Frame::DataHello { .. } => Kind::DataHello,
            Frame::Data(_) => Kind::Data,
            Frame::End(_) => Kind::End,
            Frame::Discover { .. } => Kind::Discover,
            Frame::Offer(_) => Kind::Offer,
            Frame::Status(_) => Kind::Status,
        }
    }

    /// `Ok(Some(n))` when `buf` starts with a whole frame of `n` bytes, `Ok(None)`
    /// when more bytes are needed, an error as soon as the header is invalid.
    pub fn check(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        let Some(head) = buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let header = Header::parse(head.try_into().expect("slice of HEADER_LEN"))?;
        let total = HEADER_LEN + header.len as usize;
        Ok((buf.len() >= total).then_some(total))
    }

    /// Decodes one whole frame (as measured by [`Frame::check`]).
    pub fn parse(buf: &[u8]) -> Result<Frame, ProtocolError> {
        let head: &[u8; HEADER_LEN] = buf
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(ProtocolError::Truncated { kind: "any", field: "header" })?;
        let header = Header::parse(head)?;
        let payload = &buf[HEADER_LEN..];
        if payload.len() < header.len as usize {
            return Err(ProtocolError::Truncated { kind: header.kind.name(), field: "payload" });
        }
        if payload.len() > header.len as usize {
            return Err(ProtocolError::Trailing {
                kind: header.kind.name(),
                extra: payload.len() - header.len as usize,
            });
        }
        Frame::parse_payload(header.kind, payload)
    }

    pub fn parse_payload(kind: Kind, payload: &[u8]) -> Result<Frame, ProtocolError> {
        let mut f = Fields::new(kind.name(), payload);
        let frame = match kind {
            Kind::Hello => {
                greeting(&mut f)?;
                let session = session(&mut f)?;
                let name = f.string("name", MAX_NAME)?;
                let role = match f.u8("role")? {
                    1 => Role::Node,
                    2 => Role::Go,
                    3 => Role::Report,
                    4 => Role::Status,
                    r => return Err(f.bad("role", r as u64)),
                };
                let data_port = f.u16("data_port")?;
                let nonce = nonce(&mut f)?;
                Frame::Hello(Hello { session, name, role, data_port, nonce })
            }
            Kind::Welcome => {
                greeting(&mut f)?;
                Frame::Welcome { node_id: f.u32("node_id")? }
            }
            Kind::Refuse => Frame::Refuse { reason: f.string("reason", MAX_REASON)? },
            Kind::Assign => {
                let index = f.u32("index")?;
                let total = f.u32("total")?;
                let upstream = socket_addr(&mut f, "upstream")?;
                let n = f.u16("children")? as usize;
                if n > MAX_CHILDREN {
                    return Err(f.bad("children", n as u64));
                }
                let children = (0..n).map(|_| f.u32("child")).collect::<Result<Vec<_>, _>>()?;
                let source = socket_addr(&mut f, "source")?;
                let stream_len = match f.u64("stream_len")? {
                    u64::MAX => None,
                    n => Some(n),
                };
                let congestion = Some(f.string("congestion", MAX_CONGESTION)?).filter(|c| !c.is_empty());
                Frame::Assign(Assign { index, total, upstream, children, source, stream_len, congestion })
            }
            Kind::Progress => Frame::Progress {
                received: f.u64("received")?,
                written: f.u64("written")?,
                idle_ms: f.u64("idle_ms")?,
            },
            Kind::Report => {
                let bytes = f.u64("bytes")?;
                let hash_ok = boolean(&mut f, "hash_ok")?;
                let has_status = boolean(&mut f, "has_status")?;
                let status = f.i32("sink_status")?;
                let duration_ms = f.u64("duration_ms")?;
                let error = f.string("error", MAX_REASON)?;
                Frame::Report(Report {
                    bytes,
                    hash_ok,
                    sink_status: has_status.then_some(status),
                    duration_ms,
                    error: (!error.is_empty()).then_some(error),
                })
            }
            Kind::Bye => Frame::Bye,
            Kind::Abort => Frame::Abort { reason: f.string("reason", MAX_REASON)? },
            Kind::Reattach => Frame::Reattach { upstream: socket_addr(&mut f, "upstream")? },
            Kind::Detach => Frame::Detach { node_id: f.u32("node_id")? },
            Kind::Challenge => Frame::Challenge { nonce: f.array("nonce")?, proof: f.array("proof")? },
            Kind::Proof => Frame::Proof { proof: f.array("proof")? },
            Kind::Status => {
                let state = match f.u8("state")? {
                    1 => NodeState::Hello,
                    2 => NodeState::Running,
                    3 => NodeState::Done,
                    4 => NodeState::Failed,
                    s => return Err(f.bad("state", s as u64)),
                };
                let step = f.string("step", MAX_NAME)?;
                let text = f.string("text", MAX_REASON)?;
                Frame::Status(Status { state, step, text })
            }
            Kind::DataHello => {
                greeting(&mut f)?;
                let session = session(&mut f)?;
                let node_id = f.u32("node_id")?;
                let offset = f.u64("offset")?;
                let nonce = nonce(&mut f)?;
                Frame::DataHello { session, node_id, offset, nonce }
            }
            Kind::Data => return Ok(Frame::Data(payload.to_vec())),
            Kind::End => {
                let length = f.u64("length")?;
                let hash = f.array::<32>("hash")?;
                Frame::End(End { length, hash })
            }
            Kind::Discover => {
                greeting(&mut f)?;
                Frame::Discover { session: session(&mut f)? }
            }
            Kind::Offer => {
                greeting(&mut f)?;
                let session = session(&mut f)?;
                let control_port = f.u16("control_port")?;
                Frame::Offer(Offer { session, control_port })
            }
        };
        f.finish()?;
        Ok(frame)
    }

    /// One frame of every kind (two of some), for tests and fuzz seeds.
    #[doc(hidden)]
    pub fn samples() -> Vec<Frame> {
        vec![
            Frame::Hello(Hello {
                session: "kainstall".into(),
                name: "n1".into(),
                role: Role::Node,
                data_port: 4000,
                nonce: Some([7; 32]),
            }),
            Frame::Hello(Hello {
                session: "s".into(),
                name: String::new(),
                role: Role::Go,
                data_port: 0,
                nonce: None,
            }),
            Frame::Challenge { nonce: [1; 32], proof: [2; 32] },
            Frame::Proof { proof: [3; 32] },
            Frame::Welcome { node_id: 7 },
            Frame::Refuse { reason: "late".into() },
            Frame::Assign(Assign {
                index: 3,
                total: 8,
                upstream: "[::1]:9".parse().unwrap(),
                children: vec![4, 5],
                source: "10.0.0.1:1".parse().unwrap(),
                stream_len: Some(10),
                congestion: Some("cubic".into()),
            }),
            Frame::Assign(Assign {
                index: 1,
                total: 1,
                upstream: "10.0.0.1:30764".parse().unwrap(),
                children: vec![],
                source: "[fe80::1]:2".parse().unwrap(),
                stream_len: None,
                congestion: None,
            }),
            Frame::Progress { received: u64::MAX - 1, written: 3, idle_ms: 9 },
            Frame::Reattach { upstream: "192.168.1.2:40000".parse().unwrap() },
            Frame::Detach { node_id: 9 },
            Frame::Report(Report {
                bytes: 5,
                hash_ok: true,
                sink_status: Some(-1),
                duration_ms: 9,
                error: None,
            }),
            Frame::Report(Report {
                bytes: 0,
                hash_ok: false,
                sink_status: None,
                duration_ms: 0,
                error: Some("tar: x".into()),
            }),
            Frame::Bye,
            Frame::Abort { reason: "server stopping".into() },
            Frame::DataHello { session: "a.b-c_d".into(), node_id: 1, offset: 42, nonce: None },
            Frame::Data(vec![1, 2, 3]),
            Frame::Data(vec![]),
            Frame::End(End { length: 3, hash: [9; 32] }),
            Frame::Discover { session: "getstage2".into() },
            Frame::Offer(Offer { session: "getstage2".into(), control_port: 30765 }),
            Frame::Status(Status {
                state: NodeState::Hello,
                step: String::new(),
                text: "52:54:00:00:00:01".into(),
            }),
            Frame::Status(Status {
                state: NodeState::Running,
                step: "formatting".into(),
                text: "mkfs.ext4 /dev/sda1".into(),
            }),
        ]
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::new();
        match self {
            Frame::Hello(h) => {
                put_greeting(&mut p);
                put_string(&mut p, &h.session, MAX_SESSION);
                put_string(&mut p, &h.name, MAX_NAME);
                p.push(h.role as u8);
                p.extend_from_slice(&h.data_port.to_be_bytes());
                put_nonce(&mut p, h.nonce);
            }
            Frame::Welcome { node_id } => {
                put_greeting(&mut p);
                p.extend_from_slice(&node_id.to_be_bytes());
            }
            Frame::Refuse { reason } | Frame::Abort { reason } => put_string(&mut p, reason, MAX_REASON),
            Frame::Assign(a) => {
                p.extend_from_slice(&a.index.to_be_bytes());
                p.extend_from_slice(&a.total.to_be_bytes());
                put_socket_addr(&mut p, a.upstream);
                let children = &a.children[..a.children.len().min(MAX_CHILDREN)];
                p.extend_from_slice(&(children.len() as u16).to_be_bytes());
                for c in children {
                    p.extend_from_slice(&c.to_be_bytes());
                }
                put_socket_addr(&mut p, a.source);
                p.extend_from_slice(&a.stream_len.unwrap_or(u64::MAX).to_be_bytes());
                put_string(&mut p, a.congestion.as_deref().unwrap_or(""), MAX_CONGESTION);
            }
            Frame::Progress { received, written, idle_ms } => {
                p.extend_from_slice(&received.to_be_bytes());
                p.extend_from_slice(&written.to_be_bytes());
                p.extend_from_slice(&idle_ms.to_be_bytes());
            }
            Frame::Reattach { upstream } => put_socket_addr(&mut p, *upstream),
            Frame::Detach { node_id } => p.extend_from_slice(&node_id.to_be_bytes()),
            Frame::Report(r) => {
                p.extend_from_slice(&r.bytes.to_be_bytes());
                p.push(r.hash_ok as u8);
                p.push(r.sink_status.is_some() as u8);
                p.extend_from_slice(&r.sink_status.unwrap_or(0).to_be_bytes());
                p.extend_from_slice(&r.duration_ms.to_be_bytes());
                put_string(&mut p, r.error.as_deref().unwrap_or(""), MAX_REASON);
            }
            Frame::Bye => {}
            Frame::Challenge { nonce, proof } => {
                p.extend_from_slice(nonce);
                p.extend_from_slice(proof);
            }
            Frame::Proof { proof } => p.extend_from_slice(proof),
            Frame::DataHello { session, node_id, offset, nonce } => {
                put_greeting(&mut p);
                put_string(&mut p, session, MAX_SESSION);
                p.extend_from_slice(&node_id.to_be_bytes());
                p.extend_from_slice(&offset.to_be_bytes());
                put_nonce(&mut p, *nonce);
            }
            Frame::Data(bytes) => p.extend_from_slice(bytes),
            Frame::End(e) => {
                p.extend_from_slice(&e.length.to_be_bytes());
                p.extend_from_slice(&e.hash);
            }
            Frame::Discover { session } => {
                put_greeting(&mut p);
                put_string(&mut p, session, MAX_SESSION);
            }
            Frame::Offer(o) => {
                put_greeting(&mut p);
                put_string(&mut p, &o.session, MAX_SESSION);
                p.extend_from_slice(&o.control_port.to_be_bytes());
            }
            Frame::Status(s) => {
                p.push(s.state as u8);
                put_string(&mut p, &s.step, MAX_NAME);
                put_string(&mut p, &s.text, MAX_REASON);
            }
        }
        let mut out = Vec::with_capacity(HEADER_LEN + p.len());
        out.extend_from_slice(&Header::encode(self.kind(), p.len()));
        out.extend_from_slice(&p);
        out
    }
}

/// A key flag then 32 bytes (zero without a key), so the layout is fixed.
fn put_nonce(p: &mut Vec<u8>, nonce: Option<[u8; NONCE_LEN]>) {
    p.push(nonce.is_some() as u8);
    p.extend_from_slice(&nonce.unwrap_or([0; NONCE_LEN]));
}

fn nonce(f: &mut Fields<'_>) -> Result<Option<[u8; NONCE_LEN]>, ProtocolError> {
    let keyed = boolean(f, "keyed")?;
    let nonce = f.array::<NONCE_LEN>("nonce")?;
    Ok(keyed.then_some(nonce))
}

fn put_greeting(p: &mut Vec<u8>) {
    p.extend_from_slice(&MAGIC);
    p.extend_from_slice(&VERSION.to_be_bytes());
}

/// Magic then version, checked before anything else so that a stranger or a peer
/// of another version gets the right error rather than a confusing field error.
fn greeting(f: &mut Fields<'_>) -> Result<(), ProtocolError> {
    let magic = f.array::<6>("magic")?;
    if magic != MAGIC {
        return Err(ProtocolError::BadMagic(magic));
    }
    let peer = f.u16("version")?;
    if peer != VERSION {
        return Err(ProtocolError::Version { peer, ours: VERSION });
    }
    Ok(())
}

fn session(f: &mut Fields<'_>) -> Result<String, ProtocolError> {
    let s = f.string("session", MAX_SESSION)?;
    validate_session(&s)?;
    Ok(s)
}

fn boolean(f: &mut Fields<'_>, field: &'static str) -> Result<bool, ProtocolError> {
    match f.u8(field)? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(f.bad(field, v as u64)),
    }
}

fn put_socket_addr(p: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            p.push(4);
            p.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            p.push(6);
            p.extend_from_slice(&ip.octets());
        }
    }
    p.extend_from_slice(&addr.port().to_be_bytes());
}

fn socket_addr(f: &mut Fields<'_>, field: &'static str) -> Result<SocketAddr, ProtocolError> {
    let ip = match f.u8(field)? {
        4 => IpAddr::V4(Ipv4Addr::from(f.array::<4>(field)?)),
        6 => IpAddr::V6(Ipv6Addr::from(f.array::<16>(field)?)),
        fam => return Err(f.bad(field, fam as u64)),
    };
    Ok(SocketAddr::new(ip, f.u16(field)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_round_trips() {
        for frame in Frame::samples() {
            let bytes = frame.encode();
            assert_eq!(Frame::check(&bytes), Ok(Some(bytes.len())), "{frame:?}");
            assert_eq!(Frame::parse(&bytes).as_ref(), Ok(&frame));
            // every strict prefix is "need more", never an error or a frame
            for cut in 0..bytes.len() {
                assert_eq!(Frame::check(&bytes[..cut]), Ok(None), "{frame:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn oversized_length_is_refused_from_the_header_alone() {
        let mut head = Header::encode(Kind::Hello, 0);
        head[2..6].copy_from_slice(&(MAX_CONTROL_PAYLOAD + 1).to_be_bytes());
        assert!(matches!(Frame::check(&head), Err(ProtocolError::TooLong { kind: "hello", .. })));
        let mut data = Header::encode(Kind::Data, 0);
        data[2..6].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(Header::parse(&data), Err(ProtocolError::TooLong { kind: "data", .. })));
    }

    #[test]
    fn garbage_and_versions_get_their_own_errors() {
        assert_eq!(Frame::check(b"GET / HTTP/1.1\r\n"), Err(ProtocolError::UnknownKind(b'G')));
        let mut hello = Frame::Discover { session: "x".into() }.encode();
        hello[HEADER_LEN + 6..HEADER_LEN + 8].copy_from_slice(&9u16.to_be_bytes());
        assert_eq!(Frame::parse(&hello), Err(ProtocolError::Version { peer: 9, ours: VERSION }));
        let mut magic = Frame::Discover { session: "x".into() }.encode();
        magic[HEADER_LEN] = b'X';
        assert!(matches!(Frame::parse(&magic), Err(ProtocolError::BadMagic(_))));
        let mut flags = Frame::Bye.encode();
        flags[1] = 0x80;
        assert!(matches!(Frame::parse(&flags), Err(ProtocolError::Flags { .. })));
    }

    #[test]
    fn field_errors_name_the_field() {
        let mut bye = Frame::Bye.encode();
        bye[5] = 1;
        bye.push(0);
        assert_eq!(Frame::parse(&bye), Err(ProtocolError::Trailing { kind: "bye", extra: 1 }));
        let mut report =
            Frame::Report(Report { bytes: 0, hash_ok: true, sink_status: None, duration_ms: 0, error: None })
                .encode();
        report[HEADER_LEN + 8] = 7;
        assert_eq!(
            Frame::parse(&report),
            Err(ProtocolError::BadValue { kind: "report", field: "hash_ok", value: 7 })
        );
        let bad_session = {
            let mut p = Vec::new();
            put_greeting(&mut p);
            put_string(&mut p, "a b", 64);
            let mut out = Header::encode(Kind::Discover, p.len()).to_vec();
            out.extend(p);
            out
        };
        assert!(matches!(Frame::parse(&bad_session), Err(ProtocolError::Session { .. })));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic sweep; the cargo-fuzz target goes further.
        let mut x: u64 = 0x9E3779B97F4A7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 64) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (x >> (i % 8 * 8)) as u8).collect();
            let _ = Frame::check(&bytes);
            let _ = Frame::parse(&bytes);
            for kind in [Kind::Hello, Kind::Assign, Kind::Report, Kind::Offer] {
                let _ = Frame::parse_payload(kind, &bytes);
            }
        }
    }
}
