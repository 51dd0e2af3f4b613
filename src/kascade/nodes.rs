//! Node lists as Kascade and Kadeploy3 write them.
//!
//! Kadeploy3 writes a node file with one host name (or IP address, with `-I`) per
//! line, and reads the ok/ko files back keyed by exactly those strings: a node
//! must therefore keep the spelling it was given (`n01` stays `n01`, a port stays
//! attached), or Kadeploy finds it in neither list and fails the whole step.
//!
//! Beyond Kascade's plain lists, people type ranges the way ClusterShell and pdsh
//! taught them (`gdx-[5-12].site`, `n[01-03]`, `r[1-2]n[1,3]`), so every entry may
//! be a range. A port (`n1:3000`) lets several agents share one host, as in
//! Kascade's `-N n1:3000,n1:3001`.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::fmt;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv6Addr};

use thiserror::Error;

/// The most nodes one list may expand to. A whole Grid'5000 site is about a
/// thousand nodes and the largest clusters a few tens of thousands, so a list
/// beyond this is a typo (`n[1-1000000]`) that would only exhaust memory.
pub const MAX_NODES: usize = 100_000;

/// One receiver: a host and, when several agents share a host, the port of this one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Node {
    pub host: String,
    pub port: Option<u16>,
}

impl Node {
    pub fn new(host: impl Into<String>) -> Node {
        Node { host: host.into(), port: None }
    }
}

/// The node as it was written (`n1`, `n1:3000`, `[fe80::1]:3000`): the key
/// Kascade used in its ok/ko files, so the one kacast must use too.
impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            None => f.write_str(&self.host),
            Some(p) if self.host.contains(':') => write!(f, "[{}]:{p}", self.host),
            Some(p) => write!(f, "{}:{p}", self.host),
        }
    }
}

/// What is wrong with one entry of a node list.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Problem {
    #[error("empty node name")]
    Empty,
    #[error("range goes backwards")]
    Backwards,
    #[error("empty brackets")]
    EmptyBrackets,
    #[error("empty item between commas in brackets")]
    EmptyItem,
    #[error("'[' is never closed")]
    Unclosed,
    #[error("']' without a '['")]
    Unopened,
    #[error("brackets inside brackets")]
    Nested,
    #[error("'{0}' in brackets is neither a number nor a range such as 1-10")]
    BadItem(String),
    #[error("expands to more than {MAX_NODES} nodes")]
    TooMany,
    #[error("port '{0}' is not a number from 1 to 65535")]
    BadPort(String),
    #[error("'{0}' cannot appear in a host name")]
    BadChar(char),
    #[error("a host name cannot start with '-' (ssh would read it as an option)")]
    LeadingDash,
    #[error("'{0}' is neither host:port nor an IPv6 address")]
    BadAddress(String),
}

#[derive(Debug, Error)]
pub enum NodesError {
    /// A single name or range given to [`expand`].
    #[error("node name '{spec}': {problem}")]
    Spec { spec: String, problem: Problem },
    /// An entry of a node file (or any text given to [`parse_list`]).
    #[error("{origin} line {line}: '{entry}': {problem}")]
    Line { origin: String, line: usize, entry: String, problem: Problem },
    /// An entry of a `-N` list.
    #[error("-N '{arg}': '{entry}': {problem}")]
    Arg { arg: String, entry: String, problem: Problem },
    #[error("cannot read node file '{path}': {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("no node list given: use -n NODEFILE or -N n1,n2,...")]
    NoList,
    #[error("{origin}: no node in it")]
    Empty { origin: String },
    #[error("{origin}: more than {MAX_NODES} nodes in all")]
    TooMany { origin: String },
}

/// Expands one name or range: `node[1-10]`, `gdx-[5-12].site`, `n[01-03]` (zero
/// padding kept), `n[1,3,5-7]`, `r[1-2]n[1-2]` (every combination, first bracket
/// outermost). A plain name comes back alone.
pub fn expand(spec: &str) -> Result<Vec<String>, NodesError> {
    expand_names(spec).map_err(|problem| NodesError::Spec { spec: spec.to_string(), problem })
}

