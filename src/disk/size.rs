//! Partition sizes as a desc writes them: ka's plain megabytes, sizes with a
//! unit, percentages and `fill`.

use std::fmt;

/// One mebibyte. ka-deploy's "megabytes" are MiB: its `fdisk_to_desc` divides
/// fdisk's 1 KiB block counts by 1024 (8185086 blocks → `7993`), and the
/// `+5000M` it hands to fdisk is binary too. So `linux 5000` is 5000 MiB.
pub const MIB: u64 = 1 << 20;

/// How big a partition is to be, before it meets a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Size {
    /// A fixed size in MiB. Sizes given with another unit are rounded up to a
    /// whole MiB, so every partition stays 1 MiB aligned and is never smaller
    /// than asked.
    Mib(u64),
    /// A whole percentage (1–100) of the scope: of the disk's usable space for a
    /// primary or GPT partition, of the extended partition's usable space for a
    /// logical.
    Percent(u8),
    /// The rest of the scope (the disk, or the extended partition).
    Fill,
}

impl Size {
    /// The largest fixed size, in MiB: just under 16 EiB, so that its byte
    /// count fits the `u64` every disk size is counted in. No disk can hold a
    /// larger partition, and a larger number could not be written back as a
    /// plain MiB number that reads again ([`Desc::parse`](super::Desc::parse)
    /// refuses it as too large).
    pub const MAX_MIB: u64 = u64::MAX / MIB;
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Size::Mib(n) => write!(f, "{n}"),
            Size::Percent(p) => write!(f, "{p}%"),
            Size::Fill => f.write_str("fill"),
        }
    }
}

/// Parses a desc size word. The error is the message for the user.
pub fn parse_size(word: &str) -> Result<Size, String> {
    const HINT: &str = "sizes are MiB numbers (5000), sizes with a unit (512M, 20G, 1T), \
                        percentages (25%) or fill";
    if word.eq_ignore_ascii_case("fill") {
        return Ok(Size::Fill);
    }
    if let Some(pct) = word.strip_suffix('%') {
        let p: u64 = digits(pct)
            .ok_or_else(|| format!("bad size '{word}': percentages are whole numbers, e.g. 25%"))?;
        return match p {
            0 => Err(format!("zero size '{word}': a partition needs at least 1 MiB")),
            1..=100 => Ok(Size::Percent(p as u8)),
            _ => Err(format!("percentage '{word}' is over 100%")),
        };
    }
    let mib = if let Some(mib) = digits(word) {
        mib
    } else {
        crate::size::parse_size(word).map_err(|e| format!("bad size: {e}; {HINT}"))?.div_ceil(MIB)
    };
    match mib {
        0 => Err(format!("zero size '{word}': a partition needs at least 1 MiB")),
        // Rounded up, u64::MAX bytes would be 2^44 MiB: one byte past what a
        // `u64` counts, and a number `linux N` could not read back.
        mib if mib > Size::MAX_MIB => {
            Err(format!("bad size '{word}': too large (at most {} MiB, just under 16 EiB)", Size::MAX_MIB))
        }
        mib => Ok(Size::Mib(mib)),
    }
}

/// A number made of ASCII digits only (no sign, no space), if it fits.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ka_sizes_are_mib() {
        assert_eq!(parse_size("5000"), Ok(Size::Mib(5000)));
        assert_eq!(parse_size("FILL"), Ok(Size::Fill));
    }

    #[test]
    fn units_round_up_to_mib() {
        assert_eq!(parse_size("512M"), Ok(Size::Mib(512)));
        assert_eq!(parse_size("500MiB"), Ok(Size::Mib(500)));
        assert_eq!(parse_size("20G"), Ok(Size::Mib(20 * 1024)));
        assert_eq!(parse_size("1T"), Ok(Size::Mib(1024 * 1024)));
        assert_eq!(parse_size("1k"), Ok(Size::Mib(1)));
        assert_eq!(parse_size("1025K"), Ok(Size::Mib(2)));
    }

    #[test]
    fn percentages() {
        assert_eq!(parse_size("25%"), Ok(Size::Percent(25)));
        assert_eq!(parse_size("100%"), Ok(Size::Percent(100)));
        assert!(parse_size("101%").unwrap_err().contains("over 100%"));
        assert!(parse_size("2.5%").unwrap_err().contains("whole numbers"));
    }

    #[test]
    fn bad_sizes() {
        for zero in ["0", "0M", "0%", "0G"] {
            assert!(parse_size(zero).unwrap_err().contains("zero size"), "{zero}");
        }
        assert!(parse_size("12X").unwrap_err().contains("bad size"));
        assert!(parse_size("big").unwrap_err().contains("bad size"));
        assert!(parse_size("-5").unwrap_err().contains("bad size"));
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("18446744073709551615").unwrap_err().contains("too large"));
    }

    /// Fuzz regression `size-2pow44-mib-round-trip`: `18446744073709551615B`
    /// rounded up to 2^44 MiB, which was accepted but written back as a MiB
    /// number that no longer parsed.
    #[test]
    fn largest_size_round_trips() {
        assert_eq!(Size::MAX_MIB, (1 << 44) - 1);
        for word in ["18446744073709551615B", "17592186044416", "16777216T", "18014398509481984K"] {
            assert!(parse_size(word).unwrap_err().contains("too large"), "{word}");
        }
        for word in ["17592186044415", "18446744073708503040B", "16777215T"] {
            let size = parse_size(word).unwrap();
            assert_eq!(parse_size(&size.to_string()), Ok(size), "{word}");
        }
        assert_eq!(parse_size("17592186044415"), Ok(Size::Mib(Size::MAX_MIB)));
    }
}
