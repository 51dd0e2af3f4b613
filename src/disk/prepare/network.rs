//! Network identity the golden node left in its tree (steps 1 and 2 of the
//! module doc of [`super`]): udev's persistent NIC names and `HWADDR=`
//! bindings to the golden's MACs, and every DHCP client's leases, DUIDs and
//! secrets, so a node neither renames its NICs nor asks for the golden's
//! address under the golden's identity.

use std::fs;

use super::safe_path::Tree;
use super::CONFIG_MODE;
use crate::disk::error::{DiskError, Result};

/// The rules file udev's generator wrote with the golden's MACs.
pub(super) const PERSISTENT_NET_RULES: &str = "etc/udev/rules.d/70-persistent-net.rules";

/// RHEL-family interface configurations, whose `HWADDR=` binds to one MAC.
const IFCFG_DIR: &str = "etc/sysconfig/network-scripts";

pub(super) fn drop_persistent_net(tree: &Tree, log: &mut Vec<String>) -> Result<()> {
    if tree.remove(PERSISTENT_NET_RULES)? {
        log.push(format!("removed /{PERSISTENT_NET_RULES} (NIC names pinned to the golden's MACs)"));
    }
    Ok(())
}

/// Drops `HWADDR=` from every `ifcfg-*`.
pub(super) fn drop_mac_bindings(tree: &Tree, log: &mut Vec<String>) -> Result<()> {
    for name in tree.entries(IFCFG_DIR)? {
        if !name.starts_with("ifcfg-") {
            continue;
        }
        let rel = format!("{IFCFG_DIR}/{name}");
        let Some(path) = tree.file(&rel)? else { continue };
        let text = fs::read(&path).map_err(|e| DiskError::io(tree.show(&path), e))?;
        if let Some(kept) = without_hwaddr(&text) {
            tree.replace(&rel, &kept, CONFIG_MODE, log)?;
            log.push(format!("removed HWADDR (the golden's MAC) from {}", tree.show(&path)));
        }
    }
    Ok(())
}

/// `text` without its `HWADDR=` lines, if it had any.
fn without_hwaddr(text: &[u8]) -> Option<Vec<u8>> {
    let is_hwaddr = |line: &[u8]| line.trim_ascii_start().starts_with(b"HWADDR=");
    let lines: Vec<&[u8]> = text.split_inclusive(|&b| b == b'\n').collect();
    lines
        .iter()
        .any(|l| is_hwaddr(l))
        .then(|| lines.into_iter().filter(|l| !is_hwaddr(l)).flatten().copied().collect())
}

/// Files of one directory that hold a DHCP client's state.
struct Sweep {
    dir: &'static str,
    what: &'static str,
    matches: fn(&str) -> bool,
}

/// See the module doc of [`super`] for why each, and why not more.
const DHCP_STATE: &[Sweep] = &[
    Sweep {
        dir: "var/lib/dhcp",
        what: "DHCP lease",
        matches: |n| n.ends_with(".leases") && !n.starts_with("dhcpd"),
    },
    Sweep { dir: "var/lib/dhclient", what: "dhclient state", matches: |_| true },
    Sweep {
        dir: "var/lib/NetworkManager",
        what: "NetworkManager lease or secret",
        matches: |n| n.ends_with(".lease") || n.starts_with("internal-") || n == "secret_key",
    },
    Sweep { dir: "var/lib/dhcpcd", what: "dhcpcd lease or identity", matches: dhcpcd_state },
    Sweep { dir: "var/lib/dhcpcd5", what: "dhcpcd lease or identity", matches: dhcpcd_state },
    Sweep { dir: "etc", what: "dhcpcd identity", matches: |n| n == "dhcpcd.duid" || n == "dhcpcd.secret" },
    Sweep {
        dir: "var/lib/systemd/network",
        what: "systemd-networkd lease",
        matches: |n| n.contains("lease"),
    },
    Sweep {
        dir: "var/lib/wicked",
        what: "wicked lease or identity",
        matches: |n| n.starts_with("lease-") || n == "duid.xml" || n == "iaid.xml",
    },
];

fn dhcpcd_state(name: &str) -> bool {
    name.contains(".lease") || name == "duid" || name == "secret"
}