/// Reads a node file: entries separated by new lines or blanks (commas work too),
/// `#` to the end of the line is a comment. Each entry may be a range and may
/// carry `:port`. A node listed twice is kept once, where it first appeared, since
/// two agents on one host and port cannot both listen. `origin` names the text in
/// errors ("node file '/tmp/nodes'").
pub fn parse_list(text: &str, origin: &str) -> Result<Vec<Node>, NodesError> {
    let mut list = NodeSet::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("");
        for entry in tokens(line) {
            let err = |problem| NodesError::Line {
                origin: origin.to_string(),
                line: i + 1,
                entry: entry.to_string(),
                problem,
            };
            let nodes = parse_entry(entry).map_err(err)?;
            list.extend(nodes).map_err(|()| err(Problem::TooMany))?;
        }
    }
    Ok(list.nodes)
}

/// Reads a `-N` list: `n2,n3:3001,gdx-[1-3]`. Commas inside brackets belong to
/// the range (`n[1,3]` is two nodes, not `n[1` and `3]`).
pub fn parse_comma(arg: &str) -> Result<Vec<Node>, NodesError> {
    let mut list = NodeSet::default();
    for entry in tokens(arg) {
        let err = |problem| NodesError::Arg { arg: arg.to_string(), entry: entry.to_string(), problem };
        let nodes = parse_entry(entry).map_err(err)?;
        list.extend(nodes).map_err(|()| err(Problem::TooMany))?;
    }
    if list.nodes.is_empty() {
        return Err(NodesError::Empty { origin: format!("-N '{arg}'") });
    }
    Ok(list.nodes)
}

/// Reads a node file, or standard input for `-`.
pub fn read_nodes(path: &str) -> Result<Vec<Node>, NodesError> {
    let read_err = |source| NodesError::Read { path: path.to_string(), source };
    if path == "-" {
        let mut text = String::new();
        io::stdin().read_to_string(&mut text).map_err(read_err)?;
        parse_list(&text, "node list on standard input")
    } else {
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        parse_list(&text, &format!("node file '{path}'"))
    }
}

/// Kascade's `-s` order, so that a chain built from a sorted list runs along the
/// racks as Kascade's did: `n2` before `n10`, `gdx-9.site` before `gdx-10.site`.
///
/// As in Kascade, names are compared domain first (`a.nancy` before `b.rennes`),
/// so nodes of one site or cluster stay together, and digit runs by value. IP
/// addresses come first, in numeric order: comparing their dotted parts last
/// first, as Kascade did, would scramble a subnet.
pub fn natural_sort(nodes: &mut [Node]) {
    nodes.sort_by(|a, b| {
        natural_cmp(&a.host, &b.host).then(a.port.cmp(&b.port)).then_with(|| a.host.cmp(&b.host))
    });
}

/// Nodes without duplicates, in the order they were first given.
#[derive(Default)]
pub(crate) struct NodeSet {
    pub(crate) nodes: Vec<Node>,
    seen: HashSet<Node>,
}

impl NodeSet {
    /// Adds the nodes not seen yet; `Err` when the list would exceed [`MAX_NODES`].
    pub(crate) fn extend(&mut self, nodes: impl IntoIterator<Item = Node>) -> Result<(), ()> {
        for node in nodes {
            if self.seen.insert(node.clone()) {
                if self.nodes.len() == MAX_NODES {
                    return Err(());
                }
                self.nodes.push(node);
            }
        }
        Ok(())
    }
}

/// Splits on blanks and commas outside brackets. Unbalanced brackets are left for
/// [`parse_entry`] to report, with the entry they belong to.
fn tokens(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = None;
    for (i, c) in text.char_indices() {
        let sep = depth == 0 && (c == ',' || c.is_whitespace());
        if sep {
            if let Some(s) = start.take() {
                out.push(&text[s..i]);
            }
            continue;
        }
        start.get_or_insert(i);
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push(&text[s..]);
    }
    out
}

/// One entry: a name or range, then an optional `:port`; or an IPv6 address,
/// bare or as `[addr]:port`.
fn parse_entry(entry: &str) -> Result<Vec<Node>, Problem> {
    if let Some(rest) = entry.strip_prefix('[') {
        if let Some((inside, after)) = rest.split_once(']') {
            if inside.contains(':') {
                if inside.parse::<Ipv6Addr>().is_err() {
                    return Err(Problem::BadAddress(entry.to_string()));
                }
                let port = match after {
                    "" => None,
                    _ => match after.strip_prefix(':') {
                        Some(p) => Some(parse_port(p)?),
                        None => return Err(Problem::BadAddress(entry.to_string())),
                    },
                };
                return Ok(vec![Node { host: inside.to_string(), port }]);
            }
        }
    }
    if entry.matches(':').count() > 1 {
        return match entry.parse::<Ipv6Addr>() {
            Ok(_) => Ok(vec![Node::new(entry)]),
            Err(_) => Err(Problem::BadAddress(entry.to_string())),
        };
    }
    let (spec, port) = match entry.split_once(':') {
        Some((spec, p)) => (spec, Some(parse_port(p)?)),
        None => (entry, None),
    };
    Ok(expand_names(spec)?.into_iter().map(|host| Node { host, port }).collect())
}

