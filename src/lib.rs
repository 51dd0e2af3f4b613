//! kacast clones a golden node onto a whole rack at wire speed.
//!
//! The golden node runs a [`session::Server`]; every node runs a
//! [`session::Client`] (normally from its initrd). They form a pipelined TCP
//! chain: each node writes the stream to its own sink while relaying it to the
//! next, so N nodes take about as long as one.
//!
//! - [`protocol`]: frames and their encoding, no I/O.
//! - [`chain`]: the data plane of one node (ring buffer, relay, sinks).
//! - [`session`]: rendezvous, chain order, control and the report.
//! - [`demo`]: a whole rack on loopback in one process.

pub mod auth;
pub mod boot;
pub mod chain;
pub mod clone;
pub mod connection;
pub mod demo;
pub mod disk;
pub mod error;
pub mod io;
pub mod kascade;
pub mod lab;
pub mod launch;
pub mod net;
pub mod protocol;
pub mod session;
pub mod size;
#[cfg(test)]
mod testing;

pub use error::{Error, Result};
