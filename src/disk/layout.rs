//! Placing a desc on a disk of a given size: start and size of every partition
//! in 512-byte sectors.
//!
//! Every partition starts on a 1 MiB boundary, the first at 1 MiB. Each logical
//! partition is preceded by a 1 MiB gap holding its EBR (as fdisk and sfdisk
//! place them). A GPT disk keeps its last [`GPT_BACKUP_SECTORS`] for the backup
//! table. Fixed sizes are whole MiB, so only a `fill` partition may end off a
//! MiB boundary: it takes everything up to the end of its scope.

use std::fmt::Write as _;

use thiserror::Error;

use super::desc::{Desc, Partition};
use super::size::{Size, MIB};
use super::types::{Label, PartType};
use crate::size::human;

/// kacast lays out in 512-byte logical sectors, the size of nearly every disk
/// and the unit of sfdisk scripts; the script says so, so sfdisk refuses it on
/// a 4Kn disk instead of writing a wrong table.
pub const SECTOR: u64 = 512;

/// 1 MiB in sectors: the alignment fdisk, parted and sfdisk use, a multiple of
/// every SSD page, RAID stripe and 4K sector in practice. The first partition
/// starts here, which also leaves room for a boot loader after the MBR.
pub const ALIGN: u64 = MIB / SECTOR;

/// The backup GPT at the end of the disk: 32 sectors of entries (128 × 128
/// bytes) and the backup header.
pub const GPT_BACKUP_SECTORS: u64 = 33;

/// An MBR entry stores start and size as 32-bit sector counts: with 512-byte
/// sectors nothing past 2 TiB can be addressed.
pub const MBR_MAX_SECTORS: u64 = 1 << 32;

/// One partition placed on the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub number: u32,
    pub logical: bool,
    /// First sector.
    pub start: u64,
    /// Length in sectors.
    pub size: u64,
    pub ptype: PartType,
    pub bootable: bool,
    pub name: Option<String>,
}

impl Placed {
    /// Last sector (inclusive), as fdisk shows it.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.size).saturating_sub(1)
    }

    fn new(p: &Partition, start: u64, size: u64) -> Placed {
        Placed {
            number: p.number,
            logical: p.logical,
            start,
            size,
            ptype: p.ptype.clone(),
            bootable: p.bootable,
            name: p.name.clone(),
        }
    }
}

/// A desc laid out on a disk of a known size, ready to become a partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub label: Label,
    /// The whole disk in sectors.
    pub disk_sectors: u64,
    /// In number order (primaries, then logicals), as sfdisk wants them.
    pub partitions: Vec<Placed>,
}

/// A desc that does not fit the disk.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LayoutError {
    #[error("the partitions need {} but the disk has {}", show(.needed), show(.available))]
    TooSmall { needed: u64, available: u64 },
    #[error(
        "the partitions need {} but an MBR table addresses at most {}: add `label gpt`",
        show(.needed),
        show(&(MBR_MAX_SECTORS * SECTOR))
    )]
    MbrLimit { needed: u64 },
    #[error(
        "extended partition {number} has {} but its logical partitions need {} \
         (with 1 MiB before each for its EBR)",
        show(.size),
        show(.needed)
    )]
    ExtendedTooSmall { number: u32, size: u64, needed: u64 },
    #[error("partition {number}: {percent}% of {} is less than 1 MiB", human(*.of))]
    PercentTooSmall { number: u32, percent: u8, of: u64 },
}

/// `5.7 GiB (5804 MiB)`: readable, and exact enough to fix a desc by.
fn show(bytes: &u64) -> String {
    format!("{} ({} MiB)", human(*bytes), bytes.div_ceil(MIB))
}

/// A scope being filled: the disk, or the extended partition.
struct Scope {
    start: u64,
    /// Exclusive end of the usable area.
    end: u64,
    /// Room before each partition (the EBR gap for logicals).
    gap: u64,
    /// What percentages are of, in whole MiB.
    base_mib: u64,
}

impl Scope {
    /// Places `parts` one after the other. Returns them and the end the scope
    /// would need with every `fill` at its minimum of 1 MiB (and an extended
    /// `fill` at the minimum of its logicals), which may exceed `end`.
    fn place(&self, parts: &[&Partition], inner_need: u64) -> (Vec<Placed>, u64) {
        let (mut cursor, mut need) = (self.start, self.start);
        let mut placed = Vec::with_capacity(parts.len());
        for p in parts {
            let start = cursor.saturating_add(self.gap);
            let (size, min) = match p.size {
                Size::Mib(n) => (n.saturating_mul(ALIGN), n.saturating_mul(ALIGN)),
                Size::Percent(pct) => {
                    let size = percent_of(self.base_mib, pct).saturating_mul(ALIGN);
                    (size, size.max(ALIGN))
                }
                Size::Fill => {
                    let min = if p.is_extended() { inner_need } else { ALIGN };
                    (self.end.saturating_sub(start), min)
                }
            };
            cursor = start.saturating_add(size);
            need = need.saturating_add(self.gap).saturating_add(min);
            placed.push(Placed::new(p, start, size));
        }
        (placed, need)
    }
}

