//! Desc files through the public API: ka-deploy's grammar and kacast's
//! extensions, layouts on disks of given sizes, the sfdisk formats, and (when
//! sfdisk is installed) a real sfdisk writing the layout to an image file.

mod common;

use std::fs::File;
use std::io::Write;
use std::process::{Command, Stdio};

use kacast::disk::{Desc, Label, Layout, LayoutError, PartType, Size, ALIGN, SECTOR};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The example of the ka-d(1) man page, verbatim.
const KA_MAN_EXAMPLE: &str = "\
# hda1 = linux root
linux 5000
# hda2 = swap
swap 300
# hda3 = extended
extended fill
# hda5 and 6 = linux
logical linux 500
logical linux fill
";

const GPT_EXAMPLE: &str = "\
label gpt
esp 512M name=EFI        # /boot/efi
bios-boot 1M             # GRUB on BIOS machines
linux-root-x86-64 20G name=\"root fs\"
swap 4G
home fill
";

const LINUX: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

fn spans(layout: &Layout) -> Vec<(u32, u64, u64)> {
    layout.partitions.iter().map(|p| (p.number, p.start, p.size)).collect()
}

fn gpt(guid: &str) -> PartType {
    PartType::Gpt(kacast::disk::Guid::parse(guid).unwrap())
}

#[test]
fn ka_man_page_example() {
    let desc = Desc::parse(KA_MAN_EXAMPLE, "ka-d.1").unwrap();
    assert_eq!(desc.label, Label::Dos);
    let parts: Vec<_> =
        desc.partitions.iter().map(|p| (p.number, p.logical, p.ptype.clone(), p.size)).collect();
    assert_eq!(
        parts,
        [
            (1, false, PartType::Mbr(0x83), Size::Mib(5000)),
            (2, false, PartType::Mbr(0x82), Size::Mib(300)),
            (3, false, PartType::Mbr(0x05), Size::Fill),
            (5, true, PartType::Mbr(0x83), Size::Mib(500)),
            (6, true, PartType::Mbr(0x83), Size::Fill),
        ]
    );

    let layout = desc.layout(20 * GIB).unwrap();
    let disk = 20 * GIB / SECTOR;
    assert_eq!(layout.disk_sectors, disk);
    assert_eq!(
        spans(&layout),
        [
            (1, 2048, 10_240_000),
            (2, 10_242_048, 614_400),
            (3, 10_856_448, disk - 10_856_448),
            // 1 MiB EBR gap before each logical.
            (5, 10_858_496, 1_024_000),
            (6, 11_884_544, disk - 11_884_544),
        ]
    );
    for p in &layout.partitions {
        assert_eq!(p.start % ALIGN, 0, "partition {} is not 1 MiB aligned", p.number);
    }
    let table = layout.render_table();
    assert!(table.contains("10242047"), "{table}");
    assert!(table.contains("extended"), "{table}");
}

