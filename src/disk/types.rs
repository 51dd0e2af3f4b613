//! Partition types: MBR type codes, GPT type GUIDs, and the names a desc file
//! may use for either.

use std::fmt;

/// Which partition table a desc describes. ka-deploy only knew MBR (`dos`), so
/// that is the default; `gpt` is kacast's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Label {
    /// MS-DOS / MBR table: 4 primaries, one of them possibly an extended
    /// partition holding logicals numbered from 5.
    #[default]
    Dos,
    /// GUID partition table: up to [`GPT_MAX_PARTITIONS`] partitions, no
    /// extended/logical distinction.
    Gpt,
}

impl Label {
    /// The word sfdisk and the desc `label` line use.
    pub fn as_str(self) -> &'static str {
        match self {
            Label::Dos => "dos",
            Label::Gpt => "gpt",
        }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The size of the entry array sfdisk and every other tool create by default
/// (128 entries of 128 bytes = 32 sectors). More would need a larger array,
/// which some firmware mishandles.
pub const GPT_MAX_PARTITIONS: usize = 128;

/// MBR code of ka's `extended` (and what `extended` writes).
pub const MBR_EXTENDED: u8 = 0x05;

/// MBR codes Linux treats as an extended partition: DOS extended, W95 extended
/// (LBA) and Linux extended. A desc `type0f` is therefore an extended partition
/// too, and so is such an entry in an sfdisk dump.
const MBR_EXTENDED_CODES: [u8; 3] = [0x05, 0x0f, 0x85];

/// A GPT partition type GUID, validated and kept in sfdisk's spelling
/// (upper case, `8-4-4-4-12` hex digits).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Guid(String);

impl Guid {
    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in either case.
    pub fn parse(s: &str) -> Option<Guid> {
        let groups: Vec<&str> = s.split('-').collect();
        let lens = groups.iter().map(|g| g.len()).collect::<Vec<_>>();
        let hex = groups.iter().all(|g| g.chars().all(|c| c.is_ascii_hexdigit()));
        (lens == [8, 4, 4, 4, 12] && hex).then(|| Guid(s.to_ascii_uppercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The all-zero GUID, which marks an unused entry of the GPT array (as
    /// type `00` marks an empty MBR slot): a partition of this type would
    /// vanish once written, so a desc and a dump refuse it.
    pub fn is_nil(&self) -> bool {
        self.0.bytes().all(|b| matches!(b, b'0' | b'-'))
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The type of one partition, already resolved for its table's label.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PartType {
    /// An MBR system id byte (`83` Linux, `82` swap, `05` extended…).
    Mbr(u8),
    /// A GPT partition type GUID.
    Gpt(Guid),
}

impl PartType {
    /// Whether this is an MBR extended partition (a container for logicals).
    pub fn is_extended(&self) -> bool {
        matches!(self, PartType::Mbr(code) if MBR_EXTENDED_CODES.contains(code))
    }

    /// The value of sfdisk's `type=` field: hex without leading zeros as
    /// `sfdisk --dump` writes it, or the GUID.
    pub fn sfdisk_value(&self) -> String {
        match self {
            PartType::Mbr(code) => format!("{code:x}"),
            PartType::Gpt(guid) => guid.to_string(),
        }
    }

    /// The desc word for this type. MBR types use only ka-deploy's own words
    /// (`linux`, `swap`, `extended`, `typeXX`) so the output stays readable by
    /// ka-deploy; GPT types use kacast's names where one exists.
    pub fn desc_word(&self) -> String {
        match self {
            PartType::Mbr(0x83) => "linux".into(),
            PartType::Mbr(0x82) => "swap".into(),
            PartType::Mbr(MBR_EXTENDED) => "extended".into(),
            PartType::Mbr(code) => format!("type{code:02x}"),
            PartType::Gpt(guid) => GPT_NAMES
                .iter()
                .find(|(_, g)| *g == guid.as_str())
                .map_or_else(|| guid.to_string(), |(name, _)| (*name).to_string()),
        }
    }
}

impl fmt::Display for PartType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.desc_word())
    }
}

/// Named GPT types (the GUIDs of the Discoverable Partitions Specification and
/// UEFI). The first name of a GUID is the one written back.
const GPT_NAMES: [(&str, &str); 8] = [
    ("linux", "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
    ("swap", "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"),
    ("esp", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
    ("lvm", "E6D6D379-F507-44C2-A23C-238F2A3DF928"),
    ("raid", "A19D880F-05FC-4D3B-A006-743F0F84911E"),
    ("bios-boot", "21686148-6449-6E6F-744E-656564454649"),
    ("home", "933AC7E1-2EB4-4F13-B844-0E14E2AEF915"),
    ("linux-root-x86-64", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"),
];

/// MBR codes of the names. `home` and `linux-root-x86-64` have no MBR code of
/// their own: on MBR they are plain Linux partitions.
const MBR_NAMES: [(&str, u8); 8] = [
    ("linux", 0x83),
    ("swap", 0x82),
    ("extended", MBR_EXTENDED),
    ("esp", 0xef),
    ("lvm", 0x8e),
    ("raid", 0xfd),
    ("home", 0x83),
    ("linux-root-x86-64", 0x83),
];

/// The MBR codes with an obvious GPT equivalent, for `typeXX` on GPT.
const MBR_TO_GPT: [(u8, &str); 5] =
    [(0x83, "linux"), (0x82, "swap"), (0xef, "esp"), (0x8e, "lvm"), (0xfd, "raid")];

fn gpt_named(name: &str) -> Option<Guid> {
    GPT_NAMES.iter().find(|(n, _)| *n == name).map(|(_, g)| Guid((*g).to_string()))
}

/// Parses a desc type word (`linux`, `type83`, `esp`, a GUID…) for `label`.
/// The error is the message for the user, without the file and line.
pub fn parse_type(word: &str, label: Label) -> Result<PartType, String> {
    let lower = word.to_ascii_lowercase();
    if let Some(hex) = lower.strip_prefix("type") {
        let code = parse_hex_code(hex)
            .ok_or_else(|| format!("bad type '{word}': typeXX takes 1 or 2 hex digits, e.g. type83"))?;
        if code == 0 {
            return Err(format!("'{word}' is the empty slot type, not a partition"));
        }
        return match label {
            Label::Dos => Ok(PartType::Mbr(code)),
            Label::Gpt => MBR_TO_GPT
                .iter()
                .find(|(c, _)| *c == code)
                .and_then(|(_, name)| gpt_named(name))
                .map(PartType::Gpt)
                .ok_or_else(|| gpt_no_equivalent(word, code)),
        };
    }
    match label {
        Label::Gpt if lower == "extended" => {
            Err("extended partitions exist only on MBR (label dos); a GPT disk holds up to 128 \
             partitions directly"
                .into())
        }
        Label::Gpt => match gpt_named(&lower).or_else(|| Guid::parse(word)) {
            Some(guid) if guid.is_nil() => {
                Err(format!("'{word}' is the unused entry type of GPT, not a partition"))
            }
            Some(guid) => Ok(PartType::Gpt(guid)),
            None => Err(unknown_type(word)),
        },
        Label::Dos if lower == "bios-boot" => {
            Err("bios-boot exists only on GPT (it holds GRUB's core image there); on MBR GRUB uses \
             the gap before the first partition: drop this line or add `label gpt`"
                .into())
        }
        Label::Dos if Guid::parse(word).is_some() => {
            Err(format!("type GUID '{word}' needs a GPT disk: add `label gpt` as the first line"))
        }
        Label::Dos => MBR_NAMES
            .iter()
            .find(|(n, _)| *n == lower)
            .map(|(_, code)| PartType::Mbr(*code))
            .ok_or_else(|| unknown_type(word)),
    }
}

/// Parses the 1–2 hex digits of `typeXX` or of an sfdisk dump's MBR `type`.
pub fn parse_hex_code(hex: &str) -> Option<u8> {
    let hex = hex.strip_prefix("0x").unwrap_or(hex);
    // from_str_radix would take a sign ("+5"): only hex digits are a code.
    if hex.is_empty() || hex.len() > 2 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

fn gpt_no_equivalent(word: &str, code: u8) -> String {
    if MBR_EXTENDED_CODES.contains(&code) {
        return format!("'{word}' is an extended partition, which exists only on MBR (label dos)");
    }
    format!(
        "'{word}' has no obvious GPT equivalent (only type83, type82, typeef, type8e and typefd \
         do): use a name such as linux or esp, or the type GUID"
    )
}

fn unknown_type(word: &str) -> String {
    format!(
        "unknown partition type '{word}' (expected linux, swap, extended, esp, lvm, raid, \
         bios-boot, home, linux-root-x86-64, typeXX or a GPT type GUID)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbr_types() {
        assert_eq!(parse_type("LINUX", Label::Dos), Ok(PartType::Mbr(0x83)));
        assert_eq!(parse_type("type83", Label::Dos), Ok(PartType::Mbr(0x83)));
        assert_eq!(parse_type("typeB", Label::Dos), Ok(PartType::Mbr(0x0b)));
        assert_eq!(parse_type("esp", Label::Dos), Ok(PartType::Mbr(0xef)));
        assert!(parse_type("type0f", Label::Dos).unwrap().is_extended());
        assert!(parse_type("bios-boot", Label::Dos).unwrap_err().contains("only on GPT"));
        assert!(parse_type("type100", Label::Dos).unwrap_err().contains("1 or 2 hex digits"));
        assert!(parse_type("type00", Label::Dos).unwrap_err().contains("empty"));
        assert!(parse_type("lunix", Label::Dos).unwrap_err().contains("unknown partition type 'lunix'"));
    }

    #[test]
    fn hex_codes_are_hex_digits_only() {
        assert_eq!(parse_hex_code("83"), Some(0x83));
        assert_eq!(parse_hex_code("0x5"), Some(5));
        assert_eq!(parse_hex_code("+5"), None);
        assert_eq!(parse_hex_code("-1"), None);
    }

    #[test]
    fn gpt_types() {
        let esp = parse_type("typeEF", Label::Gpt).unwrap();
        assert_eq!(esp, parse_type("esp", Label::Gpt).unwrap());
        assert_eq!(esp.sfdisk_value(), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        assert_eq!(esp.desc_word(), "esp");
        let custom = parse_type("ebd0a0a2-b9e5-4433-87c0-68b6b72699c7", Label::Gpt).unwrap();
        assert_eq!(custom.desc_word(), "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7");
        assert!(parse_type("type07", Label::Gpt).unwrap_err().contains("no obvious GPT equivalent"));
        assert!(parse_type("extended", Label::Gpt).unwrap_err().contains("only on MBR"));
        assert!(Guid::parse("0FC63DAF-8483-4772-8E79-3D69D8477DE").is_none());
        let nil = "00000000-0000-0000-0000-000000000000";
        assert!(Guid::parse(nil).unwrap().is_nil());
        assert!(!Guid::parse("00000000-0000-0000-0000-000000000001").unwrap().is_nil());
        assert!(parse_type(nil, Label::Gpt).unwrap_err().contains("unused entry type"));
    }

    #[test]
    fn mbr_words_stay_ka_compatible() {
        assert_eq!(PartType::Mbr(0x05).desc_word(), "extended");
        assert_eq!(PartType::Mbr(0xef).desc_word(), "typeef");
        assert_eq!(PartType::Mbr(0x05).sfdisk_value(), "5");
    }
}