/// The least room an extended partition needs for its logicals.
fn logicals_need(logicals: &[&Partition]) -> u64 {
    let min = |p: &&Partition| match p.size {
        Size::Mib(n) => n.saturating_mul(ALIGN),
        Size::Percent(_) | Size::Fill => ALIGN,
    };
    let sum = logicals.iter().map(min).fold(0u64, u64::saturating_add);
    let gaps = ALIGN.saturating_mul(u64::try_from(logicals.len()).unwrap_or(u64::MAX));
    sum.saturating_add(gaps).max(ALIGN)
}

/// `pct`% of `mib`, rounded down, without the overflow of `mib * pct`.
fn percent_of(mib: u64, pct: u8) -> u64 {
    let pct = u64::from(pct);
    mib / 100 * pct + mib % 100 * pct / 100
}

fn zero_percent(placed: &[Placed], parts: &[&Partition], of: u64) -> Result<(), LayoutError> {
    for (pl, p) in placed.iter().zip(parts) {
        if let (0, Size::Percent(percent)) = (pl.size, p.size) {
            return Err(LayoutError::PercentTooSmall {
                number: p.number,
                percent,
                of: of.saturating_mul(SECTOR),
            });
        }
    }
    Ok(())
}

impl Desc {
    /// Places the partitions on a disk of `disk_bytes` bytes.
    pub fn layout(&self, disk_bytes: u64) -> Result<Layout, LayoutError> {
        let disk_sectors = disk_bytes / SECTOR;
        let (end, tail) = match self.label {
            Label::Dos => (disk_sectors.min(MBR_MAX_SECTORS), 0),
            Label::Gpt => (disk_sectors.saturating_sub(GPT_BACKUP_SECTORS), GPT_BACKUP_SECTORS),
        };
        let (primaries, logicals): (Vec<&Partition>, Vec<&Partition>) =
            self.partitions.iter().partition(|p| !p.logical);
        let disk = Scope { start: ALIGN, end, gap: 0, base_mib: end.saturating_sub(ALIGN) / ALIGN };
        let (mut placed, need) = disk.place(&primaries, logicals_need(&logicals));
        if need > end {
            let needed = need.saturating_add(tail);
            return Err(if needed <= disk_sectors {
                LayoutError::MbrLimit { needed: needed.saturating_mul(SECTOR) }
            } else {
                LayoutError::TooSmall { needed: needed.saturating_mul(SECTOR), available: disk_bytes }
            });
        }
        zero_percent(&placed, &primaries, disk.base_mib * ALIGN)?;
        if let Some(ext) = placed.iter().find(|p| p.ptype.is_extended()).cloned() {
            placed.extend(place_logicals(&ext, &logicals)?);
        }
        Ok(Layout { label: self.label, disk_sectors, partitions: placed })
    }
}

fn place_logicals(ext: &Placed, logicals: &[&Partition]) -> Result<Vec<Placed>, LayoutError> {
    let scope = Scope {
        start: ext.start,
        end: ext.start.saturating_add(ext.size),
        gap: ALIGN,
        base_mib: (ext.size / ALIGN).saturating_sub(logicals.len() as u64),
    };
    let (placed, need) = scope.place(logicals, 0);
    if need > scope.end {
        return Err(LayoutError::ExtendedTooSmall {
            number: ext.number,
            size: ext.size.saturating_mul(SECTOR),
            needed: need.saturating_sub(ext.start).saturating_mul(SECTOR),
        });
    }
    zero_percent(&placed, logicals, scope.base_mib * ALIGN)?;
    Ok(placed)
}

