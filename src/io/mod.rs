//! Small `Read`/`Write` adapters composed into the stream's pipeline.

mod throttle;

pub use throttle::Throttle;
