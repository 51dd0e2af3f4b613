//! Helpers shared by the unit tests of the preparation's modules: small
//! system trees to prepare, file reads and writes relative to their root,
//! and the UUIDs the rewrite tests map.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{prepare_node, Prepare};

pub(super) fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

pub(super) fn read(root: &Path, rel: &str) -> String {
    fs::read_to_string(root.join(rel)).unwrap()
}

pub(super) fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

pub(super) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A minimal system tree: an `etc`, nothing else.
pub(super) fn system() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("etc")).unwrap();
    dir
}

pub(super) fn prepare(root: &Path) -> Vec<String> {
    prepare_node(root, &Prepare { keep_ssh_host_keys: true, ..Prepare::default() }).unwrap()
}

pub(super) fn is_machine_id(s: &str) -> bool {
    s.len() == 33
        && s.ends_with('\n')
        && s[..32].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub(super) fn named(name: &str) -> Prepare {
    Prepare { hostname: Some(name.into()), keep_ssh_host_keys: true }
}

pub(super) fn map(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

pub(super) const ROOT_OLD: &str = "0a1b2c3d-1111-4222-8333-444455556666";
pub(super) const ROOT_NEW: &str = "9F8E7D6C-AAAA-4BBB-8CCC-DDDDEEEEFFFF";
