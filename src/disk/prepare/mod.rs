//! Making a freshly cloned root tree a node of its own.
//!
//! Once the golden node's tree is extracted under a root (`/mnt/kacast`), every
//! node is a byte-for-byte copy of the golden one: same NIC names pinned to the
//! golden MACs, same DHCP client identity, same machine id, same SSH host keys,
//! same hostname. ka-deploy's `ka_replication.sh` fixed some of it;
//! [`prepare_node`] fixes all of it, and [`rewrite_uuids`] makes the boot
//! configuration follow the fresh filesystem UUIDs of `--new-uuids`. Both
//! return what they did, for the node's log and the rack report.
//!
//! # What [`prepare_node`] does, and why each way
//!
//! 1. **Persistent NIC names**: removes `etc/udev/rules.d/70-persistent-net.rules`,
//!    which pins `eth0` to the golden's MAC so a node's NICs would come up as
//!    `eth1`…. `75-persistent-net-generator.rules` in `etc/udev/rules.d` is
//!    always **kept**: the generator itself lives in `lib/udev/rules.d`, so a
//!    file of that name in `etc` is the admin's override, and normally the
//!    documented way to *disable* the generator (a link to `/dev/null`);
//!    removing it would bring the renaming back on the node. `HWADDR=` lines
//!    of `etc/sysconfig/network-scripts/ifcfg-*` bind an interface to the
//!    golden's MAC the same way (the interface never comes up on a node): they
//!    are dropped, as virt-sysprep does.
//! 2. **DHCP client state**, so a node does not ask for the golden's address or
//!    present its identity: dhclient leases (`var/lib/dhcp/*.leases` except
//!    `dhcpd*.leases`, which is an ISC DHCP *server*'s lease database that
//!    dhcpd refuses to start without; everything in `var/lib/dhclient`),
//!    NetworkManager (`*.lease`, `internal-*`, and `secret_key`, from which it
//!    derives stable IPv6 addresses: shared, every node would take the same
//!    address; NetworkManager makes a new one), dhcpcd (`*.lease*`, and its
//!    `duid` and `secret`, in `var/lib/dhcpcd`, `var/lib/dhcpcd5` and
//!    `etc/dhcpcd.*`: dhcpcd sends the DUID as its DHCPv4 client id, so a
//!    shared one gets every node the same lease), systemd-networkd (files
//!    named `*lease*` in `var/lib/systemd/network`; its client leases live in
//!    `/run`, and it derives its DUID from the machine id, renewed below) and
//!    wicked (`lease-*`, `duid.xml`, `iaid.xml`). Directories are not entered.
//! 3. **Machine id**: a fresh random `etc/machine-id` (32 lowercase hex digits
//!    and a newline, with the version-4 bits systemd sets, never the golden's).
//!    An **empty** file, or one saying `uninitialized`, is systemd's "first
//!    boot" convention for images: it is kept so that the node's first boot
//!    generates the id and runs its first-boot units. A missing file stays
//!    missing (distributions without systemd have none). A regular
//!    `var/lib/dbus/machine-id` gets the same id; a symlink (normally to
//!    `/etc/machine-id`) is left alone; with a first-boot `etc/machine-id` a
//!    regular dbus copy is removed, since libdbus falls back to
//!    `/etc/machine-id` (and `dbus-uuidgen --ensure` recreates it).
//!    Random seeds (`var/lib/systemd/random-seed`, `var/lib/urandom/random-seed`,
//!    `var/lib/random-seed`, systemd-boot's `loader/random-seed` on the ESP)
//!    get fresh random bytes of the same length, so the nodes do not all start
//!    their entropy pool from the same seed.
//! 4. **SSH host keys** (only when the clone has `etc/ssh`): unless
//!    [`Prepare::keep_ssh_host_keys`], removes `ssh_host_*_key` and
//!    `ssh_host_*_key.pub` (host certificates are kept: re-signing them is the
//!    admin's CA's job) and generates new ones:
//!    - with the clone's own `usr/bin/ssh-keygen`, `chroot ROOT ssh-keygen -A`:
//!      it makes the key types and key file format the clone's sshd reads (a
//!      newer ssh-keygen writes private keys an old sshd cannot load). A
//!      clone's `/dev` is empty and ssh-keygen will not start without
//!      `/dev/null`, so `dev/null` and `dev/urandom` are created for the run
//!      when missing, and removed after it;
//!    - if that cannot run (not root, another architecture, a library or
//!      `/dev/urandom` missing in the clone), with this host's ssh-keygen:
//!      `ssh-keygen -A -f PREFIX` writes `PREFIX/etc/ssh/ssh_host_*` (checked
//!      with OpenSSH 9.2; older releases ignore `-f` with `-A`, which is
//!      detected: no key appears). PREFIX is a fresh directory inside the
//!      clone's `etc/ssh`, and the keys are then renamed into place, so a
//!      symlinked `etc/ssh` is never followed out of the root;
//!    - with no ssh-keygen in either, the keys stay removed and the report
//!      says sshd needs `ssh-keygen -A` before it can start (RHEL's
//!      `sshd-keygen` does that at boot, Debian's sshd does not).
//!
//!    Keys end `0600` (private) and `0644` (public) whatever the umask.
//! 5. **Hostname** (when [`Prepare::hostname`] is set, checked with
//!    [`valid_hostname`] before anything is changed): writes `etc/hostname`;
//!    in `etc/hosts` the names of every `127.0.1.1` line (Debian's line for
//!    the host's own name) become `FQDN SHORT` (or `NAME`), or such a line is
//!    appended. The golden's name (read from its `etc/hostname`) is also
//!    replaced on the other loopback lines (`127.*`, `::1`): left there, the
//!    node would resolve the golden's name to itself. Other addresses are the
//!    cluster's table and are left as they are.
//!
//! # Symlinks never lead out of the root
//!
//! The tree is the golden node's, and its absolute symlinks mean paths of the
//! golden system; followed as they are, `etc/hostname -> /etc/hostname.real`
//! would write into the *node's running system* (the initrd). Every path is
//! therefore resolved component by component as the node will resolve it
//! once booted: an absolute target starts again at ROOT, `..` stops at ROOT,
//! at most [`MAX_SYMLINKS`] links (the kernel's limit). On top of that:
//! - the files [`prepare_node`] writes (`etc/hostname`, `etc/hosts`,
//!   `etc/machine-id`, …) are replaced by a regular file when they are a
//!   symlink, never written through: their content must be what the node
//!   reads at boot, and a link's target may be on a tmpfs (`/run`) or on a
//!   file system that is not part of the clone. The report says so.
//! - removals remove the link, not its target, and never enter a directory
//!   reached through a link except by the in-root resolution above.
//! - [`rewrite_uuids`] follows links in-root instead: distributions link boot
//!   files on purpose (RHEL's `boot/grub2/grubenv -> ../efi/EFI/redhat/grubenv`)
//!   and the target is part of the clone; a dangling link is skipped.
//!
//! The tree is assumed not to change under us (nothing runs in it yet).
//! Refusing ROOT `/` keeps a mistaken call from renaming the running system.
//!
//! # Writing files
//!
//! Every file is written atomically: a new file in the same directory, then
//! `rename` over the old one, so a node losing power leaves the old or the new
//! file, never half of one. An existing file's mode, owner and extended
//! attributes (SELinux label, ACLs) are carried over; a new file gets the
//! mode its distribution uses (`0644`, `0444` for the machine id).
//!
//! # UUID references ([`rewrite_uuids`])
//!
//! Each old UUID is replaced by its new one in the files a boot reads
//! ([`UUID_FILES`]). A reference is a whole *token*, a maximal run of ASCII
//! letters, digits and `-`, compared without regard to case, so a UUID that
//! is a prefix of another, or the tail of a `luks-UUID` device-mapper name, is
//! never touched. New UUIDs are written in blkid's case: standard 36-character
//! UUIDs lowercase, anything else (vfat/exfat `ABCD-1234`, NTFS serials)
//! uppercase. A GRUB environment block (`grubenv`) keeps its 1024 bytes by
//! adjusting its `#` padding. Initramfs images embed UUIDs too (Debian's
//! `resume`, dracut's host-only root): they must be rebuilt after this.

