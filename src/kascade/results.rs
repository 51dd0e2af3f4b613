//! Kascade's result files, as Kadeploy3 reads them.
//!
//! When kascade exits non-zero, Kadeploy3 loads `--ok` with Ruby's `YAML.load` and
//! insists on an Array, and `--ko` on a Hash of node → error. A node in neither
//! list fails the whole deployment step, and a file that is missing, empty or
//! does not parse turns every node KO. Hence the rules here: both files are
//! always written, even before anything ran; every node is in exactly one list;
//! every scalar is double-quoted, so that YAML 1.1 (Ruby's Psych) cannot turn a
//! node called `yes`, `no`, `null`, `1.5` or `1:30` into a boolean, nothing or a
//! number; and files are replaced atomically, so Kadeploy never reads half a file.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// What became of each node: the names that succeeded, and node → error for the others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub ok: Vec<String>,
    pub ko: Vec<(String, String)>,
}

impl Outcome {
    /// Every node of `all` in exactly one list: nodes missing from both are put in
    /// ko with `missing_reason`. A node listed twice keeps its first place (and
    /// its first error, usually the cause of the later ones); a node in both
    /// lists is KO, since something reported it failing.
    pub fn complete(self, all: &[String], missing_reason: &str) -> Outcome {
        let mut out = self.normalized();
        let known: HashSet<String> =
            out.ok.iter().cloned().chain(out.ko.iter().map(|(n, _)| n.clone())).collect();
        let mut added = HashSet::new();
        for node in all {
            if !known.contains(node) && added.insert(node) {
                out.ko.push((node.clone(), missing_reason.to_string()));
            }
        }
        out
    }

    /// Kascade's exit status: 0 when every node succeeded (and there was at least
    /// one), 2 when some did, 1 when none did.
    pub fn exit_code(&self) -> i32 {
        let n = self.normalized();
        match (n.ok.is_empty(), n.ko.is_empty()) {
            (false, true) => 0,
            (false, false) => 2,
            (true, _) => 1,
        }
    }

    /// Writes the ok file: a YAML array of node names, `[]` when there is none
    /// (an empty file would load as `false` in Ruby, not as an Array). A node
    /// that is also in ko is left out.
    pub fn write_ok(&self, path: &Path) -> io::Result<()> {
        write_atomically(path, &ok_yaml(&self.normalized().ok))
    }

    /// Writes the ko file: a YAML map of node name → error, `{}` when there is none.
    pub fn write_ko(&self, path: &Path) -> io::Result<()> {
        write_atomically(path, &ko_yaml(&self.normalized().ko))
    }

    /// Without duplicates, and without the KO nodes in ok.
    fn normalized(&self) -> Outcome {
        let mut seen = HashSet::new();
        let ko: Vec<(String, String)> =
            self.ko.iter().filter(|(n, _)| seen.insert(n.as_str())).cloned().collect();
        let ok = self.ok.iter().filter(|n| seen.insert(n.as_str())).cloned().collect();
        Outcome { ok, ko }
    }
}

/// For a run that fails before it starts (bad arguments, no input): every node in
/// ko with `reason`, ok empty, since Kadeploy must still find both files to tell
/// its users why. A file that cannot be written is logged: there is nobody else
/// to tell, and the other file is still worth writing.
pub fn write_all_ko(all: &[String], reason: &str, ok_path: Option<&Path>, ko_path: Option<&Path>) {
    let outcome = Outcome::default().complete(all, reason);
    if let Some(path) = ok_path {
        if let Err(e) = outcome.write_ok(path) {
            tracing::error!("cannot write the ok file '{}': {e}", path.display());
        }
    }
    if let Some(path) = ko_path {
        if let Err(e) = outcome.write_ko(path) {
            tracing::error!("cannot write the ko file '{}': {e}", path.display());
        }
    }
}

