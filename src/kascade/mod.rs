//! kacast as a drop-in for Kascade, Kadeploy3's default broadcast tool.
//!
//! Kadeploy3's BroadcastEnvKascade step runs
//!
//! ```text
//! kascade -i <file> -n <nodefile> -O '<decompress>' -S '<connector>' \
//!         --ok <okfile> --ko <kofile> [-I] -D taktuk -P '-d <arity>[ -s]' <extra args>
//! ```
//!
//! and trusts the exit status alone when it is 0 (every node OK). Otherwise it
//! loads both result files: `--ok` must be a YAML Array of node names and `--ko` a
//! YAML Hash of node name → error. A node in neither list fails the whole step,
//! and files it cannot load turn every node KO. So a drop-in must answer to that
//! exact command line (and to the tuning options sites add), name nodes exactly
//! as the node file did, and always leave both files behind, even when it fails
//! before streaming a byte.
//!
//! This module holds the parts that need no network: [`args`] (the command
//! line), [`nodes`] (node files, `-N` lists and ranges, Kascade's `-s` order) and
//! [`results`] (the ok/ko files and the exit status: 0 all OK, 2 some, 1 none).

pub mod args;
mod kastafior;
pub mod nodes;
pub mod results;
mod run;

pub use args::{salvage, IgnoredOption, KascadeArgs, Launcher, Salvaged, MAX_ARITY};
pub use nodes::{
    expand, natural_sort, parse_comma, parse_list, read_nodes, Node, NodesError, Problem, MAX_NODES,
};
pub use results::{write_all_ko, Outcome};
pub use run::{run, run_with_input, JOIN_WINDOW};

/// Kastafior's command line; see [`kastafior`].
pub fn kastafior(argv: &[String]) -> i32 {
    kastafior::run(argv)
}