impl Layout {
    /// A human table for `kacast desc --check`.
    pub fn render_table(&self) -> String {
        let mut out = format!(
            "label {}, disk {} ({} sectors of {SECTOR} bytes)\n",
            self.label,
            human(self.disk_sectors.saturating_mul(SECTOR)),
            self.disk_sectors
        );
        let _ =
            writeln!(out, "{:>4} {:>12} {:>12} {:>12} {:>10}  type", "#", "start", "end", "sectors", "size");
        for p in &self.partitions {
            let mut kind = p.ptype.desc_word();
            if p.bootable {
                kind.push_str(" bootable");
            }
            match &p.name {
                Some(name) if name.contains(char::is_whitespace) => {
                    let _ = write!(kind, " name=\"{name}\"");
                }
                Some(name) => {
                    let _ = write!(kind, " name={name}");
                }
                None => {}
            }
            let _ = writeln!(
                out,
                "{:>4} {:>12} {:>12} {:>12} {:>10}  {kind}",
                p.number,
                p.start,
                p.end(),
                p.size,
                human(p.size.saturating_mul(SECTOR)),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn layout(text: &str, disk: u64) -> Result<Layout, LayoutError> {
        Desc::parse(text, "t").unwrap().layout(disk)
    }

    fn spans(l: &Layout) -> Vec<(u32, u64, u64)> {
        l.partitions.iter().map(|p| (p.number, p.start, p.size)).collect()
    }

    #[test]
    fn ka_example_on_20_gib() {
        let text = "linux 5000\nswap 300\nextended fill\nlogical linux 500\nlogical linux fill\n";
        let l = layout(text, 20 * GIB).unwrap();
        let disk = 20 * GIB / SECTOR;
        assert_eq!(
            spans(&l),
            [
                (1, 2048, 5000 * 2048),
                (2, 5001 * 2048, 300 * 2048),
                (3, 5301 * 2048, disk - 5301 * 2048),
                (5, 5302 * 2048, 500 * 2048),
                (6, 5803 * 2048, disk - 5803 * 2048),
            ]
        );
    }

    #[test]
    fn gpt_keeps_the_backup_table() {
        let l = layout("label gpt\nesp 512M\nlinux fill\n", GIB).unwrap();
        let last = &l.partitions[1];
        assert_eq!(last.end(), GIB / SECTOR - 34);
        assert_eq!(last.start, 513 * 2048);
    }

    #[test]
    fn percentages_fit_exactly() {
        let l = layout("label gpt\nlinux 50%\nswap 25%\nhome 25%\n", 10 * GIB + 34 * 512).unwrap();
        // 10 GiB + 34 sectors: usable from 1 MiB is 10239 MiB and one sector.
        assert_eq!(
            spans(&l),
            [(1, 2048, 5119 * 2048), (2, 5120 * 2048, 2559 * 2048), (3, 7679 * 2048, 2559 * 2048),]
        );
        let l = layout("extended 102\nlogical linux 50%\nlogical swap 50%\n", GIB).unwrap();
        // 102 MiB less two EBR gaps = 100 MiB to share.
        assert_eq!(spans(&l)[1..], [(5, 2 * 2048, 50 * 2048), (6, 53 * 2048, 50 * 2048)]);
    }

    #[test]
    fn too_small() {
        let text = "linux 5000\nswap 300\nextended fill\nlogical linux 500\nlogical linux fill\n";
        let e = layout(text, 4 * GIB).unwrap_err();
        assert_eq!(e, LayoutError::TooSmall { needed: 5804 * MIB, available: 4 * GIB });
        assert_eq!(
            e.to_string(),
            "the partitions need 5.7 GiB (5804 MiB) but the disk has 4.0 GiB (4096 MiB)"
        );
        assert!(layout("label gpt\nlinux 1023\n", GIB).is_err());
        assert!(layout("label gpt\nlinux 1022\n", GIB).is_ok());
        assert!(layout("linux 1023\n", GIB).is_ok());
        assert!(layout("linux fill\n", MIB).is_err());
    }

    #[test]
    fn extended_too_small() {
        let e = layout("extended 100\nlogical linux 100\n", GIB).unwrap_err();
        assert!(matches!(e, LayoutError::ExtendedTooSmall { number: 1, .. }), "{e}");
        assert!(e.to_string().contains("has 100.0 MiB"), "{e}");
        assert!(layout("extended 100\nlogical linux 98\nlogical swap fill\n", GIB).is_err());
        assert!(layout("extended 100\nlogical linux 97\nlogical swap fill\n", GIB).is_ok());
        let e = layout("extended 100\nlogical linux 60\nlogical swap 50%\n", GIB).unwrap_err();
        assert!(e.to_string().contains("need 111.0 MiB"), "{e}");
    }

    #[test]
    fn mbr_stops_at_2_tib() {
        let disk = 3 << 40;
        let l = layout("linux fill\n", disk).unwrap();
        assert_eq!(l.partitions[0].start + l.partitions[0].size, MBR_MAX_SECTORS);
        let e = layout("linux 2T\n", disk).unwrap_err();
        assert!(e.to_string().contains("add `label gpt`"), "{e}");
        assert!(layout("label gpt\nlinux 2T\n", disk).is_ok());
    }

    #[test]
    fn tiny_percentage() {
        let e = layout("linux 1%\nswap fill\n", 51 * MIB).unwrap_err();
        assert_eq!(e.to_string(), "partition 1: 1% of 50.0 MiB is less than 1 MiB");
    }

    #[test]
    fn arithmetic_never_overflows() {
        assert_eq!(percent_of(u64::MAX, 100), u64::MAX);
        assert_eq!(percent_of(u64::MAX, 50), u64::MAX / 2);
        assert_eq!(percent_of(199, 50), 99);
        assert_eq!(percent_of(10239, 25), 2559);
        let p = Desc::parse("linux 1\n", "t").unwrap().partitions.remove(0);
        assert_eq!(Placed::new(&p, 0, 0).end(), 0);
        assert_eq!(Placed::new(&p, u64::MAX, 2).end(), u64::MAX - 1);
        let huge = Layout {
            label: Label::Gpt,
            disk_sectors: u64::MAX,
            partitions: vec![Placed::new(&p, 2048, u64::MAX)],
        };
        assert!(huge.render_table().contains("18446744073709551615"));
    }

    #[test]
    fn table() {
        let t = layout("linux 100 bootable\nswap fill\n", GIB).unwrap().render_table();
        assert!(t.contains("label dos, disk 1.0 GiB"), "{t}");
        assert!(t.contains("2048       206847       204800  100.0 MiB  linux bootable"), "{t}");
    }
}
