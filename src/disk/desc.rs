//! The desc file: its data model, its grammar and its parser.
//!
//! See the [module documentation](super) and `docs/DESC.md` for the grammar.

use std::fmt;
use std::path::Path;

use thiserror::Error;

use super::size::{parse_size, Size};
use super::types::{parse_type, Label, PartType, GPT_MAX_PARTITIONS};

/// MBR has four slots in its table; the extended partition takes one of them.
pub const MBR_MAX_PRIMARIES: u32 = 4;

/// Linux numbers the logicals of an MBR disk from 5, whatever the number of
/// primaries, and so does ka-deploy's desc.
pub const FIRST_LOGICAL: u32 = 5;

/// The GPT entry stores the name as 36 UTF-16 code units.
pub const GPT_NAME_MAX: usize = 36;

/// One partition line of a desc.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Partition {
    /// The number the kernel will give it (`sda5` → 5): primaries 1–4 in order,
    /// logicals from 5 in order, GPT partitions 1.. in order. It must match the
    /// golden node's fstab, which is why numbering is implicit and strict.
    pub number: u32,
    /// A logical partition inside the extended one (MBR only).
    pub logical: bool,
    pub ptype: PartType,
    pub size: Size,
    /// The MBR active flag, for BIOSes and boot loaders that look for it.
    /// Primaries of an MBR table only: never set on GPT or on a logical.
    pub bootable: bool,
    /// The GPT partition name (`PARTLABEL`), if any. GPT only: always `None`
    /// on MBR, which has no names.
    pub name: Option<String>,
}

impl Partition {
    /// Whether this is the MBR extended container.
    pub fn is_extended(&self) -> bool {
        self.ptype.is_extended()
    }
}

/// A parsed, validated partition description.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Desc {
    pub label: Label,
    /// Sorted by number, so every primary comes before the logicals (even one
    /// written after them), as `sfdisk --dump` lists them.
    pub partitions: Vec<Partition>,
}

/// A desc that cannot be used: where, and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct DescError {
    /// The file name as the user gave it (or a stand-in such as `<sfdisk --json>`).
    pub file: String,
    /// 1-based line number; 0 for a problem with the whole file.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for DescError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            0 => write!(f, "{}: {}", self.file, self.message),
            n => write!(f, "{}:{}: {}", self.file, n, self.message),
        }
    }
}

impl Desc {
    /// Parses desc text; `source_name` is only used in error messages.
    pub fn parse(text: &str, source_name: &str) -> Result<Desc, DescError> {
        let mut parser = Parser::default();
        for (i, raw) in text.lines().enumerate() {
            let err = |message| DescError { file: source_name.to_string(), line: i + 1, message };
            let words = split_words(raw).map_err(err)?;
            parser.line(i + 1, &words).map_err(err)?;
        }
        if parser.desc.partitions.is_empty() {
            return Err(DescError {
                file: source_name.to_string(),
                line: 0,
                message: "no partition in the description".into(),
            });
        }
        let mut desc = parser.desc;
        desc.partitions.sort_by_key(|p| p.number);
        Ok(desc)
    }

    /// Reads and parses a desc file; errors name the file as given.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Desc, DescError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| DescError {
            file: name.clone(),
            line: 0,
            message: format!("cannot read the desc file: {e}"),
        })?;
        Desc::parse(&text, &name)
    }
}