fn parse_port(p: &str) -> Result<u16, Problem> {
    match p.parse::<u16>() {
        Ok(port) if port > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
        _ => Err(Problem::BadPort(p.to_string())),
    }
}

/// A piece of a name: literal text, or the choices of one bracket.
enum Segment<'a> {
    Text(&'a str),
    Choices(Vec<Choice>),
}

/// One item of a bracket: `7`, or `5-12` with the zero padding of its start.
struct Choice {
    from: u64,
    to: u64,
    width: usize,
}

impl Choice {
    fn count(&self) -> u64 {
        (self.to - self.from).saturating_add(1)
    }
}

fn expand_names(spec: &str) -> Result<Vec<String>, Problem> {
    if spec.is_empty() {
        return Err(Problem::Empty);
    }
    let segments = segments(spec)?;
    let mut total: u64 = 1;
    for seg in &segments {
        if let Segment::Choices(choices) = seg {
            let n = choices.iter().try_fold(0u64, |acc, c| acc.checked_add(c.count()));
            total = n.and_then(|n| total.checked_mul(n)).ok_or(Problem::TooMany)?;
            if total > MAX_NODES as u64 {
                return Err(Problem::TooMany);
            }
        }
    }
    let mut names = vec![String::new()];
    for seg in &segments {
        match seg {
            Segment::Text(t) => names.iter_mut().for_each(|n| n.push_str(t)),
            Segment::Choices(choices) => {
                let mut next = Vec::with_capacity(names.len());
                for name in &names {
                    for c in choices {
                        for v in c.from..=c.to {
                            next.push(format!("{name}{v:0width$}", width = c.width));
                        }
                    }
                }
                names = next;
            }
        }
    }
    if names.iter().any(|n| n.starts_with('-')) {
        return Err(Problem::LeadingDash);
    }
    Ok(names)
}

fn segments(spec: &str) -> Result<Vec<Segment<'_>>, Problem> {
    let mut out = Vec::new();
    let mut rest = spec;
    while !rest.is_empty() {
        let open = rest.find(['[', ']']);
        let text = &rest[..open.unwrap_or(rest.len())];
        if let Some(c) = text.chars().find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(Problem::BadChar(c));
        }
        if !text.is_empty() {
            out.push(Segment::Text(text));
        }
        let Some(open) = open else { break };
        if rest[open..].starts_with(']') {
            return Err(Problem::Unopened);
        }
        let after = &rest[open + 1..];
        let close = after.find(']').ok_or(Problem::Unclosed)?;
        let inside = &after[..close];
        if inside.contains('[') {
            return Err(Problem::Nested);
        }
        out.push(Segment::Choices(choices(inside)?));
        rest = &after[close + 1..];
    }
    Ok(out)
}

fn choices(inside: &str) -> Result<Vec<Choice>, Problem> {
    if inside.trim().is_empty() {
        return Err(Problem::EmptyBrackets);
    }
    inside
        .split(',')
        .map(|item| {
            let item = item.trim();
            if item.is_empty() {
                return Err(Problem::EmptyItem);
            }
            let bad = || Problem::BadItem(item.to_string());
            let number = |s: &str| {
                let s = s.trim();
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                s.parse::<u64>().map_err(|_| bad())
            };
            let (first, from, to) = match item.split_once('-') {
                Some((a, b)) => (a.trim(), number(a)?, number(b)?),
                None => (item, number(item)?, number(item)?),
            };
            if from > to {
                return Err(Problem::Backwards);
            }
            // `01-10` pads to the width of its start, as ClusterShell and pdsh do.
            let width = if first.len() > 1 && first.starts_with('0') { first.len() } else { 0 };
            Ok(Choice { from, to, width })
        })
        .collect()
}

/// Compares host names for [`natural_sort`].
fn natural_cmp(a: &str, b: &str) -> Ordering {
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => Ordering::Less,
        (Err(_), Ok(_)) => Ordering::Greater,
        (Err(_), Err(_)) => {
            let mut x = a.split('.').rev();
            let mut y = b.split('.').rev();
            loop {
                match (x.next(), y.next()) {
                    (None, None) => return Ordering::Equal,
                    (None, Some(_)) => return Ordering::Less,
                    (Some(_), None) => return Ordering::Greater,
                    (Some(p), Some(q)) => match part_cmp(p, q) {
                        Ordering::Equal => {}
                        other => return other,
                    },
                }
            }
        }
    }
}