#[test]
fn every_error_names_file_line_and_problem() {
    let cases: &[(&str, usize, &str)] = &[
        ("linux 10\nlunix 100\n", 2, "unknown partition type 'lunix'"),
        ("typeXY 10\n", 1, "bad type 'typeXY'"),
        ("linux 12X\n", 1, "bad size"),
        ("linux lots\n", 1, "bad size"),
        ("linux\n", 1, "missing size"),
        ("linux fill\nswap 300\n", 2, "after the `fill` on line 1"),
        ("linux fill\nswap fill\n", 2, "must be the last primary"),
        ("extended 900\nlogical linux fill\nlogical swap 10\n", 3, "must be the last logical"),
        ("linux 1\nlinux 1\nlinux 1\nlinux 1\n# five\nlinux 1\n", 6, "more than 4 primary"),
        ("linux 1\nlogical linux 1\n", 2, "logical partition without an extended"),
        ("extended 10\nextended fill\n", 2, "second extended partition"),
        ("label gpt\nlinux 10\nextended fill\n", 3, "extended partitions exist only on MBR"),
        ("label gpt\nlogical linux 1\n", 2, "logical partitions exist only on MBR"),
        ("linux 101%\n", 1, "over 100%"),
        ("linux 60%\nswap 30%\nlinux 20%\n", 3, "add up to 110%"),
        (
            "extended fill\nlogical linux 70%\nlogical swap 40%\n",
            3,
            "of the extended partition add up to 110%",
        ),
        ("linux 0\n", 1, "zero size"),
        ("linux 0%\n", 1, "zero size"),
        ("linux 0G\n", 1, "zero size"),
        ("linux 10 20\n", 1, "unexpected word '20'"),
        ("swap 10 bootable bootable\n", 1, "given twice"),
        ("bios-boot 1\n", 1, "bios-boot exists only on GPT"),
        ("linux 10 name=root\n", 1, "names exist only on GPT"),
        ("label gpt\nlinux 10 bootable\n", 2, "MBR active flag"),
        ("extended fill\nlogical linux 10 bootable\n", 2, "primary partitions only"),
        ("linux 10\nlabel gpt\n", 2, "must be the first line"),
        ("label zfs\n", 1, "unknown label 'zfs'"),
        ("label gpt\ntype07 10\n", 2, "no obvious GPT equivalent"),
        ("linux 10 colour=red\n", 1, "unknown attribute 'colour'"),
    ];
    for (text, line, problem) in cases {
        let err = Desc::parse(text, "rack.desc").expect_err(text);
        assert_eq!((err.file.as_str(), err.line), ("rack.desc", *line), "{text:?}: {err}");
        let shown = err.to_string();
        assert!(shown.starts_with(&format!("rack.desc:{line}: ")), "{text:?}: {shown}");
        assert!(shown.contains(problem), "{text:?}: {shown}");
    }
    let err = Desc::parse("# only comments\n\n", "empty.desc").unwrap_err();
    assert_eq!(err.to_string(), "empty.desc: no partition in the description");
}

#[test]
fn from_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sda.desc");
    std::fs::write(&path, "linux 5000\nswap 300 bogus\n").unwrap();
    let err = Desc::from_file(&path).unwrap_err().to_string();
    assert!(err.starts_with(&format!("{}:2: ", path.display())), "{err}");
    std::fs::write(&path, KA_MAN_EXAMPLE).unwrap();
    assert_eq!(Desc::from_file(&path).unwrap().partitions.len(), 5);
    let err = Desc::from_file(dir.path().join("missing")).unwrap_err().to_string();
    assert!(err.contains("missing: cannot read the desc file"), "{err}");
}

#[test]
fn too_big_for_a_4_gib_disk() {
    let desc = Desc::parse(KA_MAN_EXAMPLE, "ka").unwrap();
    let err = desc.layout(4 * GIB).unwrap_err();
    // 1 MiB lead-in + 5000 + 300 + the extended's least: 1 + 500 + 1 + 1.
    assert_eq!(err, LayoutError::TooSmall { needed: 5804 * MIB, available: 4 * GIB });
    assert_eq!(err.to_string(), "the partitions need 5.7 GiB (5804 MiB) but the disk has 4.0 GiB (4096 MiB)");
    assert!(desc.layout(5804 * MIB).is_ok());
    assert!(desc.layout(5803 * MIB).is_err());
}

