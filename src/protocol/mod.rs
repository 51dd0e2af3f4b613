//! The kacast wire protocol: frames and their encoding, with no I/O.
//!
//! Every connection (control, data) and every discovery datagram carries frames:
//! a fixed 6-byte header (`kind`, `flags`, big-endian payload length) followed by
//! the payload. Each kind has its own maximum payload size, checked on the header
//! alone, so a peer can never make us allocate more than that maximum. The first
//! frame on every connection is a hello carrying [`MAGIC`] and [`VERSION`], which is
//! how garbage and version mismatches are told apart from a merely malformed frame.
//! `docs/PROTOCOL.md` is the reference for the byte layout.

mod error;
mod frame;
mod wire;

pub use error::ProtocolError;
pub use frame::{
    Assign, End, Frame, Header, Hello, Kind, NodeState, Offer, Report, Role, Status, FLAG_TAG, HEADER_LEN,
    NONCE_LEN, TAG_LEN,
};
pub use wire::{is_other_session, other_session, validate_session};

/// Opens every hello payload: a stranger speaking another protocol on our port is
/// recognised on its first bytes.
pub const MAGIC: [u8; 6] = *b"KACAST";

/// Bumped on any incompatible change of a frame layout. Peers of another version
/// are refused with both numbers in the message.
pub const VERSION: u16 = 3;

/// Control frames carry names and reasons only; 64 KiB is far above any real one
/// and small enough to buffer without thought.
pub const MAX_CONTROL_PAYLOAD: u32 = 64 * 1024;

/// Data frames carry one chunk of the stream. Senders use at most [`crate::chain::CHUNK_SIZE`];
/// receivers accept up to 4 MiB so a future sender may use larger chunks without a
/// version bump, while a hostile length still cannot make us allocate more.
pub const MAX_DATA_PAYLOAD: u32 = 4 * 1024 * 1024;

/// Longest TCP congestion control name `Assign` carries: Linux's
/// `TCP_CA_NAME_MAX` is 16, with its terminating NUL.
pub const MAX_CONGESTION: usize = 15;

/// Discovery frames travel as one UDP datagram each; 512 bytes never fragments.
pub const MAX_DATAGRAM: usize = 512;

/// Well-known TCP port of a server's control listener (ka-deploy used 30765 too).
/// A second session on the same host falls back to an ephemeral port, which the
/// discovery offer announces.
pub const DEFAULT_CONTROL_PORT: u16 = 30765;

/// UDP port servers listen on for discovery broadcasts. Distinct from ka-deploy's
/// 4957 so both can run on one host; several kacast servers share it through
/// SO_REUSEADDR, and each answers only its own session name.
pub const DISCOVERY_PORT: u16 = 30766;
