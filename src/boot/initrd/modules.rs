//! Which kernel modules go into the initrd, in the order init loads them,
//! read from the kernel's own `modules.dep` (what `depmod` wrote), so that
//! init needs no modprobe.

use std::collections::{BTreeMap, BTreeSet};

/// The drivers a node needs to reach the golden node and write its disks:
/// virtio for VMs, the common server NICs and storage controllers, and the
/// filesystems kacast mounts. Those this kernel lacks (or has built in) are
/// skipped.
pub const DEFAULT: &[&str] = &[
    // virtio (VMs)
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    // NICs
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "i40e",
    "r8169",
    "tg3",
    "bnx2",
    "bnxt_en",
    "mlx4_en",
    "mlx5_core",
    // storage
    "ahci",
    "nvme",
    "sd_mod",
    "megaraid_sas",
    "mpt3sas",
    // filesystems
    "crc32c_intel",
    "ext4",
    "xfs",
    "btrfs",
];

/// `modules.dep`, as module name → (path, dependencies' paths).
pub struct DepTable {
    by_name: BTreeMap<String, (String, Vec<String>)>,
    by_path: BTreeMap<String, Vec<String>>,
    builtin: BTreeSet<String>,
}

/// `kernel/fs/ext4/ext4.ko` → `ext4`; dashes and underscores are one in
/// module names (`crc32c-intel.ko` is `crc32c_intel`).
pub fn name_of(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

impl DepTable {
    pub fn parse(modules_dep: &str, modules_builtin: &str) -> DepTable {
        let mut by_name = BTreeMap::new();
        let mut by_path = BTreeMap::new();
        for line in modules_dep.lines() {
            let Some((path, deps)) = line.split_once(':') else { continue };
            let deps: Vec<String> = deps.split_whitespace().map(str::to_string).collect();
            by_name.insert(name_of(path), (path.to_string(), deps.clone()));
            by_path.insert(path.to_string(), deps);
        }
        let builtin = modules_builtin.lines().map(name_of).collect();
        DepTable { by_name, by_path, builtin }
    }

    /// The paths to load, dependencies first, each once; and the wanted
    /// names this kernel has neither as a module nor built in.
    pub fn resolve(&self, wanted: &[&str]) -> (Vec<String>, Vec<String>) {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        let mut missing = Vec::new();
        for w in wanted {
            let w = w.replace('-', "_");
            match self.by_name.get(&w) {
                Some((path, _)) => self.visit(path, &mut seen, &mut order),
                None if self.builtin.contains(&w) => {}
                None => missing.push(w),
            }
        }
        (order, missing)
    }

    fn visit(&self, path: &str, seen: &mut BTreeSet<String>, order: &mut Vec<String>) {
        if !seen.insert(path.to_string()) {
            return;
        }
        // modules.dep lists a module's whole closure; visiting each
        // dependency's own list first puts every module after what it needs.
        for dep in self.by_path.get(path).into_iter().flatten() {
            self.visit(dep, seen, order);
        }
        order.push(path.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str =
        "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n\
kernel/fs/jbd2/jbd2.ko:\n\
kernel/fs/mbcache.ko:\n\
kernel/lib/crc16.ko:\n\
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n\
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
kernel/net/core/failover.ko:\n\
kernel/arch/x86/crypto/crc32c-intel.ko:\n";

    #[test]
    fn dependencies_come_first_and_once() {
        let t = DepTable::parse(DEP, "kernel/drivers/virtio/virtio.ko\n");
        let (order, missing) = t.resolve(&["virtio_net", "ext4", "crc32c-intel", "virtio", "nosuch", "ext4"]);
        assert_eq!(
            order,
            [
                "kernel/net/core/failover.ko",
                "kernel/drivers/net/net_failover.ko",
                "kernel/drivers/net/virtio_net.ko",
                "kernel/lib/crc16.ko",
                "kernel/fs/mbcache.ko",
                "kernel/fs/jbd2/jbd2.ko",
                "kernel/fs/ext4/ext4.ko",
                "kernel/arch/x86/crypto/crc32c-intel.ko",
            ]
        );
        assert_eq!(missing, ["nosuch"]);
    }
}