#[test]
fn gpt_example() {
    let desc = Desc::parse(GPT_EXAMPLE, "gpt.desc").unwrap();
    assert_eq!(desc.label, Label::Gpt);
    assert_eq!(desc.partitions.iter().map(|p| p.number).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert_eq!(desc.partitions[0].ptype, gpt(ESP));
    assert_eq!(desc.partitions[0].name.as_deref(), Some("EFI"));
    assert_eq!(desc.partitions[2].name.as_deref(), Some("root fs"));

    let layout = desc.layout(64 * GIB).unwrap();
    let disk = 64 * GIB / SECTOR;
    assert_eq!(
        spans(&layout),
        [
            (1, 2048, 512 * 2048),
            (2, 513 * 2048, 2048),
            (3, 514 * 2048, 20 * 1024 * 2048),
            (4, (514 + 20 * 1024) * 2048, 4 * 1024 * 2048),
            (5, (514 + 24 * 1024) * 2048, disk - 33 - (514 + 24 * 1024) * 2048),
        ]
    );
    // The last usable sector is the one before the 33-sector backup table.
    assert_eq!(layout.partitions[4].end(), disk - 34);

    let script = layout.to_sfdisk_script();
    assert!(script.starts_with("label: gpt\nunit: sectors\n"), "{script}");
    assert!(script.contains(&format!("start=2048, size=1048576, type={ESP}, name=\"EFI\"\n")), "{script}");
    assert!(script.contains("type=21686148-6449-6E6F-744E-656564454649\n"), "{script}");

    // typeXX with an obvious GPT equivalent, GUID literals in any case.
    let d =
        Desc::parse("label GPT\ntype83 1G\ntypeEF 100M\n0fc63daf-8483-4772-8e79-3d69d8477de4 fill\n", "x")
            .unwrap();
    let types: Vec<_> = d.partitions.iter().map(|p| p.ptype.clone()).collect();
    assert_eq!(types, [gpt(LINUX), gpt(ESP), gpt(LINUX)]);
    assert_eq!(d.to_string(), "label gpt\nlinux 1024\nesp 100\nlinux fill\n");

    // Named types on MBR become codes.
    let d = Desc::parse("esp 100\nlvm 1G\nraid fill\n", "x").unwrap();
    let types: Vec<_> = d.partitions.iter().map(|p| p.ptype.clone()).collect();
    assert_eq!(types, [PartType::Mbr(0xef), PartType::Mbr(0x8e), PartType::Mbr(0xfd)]);
}

#[test]
fn percentages() {
    let text = "linux 50%\nswap 10%\nextended fill\nlogical linux 50%\nlogical linux fill\n";
    let layout = Desc::parse(text, "pct").unwrap().layout(10 * GIB).unwrap();
    // Of the disk's 10239 usable MiB: 5119 and 1023.
    // The extended gets the rest (4097 MiB); its logicals share 4097 - 2 EBR gaps.
    let disk = 10 * GIB / SECTOR;
    assert_eq!(
        spans(&layout),
        [
            (1, 2048, 5119 * 2048),
            (2, 5120 * 2048, 1023 * 2048),
            (3, 6143 * 2048, disk - 6143 * 2048),
            (5, 6144 * 2048, 2047 * 2048),
            (6, 8192 * 2048, disk - 8192 * 2048),
        ]
    );
    // Percentages of one scope adding up to 100% always fit.
    let layout = Desc::parse("label gpt\nlinux 25%\nlinux 25%\nlinux 25%\nlinux 25%\n", "q")
        .unwrap()
        .layout(GIB)
        .unwrap();
    let last = layout.partitions.last().unwrap();
    assert!(last.end() <= GIB / SECTOR - 34);
    // Units.
    let d = Desc::parse("linux 20G\nswap 512M\nlinux 500MiB\nlinux 1T\n", "u").unwrap();
    let sizes: Vec<_> = d.partitions.iter().map(|p| p.size).collect();
    assert_eq!(sizes, [Size::Mib(20480), Size::Mib(512), Size::Mib(500), Size::Mib(1 << 20)]);
}

#[test]
fn sfdisk_json_round_trip() {
    let desc = Desc::parse(KA_MAN_EXAMPLE, "ka").unwrap();
    let json = desc.layout(20 * GIB).unwrap().to_sfdisk_json("/dev/sda");
    let back = Desc::from_sfdisk_json(&json).unwrap();
    assert_eq!(back.partitions, desc.partitions);
    assert_eq!(back, desc);
    assert_eq!(
        back.to_string(),
        "linux 5000\nswap 300\nextended fill\nlogical linux 500\nlogical linux fill\n"
    );

    let desc = Desc::parse(GPT_EXAMPLE, "gpt").unwrap();
    let json = desc.layout(64 * GIB).unwrap().to_sfdisk_json("/dev/nvme0n1");
    let back = Desc::from_sfdisk_json(&json).unwrap();
    assert_eq!(back, desc);
    assert!(back.to_string().starts_with("label gpt\nesp 512 name=EFI\n"), "{back}");
}

/// Writes the layout with the real sfdisk to a sparse image file and reads it
/// back: the script is what sfdisk accepts, and sfdisk keeps our sectors.
#[test]
fn real_sfdisk_writes_the_layout() {
    if let Some(why) = common::missing_tool("sfdisk") {
        return common::skip(&format!("sfdisk missing ({why})"));
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, text, disk) in [
        ("mbr", KA_MAN_EXAMPLE.to_string(), 20 * GIB),
        (
            "mbr-bootable",
            "swap 300 bootable\nextended 2G\nlogical linux 1G\nlogical swap fill\nlinux fill\n".into(),
            8 * GIB,
        ),
        ("gpt", GPT_EXAMPLE.to_string(), 64 * GIB),
    ] {
        let desc = Desc::parse(&text, name).unwrap();
        let layout = desc.layout(disk).unwrap();
        let image = dir.path().join(format!("{name}.img"));
        File::create(&image).unwrap().set_len(disk).unwrap();

        let mut child = Command::new("sfdisk")
            .args(["--no-reread", "--no-tell-kernel"])
            .arg(&image)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(layout.to_sfdisk_script().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{name}: sfdisk refused the script:\n{}\n{}{}",
            layout.to_sfdisk_script(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let dump = Command::new("sfdisk").arg("--json").arg(&image).output().unwrap();
        assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
        let json = String::from_utf8(dump.stdout).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let table = &value["partitiontable"];
        assert_eq!(table["label"], layout.label.as_str(), "{name}");
        let got: Vec<_> = table["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                // `…/mbr.img5`: the number is what follows `.img`.
                let node = p["node"].as_str().unwrap();
                let number: u32 = node.rsplit(".img").next().unwrap().parse().unwrap();
                (
                    number,
                    p["start"].as_u64().unwrap(),
                    p["size"].as_u64().unwrap(),
                    p["type"].as_str().unwrap().to_string(),
                    p["bootable"].as_bool().unwrap_or(false),
                    p["name"].as_str().map(str::to_string),
                )
            })
            .collect();
        let want: Vec<_> = layout
            .partitions
            .iter()
            .map(|p| (p.number, p.start, p.size, p.ptype.sfdisk_value(), p.bootable, p.name.clone()))
            .collect();
        assert_eq!(got, want, "{name}: sfdisk wrote something else:\n{json}");

        // ka's fdisk_to_desc, done on the real dump, gives the desc back.
        assert_eq!(Desc::from_sfdisk_json(&json).unwrap(), desc, "{name}");
    }
}

/// A dump in the shape of `sfdisk --json`, one `(node, size in sectors, type,
/// extra fields)` per partition.
fn dump(label: &str, parts: &[(&str, u64, &str, &str)]) -> String {
    let entries: Vec<String> = parts
        .iter()
        .map(|(node, size, ptype, extra)| {
            format!(
                "{{\"node\": \"{node}\", \"start\": 2048, \"size\": {size}, \"type\": \"{ptype}\"{extra}}}"
            )
        })
        .collect();
    format!(
        "{{\"partitiontable\": {{\"label\": \"{label}\", \"unit\": \"sectors\", \"partitions\": [{}]}}}}",
        entries.join(", ")
    )
}

/// What the fuzzers promise of a desc: its text reads back to it, and it lays
/// out (or is refused) on any disk size without panicking or losing a
/// partition.
fn assert_round_trips(desc: &Desc) {
    let text = desc.to_string();
    match Desc::parse(&text, "again") {
        Ok(again) => assert_eq!(&again, desc, "{text:?}"),
        Err(e) => panic!("{desc:?} writes as {text:?}, which does not parse: {e}"),
    }
    for disk in [0, MIB, GIB, 3 << 40, 1 << 62, u64::MAX] {
        if let Ok(layout) = desc.layout(disk) {
            assert_eq!(layout.partitions.len(), desc.partitions.len(), "{desc:?} on {disk}");
            let _ = layout.render_table();
            let _ = layout.to_sfdisk_script();
            let json = layout.to_sfdisk_json("/dev/sda");
            let back = Desc::from_sfdisk_json(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert!(back.layout(disk).is_ok(), "{json}");
        }
    }
}

/// Fuzz regressions `dos-name-round-trip` and `gpt-bootable-round-trip`: a
/// name on MBR or the active flag on GPT made a desc that `Display` wrote as
/// text `Desc::parse` refuses. They mean nothing on that label: dropped.
#[test]
fn dump_drops_what_its_label_cannot_hold() {
    let json = dump("dos", &[("sda1", 4096, "83", ", \"name\": \"ROOT\", \"bootable\": true")]);
    let desc = Desc::from_sfdisk_json(&json).unwrap();
    assert_eq!(desc.partitions[0].name, None);
    assert!(desc.partitions[0].bootable, "the active flag is kept on an MBR primary");
    assert_eq!(desc.to_string(), "linux fill bootable\n");
    assert_round_trips(&desc);

    let json = dump("gpt", &[("sda1", 4096, LINUX, ", \"bootable\": true, \"name\": \"ROOT\"")]);
    let desc = Desc::from_sfdisk_json(&json).unwrap();
    assert!(!desc.partitions[0].bootable);
    assert_eq!(desc.partitions[0].name.as_deref(), Some("ROOT"));
    assert_eq!(desc.to_string(), "label gpt\nlinux fill name=ROOT\n");
    assert_round_trips(&desc);

    // The active flag on a logical means nothing to a BIOS either.
    let json = dump(
        "dos",
        &[("sda1", 8192, "5", ""), ("sda2", 2048, "83", ""), ("sda5", 2048, "83", ", \"bootable\": true")],
    );
    let desc = Desc::from_sfdisk_json(&json).unwrap();
    assert_eq!(desc.to_string(), "extended 4\nlinux fill\nlogical linux fill\n");
    assert_round_trips(&desc);
}

/// Fuzz regressions `dos-type0-round-trip`, `logical-extended-dropped-by-layout`
/// and `huge-size-round-trip`: what a desc cannot describe is refused, naming
/// the partition's node.
#[test]
fn dump_refuses_what_a_desc_cannot_describe() {
    let refused = |json: String, node: &str, problem: &str| {
        let err = Desc::from_sfdisk_json(&json).expect_err(&json);
        assert_eq!(err.line, 0, "{err}");
        let shown = err.to_string();
        assert!(shown.starts_with(&format!("<sfdisk --json>: {node}")), "{json}: {shown}");
        assert!(shown.contains(problem), "{json}: {shown}");
    };
    // Type 0 is an empty MBR slot (a desc refuses `type00`); the all-zero
    // GUID an unused GPT entry.
    refused(dump("dos", &[("sda1", 4096, "0", "")]), "sda1: ", "empty MBR slot");
    refused(dump("dos", &[("sda1", 4096, "83", ""), ("sda2", 4096, "0x00", "")]), "sda2: ", "empty");
    let nil = "00000000-0000-0000-0000-000000000000";
    refused(dump("gpt", &[("sda1", 4096, nil, "")]), "sda1: ", "unused GPT entry");
    assert!(Desc::parse(&format!("label gpt\n{nil} 10\n"), "d").unwrap_err().to_string().contains("unused"));
    // An extended partition among the logicals: the layout used to drop it
    // and every logical after it.
    refused(
        dump("dos", &[("sda1", 4096, "83", ""), ("sda5", 4096, "5", ""), ("sda6", 4096, "83", "")]),
        "sda5: ",
        "extended partition (type 5) numbered 5, among the logicals",
    );
    refused(
        dump("dos", &[("sda1", 4096, "f", ""), ("sda5", 4096, "85", "")]),
        "sda5: ",
        "extended partition (type 85)",
    );
    // A size no u64 byte count holds: it wrote back as a MiB number that did
    // not parse.
    refused(
        dump("gpt", &[("sda1", u64::MAX, LINUX, ""), ("sda2", 2048, LINUX, "")]),
        "sda1: ",
        "size of 18446744073709551615 sectors",
    );
    refused(dump("dos", &[("sda1", u64::MAX, "83", "")]), "sda1: ", "more than any disk holds");
    // The numbering, by node.
    refused(dump("dos", &[("sda1", 4096, "83", ""), ("sda1", 4096, "83", "")]), "sda1: ", "listed twice");
    refused(dump("dos", &[("sda0", 4096, "83", "")]), "cannot tell", "'sda0'");
    refused(dump("dos", &[("/dev/sda", 4096, "83", "")]), "cannot tell", "'/dev/sda'");
    refused(
        dump("dos", &[("sda1", 4096, "83", ""), ("sda5", 4096, "83", "")]),
        "sda5: ",
        "without an extended",
    );
    refused(
        dump("dos", &[("sda1", 4096, "5", ""), ("sda2", 4096, "f", "")]),
        "2 extended partitions (sda1, sda2)",
        "MBR allows one",
    );
    refused(
        dump("gpt", &[("sda1", 4096, LINUX, ""), ("sda3", 4096, LINUX, "")]),
        "partition 2",
        "next is sda3",
    );
    refused(dump("gpt", &[("sda1", 4096, LINUX, ", \"name\": \"a\\\\b\"")]), "sda1: ", "contains");

    // The largest size that is not refused reads back.
    let largest = Size::MAX_MIB * 2048;
    let desc = Desc::from_sfdisk_json(&dump("gpt", &[("sda1", largest, LINUX, ""), ("sda2", 1, LINUX, "")]))
        .unwrap();
    assert_eq!(desc.partitions[0].size, Size::Mib(Size::MAX_MIB));
    assert_round_trips(&desc);
}

/// Fuzz regression `grow-extended-sum-overflow`: growing a fixed extended
/// partition to hold its logicals summed their sizes without a check.
#[test]
fn dump_extended_too_big_to_grow() {
    let max = Size::MAX_MIB * 2048;
    let json = dump(
        "dos",
        &[("sda1", 16, "5", ""), ("sda2", 2048, "83", ""), ("sda5", max, "83", ""), ("sda6", max, "83", "")],
    );
    let err = Desc::from_sfdisk_json(&json).unwrap_err().to_string();
    assert!(err.starts_with("<sfdisk --json>: sda1: its logical partitions add up to more than"), "{err}");
    // Just small enough: the extended grows to the most a desc can write.
    let json = dump(
        "dos",
        &[
            ("sda1", 16, "5", ""),
            ("sda2", 2048, "83", ""),
            ("sda5", max - 3 * 2048, "83", ""),
            ("sda6", max, "83", ""),
        ],
    );
    let desc = Desc::from_sfdisk_json(&json).unwrap();
    assert_eq!(desc.partitions[0].size, Size::Mib(Size::MAX_MIB));
    assert_round_trips(&desc);
}

/// Fuzz regression `size-2pow44-mib-round-trip`: `18446744073709551615B`
/// rounded up to 2^44 MiB, which `Display` wrote as a number too large to
/// read back. Sizes stop at `Size::MAX_MIB`, and the largest lays out (or is
/// refused) on every disk without an overflow.
#[test]
fn sizes_stop_below_16_eib() {
    for text in ["linux 18446744073709551615B\n", "linux 17592186044416\n", "linux 16777216T\n"] {
        let err = Desc::parse(text, "big.desc").unwrap_err().to_string();
        assert!(err.starts_with("big.desc:1: ") && err.contains("too large"), "{text:?}: {err}");
    }
    for text in [
        "linux 17592186044415\n",
        "linux 18446744073708503040B\nswap fill\n",
        "label gpt\nlinux 17592186044415\nlinux 100%\n",
        "extended 17592186044415\nlogical linux 17592186044415\nlogical swap 100%\n",
        "linux 50%\nextended fill\nlogical linux 17592186044415\nlogical swap fill\n",
    ] {
        let desc = Desc::parse(text, "big").unwrap();
        assert_round_trips(&desc);
    }
    let desc = Desc::parse("label gpt\nlinux fill\n", "fill").unwrap();
    let layout = desc.layout(u64::MAX).unwrap();
    assert_eq!(layout.partitions[0].size.div_ceil(2048), Size::MAX_MIB);
    assert_round_trips(&desc);
}