/// Writes the desc back as text that [`Desc::parse`] reads to an equal desc.
/// A `dos` desc using only ka's words is a valid ka-deploy desc as well.
impl fmt::Display for Desc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.label == Label::Gpt {
            writeln!(f, "label gpt")?;
        }
        for p in &self.partitions {
            if p.logical {
                f.write_str("logical ")?;
            }
            write!(f, "{} {}", p.ptype, p.size)?;
            if p.bootable {
                f.write_str(" bootable")?;
            }
            match &p.name {
                Some(n) if n.contains(char::is_whitespace) => write!(f, " name=\"{n}\"")?,
                Some(n) => write!(f, " name={n}")?,
                None => {}
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Splits a line into words: whitespace separates, `#` starts a comment
/// anywhere, and double quotes group a value with spaces (`name="EFI system"`).
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '#' => break,
            '"' => {
                quoted = !quoted;
                word.get_or_insert_with(String::new);
            }
            c if c.is_whitespace() && !quoted => words.extend(word.take()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    if quoted {
        return Err("unterminated \" (and a name cannot contain #)".into());
    }
    words.extend(word);
    Ok(words)
}

/// Scope of a partition for numbering, `fill` and percentages.
#[derive(Clone, Copy)]
enum Scope {
    /// Primaries (and the extended) on MBR, every partition on GPT.
    Disk = 0,
    Extended = 1,
}

impl Scope {
    fn describe(self, label: Label) -> (&'static str, &'static str) {
        match (self, label) {
            (Scope::Disk, Label::Dos) => ("primary partition", "the disk"),
            (Scope::Disk, Label::Gpt) => ("partition", "the disk"),
            (Scope::Extended, _) => ("logical partition", "the extended partition"),
        }
    }
}

#[derive(Default)]
struct Parser {
    desc: Desc,
    /// Something other than a comment was seen, so a `label` line is too late.
    started: bool,
    primaries: u32,
    logicals: u32,
    extended_line: Option<usize>,
    fill_line: [Option<usize>; 2],
    percent: [u32; 2],
}

impl Parser {
    fn line(&mut self, n: usize, words: &[String]) -> Result<(), String> {
        let Some(first) = words.first() else {
            return Ok(());
        };
        let started = std::mem::replace(&mut self.started, true);
        if first.eq_ignore_ascii_case("label") {
            if started {
                return Err("`label` must be the first line (before any partition)".into());
            }
            return self.label(&words[1..]);
        }
        let logical = first.eq_ignore_ascii_case("logical");
        let mut rest = words[usize::from(logical)..].iter();
        let Some(type_word) = rest.next() else {
            return Err("missing partition type after `logical`".into());
        };
        let ptype = parse_type(type_word, self.desc.label)?;
        let Some(size_word) = rest.next() else {
            return Err(format!("missing size after '{type_word}' (a MiB number, 512M, 25% or fill)"));
        };
        let size = parse_size(size_word)?;
        let mut part = Partition { number: 0, logical, ptype, size, bootable: false, name: None };
        for word in rest {
            self.attribute(&mut part, word)?;
        }
        part.number = self.number(&part, n)?;
        self.scope_rules(&part, n)?;
        self.desc.partitions.push(part);
        Ok(())
    }

    fn label(&mut self, args: &[String]) -> Result<(), String> {
        let [value] = args else {
            return Err("`label` takes one word: gpt or dos".into());
        };
        self.desc.label = match value.to_ascii_lowercase().as_str() {
            "gpt" => Label::Gpt,
            "dos" | "mbr" => Label::Dos,
            _ => return Err(format!("unknown label '{value}' (expected gpt or dos)")),
        };
        Ok(())
    }

    fn attribute(&self, part: &mut Partition, word: &str) -> Result<(), String> {
        let gpt = self.desc.label == Label::Gpt;
        if word.eq_ignore_ascii_case("bootable") {
            if gpt {
                return Err("`bootable` is the MBR active flag; a GPT disk boots from an esp \
                            (UEFI) or bios-boot partition"
                    .into());
            }
            if part.logical {
                return Err("`bootable` applies to primary partitions only".into());
            }
            if part.bootable {
                return Err("`bootable` given twice".into());
            }
            part.bootable = true;
            return Ok(());
        }
        let Some((key, value)) = word.split_once('=') else {
            return Err(format!("unexpected word '{word}' after the size (attributes: bootable, name=NAME)"));
        };
        if !key.eq_ignore_ascii_case("name") {
            return Err(format!("unknown attribute '{key}' (attributes: bootable, name=NAME)"));
        }
        if !gpt {
            return Err("partition names exist only on GPT: add `label gpt` as first line".into());
        }
        if part.name.is_some() {
            return Err("`name` given twice".into());
        }
        part.name = Some(check_name(value)?.to_string());
        Ok(())
    }

    /// The partition's number, checking the table's limits on the way.
    fn number(&mut self, part: &Partition, line: usize) -> Result<u32, String> {
        let gpt = self.desc.label == Label::Gpt;
        if part.logical {
            if gpt {
                return Err("logical partitions exist only on MBR (label dos); a GPT disk \
                            holds up to 128 partitions directly"
                    .into());
            }
            if part.is_extended() {
                return Err("an extended partition cannot be logical".into());
            }
            if self.extended_line.is_none() {
                return Err("logical partition without an extended partition before it \
                     (add e.g. `extended fill` above)"
                    .into());
            }
            self.logicals += 1;
            return (FIRST_LOGICAL - 1)
                .checked_add(self.logicals)
                .ok_or_else(|| "too many logical partitions".to_string());
        }
        if part.is_extended() {
            if let Some(first) = self.extended_line {
                return Err(format!(
                    "second extended partition (the first is on line {first}); MBR allows one"
                ));
            }
            self.extended_line = Some(line);
        }
        self.primaries += 1;
        if gpt && self.primaries as usize > GPT_MAX_PARTITIONS {
            return Err(format!(
                "more than {GPT_MAX_PARTITIONS} partitions: the GPT entry array holds \
                 {GPT_MAX_PARTITIONS}"
            ));
        }
        if !gpt && self.primaries > MBR_MAX_PRIMARIES {
            return Err(format!(
                "more than {MBR_MAX_PRIMARIES} primary partitions (the extended counts as one): \
                 make this one `logical` inside an extended partition"
            ));
        }
        Ok(self.primaries)
    }

    /// `fill` must end its scope, and percentages of one scope cannot exceed it.
    fn scope_rules(&mut self, part: &Partition, line: usize) -> Result<(), String> {
        let scope = if part.logical { Scope::Extended } else { Scope::Disk };
        let (what, whole) = scope.describe(self.desc.label);
        if let Some(fill) = self.fill_line[scope as usize] {
            return Err(format!(
                "{what} after the `fill` on line {fill}: fill takes the rest of {whole}, \
                 so it must be the last {what}"
            ));
        }
        match part.size {
            Size::Fill => self.fill_line[scope as usize] = Some(line),
            Size::Percent(p) => {
                let sum = &mut self.percent[scope as usize];
                *sum += u32::from(p);
                if *sum > 100 {
                    return Err(format!("percentages of {whole} add up to {sum}%, more than 100%"));
                }
            }
            Size::Mib(_) => {}
        }
        Ok(())
    }
}

/// A GPT name must fit its 36 UTF-16 units and be writable both in a desc
/// (where `#` starts a comment) and in an sfdisk script (quoted).
pub(super) fn check_name(name: &str) -> Result<&str, String> {
    if name.is_empty() {
        return Err("empty partition name".into());
    }
    if name.encode_utf16().count() > GPT_NAME_MAX {
        return Err(format!("partition name '{name}' is longer than GPT's {GPT_NAME_MAX} characters"));
    }
    if name.chars().any(|c| c.is_control() || matches!(c, '\\' | '"' | '#')) {
        return Err(format!("partition name '{name}' contains a control character, \\, \" or #"));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KA_EXAMPLE: &str = "# hda1 = linux root\nlinux 5000\n# hda2 = swap\nswap 300\n\
                              # hda3 = extended\nextended fill\n# hda5 and 6 = linux\n\
                              logical linux 500\nlogical linux fill\n";

    fn err(text: &str) -> String {
        Desc::parse(text, "d").unwrap_err().to_string()
    }

    #[test]
    fn ka_example() {
        let d = Desc::parse(KA_EXAMPLE, "ex").unwrap();
        assert_eq!(d.label, Label::Dos);
        let nums: Vec<u32> = d.partitions.iter().map(|p| p.number).collect();
        assert_eq!(nums, [1, 2, 3, 5, 6]);
        assert!(d.partitions[2].is_extended());
        assert_eq!(d.partitions[4].size, Size::Fill);
        assert_eq!(
            d.to_string(),
            "linux 5000\nswap 300\nextended fill\nlogical linux 500\nlogical linux fill\n"
        );
    }

    #[test]
    fn display_round_trips() {
        let text = "label gpt\nesp 512M name=EFI\nlinux 20G name=\"my root\"\nswap 10%\n\
                    home fill  # the rest\n";
        let d = Desc::parse(text, "g").unwrap();
        assert_eq!(d.partitions[1].name.as_deref(), Some("my root"));
        assert_eq!(Desc::parse(&d.to_string(), "again").unwrap(), d);
        let m = Desc::parse("linux 100 bootable\nextended 100\nlogical swap 10%\nlinux 50\n", "m").unwrap();
        let nums: Vec<u32> = m.partitions.iter().map(|p| p.number).collect();
        assert_eq!(nums, [1, 2, 3, 5]);
        assert_eq!(Desc::parse(&m.to_string(), "again").unwrap(), m);
    }

    #[test]
    fn errors_name_file_and_line() {
        assert_eq!(err("\n\nlunix 100\n").split(": ").next(), Some("d:3"));
        assert!(err("linux fill\nswap 100\n").contains("after the `fill` on line 1"));
        assert!(err("linux 10\nlinux 10\nlinux 10\nlinux 10\nlinux 10\n").starts_with("d:5:"));
        assert!(err("logical linux 10\n").contains("without an extended"));
        assert!(err("extended 10\nextended 10\n").contains("first is on line 1"));
        assert!(err("linux 60%\nswap 50%\n").contains("110%"));
        assert!(err("linux 100 foo\n").contains("unexpected word 'foo'"));
        assert!(err("linux\n").contains("missing size"));
        assert!(err("linux 10\nlabel gpt\n").contains("must be the first line"));
        assert!(err("label gpt\nlogical linux 10\n").contains("only on MBR"));
        assert!(err("linux 10 name=x\n").contains("only on GPT"));
        assert!(err("label gpt\nlinux 10 bootable\n").contains("active flag"));
        assert!(err("label gpt\nlinux 10 name=\"a\n").contains("unterminated"));
        assert_eq!(err("# nothing\n"), "d: no partition in the description");
    }

    #[test]
    fn gpt_partition_limit() {
        let text = format!("label gpt\n{}", "linux 1\n".repeat(129));
        assert!(err(&text).starts_with("d:130: more than 128"));
    }

    #[test]
    fn words() {
        assert_eq!(split_words("  linux  10 name=\"a b\"#x").unwrap(), ["linux", "10", "name=a b"]);
        assert!(split_words("# all comment").unwrap().is_empty());
    }
}
