//! The data plane: how the stream moves through one node of the chain.
//!
//! Each process (the server or a node) holds one bounded [`Ring`] of chunks. One
//! producer fills it (the server's [`source`], a node's [`receive`] from its
//! upstream) and several readers drain it at their own pace: every child's
//! [`forward`] thread (run by the node's [`Relay`]) and the node's local
//! [`sink`]; the first child is written by the producer itself, through its
//! [`Lane`], while its socket keeps up. The ring admits a chunk only when it has
//! room, so the slowest reader sets the pace of its upstream: that is the
//! back-pressure through the chain, and memory stays bounded by `--buffer`
//! whatever the stream length.

mod chunking;
mod forward;
mod image;
mod lane;
mod receive;
mod relay;
mod ring;
mod sink;
mod source;
mod stream;

pub use chunking::{ChunkReport, ChunkSize, Chunking, FAST_PACE, SMALL_CHUNK};
pub use forward::{forward, forward_reader, forward_through};
pub use image::ImageSink;
pub use lane::{Lane, Lent};
pub use receive::{receive, UpstreamError};
pub use relay::{ChildLink, Fallback, Relay, RelayConfig, Reread};
pub use ring::{Finish, Next, Ring, RingReader};
pub use sink::{Sink, SinkGuard, SinkOutcome};
pub use source::{pump, seal};
pub use stream::{SinkMeter, StreamReader};

/// Size of the chunks the server cuts a fast stream into (see [`Chunking`]).
/// Large enough that per-frame costs (a header, a lock, a wake-up) vanish next to
/// the copy, small enough that the pipeline fills quickly (one chunk per hop) and a
/// `--buffer` of a few MiB still holds many chunks.
pub const CHUNK_SIZE: usize = 256 * 1024;

/// Default `--buffer`: 32 MiB holds ~0.3 s of a 1 Gbit/s stream per node, enough to
/// absorb disk hiccups without holding up the chain, like ka-deploy's 35 MiB.
pub const DEFAULT_BUFFER: usize = 32 * 1024 * 1024;