fn ok_yaml(ok: &[String]) -> String {
    if ok.is_empty() {
        return "--- []\n".to_string();
    }
    let mut s = String::from("---\n");
    for node in ok {
        let _ = writeln!(s, "- {}", quote(node));
    }
    s
}

fn ko_yaml(ko: &[(String, String)]) -> String {
    if ko.is_empty() {
        return "--- {}\n".to_string();
    }
    let mut s = String::from("---\n");
    for (node, error) in ko {
        let _ = writeln!(s, "{}: {}", quote(node), quote(error));
    }
    s
}

/// A YAML double-quoted scalar: always a string, whatever YAML version reads it,
/// and on one line whatever the text holds.
fn quote(text: &str) -> String {
    let mut s = String::with_capacity(text.len() + 2);
    s.push('"');
    for c in text.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\t' => s.push_str("\\t"),
            '\r' => s.push_str("\\r"),
            '\u{85}' => s.push_str("\\N"),
            '\u{2028}' => s.push_str("\\L"),
            '\u{2029}' => s.push_str("\\P"),
            '\u{feff}' => s.push_str("\\uFEFF"),
            c if c < ' ' || c == '\u{7f}' => {
                let _ = write!(s, "\\x{:02X}", c as u32);
            }
            // C1 controls are not printable in YAML and must be escaped too.
            c if ('\u{80}'..='\u{9f}').contains(&c) => {
                let _ = write!(s, "\\x{:02X}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// Tells apart the temporary files of several writers in one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `text` to a temporary file next to `path`, then renames it over `path`,
/// so a reader sees the old file or the whole new one. When the directory does
/// not let us create a file (Kadeploy made the file, in a directory we may not
/// write), the file is written in place: a whole file matters more than an atomic one.
fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let temp = temp_path(path);
    let mut file = match fs::OpenOptions::new().write(true).create_new(true).open(&temp) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return fs::write(path, text),
        Err(e) => return Err(e),
    };
    let written = file.write_all(text.as_bytes()).and_then(|()| file.sync_all());
    drop(file);
    let done = written.and_then(|()| fs::rename(&temp, path));
    if done.is_err() {
        let _ = fs::remove_file(&temp);
    }
    done
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.kacast-{}-{n}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_yaml::Value;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Loads an ok file and checks it is a sequence of strings.
    fn load_ok(path: &Path) -> Vec<String> {
        let v: Value = serde_yaml::from_str(&fs::read_to_string(path).unwrap()).unwrap();
        let Value::Sequence(items) = v else { panic!("ok is not a sequence: {v:?}") };
        items
            .into_iter()
            .map(|i| match i {
                Value::String(s) => s,
                other => panic!("ok item is not a string: {other:?}"),
            })
            .collect()
    }

    /// Loads a ko file and checks it is a mapping of strings to strings.
    fn load_ko(path: &Path) -> Vec<(String, String)> {
        let v: Value = serde_yaml::from_str(&fs::read_to_string(path).unwrap()).unwrap();
        let Value::Mapping(map) = v else { panic!("ko is not a mapping: {v:?}") };
        map.into_iter()
            .map(|(k, v)| match (k, v) {
                (Value::String(k), Value::String(v)) => (k, v),
                other => panic!("ko entry is not string → string: {other:?}"),
            })
            .collect()
    }

    /// Names YAML would read as something other than a string when unquoted.
    const TRICKY: [&str; 14] =
        ["yes", "no", "on", "off", "y", "true", "null", "~", "1.5", "10", "1:30", "n1:3000", "0x1F", ""];

    #[test]
    fn round_trips_tricky_names() {
        let dir = tempfile::tempdir().unwrap();
        let (ok_path, ko_path) = (dir.path().join("ok"), dir.path().join("ko"));
        let mut ko: Vec<(String, String)> =
            TRICKY.iter().map(|n| (format!("ko-{n}"), n.to_string())).collect();
        ko.push(("NO".into(), "line one\nline \"two\"\t\\ end: #not a comment".into()));
        ko.push(("- a".into(), "é, ü and \u{7}\u{85}\u{2028}".into()));
        let outcome = Outcome { ok: names(&TRICKY), ko: ko.clone() };
        outcome.write_ok(&ok_path).unwrap();
        outcome.write_ko(&ko_path).unwrap();
        assert_eq!(load_ok(&ok_path), names(&TRICKY));
        assert_eq!(load_ko(&ko_path), ko);
        // No temporary file left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn empty_lists_are_an_empty_array_and_map() {
        let dir = tempfile::tempdir().unwrap();
        let (ok_path, ko_path) = (dir.path().join("ok"), dir.path().join("ko"));
        fs::write(&ok_path, "stale").unwrap();
        let outcome = Outcome::default();
        outcome.write_ok(&ok_path).unwrap();
        outcome.write_ko(&ko_path).unwrap();
        assert_eq!(fs::read_to_string(&ok_path).unwrap(), "--- []\n");
        assert_eq!(fs::read_to_string(&ko_path).unwrap(), "--- {}\n");
        assert!(load_ok(&ok_path).is_empty());
        assert!(load_ko(&ko_path).is_empty());
    }

    #[test]
    fn complete_puts_missing_nodes_in_ko() {
        let all = names(&["n1", "n2", "n3", "n4", "n4"]);
        let outcome = Outcome {
            ok: names(&["n1", "n3", "n1"]),
            ko: vec![("n3".into(), "disk full".into()), ("n3".into(), "later".into())],
        };
        let done = outcome.complete(&all, "never reported");
        assert_eq!(done.ok, ["n1"]);
        assert_eq!(
            done.ko,
            [
                ("n3".to_string(), "disk full".to_string()),
                ("n2".to_string(), "never reported".to_string()),
                ("n4".to_string(), "never reported".to_string()),
            ]
        );
        assert_eq!(done.exit_code(), 2);
    }

    #[test]
    fn exit_codes() {
        let ok = |v: &[&str]| names(v);
        let ko = |v: &[&str]| v.iter().map(|n| (n.to_string(), "x".to_string())).collect::<Vec<_>>();
        assert_eq!(Outcome { ok: ok(&["a", "b"]), ko: vec![] }.exit_code(), 0);
        assert_eq!(Outcome { ok: ok(&["a"]), ko: ko(&["b"]) }.exit_code(), 2);
        assert_eq!(Outcome { ok: vec![], ko: ko(&["a", "b"]) }.exit_code(), 1);
        assert_eq!(Outcome::default().exit_code(), 1, "no node at all is not a success");
        assert_eq!(Outcome { ok: ok(&["a"]), ko: ko(&["a"]) }.exit_code(), 1, "a node both ok and ko is ko");
    }

    #[test]
    fn all_ko_before_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let (ok_path, ko_path) = (dir.path().join("ok"), dir.path().join("ko"));
        write_all_ko(&names(&["n1", "yes"]), "no input: '/tmp/env.tgz'", Some(&ok_path), Some(&ko_path));
        assert!(load_ok(&ok_path).is_empty());
        assert_eq!(
            load_ko(&ko_path),
            [
                ("n1".to_string(), "no input: '/tmp/env.tgz'".to_string()),
                ("yes".into(), "no input: '/tmp/env.tgz'".into())
            ]
        );
        // Only one of the two paths: the other is not invented.
        let only_ko = dir.path().join("only-ko");
        write_all_ko(&names(&["n1"]), "bad", None, Some(&only_ko));
        assert_eq!(load_ko(&only_ko).len(), 1);
        // A file that cannot be written does not stop the other one.
        let ko2 = dir.path().join("ko2");
        write_all_ko(&names(&["n1"]), "bad", Some(&dir.path().join("no/such/dir/ok")), Some(&ko2));
        assert_eq!(load_ko(&ko2).len(), 1);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("yes"), "\"yes\"");
        assert_eq!(quote("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\x01\"");
    }
}
