//! The node's machine identity (step 3 of the module doc of [`super`]): a
//! fresh `etc/machine-id` (and its dbus copy) unless the clone is set for a
//! first boot, and fresh random seeds, so that no two nodes share an id or
//! start their entropy pool from the same bytes.

use std::fs;

use super::random::{hex, random_bytes, random_error};
use super::safe_path::Tree;
use crate::disk::error::Result;

/// A machine id is 128 random bits (`sd_id128_t`).
const MACHINE_ID_BYTES: usize = 16;

/// The mode systemd creates `machine-id` with, for when the clone has none
/// or a symlink.
const MACHINE_ID_MODE: u32 = 0o444;

/// A random seed is a secret: systemd keeps it `0600`.
const SEED_MODE: u32 = 0o600;

/// Random seeds are a few hundred bytes (systemd: the pool size, 512); a
/// larger file gets this many fresh bytes, more would add nothing.
const RANDOM_SEED_MAX: u64 = 4096;

/// Random seed files, refreshed when present (see the module doc of [`super`]).
const RANDOM_SEEDS: &[&str] = &[
    "var/lib/systemd/random-seed",
    "var/lib/urandom/random-seed",
    "var/lib/random-seed",
    "boot/efi/loader/random-seed",
    "efi/loader/random-seed",
];

pub(super) const MACHINE_ID: &str = "etc/machine-id";
const DBUS_MACHINE_ID: &str = "var/lib/dbus/machine-id";

/// What the clone's `etc/machine-id` became.
enum MachineId {
    /// There was none: the dbus copy, if regular, gets this fresh id.
    Missing(String),
    /// Empty or `uninitialized`: the first boot makes one.
    FirstBoot,
    Renewed(String),
}

pub(super) fn renew_machine_id(tree: &Tree, log: &mut Vec<String>) -> Result<()> {
    let golden = tree.read(MACHINE_ID)?;
    let golden_id = golden.as_deref().map(|g| String::from_utf8_lossy(g).trim().to_ascii_lowercase());
    let state = match golden_id.as_deref() {
        None => {
            log.push(format!("no /{MACHINE_ID} in the clone: left so"));
            MachineId::Missing(fresh_machine_id("")?)
        }
        Some("") | Some("uninitialized") => {
            log.push(format!(
                "/{MACHINE_ID} is the first-boot placeholder: kept, the node's first boot makes the id"
            ));
            MachineId::FirstBoot
        }
        Some(golden) => {
            let id = fresh_machine_id(golden)?;
            tree.replace(MACHINE_ID, format!("{id}\n").as_bytes(), MACHINE_ID_MODE, log)?;
            log.push(format!("new machine id {id} in /{MACHINE_ID}"));
            MachineId::Renewed(id)
        }
    };
    renew_dbus_machine_id(tree, &state, log)
}

fn renew_dbus_machine_id(tree: &Tree, state: &MachineId, log: &mut Vec<String>) -> Result<()> {
    let path = tree.resolve(DBUS_MACHINE_ID, false)?;
    let Ok(meta) = fs::symlink_metadata(&path) else { return Ok(()) };
    if meta.file_type().is_symlink() {
        log.push(format!("/{DBUS_MACHINE_ID} is a symlink: left as is"));
        return Ok(());
    }
    if !meta.is_file() {
        return Ok(());
    }
    match state {
        MachineId::Missing(id) | MachineId::Renewed(id) => {
            tree.replace(DBUS_MACHINE_ID, format!("{id}\n").as_bytes(), MACHINE_ID_MODE, log)?;
            log.push(format!("machine id {id} in /{DBUS_MACHINE_ID}"));
        }
        MachineId::FirstBoot => {
            tree.remove(DBUS_MACHINE_ID)?;
            log.push(format!(
                "removed /{DBUS_MACHINE_ID}: dbus reads /{MACHINE_ID} once the first boot made it"
            ));
        }
    }
    Ok(())
}

/// 32 lowercase hex digits of a random version-4 id, as systemd makes them,
/// different from `golden`.
fn fresh_machine_id(golden: &str) -> Result<String> {
    loop {
        let mut b = random_bytes(MACHINE_ID_BYTES).map_err(random_error)?;
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let id = hex(&b);
        if id != golden {
            return Ok(id);
        }
    }
}

