//! The golden node's `/etc/fstab`: which filesystems make the system, where
//! they mount and with which options. ka-deploy read it with `awk`; a line it
//! could not read was silently skipped. Here a malformed line is an error that
//! names its line number.

/// One fstab line that names a filesystem or a swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FstabEntry {
    /// First field: `UUID=…`, `LABEL=…`, `/dev/sda1`, `tmpfs`…
    pub spec: String,
    /// Second field, `none` for swap (as the kernel writes it).
    pub mount_point: String,
    pub fstype: String,
    pub options: String,
    pub line: usize,
}

impl FstabEntry {
    pub fn is_swap(&self) -> bool {
        self.fstype == "swap"
    }

    pub fn has_option(&self, option: &str) -> bool {
        self.options.split(',').any(|o| o == option)
    }
}

/// Parses fstab text. Comments and blank lines are skipped; lines for swap
/// keep their own mount point field (`none` or `swap`).
pub fn parse(text: &str) -> Result<Vec<FstabEntry>, String> {
    let mut entries = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<String> = line.split_whitespace().map(unescape).collect();
        if fields.len() < 3 {
            return Err(format!(
                "line {}: expected at least 3 fields (device, mount point, type): '{line}'",
                i + 1
            ));
        }
        let fstype = fields[2].clone();
        let mount_point = fields[1].clone();
        if fstype != "swap" && !mount_point.starts_with('/') {
            return Err(format!("line {}: mount point '{mount_point}' is not an absolute path", i + 1));
        }
        let mount_point = match mount_point.trim_end_matches('/') {
            "" => "/".to_string(),
            m => m.to_string(),
        };
        entries.push(FstabEntry {
            spec: fields[0].clone(),
            mount_point,
            fstype,
            options: fields.get(3).cloned().unwrap_or_else(|| "defaults".into()),
            line: i + 1,
        });
    }
    Ok(entries)
}

/// fstab writes a space in a path as `\040` (and a tab as `\011`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_debian_fstab() {
        let text = "# /etc/fstab\nUUID=1234 / ext4 errors=remount-ro 0 1\n\n/dev/sda5 /srv/my\\040data xfs defaults 0 2\nUUID=77 none swap sw 0 0\ntmpfs /tmp tmpfs\n";
        let e = parse(text).unwrap();
        assert_eq!(e.len(), 4);
        assert_eq!((e[0].spec.as_str(), e[0].mount_point.as_str(), e[0].line), ("UUID=1234", "/", 2));
        assert_eq!(e[1].mount_point, "/srv/my data");
        assert!(e[2].is_swap() && e[2].has_option("sw") && !e[2].has_option("s"));
        assert_eq!(e[3].options, "defaults");
    }

    #[test]
    fn bad_lines_are_named() {
        assert!(parse("UUID=1 /\n").unwrap_err().starts_with("line 1:"));
        assert!(parse("\n/dev/x home ext4\n").unwrap_err().contains("line 2: mount point 'home'"));
    }
}
