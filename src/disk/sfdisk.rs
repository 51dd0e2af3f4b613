//! sfdisk's formats: the input script a [`Layout`] becomes, and the
//! `sfdisk --json` dump a [`Desc`] can be made from (ka's `fdisk_to_desc`).

use serde::Deserialize;
use serde_json::{json, Value};

use super::desc::{check_name, Desc, DescError, Partition, FIRST_LOGICAL, MBR_MAX_PRIMARIES};
use super::layout::{Layout, ALIGN, SECTOR};
use super::size::Size;
use super::types::{parse_hex_code, Guid, Label, PartType, GPT_MAX_PARTITIONS};

/// The file name [`Desc::from_sfdisk_json`] errors carry.
pub const SFDISK_JSON_SOURCE: &str = "<sfdisk --json>";

impl Layout {
    /// The sfdisk input script that writes this table (`sfdisk DEVICE < script`).
    /// Positions are explicit sectors, so sfdisk aligns nothing on its own.
    pub fn to_sfdisk_script(&self) -> String {
        let mut out = format!("label: {}\nunit: sectors\nsector-size: {SECTOR}\n\n", self.label);
        for p in &self.partitions {
            out.push_str(&format!("start={}, size={}, type={}", p.start, p.size, p.ptype.sfdisk_value()));
            if p.bootable {
                out.push_str(", bootable");
            }
            if let Some(name) = &p.name {
                out.push_str(&format!(", name=\"{name}\""));
            }
            out.push('\n');
        }
        out
    }

    /// What `sfdisk --json DEVICE` would print once this layout is written
    /// (without the ids sfdisk makes up): for dry runs and tests.
    pub fn to_sfdisk_json(&self, device: &str) -> String {
        let sep = if device.ends_with(|c: char| c.is_ascii_digit()) { "p" } else { "" };
        let partitions: Vec<Value> = self
            .partitions
            .iter()
            .map(|p| {
                let mut v = json!({
                    "node": format!("{device}{sep}{}", p.number),
                    "start": p.start,
                    "size": p.size,
                    "type": p.ptype.sfdisk_value(),
                });
                if p.bootable {
                    v["bootable"] = json!(true);
                }
                if let Some(name) = &p.name {
                    v["name"] = json!(name);
                }
                v
            })
            .collect();
        let table = json!({ "partitiontable": {
            "label": self.label.as_str(),
            "device": device,
            "unit": "sectors",
            "sectorsize": SECTOR,
            "partitions": partitions,
        }});
        serde_json::to_string_pretty(&table).expect("a json! value always serialises")
    }
}

#[derive(Deserialize)]
struct Dump {
    partitiontable: Table,
}

#[derive(Deserialize)]
struct Table {
    label: String,
    #[serde(default)]
    sectorsize: Option<u64>,
    #[serde(default)]
    partitions: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    node: String,
    size: u64,
    #[serde(rename = "type")]
    ptype: String,
    #[serde(default)]
    bootable: bool,
    #[serde(default)]
    name: Option<String>,
}

fn fail(message: String) -> DescError {
    DescError { file: SFDISK_JSON_SOURCE.to_string(), line: 0, message }
}