pub(super) fn drop_dhcp_state(tree: &Tree, log: &mut Vec<String>) -> Result<()> {
    for sweep in DHCP_STATE {
        for name in tree.entries(sweep.dir)? {
            let rel = format!("{}/{name}", sweep.dir);
            if (sweep.matches)(&name) && tree.remove(&rel)? {
                log.push(format!("removed /{rel} ({})", sweep.what));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use super::super::test_util::{prepare, read, system, write};
    use super::*;

    #[test]
    fn persistent_net_rules_go_the_generator_override_stays() {
        let root = system();
        let r = root.path();
        write(
            r,
            PERSISTENT_NET_RULES,
            "SUBSYSTEM==\"net\", ATTR{address}==\"52:54:00:aa:bb:cc\", NAME=\"eth0\"\n",
        );
        symlink("/dev/null", r.join("etc/udev/rules.d/75-persistent-net-generator.rules")).unwrap();
        write(r, "etc/udev/rules.d/99-local.rules", "# mine\n");
        write(
            r,
            "etc/sysconfig/network-scripts/ifcfg-eth0",
            "DEVICE=eth0\nHWADDR=52:54:00:aa:bb:cc\nONBOOT=yes\n",
        );
        write(r, "etc/sysconfig/network-scripts/keep-me", "HWADDR=52:54:00:aa:bb:cc\n");
        let log = prepare(r);
        assert!(!r.join(PERSISTENT_NET_RULES).exists());
        assert!(fs::symlink_metadata(r.join("etc/udev/rules.d/75-persistent-net-generator.rules")).is_ok());
        assert!(r.join("etc/udev/rules.d/99-local.rules").exists());
        assert_eq!(read(r, "etc/sysconfig/network-scripts/ifcfg-eth0"), "DEVICE=eth0\nONBOOT=yes\n");
        assert_eq!(read(r, "etc/sysconfig/network-scripts/keep-me"), "HWADDR=52:54:00:aa:bb:cc\n");
        assert!(log.iter().any(|l| l.contains("70-persistent-net.rules")), "{log:?}");
        assert!(log.iter().any(|l| l.contains("HWADDR")), "{log:?}");
    }

    #[test]
    fn dhcp_state_goes_the_rest_stays() {
        let root = system();
        let r = root.path();
        let gone = [
            "var/lib/dhcp/dhclient.leases",
            "var/lib/dhcp/dhclient.eth0.leases",
            "var/lib/dhcp/dhclient6.leases",
            "var/lib/dhclient/dhclient-0f1e-eth0.lease",
            "var/lib/dhclient/dhclient.leases",
            "var/lib/NetworkManager/dhclient-0f1e-eth0.lease",
            "var/lib/NetworkManager/internal-0f1e-eth0.lease",
            "var/lib/NetworkManager/internal-0f1e-eth0",
            "var/lib/NetworkManager/secret_key",
            "var/lib/dhcpcd/dhcpcd-eth0.lease",
            "var/lib/dhcpcd/eth0.lease6",
            "var/lib/dhcpcd/duid",
            "var/lib/dhcpcd5/eth0.lease",
            "etc/dhcpcd.duid",
            "var/lib/systemd/network/eth0.lease",
            "var/lib/wicked/lease-eth0-dhcp-ipv4.xml",
            "var/lib/wicked/duid.xml",
        ];
        let kept = [
            "var/lib/dhcp/dhcpd.leases",
            "var/lib/dhcp/dhcpd6.leases",
            "var/lib/dhcp/README",
            "var/lib/NetworkManager/timestamps",
            "var/lib/NetworkManager/NetworkManager.state",
            "var/lib/dhcpcd/dhcpcd.conf.sample",
            "var/lib/wicked/README",
            "etc/dhcpcd.conf",
        ];
        for rel in gone.iter().chain(&kept) {
            write(r, rel, "x\n");
        }
        write(r, "var/lib/dhclient/sub/keep.lease", "x\n");
        let log = prepare(r);
        for rel in gone {
            assert!(!r.join(rel).exists(), "{rel} should be gone");
            assert!(log.iter().any(|l| l.contains(rel)), "{rel} not reported: {log:?}");
        }
        for rel in kept {
            assert!(r.join(rel).exists(), "{rel} should stay");
        }
        assert!(r.join("var/lib/dhclient/sub/keep.lease").exists(), "directories are not entered");
    }

    #[test]
    fn a_lease_directory_linked_out_of_the_root_is_resolved_inside() {
        let root = system();
        let outside = tempfile::tempdir().unwrap();
        let r = root.path();
        write(outside.path(), "dhclient.leases", "the running system's lease\n");
        fs::create_dir_all(r.join("var/lib")).unwrap();
        symlink(outside.path(), r.join("var/lib/dhcp")).unwrap();
        // The same absolute path inside the clone is the one the node sees.
        let inside = r.join(outside.path().strip_prefix("/").unwrap());
        fs::create_dir_all(&inside).unwrap();
        fs::write(inside.join("dhclient.leases"), "the clone's lease\n").unwrap();
        let log = prepare(r);
        assert!(outside.path().join("dhclient.leases").exists());
        assert!(!inside.join("dhclient.leases").exists(), "{log:?}");
    }
}
