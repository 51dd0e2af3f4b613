//! Helpers shared by the unit tests of the bootloader's modules: a
//! [`GrubTarget`] to vary, and whether the tests run as root (bind mounts and
//! device nodes need it).

use std::path::Path;

use super::GrubTarget;
use crate::disk::Label;

pub(super) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub(super) fn target<'a>(root: &'a Path, disk: &'a Path, esp: Option<&'a Path>) -> GrubTarget<'a> {
    GrubTarget {
        root,
        disk,
        label: Label::Dos,
        first_partition_start: 2048,
        bios_boot: None,
        boot_fs_uuid: "0c8a2f4e-2b7e-4c1a-9f0e-1d2c3b4a5f60",
        boot_is_separate: false,
        boot_fstype: "ext4",
        esp,
        esp_device: None,
    }
}
