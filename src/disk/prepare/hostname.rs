//! The node's host name (step 5 of the module doc of [`super`]): checked,
//! written to `etc/hostname`, and given the node's own `127.0.1.1` line in
//! `etc/hosts`, where the golden's name is also replaced on the other
//! loopback lines so the node does not resolve it to itself.

use super::safe_path::Tree;
use super::CONFIG_MODE;
use crate::disk::error::{DiskError, Result};

/// RFC 1123 / RFC 1035: a whole name, without a trailing dot, fits in 253
/// characters, and a label in 63.
pub const HOSTNAME_MAX: usize = 253;
const LABEL_MAX: usize = 63;

/// Debian's address for the host's own name in `/etc/hosts`, so it resolves
/// without a network (and apart from `localhost` on 127.0.0.1).
const OWN_ADDRESS: &str = "127.0.1.1";

/// Whether `name` is a valid host name: dot-separated RFC 1123 labels (1–63
/// letters, digits or `-`, not starting or ending with `-`), at most 253
/// characters in all.
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty() && name.len() <= HOSTNAME_MAX && name.split('.').all(valid_label)
}

fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= LABEL_MAX
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

pub(super) fn check_hostname(name: &str) -> Result<()> {
    if valid_hostname(name) {
        return Ok(());
    }
    Err(DiskError::Other(format!(
        "'{name}' is not a valid hostname: dot-separated labels of 1-{LABEL_MAX} letters, digits \
         or '-' (not first or last), at most {HOSTNAME_MAX} characters"
    )))
}

pub(super) const HOSTNAME: &str = "etc/hostname";
pub(super) const HOSTS: &str = "etc/hosts";

/// For a clone without `etc/hosts`: the loopback lines every distribution has.
const DEFAULT_HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";

pub(super) fn set_hostname(tree: &Tree, name: &str, log: &mut Vec<String>) -> Result<()> {
    let golden = tree.read(HOSTNAME)?.map(|g| String::from_utf8_lossy(&g).trim().to_string());
    tree.replace(HOSTNAME, format!("{name}\n").as_bytes(), CONFIG_MODE, log)?;
    log.push(format!("hostname {name} in /{HOSTNAME}"));
    let hosts = tree.read(HOSTS)?.unwrap_or_else(|| DEFAULT_HOSTS.as_bytes().to_vec());
    let edit = edit_hosts(&hosts, name, golden.as_deref());
    tree.replace(HOSTS, &edit.text, CONFIG_MODE, log)?;
    let how = if edit.replaced { "names on the 127.0.1.1 line replaced" } else { "127.0.1.1 line appended" };
    log.push(format!("/{HOSTS}: {how} ({})", Names::new(name).line()));
    if edit.renamed > 0 {
        log.push(format!("/{HOSTS}: the golden's name replaced on {} other loopback line(s)", edit.renamed));
    }
    Ok(())
}

/// The names of the node's own line: `FQDN SHORT`, or just `NAME`.
struct Names<'a> {
    full: &'a str,
    short: &'a str,
}

