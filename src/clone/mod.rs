//! Cloning a golden node onto a rack: the install's sessions, end to end.
//!
//! The golden node ([`run_golden`], `kacast clone`) and every node
//! ([`install`], `kacast install`) walk the same sessions in order, as
//! ka-deploy's kainstall1, kainstall2, kainstallK did:
//!
//! | session          | carries                  | a node then                                  |
//! |------------------|--------------------------|----------------------------------------------|
//! | `getstage2`      | the stage2 tools (optional) | unpacks them (the kacast initrd's init)   |
//! | `{base}1`        | the [plan](crate::disk::Plan) | checks it on its disks, partitions, formats, mounts |
//! | `{base}2`        | tar of the filesystems   | extracts it into the mounted root            |
//! | `{base}3`…       | one raw partition each (sparse, see [`image_input`]) | writes it to its partition |
//! | `{base}-end`     | nothing                  | reports the end of its install               |
//!
//! A node that cannot go on (it refused the plan, its disk failed to format)
//! withdraws from the next session with a report naming the step, and the
//! golden node stops waiting for it. The golden node's [`CloneReport`] gives
//! every node's last step and why it failed.
//!
//! Beside the sessions, each node keeps a status connection to the golden
//! node for the whole install ([`crate::session::status`]): its live steps
//! and log lines, kept per node in `--log-dir` and shown by `kacast status`.
//! Once the install is over, each cloned node's PXE configuration is switched
//! to its local disk (`--pxe-root`).

mod capture;
mod golden;
mod node;
mod raw;

pub use capture::{capture, CaptureConfig, Captured};
pub use golden::{run_golden, CloneConfig, CloneReport, NodeStatus, Source, Stage2};
pub use node::{install, InstallConfig, InstallOutcome};
pub use raw::{image_input, read_source, RawSource};
