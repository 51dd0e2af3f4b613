//! Chain order and tree shape.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{Error, Result};

/// How joined nodes are ordered into the chain (`--order`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order {
    /// By numeric IP address (ka-deploy's intent: neighbours in a switch are
    /// neighbours in the chain), then by name for nodes sharing an address.
    Ip,
    /// In the order nodes joined.
    Join,
    /// In the order of a node file (names or addresses, one per line).
    File(PathBuf),
    /// In the order of a list the embedding program has (`kacast kascade`'s
    /// node list), as a node file would give it.
    List(Vec<String>),
}

impl FromStr for Order {
    type Err = Error;
    fn from_str(s: &str) -> Result<Order> {
        match s {
            "ip" => Ok(Order::Ip),
            "join" => Ok(Order::Join),
            _ => match s.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(Order::File(PathBuf::from(p))),
                _ => Err(Error::Config(format!("invalid --order '{s}': expected ip, join or file:PATH"))),
            },
        }
    }
}

/// What ordering needs to know of a joined node.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: String,
    pub ip: IpAddr,
    pub port: u16,
}

/// Reads a node file: one node (name or address) per line, `#` comments. A node
/// listed twice is an error naming both lines.
pub fn read_node_file(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read node file {}: {e}", path.display())))?;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut nodes = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        if entry.split_whitespace().count() > 1 {
            return Err(Error::Config(format!(
                "{}:{}: expected one node name or address, found '{entry}'",
                path.display(),
                i + 1
            )));
        }
        if let Some(first) = seen.insert(entry.to_string(), i + 1) {
            return Err(Error::Config(format!(
                "{}:{}: node '{entry}' is listed twice (first on line {first})",
                path.display(),
                i + 1
            )));
        }
        nodes.push(entry.to_string());
    }
    Ok(nodes)
}

/// The chain order as indices into `nodes` (given in join order). For a node
/// file, nodes it does not list go last, by IP, with a warning from the caller.
pub fn arrange(nodes: &[Candidate], order: &Order, listed: &[String]) -> (Vec<usize>, Vec<String>) {
    let mut idx: Vec<usize> = (0..nodes.len()).collect();
    let by_ip = |a: &usize, b: &usize| -> Ordering {
        let (x, y) = (&nodes[*a], &nodes[*b]);
        ip_key(x.ip).cmp(&ip_key(y.ip)).then_with(|| natural_cmp(&x.name, &y.name)).then(x.port.cmp(&y.port))
    };
    let mut unlisted = Vec::new();
    match order {
        Order::Join => {}
        Order::Ip => idx.sort_by(by_ip),
        Order::File(_) | Order::List(_) => {
            let rank = |c: &Candidate| {
                listed.iter().position(|l| *l == c.name || l.parse::<IpAddr>().ok() == Some(c.ip))
            };
            idx.sort_by(|a, b| match (rank(&nodes[*a]), rank(&nodes[*b])) {
                (Some(x), Some(y)) => x.cmp(&y),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => by_ip(a, b),
            });
            unlisted =
                idx.iter().filter(|i| rank(&nodes[**i]).is_none()).map(|i| nodes[*i].name.clone()).collect();
        }
    }
    (idx, unlisted)
}

/// Numeric order of addresses: IPv4 before IPv6, each by its full value (ka-deploy
/// compared octets from the last one and could overflow).
fn ip_key(ip: IpAddr) -> (u8, u128) {
    match ip {
        IpAddr::V4(v4) => (4, u32::from(v4) as u128),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (4, u32::from(v4) as u128),
            None => (6, u128::from(v6)),
        },
    }
}

/// `node2` before `node10`.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let na = std::str::from_utf8(&a[..da]).unwrap_or("0").trim_start_matches('0');
                let nb = std::str::from_utf8(&b[..db]).unwrap_or("0").trim_start_matches('0');
                let c = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
                if c != Ordering::Equal {
                    return c;
                }
                a = &a[da..];
                b = &b[db..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

/// Parent of chain position `pos` (1-based; the server is 0) in a tree of the
/// given arity: arity 1 is a chain, larger arities a complete k-ary tree.
pub fn tree_parent(pos: usize, arity: usize) -> usize {
    (pos - 1) / arity
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, ip: &str) -> Candidate {
        Candidate { name: name.into(), ip: ip.parse().unwrap(), port: 1 }
    }

    #[test]
    fn ip_order_is_numeric_not_by_last_octet() {
        let nodes = [c("a", "10.0.1.2"), c("b", "10.0.0.200"), c("c", "10.0.0.3"), c("d", "9.255.255.255")];
        let (idx, _) = arrange(&nodes, &Order::Ip, &[]);
        let names: Vec<_> = idx.iter().map(|i| nodes[*i].name.as_str()).collect();
        assert_eq!(names, ["d", "c", "b", "a"]);
    }

    #[test]
    fn same_address_orders_by_natural_name() {
        let nodes = [c("node10", "127.0.0.1"), c("node2", "127.0.0.1"), c("node1", "127.0.0.1")];
        let (idx, _) = arrange(&nodes, &Order::Ip, &[]);
        assert_eq!(idx, [2, 1, 0]);
    }

    #[test]
    fn file_order_puts_unlisted_nodes_last() {
        let nodes = [c("a", "10.0.0.1"), c("b", "10.0.0.2"), c("c", "10.0.0.3")];
        let listed = vec!["c".to_string(), "10.0.0.1".to_string()];
        let (idx, unlisted) = arrange(&nodes, &Order::File("f".into()), &listed);
        assert_eq!(idx, [2, 0, 1]);
        assert_eq!(unlisted, ["b"]);
    }

    #[test]
    fn tree_parents() {
        assert_eq!((1..=4).map(|p| tree_parent(p, 1)).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!((1..=6).map(|p| tree_parent(p, 2)).collect::<Vec<_>>(), [0, 0, 1, 1, 2, 2]);
    }

    #[test]
    fn node_file_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nodes");
        std::fs::write(&p, "# rack 1\nn1\nn2 # spare\n\nn1\n").unwrap();
        let e = read_node_file(&p).unwrap_err().to_string();
        assert!(e.ends_with("nodes:5: node 'n1' is listed twice (first on line 2)"), "{e}");
        std::fs::write(&p, "n1\nn2 n3\n").unwrap();
        assert!(read_node_file(&p).unwrap_err().to_string().contains("nodes:2: expected one node"));
    }

    #[test]
    fn order_parse_errors_are_clear() {
        assert_eq!("file:/x".parse::<Order>().unwrap(), Order::File("/x".into()));
        assert!("size".parse::<Order>().unwrap_err().to_string().contains("expected ip, join or file:PATH"));
    }
}