impl<'a> Names<'a> {
    fn new(name: &'a str) -> Names<'a> {
        Names { full: name, short: first_label(name) }
    }

    fn line(&self) -> String {
        if self.full == self.short {
            self.short.to_string()
        } else {
            format!("{} {}", self.full, self.short)
        }
    }
}

fn first_label(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

struct HostsEdit {
    text: Vec<u8>,
    /// A 127.0.1.1 line was there (else one was appended).
    replaced: bool,
    /// Other loopback lines where the golden's name was replaced.
    renamed: usize,
}

/// `hosts` with the node's own line for `name` (see the module doc of
/// [`super`]);
/// `golden` is the golden's hostname. Lines that are not UTF-8 are kept.
fn edit_hosts(hosts: &[u8], name: &str, golden: Option<&str>) -> HostsEdit {
    let names = Names::new(name);
    let golden = golden.map(first_label).filter(|g| !g.is_empty() && !g.eq_ignore_ascii_case("localhost"));
    let mut edit = HostsEdit { text: Vec::with_capacity(hosts.len() + 64), replaced: false, renamed: 0 };
    for line in hosts.split_inclusive(|&b| b == b'\n') {
        let body_len = line.strip_suffix(b"\n").map_or(line.len(), <[u8]>::len);
        let (body, eol) = line.split_at(body_len);
        match std::str::from_utf8(body).ok().and_then(|l| edit_hosts_line(l, &names, golden)) {
            Some(HostsLine::Own(new)) => {
                edit.replaced = true;
                edit.text.extend_from_slice(new.as_bytes());
            }
            Some(HostsLine::Renamed(new)) => {
                edit.renamed += 1;
                edit.text.extend_from_slice(new.as_bytes());
            }
            None => edit.text.extend_from_slice(body),
        }
        edit.text.extend_from_slice(eol);
    }
    if !edit.replaced {
        if !edit.text.is_empty() && !edit.text.ends_with(b"\n") {
            edit.text.push(b'\n');
        }
        edit.text.extend_from_slice(format!("{OWN_ADDRESS}\t{}\n", names.line()).as_bytes());
    }
    edit
}

enum HostsLine {
    Own(String),
    Renamed(String),
}

/// The new text of one hosts line, if it changes.
fn edit_hosts_line(line: &str, names: &Names, golden: Option<&str>) -> Option<HostsLine> {
    let (body, comment) = line.split_at(line.find('#').unwrap_or(line.len()));
    let mut fields = body.split_whitespace();
    let address = fields.next()?;
    let rebuilt = |names: &str| match comment {
        "" => format!("{address}\t{names}"),
        _ => format!("{address}\t{names} {comment}"),
    };
    if address == OWN_ADDRESS {
        return Some(HostsLine::Own(rebuilt(&names.line())));
    }
    let golden = golden?;
    if !(address.starts_with("127.") || address == "::1") {
        return None;
    }
    let old: Vec<&str> = fields.collect();
    let mut new: Vec<&str> = Vec::with_capacity(old.len());
    for token in &old {
        let renamed = if !first_label(token).eq_ignore_ascii_case(golden) {
            token
        } else if token.contains('.') {
            names.full
        } else {
            names.short
        };
        if !new.contains(&renamed) {
            new.push(renamed);
        }
    }
    (new != old).then(|| HostsLine::Renamed(rebuilt(&new.join(" "))))
}

#[cfg(test)]
mod tests {
    use std::fs::{self, Permissions};
    use std::os::unix::fs::PermissionsExt;

    use super::super::prepare_node;
    use super::super::test_util::{mode, named, read, system, write};
    use super::*;

    #[test]
    fn hostnames() {
        for good in ["node01", "n", "node-01.rack.example.org", "1rack", "NODE01", &"a".repeat(63)] {
            assert!(valid_hostname(good), "{good}");
        }
        let long = ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(62)].join(".");
        assert_eq!(long.len(), 254);
        for bad in [
            "",
            "-node",
            "node-",
            "node_01",
            "node..rack",
            "node.",
            ".node",
            "nöde",
            "a b",
            &"a".repeat(64),
            &long,
        ] {
            assert!(!valid_hostname(bad), "{bad}");
        }
        assert!(valid_hostname(&long[1..]));
    }

    #[test]
    fn hostname_replaces_the_127_0_1_1_line() {
        let root = system();
        let r = root.path();
        write(r, HOSTNAME, "golden\n");
        write(
            r,
            HOSTS,
            "127.0.0.1\tlocalhost golden\n127.0.1.1\tgolden.rack.example golden # me\n\
             10.0.0.1\tgolden.rack.example golden\n::1 localhost ip6-localhost\n",
        );
        fs::set_permissions(r.join(HOSTS), Permissions::from_mode(0o640)).unwrap();
        let log = prepare_node(r, &named("node07.rack.example")).unwrap();
        assert_eq!(read(r, HOSTNAME), "node07.rack.example\n");
        assert_eq!(
            read(r, HOSTS),
            "127.0.0.1\tlocalhost node07\n127.0.1.1\tnode07.rack.example node07 # me\n\
             10.0.0.1\tgolden.rack.example golden\n::1 localhost ip6-localhost\n"
        );
        assert_eq!(mode(&r.join(HOSTS)), 0o640);
        assert!(log.iter().any(|l| l.contains("replaced")), "{log:?}");
    }

    #[test]
    fn hostname_appends_a_127_0_1_1_line() {
        let root = system();
        let r = root.path();
        write(r, HOSTS, "127.0.0.1 localhost\n10.0.0.1 admin");
        prepare_node(r, &named("node07")).unwrap();
        assert_eq!(read(r, HOSTNAME), "node07\n");
        assert_eq!(read(r, HOSTS), "127.0.0.1 localhost\n10.0.0.1 admin\n127.0.1.1\tnode07\n");

        let bare = system();
        prepare_node(bare.path(), &named("node07")).unwrap();
        assert!(read(bare.path(), HOSTS).starts_with("127.0.0.1\tlocalhost\n"));
        assert!(read(bare.path(), HOSTS).ends_with("\n127.0.1.1\tnode07\n"));
    }

    #[test]
    fn a_golden_named_localhost_keeps_localhost() {
        let edit = edit_hosts(b"127.0.0.1 localhost\n", "node07", Some("localhost"));
        assert_eq!(String::from_utf8(edit.text).unwrap(), "127.0.0.1 localhost\n127.0.1.1\tnode07\n");
        assert_eq!(edit.renamed, 0);
    }
}
