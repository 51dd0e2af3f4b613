//! sfdisk's formats: the input script a [`Layout`] becomes, and the
//! `sfdisk --json` dump a [`Desc`] can be made from (ka's `fdisk_to_desc`).

use serde::Deserialize;
use serde_json::{json, Value};

use super::desc::{check_name, Desc, DescError, Partition, FIRST_LOGICAL};
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
        parts.sort_by_key(|p| p.number);
        check_numbers(&parts, label)?;
        for scope in [false, true] {
            if let Some(last) = parts.iter_mut().rev().find(|p| p.logical == scope) {
                last.size = Size::Fill;
            }
        }
        grow_extended(&mut parts);
        Ok(Desc { label, partitions: parts })
    }
}

fn entry(e: &Entry, label: Label) -> Result<Partition, DescError> {
    let digits = e.node.len() - e.node.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let number: u32 = e.node[e.node.len() - digits..]
        .parse()
        .map_err(|_| fail(format!("cannot tell the partition number of '{}'", e.node)))?;
    let ptype = match label {
        Label::Dos => parse_hex_code(&e.ptype).map(PartType::Mbr),
        Label::Gpt => Guid::parse(&e.ptype).map(PartType::Gpt),
    }
    .ok_or_else(|| fail(format!("{}: bad {label} type '{}'", e.node, e.ptype)))?;
    let name = match e.name.as_deref() {
        None | Some("") => None,
        Some(n) => Some(check_name(n).map_err(|m| fail(format!("{}: {m}", e.node)))?.to_string()),
    };
    let mib = e.size.div_ceil(ALIGN).max(1);
    let logical = label == Label::Dos && number >= FIRST_LOGICAL;
    Ok(Partition {
        number,
        logical,
        ptype,
        size: Size::Mib(mib),
        // An active flag on a logical means nothing to a BIOS, and a desc
        // allows it on primaries only.
        bootable: e.bootable && !logical,
        name,
    })
}

/// A desc numbers partitions in order, so a table with holes (sda1, sda3)
/// cannot be described without renumbering, which would break the fstab.
fn check_numbers(parts: &[Partition], label: Label) -> Result<(), DescError> {
    if parts.is_empty() {
        return Err(fail("the partition table is empty".into()));
    }
    if label == Label::Gpt && parts.len() > GPT_MAX_PARTITIONS {
        return Err(fail(format!("more than {GPT_MAX_PARTITIONS} partitions")));
    }
    let mut expect = [1, FIRST_LOGICAL];
    for p in parts {
        let next = &mut expect[usize::from(p.logical)];
        if p.number != *next {
            return Err(fail(format!(
                "partition {} is missing (next is {}): a desc numbers partitions in order, \
                 so the later ones would be renumbered",
                *next, p.number
            )));
        }
        *next += 1;
    }
    let extended = parts.iter().filter(|p| p.is_extended()).count();
    if label == Label::Dos && extended > 1 {
        return Err(fail(format!("{extended} extended partitions")));
    }
    if expect[1] > FIRST_LOGICAL && extended == 0 {
        return Err(fail("logical partitions without an extended partition".into()));
    }
    Ok(())
}

fn grow_extended(parts: &mut [Partition]) {
    let need: u64 = parts
        .iter()
        .filter(|p| p.logical)
        .map(|p| match p.size {
            Size::Mib(n) => n + 1,
            Size::Percent(_) | Size::Fill => 2,
        })
        .sum();
    if let Some(ext) = parts.iter_mut().find(|p| p.is_extended()) {
        if let Size::Mib(n) = ext.size {
            ext.size = Size::Mib(n.max(need));
        }
    }
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
