//! Small `Read`/`Write` adapters composed into the stream's pipeline.

mod filter;
pub mod sparse;
pub mod target;
mod throttle;

pub use filter::{Filter, StderrTail};
pub use throttle::Throttle;
