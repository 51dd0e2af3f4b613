//! `sfdisk --json` dumps into `Desc::from_sfdisk_json`. Two modes, chosen by the
//! first byte: the rest of the input as JSON text (syntax, odd types), or as a
//! recipe for a well-formed dump (so the fuzzer spends its time on partition
//! tables, not on JSON syntax). Nothing may panic: not the conversion, not the
//! layout of its result, not writing it back as desc text; the layout keeps
//! every partition and the desc text reads back to the same desc.

#![no_main]

use kacast::disk::{Desc, MIB};
use libfuzzer_sys::fuzz_target;

const DISKS: [u64; 6] = [0, MIB, 1 << 30, 20 << 30, 3 << 40, u64::MAX];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let json = if mode & 1 == 0 {
        match std::str::from_utf8(rest) {
            Ok(text) => text.to_string(),
            Err(_) => return,
        }
    } else {
        recipe(rest)
    };
    let Ok(desc) = Desc::from_sfdisk_json(&json) else {
        return;
    };
    assert!(!desc.partitions.is_empty());
    for disk in DISKS {
        if let Ok(layout) = desc.layout(disk) {
            // Every partition of the dump is placed: none silently dropped.
            assert_eq!(
                layout.partitions.len(),
                desc.partitions.len(),
                "{desc:?} on {disk} bytes: {layout:?}"
            );
            let _ = layout.render_table();
            let _ = layout.to_sfdisk_script();
            let _ = layout.to_sfdisk_json("/dev/sda");
        }
    }
    // `Display for Desc` promises text that `Desc::parse` reads to an equal
    // desc; a desc made from a dump is written out as a desc file too.
    let text = desc.to_string();
    match Desc::parse(&text, "fuzz") {
        Ok(again) => assert_eq!(again, desc, "{json}\nwrote back as {text:?}"),
        Err(e) => panic!("{json}\nbecame {desc:?}, written as {text:?}, which does not parse: {e}"),
    }
});

/// Reads bytes as: label, an optional sector size, then 6 bytes per partition.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
}

const TYPES: [&str; 10] = [
    "83",
    "5",
    "f",
    "85",
    "82",
    "0",
    "0x83",
    "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
    "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
    "zz",
];
const MAX_PARTITIONS: usize = 5000;
const NAMES: [&str; 6] =
    ["ROOT", "EFI system", "", "a\\b", "x#y", "0123456789012345678901234567890123456789"];

fn recipe(data: &[u8]) -> String {
    let mut b = Bytes(data);
    let head = b.u8().unwrap_or(0);
    let label = ["dos", "gpt", "sun", "DOS"][usize::from(head & 3)];
    let sector = match head >> 2 & 3 {
        0 => String::new(),
        1 => ", \"sectorsize\": 512".into(),
        2 => ", \"sectorsize\": 4096".into(),
        _ => ", \"sectorsize\": 0".into(),
    };
    // Six bytes a partition; an entry flagged 0x80 stands for `1 << (head >> 4)`
    // partitions (up to 4096), so a short input can describe a long table.
    let repeat = 1usize << (head >> 4).min(12);
    let mut parts = Vec::new();
    let mut number = 0u32;
    while let (Some(n), Some(t), Some(s0), Some(s1), Some(s2), Some(flags)) =
        (b.u8(), b.u8(), b.u8(), b.u8(), b.u8(), b.u8())
    {
        let times = if flags & 0x80 != 0 { repeat } else { 1 };
        for i in 0..times.min(MAX_PARTITIONS - parts.len()) {
            // Mostly the next number, sometimes a jump (holes, logicals at 5).
            number = if n >= 200 && i == 0 { u32::from(n - 200) } else { number + 1 };
            let size = match s0 >> 6 {
                0 => u64::from(s2),
                1 => u64::from_be_bytes([0, 0, 0, 0, 0, s0 & 0x3f, s1, s2]),
                2 => u64::MAX - u64::from(s2),
                _ => (u64::from(s1) << 56) | u64::from(s2) << 11,
            };
            let node =
                if flags & 0x40 != 0 { format!("/dev/nvme0n1p{number}") } else { format!("sda{number}") };
            let mut e = format!(
                "{{\"node\": \"{node}\", \"start\": 2048, \"size\": {size}, \"type\": \"{}\"",
                TYPES[usize::from(t) % TYPES.len()]
            );
            if flags & 1 != 0 {
                e.push_str(", \"bootable\": true");
            }
            if flags & 2 != 0 {
                e.push_str(&format!(", \"name\": \"{}\"", NAMES[usize::from(flags >> 2 & 7) % NAMES.len()]));
            }
            e.push('}');
            parts.push(e);
        }
    }
    format!(
        "{{\"partitiontable\": {{\"label\": \"{label}\", \"unit\": \"sectors\"{sector}, \"partitions\": [{}]}}}}",
        parts.join(",\n")
    )
}