pub(super) fn renew_random_seeds(tree: &Tree, log: &mut Vec<String>) -> Result<()> {
    for rel in RANDOM_SEEDS {
        let path = tree.resolve(rel, false)?;
        let Some(len) = fs::symlink_metadata(&path).ok().filter(|m| m.is_file()).map(|m| m.len()) else {
            continue;
        };
        let seed = random_bytes(len.clamp(1, RANDOM_SEED_MAX) as usize).map_err(random_error)?;
        tree.replace(rel, &seed, SEED_MODE, log)?;
        log.push(format!("new random seed in /{rel}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs::{self, Permissions};
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::path::Path;

    use super::super::test_util::{is_machine_id, mode, prepare, read, system, write};
    use super::*;

    #[test]
    fn machine_id_is_renewed_everywhere_it_is_a_file() {
        let root = system();
        let r = root.path();
        let golden = "0123456789abcdef0123456789abcdef\n";
        write(r, MACHINE_ID, golden);
        fs::set_permissions(r.join(MACHINE_ID), Permissions::from_mode(0o444)).unwrap();
        write(r, DBUS_MACHINE_ID, golden);
        let log = prepare(r);
        let id = read(r, MACHINE_ID);
        assert!(is_machine_id(&id), "{id:?}");
        assert_ne!(id, golden);
        assert_eq!(&id[12..13], "4", "version 4, as systemd makes them");
        assert_eq!(read(r, DBUS_MACHINE_ID), id);
        assert_eq!(mode(&r.join(MACHINE_ID)), 0o444);
        assert!(log.iter().any(|l| l.contains(id.trim())), "{log:?}");
        // Another node, another id (0444: replaced, not rewritten in place).
        fs::remove_file(r.join(MACHINE_ID)).unwrap();
        write(r, MACHINE_ID, golden);
        prepare(r);
        let again = read(r, MACHINE_ID);
        assert!(is_machine_id(&again) && again != id && again != golden);
    }

    #[test]
    fn first_boot_machine_id_stays_empty_and_the_dbus_link_stays() {
        for placeholder in ["", "uninitialized\n"] {
            let root = system();
            let r = root.path();
            write(r, MACHINE_ID, placeholder);
            fs::create_dir_all(r.join("var/lib/dbus")).unwrap();
            symlink("/etc/machine-id", r.join(DBUS_MACHINE_ID)).unwrap();
            prepare(r);
            assert_eq!(read(r, MACHINE_ID), placeholder);
            assert_eq!(fs::read_link(r.join(DBUS_MACHINE_ID)).unwrap(), Path::new("/etc/machine-id"));
        }
    }

    #[test]
    fn first_boot_machine_id_drops_a_dbus_copy() {
        let root = system();
        let r = root.path();
        write(r, MACHINE_ID, "");
        write(r, DBUS_MACHINE_ID, "0123456789abcdef0123456789abcdef\n");
        prepare(r);
        assert_eq!(read(r, MACHINE_ID), "");
        assert!(fs::symlink_metadata(r.join(DBUS_MACHINE_ID)).is_err());
    }

    #[test]
    fn without_etc_machine_id_a_dbus_copy_gets_a_fresh_id() {
        let root = system();
        let r = root.path();
        let golden = "0123456789abcdef0123456789abcdef\n";
        write(r, DBUS_MACHINE_ID, golden);
        prepare(r);
        assert!(!r.join(MACHINE_ID).exists());
        let id = read(r, DBUS_MACHINE_ID);
        assert!(is_machine_id(&id) && id != golden, "{id:?}");
    }

    #[test]
    fn random_seeds_are_renewed_with_their_length() {
        let root = system();
        let r = root.path();
        let golden = vec![7u8; 512];
        write(r, "var/lib/systemd/random-seed", "");
        fs::write(r.join("var/lib/systemd/random-seed"), &golden).unwrap();
        fs::set_permissions(r.join("var/lib/systemd/random-seed"), Permissions::from_mode(0o600)).unwrap();
        prepare(r);
        let seed = fs::read(r.join("var/lib/systemd/random-seed")).unwrap();
        assert_eq!(seed.len(), 512);
        assert_ne!(seed, golden);
        assert_eq!(mode(&r.join("var/lib/systemd/random-seed")), 0o600);
        assert!(!r.join("var/lib/urandom/random-seed").exists(), "no seed is created");
    }
}