/// Compares one dot-separated part: digit runs by value (then fewer leading
/// zeros first), other runs without regard to case; a number sorts before text.
fn part_cmp(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (runs(a), runs(b));
    loop {
        let ord = match (x.next(), y.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(p), Some(q)) => {
                let (pd, qd) = (p.as_bytes()[0].is_ascii_digit(), q.as_bytes()[0].is_ascii_digit());
                match (pd, qd) {
                    (true, true) => {
                        let (ps, qs) = (p.trim_start_matches('0'), q.trim_start_matches('0'));
                        ps.len().cmp(&qs.len()).then_with(|| ps.cmp(qs)).then(p.len().cmp(&q.len()))
                    }
                    (true, false) => Ordering::Less,
                    (false, true) => Ordering::Greater,
                    (false, false) => p.to_ascii_lowercase().cmp(&q.to_ascii_lowercase()),
                }
            }
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
}

/// Splits `gdx-10` into `gdx-`, `10`.
fn runs(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = s;
    std::iter::from_fn(move || {
        let first = rest.chars().next()?;
        let digit = first.is_ascii_digit();
        let end = rest.find(|c: char| c.is_ascii_digit() != digit).unwrap_or(rest.len());
        let (run, tail) = rest.split_at(end);
        rest = tail;
        Some(run)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(nodes: &[Node]) -> Vec<String> {
        nodes.iter().map(Node::to_string).collect()
    }

    #[test]
    fn expands_ranges() {
        assert_eq!(expand("node[1-3]").unwrap(), ["node1", "node2", "node3"]);
        assert_eq!(expand("gdx-[5-12].site").unwrap().last().map(String::as_str), Some("gdx-12.site"));
        assert_eq!(expand("gdx-[5-12].site").unwrap().len(), 8);
        assert_eq!(expand("n[01-03]").unwrap(), ["n01", "n02", "n03"]);
        assert_eq!(expand("n[08-10]").unwrap(), ["n08", "n09", "n10"]);
        assert_eq!(expand("n[0-2]").unwrap(), ["n0", "n1", "n2"]);
        assert_eq!(expand("n[1,3,5-7]").unwrap(), ["n1", "n3", "n5", "n6", "n7"]);
        assert_eq!(expand("r[1-2]n[1-2]").unwrap(), ["r1n1", "r1n2", "r2n1", "r2n2"]);
        assert_eq!(expand("n[ 1 , 3 ]").unwrap(), ["n1", "n3"]);
        assert_eq!(expand("gdx-1.orsay.grid5000.fr").unwrap(), ["gdx-1.orsay.grid5000.fr"]);
        assert_eq!(expand("[1-2].rack").unwrap(), ["1.rack", "2.rack"]);
    }

    #[test]
    fn refuses_bad_ranges() {
        let problem = |s: &str| match expand(s) {
            Err(NodesError::Spec { problem, .. }) => problem,
            other => panic!("{s}: expected an error, got {other:?}"),
        };
        assert_eq!(problem("gdx-[12-5]"), Problem::Backwards);
        assert_eq!(problem("n[]"), Problem::EmptyBrackets);
        assert_eq!(problem("n[ ]"), Problem::EmptyBrackets);
        assert_eq!(problem("n[1,,3]"), Problem::EmptyItem);
        assert_eq!(problem("n[1-3"), Problem::Unclosed);
        assert_eq!(problem("n1-3]"), Problem::Unopened);
        assert_eq!(problem("n[1-[2]]"), Problem::Nested);
        assert_eq!(problem("n[a-c]"), Problem::BadItem("a-c".into()));
        assert_eq!(problem("n[1-2-3]"), Problem::BadItem("1-2-3".into()));
        assert_eq!(problem("n[99999999999999999999999]"), Problem::BadItem("99999999999999999999999".into()));
        assert_eq!(problem("n[1-100001]"), Problem::TooMany);
        assert_eq!(problem("n[1-1000]m[1-1000]"), Problem::TooMany);
        assert_eq!(problem("n[0-18446744073709551615]"), Problem::TooMany);
        assert_eq!(problem("n/1"), Problem::BadChar('/'));
        assert_eq!(problem("-oProxyCommand=x"), Problem::BadChar('='));
        assert_eq!(problem("-n1"), Problem::LeadingDash);
        assert_eq!(problem(""), Problem::Empty);
        assert!(expand("n[1-100000]").is_ok());
        assert_eq!(
            expand("gdx-[12-5]").unwrap_err().to_string(),
            "node name 'gdx-[12-5]': range goes backwards"
        );
    }

    #[test]
    fn node_file_with_comments_ports_and_duplicates() {
        let text = "# rack 1\n\
                    gdx-[1-3]   # three nodes\n\
                    \n\
                    n1:3000 n1:3001\tn2\n\
                    gdx-2\n\
                    n[1, 3]\n\
                    [fe80::1]:4000\n\
                    fe80::2\n";
        let nodes = parse_list(text, "node file 'x'").unwrap();
        assert_eq!(
            hosts(&nodes),
            ["gdx-1", "gdx-2", "gdx-3", "n1:3000", "n1:3001", "n2", "n1", "n3", "[fe80::1]:4000", "fe80::2"]
        );
        assert_eq!(nodes[3], Node { host: "n1".into(), port: Some(3000) });
        assert_eq!(nodes[8], Node { host: "fe80::1".into(), port: Some(4000) });
        assert!(parse_list("# nothing\n\n", "x").unwrap().is_empty());
    }

    #[test]
    fn node_file_errors_name_origin_line_and_entry() {
        let err = parse_list("n1\n# c\ngdx-[12-5]\n", "node list").unwrap_err();
        assert_eq!(err.to_string(), "node list line 3: 'gdx-[12-5]': range goes backwards");
        let err = parse_list("n1:http\n", "node file '/tmp/nodes'").unwrap_err();
        assert_eq!(
            err.to_string(),
            "node file '/tmp/nodes' line 1: 'n1:http': port 'http' is not a number from 1 to 65535"
        );
        for bad in ["n1:0", "n1:", "n1:70000", "n1:+5"] {
            assert!(
                matches!(parse_list(bad, "x"), Err(NodesError::Line { problem: Problem::BadPort(_), .. })),
                "{bad}"
            );
        }
        let err = parse_list("n1:2:3", "x").unwrap_err();
        assert!(err.to_string().contains("neither host:port nor an IPv6 address"), "{err}");
        let err = parse_list("n[1-60000]\nm[1-60000]\n", "x").unwrap_err();
        assert!(matches!(err, NodesError::Line { line: 2, problem: Problem::TooMany, .. }), "{err}");
    }

    #[test]
    fn comma_lists_keep_commas_inside_brackets() {
        let nodes = parse_comma("n2,n3:3001,gdx-[1-3]").unwrap();
        assert_eq!(hosts(&nodes), ["n2", "n3:3001", "gdx-1", "gdx-2", "gdx-3"]);
        let nodes = parse_comma("n[1,3],m[5,7-8]:9").unwrap();
        assert_eq!(hosts(&nodes), ["n1", "n3", "m5:9", "m7:9", "m8:9"]);
        assert_eq!(hosts(&parse_comma("a,b,a,").unwrap()), ["a", "b"]);
        let err = parse_comma("n1,n[3-1]").unwrap_err();
        assert_eq!(err.to_string(), "-N 'n1,n[3-1]': 'n[3-1]': range goes backwards");
        assert!(matches!(parse_comma(" , "), Err(NodesError::Empty { .. })));
    }

    #[test]
    fn natural_order() {
        let mut nodes = parse_comma(
            "n10,n2,n1,gdx-10.site,gdx-9.site,b.rennes,a.nancy,10.0.1.2,10.0.0.9,N3,n02,n1:3001,n1:3000",
        )
        .unwrap();
        natural_sort(&mut nodes);
        assert_eq!(
            hosts(&nodes),
            [
                "10.0.0.9",
                "10.0.1.2",
                "n1",
                "n1:3000",
                "n1:3001",
                "n2",
                "n02",
                "N3",
                "n10",
                "a.nancy",
                "b.rennes",
                "gdx-9.site",
                "gdx-10.site",
            ]
        );
    }

    #[test]
    fn reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nodes");
        std::fs::write(&path, "n1\nn2\n").unwrap();
        let nodes = read_nodes(path.to_str().unwrap()).unwrap();
        assert_eq!(hosts(&nodes), ["n1", "n2"]);
        let missing = dir.path().join("missing");
        let err = read_nodes(missing.to_str().unwrap()).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!("cannot read node file '{}': ", missing.display())),
            "{err}"
        );
    }
}