impl Desc {
    /// Makes a desc from `sfdisk --json DEVICE` output, as ka's `fdisk_to_desc`
    /// does from fdisk: sizes in MiB rounded up (a clone is never smaller than
    /// its golden partition, which matters for raw `dd` partitions), the last
    /// partition of each scope as `fill`. An extended partition that is not
    /// `fill` is grown if its logicals, placed kacast's way (1 MiB aligned, a
    /// 1 MiB EBR gap each), would not fit in it.
    ///
    /// What means nothing on the dump's label is dropped without a word: a
    /// `name` on MBR (which has no partition names), the `bootable` flag on GPT
    /// (the MBR active flag; a GPT disk boots from an esp or bios-boot
    /// partition) and on a logical (no BIOS looks there). The result is a desc
    /// [`Desc::parse`] accepts, and its `Display` reads back to it.
    ///
    /// What a desc cannot describe is refused, naming the partition's node:
    /// holes or repeats in the numbering (the later partitions, and the fstab,
    /// would shift), type `0` on MBR or the all-zero GUID on GPT (an empty
    /// slot, not a partition), an extended partition numbered 5 or more (the
    /// extended partition is a primary), logicals without an extended
    /// partition, a second extended partition, a size beyond
    /// [`Size::MAX_MIB`] (no disk kacast can address is that big), a GPT name
    /// a desc cannot write, more than 128 GPT partitions.
    pub fn from_sfdisk_json(json_text: &str) -> Result<Desc, DescError> {
        let dump: Dump =
            serde_json::from_str(json_text).map_err(|e| fail(format!("not `sfdisk --json` output: {e}")))?;
        let table = dump.partitiontable;
        let label = match table.label.as_str() {
            "dos" => Label::Dos,
            "gpt" => Label::Gpt,
            other => return Err(fail(format!("unsupported label '{other}' (dos or gpt)"))),
        };
        let sector = table.sectorsize.unwrap_or(SECTOR);
        if sector != SECTOR {
            return Err(fail(format!("{sector}-byte sectors: kacast handles {SECTOR}-byte sectors only")));
        }
        let mut parts = table.partitions.iter().map(|e| entry(e, label)).collect::<Result<Vec<_>, _>>()?;
        parts.sort_by_key(|(_, p)| p.number);
        check_numbers(&parts, label)?;
        for scope in [false, true] {
            if let Some((_, last)) = parts.iter_mut().rev().find(|(_, p)| p.logical == scope) {
                last.size = Size::Fill;
            }
        }
        grow_extended(&mut parts)?;
        Ok(Desc { label, partitions: parts.into_iter().map(|(_, p)| p).collect() })
    }
}

/// The node of a dump entry (`/dev/sda1`) and the partition it becomes.
type Dumped<'a> = (&'a str, Partition);

fn entry(e: &Entry, label: Label) -> Result<Dumped<'_>, DescError> {
    let node = e.node.as_str();
    let at = |message: String| fail(format!("{node}: {message}"));
    let digits = node.len() - node.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let number: u32 = node[node.len() - digits..]
        .parse()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| fail(format!("cannot tell the partition number of '{node}'")))?;
    let ptype = match label {
        Label::Dos => parse_hex_code(&e.ptype).map(PartType::Mbr),
        Label::Gpt => Guid::parse(&e.ptype).map(PartType::Gpt),
    }
    .ok_or_else(|| at(format!("bad {label} type '{}'", e.ptype)))?;
    match &ptype {
        PartType::Mbr(0) => {
            return Err(at(format!("type '{}' marks an empty MBR slot, not a partition", e.ptype)))
        }
        PartType::Gpt(guid) if guid.is_nil() => {
            return Err(at(format!("type '{}' marks an unused GPT entry, not a partition", e.ptype)))
        }
        _ => {}
    }
    let name = match (label, e.name.as_deref()) {
        // MBR has no partition names: whatever the dump says means nothing.
        (Label::Dos, _) | (Label::Gpt, None | Some("")) => None,
        (Label::Gpt, Some(n)) => Some(check_name(n).map_err(at)?.to_string()),
    };
    let mib = e.size.div_ceil(ALIGN).max(1);
    if mib > Size::MAX_MIB {
        return Err(at(format!(
            "size of {} sectors: more than any disk holds ({} MiB at most)",
            e.size,
            Size::MAX_MIB
        )));
    }
    let logical = label == Label::Dos && number >= FIRST_LOGICAL;
    if logical && ptype.is_extended() {
        return Err(at(format!(
            "extended partition (type {}) numbered {number}, among the logicals: a desc's \
             extended partition is a primary (1-{MBR_MAX_PRIMARIES}) that holds the logicals",
            e.ptype
        )));
    }
    let part = Partition {
        number,
        logical,
        ptype,
        size: Size::Mib(mib),
        // The MBR active flag means nothing on GPT (its legacy-BIOS attribute
        // is another thing, which sfdisk does not call `bootable`), nor on a
        // logical to a BIOS; a desc allows it on MBR primaries only.
        bootable: e.bootable && label == Label::Dos && !logical,
        name,
    };
    Ok((node, part))
}

