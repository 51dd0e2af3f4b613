//! The session: rendezvous of the nodes with the server, the chain order, control
//! of the transfer and the final report.
//!
//! A session has a name (`getstage2`, `kainstall`…). Nodes find the server of their
//! session by a UDP broadcast (or `--server`), join on the server's control port,
//! wait until the server starts the session, then receive their place in the chain
//! ([`crate::protocol::Assign`]) and report their outcome on the same connection.

mod client;
mod discovery;
mod input;
mod lobby;
mod order;
mod repair;
mod report;
mod server;
mod stats;
pub mod status;

pub use client::{go, hostname, Client, ClientConfig, ClientReport, ServerAddress, DEFAULT_TIMEOUT};
pub use discovery::{discover, DiscoveryResponder};
pub use input::{Input, Reopen};
pub use order::{read_node_file, tree_parent, Order};
pub use report::{NodeResult, SessionReport};
pub use server::{Server, ServerConfig, DEFAULT_CONGESTION};
pub use stats::Stats;
pub use status::{StatusBoard, StatusLayer, StatusReporter};
