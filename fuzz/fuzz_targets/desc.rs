//! Arbitrary text as a desc file. `Desc::parse` never panics; a desc that
//! parses writes back (`Display`) to text that parses to an equal desc, lays
//! out on any disk size without panicking, and every layout it gets keeps the
//! promises of `src/disk/layout.rs` and survives the trip through
//! `sfdisk --json` (`Desc::from_sfdisk_json`).

#![no_main]

use kacast::disk::{Desc, Label, Layout, ALIGN, GPT_BACKUP_SECTORS, MBR_MAX_SECTORS, MIB, SECTOR};
use libfuzzer_sys::fuzz_target;

const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// Empty, tiny, typical, just over the MBR limit, huge, and the odd sizes the
/// alignment code has to round.
const DISKS: [u64; 9] = [0, MIB, 51 * MIB + 512, GIB, 20 * GIB, 2 * TIB + 4096, 3 * TIB, 1 << 62, u64::MAX];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(desc) = Desc::parse(text, "fuzz") else {
        return;
    };
    assert!(!desc.partitions.is_empty());
    assert!(desc.partitions.windows(2).all(|w| w[0].number < w[1].number), "{desc:?}");
    let written = desc.to_string();
    match Desc::parse(&written, "fuzz") {
        Ok(again) => assert_eq!(again, desc, "{text:?} wrote back as {written:?}"),
        Err(e) => panic!("{text:?} wrote back as {written:?}, which does not parse: {e}"),
    }
    for disk in DISKS {
        if let Ok(layout) = desc.layout(disk) {
            check_layout(&desc, &layout, disk);
        }
    }
});

fn check_layout(desc: &Desc, layout: &Layout, disk: u64) {
    let ctx = || format!("{desc:?} on {disk} bytes: {layout:?}");
    assert_eq!(layout.disk_sectors, disk / SECTOR);
    assert_eq!(layout.partitions.len(), desc.partitions.len(), "{}", ctx());
    let end = match layout.label {
        Label::Dos => layout.disk_sectors.min(MBR_MAX_SECTORS),
        Label::Gpt => layout.disk_sectors.saturating_sub(GPT_BACKUP_SECTORS),
    };
    let mut last_primary_end = ALIGN;
    let mut last_logical_end = None;
    let extended = layout.partitions.iter().find(|p| p.ptype.is_extended() && !p.logical);
    for (placed, part) in layout.partitions.iter().zip(&desc.partitions) {
        assert_eq!(placed.number, part.number, "{}", ctx());
        assert!(placed.size > 0, "{}", ctx());
        assert_eq!(placed.start % ALIGN, 0, "{}", ctx());
        assert!(placed.start.checked_add(placed.size).is_some_and(|e| e <= end), "{}", ctx());
        if let kacast::disk::Size::Mib(n) = part.size {
            assert_eq!(placed.size, n * ALIGN, "{}", ctx());
        }
        if placed.logical {
            let ext = extended.unwrap_or_else(|| panic!("logical without extended: {}", ctx()));
            let floor = last_logical_end.unwrap_or(ext.start);
            // One MiB of EBR before each logical, all inside the extended.
            assert!(placed.start >= floor + ALIGN, "{}", ctx());
            assert!(placed.start + placed.size <= ext.start + ext.size, "{}", ctx());
            last_logical_end = Some(placed.start + placed.size);
        } else {
            assert!(placed.start >= last_primary_end, "{}", ctx());
            last_primary_end = placed.start + placed.size;
        }
    }
    let _ = layout.render_table();
    let _ = layout.to_sfdisk_script();
    // What sfdisk would dump once this table is written reads back as a desc
    // that fits the same disk.
    let json = layout.to_sfdisk_json("/dev/sda");
    match Desc::from_sfdisk_json(&json) {
        Ok(back) => {
            assert_eq!(back.label, desc.label);
            assert_eq!(back.partitions.len(), desc.partitions.len());
            if let Err(e) = back.layout(disk) {
                panic!("{} dumps as {back:?}, which no longer fits: {e}", ctx());
            }
        }
        Err(e) => panic!("{} dumps as {json}, which from_sfdisk_json refuses: {e}", ctx()),
    }
}