/// A desc numbers partitions in order, so a table with holes (sda1, sda3)
/// cannot be described without renumbering, which would break the fstab.
fn check_numbers(parts: &[Dumped<'_>], label: Label) -> Result<(), DescError> {
    if parts.is_empty() {
        return Err(fail("the partition table is empty".into()));
    }
    if label == Label::Gpt && parts.len() > GPT_MAX_PARTITIONS {
        return Err(fail(format!("more than {GPT_MAX_PARTITIONS} partitions")));
    }
    let mut expect = [1, FIRST_LOGICAL];
    for (node, p) in parts {
        let next = &mut expect[usize::from(p.logical)];
        if p.number < *next {
            return Err(fail(format!("{node}: partition {} is listed twice", p.number)));
        }
        if p.number != *next {
            return Err(fail(format!(
                "partition {} is missing (next is {node}): a desc numbers partitions in order, \
                 so the later ones would be renumbered",
                *next
            )));
        }
        *next = next.saturating_add(1);
    }
    let extended: Vec<&str> = parts.iter().filter(|(_, p)| p.is_extended()).map(|(n, _)| *n).collect();
    if extended.len() > 1 {
        return Err(fail(format!(
            "{} extended partitions ({}): MBR allows one",
            extended.len(),
            extended.join(", ")
        )));
    }
    if let (None, Some((node, _))) = (extended.first(), parts.iter().find(|(_, p)| p.logical)) {
        return Err(fail(format!("{node}: logical partition without an extended partition")));
    }
    Ok(())
}

/// Grows a fixed-size extended partition to hold its logicals the way a desc
/// places them: each one's MiB and its 1 MiB EBR gap, 1 MiB for a `fill`.
fn grow_extended(parts: &mut [Dumped<'_>]) -> Result<(), DescError> {
    let need = parts
        .iter()
        .filter(|(_, p)| p.logical)
        .map(|(_, p)| match p.size {
            Size::Mib(n) => n.checked_add(1),
            Size::Percent(_) | Size::Fill => Some(2),
        })
        .try_fold(0u64, |sum, n| sum.checked_add(n?));
    if let Some((node, ext)) = parts.iter_mut().find(|(_, p)| p.is_extended()) {
        if let Size::Mib(n) = ext.size {
            match need {
                Some(need) if need <= Size::MAX_MIB => ext.size = Size::Mib(n.max(need)),
                _ => {
                    return Err(fail(format!(
                        "{node}: its logical partitions add up to more than {} MiB (16 EiB), \
                         more than any disk holds",
                        Size::MAX_MIB
                    )))
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn script() {
        let d = Desc::parse("linux 100 bootable\nextended fill\nlogical swap fill\n", "t").unwrap();
        let s = d.layout(GIB).unwrap().to_sfdisk_script();
        assert_eq!(
            s,
            "label: dos\nunit: sectors\nsector-size: 512\n\n\
             start=2048, size=204800, type=83, bootable\n\
             start=206848, size=1890304, type=5\n\
             start=208896, size=1888256, type=82\n"
        );
        let g = Desc::parse("label gpt\nesp 1M name=\"EFI system\"\n", "g").unwrap();
        assert!(g.layout(GIB).unwrap().to_sfdisk_script().contains(
            "start=2048, size=2048, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"EFI system\"\n"
        ));
    }

    #[test]
    fn json_round_trip() {
        let text = "linux 5000 bootable\nswap 300\nextended fill\nlogical linux 500\nlogical linux fill\n";
        let d = Desc::parse(text, "t").unwrap();
        let json = d.layout(20 * GIB).unwrap().to_sfdisk_json("/dev/nvme0n1");
        assert!(json.contains("\"/dev/nvme0n1p5\""));
        assert_eq!(Desc::from_sfdisk_json(&json).unwrap(), d);
    }

    #[test]
    fn real_dump_with_odd_sizes() {
        // fdisk -l of the duplication guide's golden node, cylinder aligned.
        let json = r#"{"partitiontable": {"label": "dos", "unit": "sectors", "partitions": [
            {"node": "/dev/sda1", "start": 63, "size": 16370172, "type": "82", "bootable": true},
            {"node": "/dev/sda2", "start": 16370235, "size": 61432560, "type": "83"},
            {"node": "/dev/sda3", "start": 77802795, "size": 78493590, "type": "5"},
            {"node": "/dev/sda5", "start": 77802858, "size": 78493527, "type": "83"}]}}"#;
        let d = Desc::from_sfdisk_json(json).unwrap();
        assert_eq!(d.to_string(), "swap 7994 bootable\nlinux 29997\nextended fill\nlogical linux fill\n");
    }

    #[test]
    fn refusals() {
        let holes = r#"{"partitiontable": {"label": "gpt", "partitions": [
            {"node": "sda1", "start": 2048, "size": 2048, "type": "0FC63DAF-8483-4772-8E79-3D69D8477DE4"},
            {"node": "sda3", "start": 4096, "size": 2048, "type": "0FC63DAF-8483-4772-8E79-3D69D8477DE4"}]}}"#;
        let e = Desc::from_sfdisk_json(holes).unwrap_err().to_string();
        assert!(e.starts_with("<sfdisk --json>: partition 2 is missing"), "{e}");
        let e = Desc::from_sfdisk_json("{}").unwrap_err().to_string();
        assert!(e.contains("not `sfdisk --json` output"), "{e}");
        let sun = r#"{"partitiontable": {"label": "sun", "partitions": []}}"#;
        assert!(Desc::from_sfdisk_json(sun).unwrap_err().message.contains("'sun'"));
    }

    /// Fuzz regression `grow-extended-sum-overflow`: the logicals' sizes were
    /// summed unchecked.
    #[test]
    fn growing_the_extended_never_overflows() {
        let part = |number, code, size| Partition {
            number,
            logical: number >= FIRST_LOGICAL,
            ptype: PartType::Mbr(code),
            size,
            bootable: false,
            name: None,
        };
        let mut parts = vec![
            ("sda1", part(1, 5, Size::Mib(1))),
            ("sda5", part(5, 0x83, Size::Mib(u64::MAX))),
            ("sda6", part(6, 0x83, Size::Mib(u64::MAX))),
        ];
        let e = grow_extended(&mut parts).unwrap_err().to_string();
        assert!(e.starts_with("<sfdisk --json>: sda1: its logical partitions add up to more"), "{e}");
        parts[1].1.size = Size::Mib(Size::MAX_MIB - 3);
        parts[2].1.size = Size::Fill;
        grow_extended(&mut parts).unwrap();
        assert_eq!(parts[0].1.size, Size::Mib(Size::MAX_MIB));
    }

    #[test]
    fn extended_grows_for_its_logicals() {
        let json = r#"{"partitiontable": {"label": "dos", "partitions": [
            {"node": "sda1", "start": 63, "size": 2000, "type": "5"},
            {"node": "sda2", "start": 2063, "size": 2048, "type": "83"},
            {"node": "sda5", "start": 126, "size": 900, "type": "83"},
            {"node": "sda6", "start": 1089, "size": 900, "type": "83"}]}}"#;
        let d = Desc::from_sfdisk_json(json).unwrap();
        assert_eq!(d.partitions[0].size, Size::Mib(4));
        assert!(d.layout(GIB).is_ok());
    }
}
