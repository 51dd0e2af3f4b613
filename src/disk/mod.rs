//! Partitioning a node's disk from a ka-deploy *desc* file.
//!
//! The nodes of a rack are rarely identical to the golden node down to the
//! sector, so ka-deploy did not copy the partition table: it read a short
//! description (`ka-d.sh -p sda desc`) and partitioned each node's disk from it.
//! kacast keeps that file format and splits the work in three steps, each
//! testable without a disk:
//!
//! 1. **desc** ([`Desc::parse`], [`Desc::from_file`], or
//!    [`Desc::from_sfdisk_json`] from the golden disk, like ka's
//!    `fdisk_to_desc`): the partitions, their types and sizes, validated.
//! 2. **layout** ([`Desc::layout`]): the desc placed on a disk of a given size,
//!    every start and size in 512-byte sectors, 1 MiB aligned.
//! 3. **apply** (later): [`Layout::to_sfdisk_script`] fed to the real sfdisk on
//!    the node.
//!
//! # Grammar
//!
//! One partition a line: `[logical] TYPE SIZE [ATTRIBUTES]`. `#` starts a
//! comment anywhere, blank lines are ignored, keywords are case-insensitive.
//!
//! - TYPE: ka's `linux` (`type83`), `swap` (`type82`), `extended` (`type05`)
//!   or `typeXX` (1–2 hex digits). Extension: `esp`, `lvm`, `raid`,
//!   `bios-boot`, `home`, `linux-root-x86-64`, and on GPT a type GUID.
//! - SIZE: ka's plain number of MiB (see [`MIB`] for why MiB) or `fill` (the
//!   rest of the disk, or of the extended partition for a logical). Extension:
//!   a unit (`512M`, `500MiB`, `20G`, `1T`, rounded up to a whole MiB) or a
//!   percentage `25%` of the scope's usable space.
//! - Primaries are numbered 1–4 in order (the extended counts as one),
//!   logicals from 5 in order, as the golden node's fstab expects.
//! - `fill` ends its scope: it must be the last primary, resp. the last
//!   logical; `extended fill` followed by logicals is fine. Percentages of one
//!   scope add up to at most 100%.
//!
//! Extensions, none of which ka-deploy reads: a first line `label gpt` (or
//! `label dos`, the default) selects a GPT table, with up to 128 partitions and
//! no extended/logical; the attributes `bootable` (MBR active flag, primaries)
//! and `name=ROOT` or `name="EFI system"` (GPT partition name). On GPT,
//! `type83`/`82`/`ef`/`8e`/`fd` mean linux/swap/esp/lvm/raid; on MBR the names
//! become codes (`esp` = ef, `lvm` = 8e, `raid` = fd, `home` and
//! `linux-root-x86-64` = 83) and `bios-boot` is refused. `docs/DESC.md` is the
//! user-facing reference.

pub mod apply;
pub mod blockdev;
pub mod bootloader;
pub mod compression;
mod desc;
pub mod env;
mod error;
pub mod fat;
mod fstab;
pub mod golden;
mod layout;
pub mod mkfs;
pub mod mount;
pub mod plan;
pub mod prepare;
pub mod recorded;
mod sfdisk;
mod size;
pub mod tar;
pub mod tool;
mod types;

pub use desc::{Desc, DescError, Partition, FIRST_LOGICAL, GPT_NAME_MAX, MBR_MAX_PRIMARIES};
pub use error::DiskError;
pub use layout::{Layout, LayoutError, Placed, ALIGN, GPT_BACKUP_SECTORS, MBR_MAX_SECTORS, SECTOR};
pub use plan::{
    BootEntry, BootKind, BootPlan, Excluded, Plan, PlanDisk, PlanError, PlanFs, PreparePlan, RawPartition,
};
pub use sfdisk::SFDISK_JSON_SOURCE;
pub use size::{Size, MIB};
pub use types::{Guid, Label, PartType, GPT_MAX_PARTITIONS, MBR_EXTENDED};