use std::path::Path;

use super::error::Result;

mod atomic;
mod hostname;
mod identity;
mod network;
mod random;
mod safe_path;
mod ssh;
#[cfg(test)]
mod test_util;
mod uuids;

pub use hostname::{valid_hostname, HOSTNAME_MAX};
pub use safe_path::MAX_SYMLINKS;
pub use uuids::{rewrite_uuids, UUID_FILES};

use hostname::{check_hostname, set_hostname};
use identity::{renew_machine_id, renew_random_seeds};
use network::{drop_dhcp_state, drop_mac_bindings, drop_persistent_net};
use safe_path::Tree;
use ssh::renew_ssh_host_keys;

/// The mode the distributions create configuration files (`hostname`,
/// `hosts`, …) with, for when the clone has none or a symlink.
const CONFIG_MODE: u32 = 0o644;

/// What makes a cloned tree a distinct node (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct Prepare {
    /// `None`: `etc/hostname` and `etc/hosts` are left as they are.
    pub hostname: Option<String>,
    /// Keep the golden node's SSH host keys (default: new ones).
    pub keep_ssh_host_keys: bool,
}

/// Makes the tree under `root` a node of its own; returns one line per thing
/// done, for the node's log and report. Checks the hostname before changing
/// anything.
pub fn prepare_node(root: &Path, p: &Prepare) -> Result<Vec<String>> {
    if let Some(name) = &p.hostname {
        check_hostname(name)?;
    }
    let tree = Tree::system(root)?;
    let mut log = Vec::new();
    drop_persistent_net(&tree, &mut log)?;
    drop_mac_bindings(&tree, &mut log)?;
    drop_dhcp_state(&tree, &mut log)?;
    renew_machine_id(&tree, &mut log)?;
    renew_random_seeds(&tree, &mut log)?;
    renew_ssh_host_keys(&tree, p.keep_ssh_host_keys, &mut log)?;
    if let Some(name) = &p.hostname {
        set_hostname(&tree, name, &mut log)?;
    }
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::network::PERSISTENT_NET_RULES;
    use super::test_util::{named, system, write};
    use super::*;

    #[test]
    fn an_invalid_hostname_is_named_and_nothing_changes() {
        let root = system();
        let r = root.path();
        write(r, PERSISTENT_NET_RULES, "x\n");
        let e = prepare_node(r, &named("bad_host")).unwrap_err().to_string();
        assert!(e.contains("'bad_host'"), "{e}");
        assert!(r.join(PERSISTENT_NET_RULES).exists());
    }
}
