//! Sizes as users write them: `512M`, `32MiB`, `1G`, `4096`.

use crate::error::{Error, Result};

/// Parses a byte size. Suffixes K, M, G, T (optionally followed by `iB` or `B`)
/// are binary multiples, as `dd` and most disk tools read them.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let bad = |why: &str| Error::Config(format!("invalid size '{s}': {why}"));
    if num.is_empty() {
        return Err(bad("expected a number such as 512M or 1G"));
    }
    let n: u64 = num.parse().map_err(|_| bad("number too large"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad("unknown unit (use K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift).ok_or_else(|| bad("too large"))
}

/// `1.5 GiB`, `512.0 MiB`: for humans reading logs.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("32MiB").unwrap(), 32 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12X").unwrap_err().to_string().contains("unknown unit"));
        assert!(parse_size("M").unwrap_err().to_string().contains("expected a number"));
        assert!(parse_size("99999999999T").unwrap_err().to_string().contains("too large"));
        assert_eq!(human(1536 << 20), "1.5 GiB");
    }
}
