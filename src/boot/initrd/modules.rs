//! Which kernel modules go into the initrd, and the order the init loads them
//! in: read from the kernel's own `modules.dep` and `modules.builtin`, so the
//! init needs only `insmod` (busybox's modprobe does not read every kernel's
//! compressed or softdep'd modules the same way), and a module that is built
//! into this kernel is not looked for.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;

use super::error::{BuildError, Result};

/// What a node needs to reach the golden node and write its disks, on a VM or
/// on common server hardware. Modules this kernel lacks are skipped (with a
/// warning), so the list may name more than any one kernel has. Order
/// matters where the kernel finds a module by name at run time rather than
/// by symbol: crc32c before ext4 (jbd2's checksums ask the crypto API for
/// "crc32c"), virtio before its drivers.
pub const DEFAULT_MODULES: &[&str] = &[
    // virtio (QEMU/KVM and most clouds)
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    // common NICs
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
    // disks
    "libata",
    "libahci",
    "ahci",
    "ata_piix",
    "ata_generic",
    "nvme",
    "sd_mod",
    "megaraid_sas",
    "mpt3sas",
    "mptsas",
    // filesystems kacast install makes and mounts
    "crc16",
    "crc32c_generic",
    "crc32c_intel",
    "mbcache",
    "jbd2",
    "ext4",
    "xfs",
    "btrfs",
    "jfs",
];

/// A kernel's module files, by module name.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    /// name → (path relative to `/lib/modules/VERSION`, its dependencies' paths)
    modules: HashMap<String, (String, Vec<String>)>,
    builtin: HashSet<String>,
}

/// The modules to load, in order, and what was left out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Paths relative to `/lib/modules/VERSION`, each after its dependencies.
    pub load: Vec<String>,
    /// Asked for, but built into the kernel: nothing to load.
    pub builtin: Vec<String>,
    /// Asked for, but neither a module nor built in.
    pub missing: Vec<String>,
}

/// A module's name as the kernel knows it: the file name without `.ko` (and
/// compression suffix), with `-` as `_` (`crc32c-intel.ko` is `crc32c_intel`).
pub fn module_name(path_or_name: &str) -> String {
    let base = path_or_name.rsplit('/').next().unwrap_or(path_or_name);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

impl ModuleIndex {
    /// From the text of `modules.dep` and `modules.builtin`.
    pub fn parse(modules_dep: &str, modules_builtin: &str) -> ModuleIndex {
        let mut modules = HashMap::new();
        for line in modules_dep.lines() {
            let Some((path, deps)) = line.split_once(':') else { continue };
            let deps = deps.split_whitespace().map(String::from).collect();
            modules.insert(module_name(path), (path.trim().to_string(), deps));
        }
        let builtin = modules_builtin.lines().filter(|l| !l.trim().is_empty()).map(module_name).collect();
        ModuleIndex { modules, builtin }
    }

    /// From a kernel's module directory (`/lib/modules/VERSION`).
    pub fn load(dir: &Path) -> Result<ModuleIndex> {
        let read = |name: &str| {
            fs::read_to_string(dir.join(name)).map_err(|e| {
                BuildError::io(format!("read {} (was depmod run?)", dir.join(name).display()), e)
            })
        };
        Ok(ModuleIndex::parse(&read("modules.dep")?, &read("modules.builtin").unwrap_or_default()))
    }

    /// The load order for `wanted`: every module after all it depends on,
    /// each once, in the order asked where dependencies allow.
    pub fn resolve<S: AsRef<str>>(&self, wanted: &[S]) -> Resolution {
        let mut r = Resolution::default();
        let by_path: HashMap<&str, &Vec<String>> =
            self.modules.values().map(|(p, deps)| (p.as_str(), deps)).collect();
        let mut seen = HashSet::new();
        for w in wanted {
            let name = module_name(w.as_ref());
            match self.modules.get(&name) {
                Some((path, _)) => visit(path, &by_path, &mut seen, &mut r.load),
                None if self.builtin.contains(&name) => r.builtin.push(name),
                None => r.missing.push(name),
            }
        }
        r
    }
}

/// Depth-first: dependencies of `path` (as modules.dep lists them, each with
/// its own) before `path` itself.
fn visit<'a>(
    path: &'a str,
    by_path: &HashMap<&'a str, &'a Vec<String>>,
    seen: &mut HashSet<&'a str>,
    load: &mut Vec<String>,
) {
    if !seen.insert(path) {
        return;
    }
    if let Some(deps) = by_path.get(path) {
        for d in deps.iter() {
            visit(d, by_path, seen, load);
        }
    }
    load.push(path.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As depmod writes it: each module with all it needs, nearest first.
    const DEP: &str = "\
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/arch/x86/crypto/crc32c-intel.ko.xz:
";
    const BUILTIN: &str = "kernel/net/packet/af_packet.ko\nkernel/drivers/ata/libata.ko\n";

    #[test]
    fn dependencies_load_first_and_once() {
        let idx = ModuleIndex::parse(DEP, BUILTIN);
        let r =
            idx.resolve(&["virtio_blk", "virtio_pci", "crc32c-intel", "ext4", "libata", "e1000", "virtio"]);
        assert_eq!(
            r.load,
            [
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/block/virtio_blk.ko",
                "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
                "kernel/drivers/virtio/virtio_pci.ko",
                "kernel/arch/x86/crypto/crc32c-intel.ko.xz",
                "kernel/lib/crc16.ko",
                "kernel/fs/mbcache.ko",
                "kernel/fs/jbd2/jbd2.ko",
                "kernel/fs/ext4/ext4.ko",
            ]
        );
        assert_eq!(r.builtin, ["libata"]);
        assert_eq!(r.missing, ["e1000"]);
    }

    #[test]
    fn names_as_the_kernel_spells_them() {
        assert_eq!(module_name("kernel/arch/x86/crypto/crc32c-intel.ko.zst"), "crc32c_intel");
        assert_eq!(module_name("virtio_net"), "virtio_net");
    }
}
