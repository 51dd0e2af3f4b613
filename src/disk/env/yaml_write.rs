//! kaenv3's YAML descriptions, written: [`Environment::to_yaml`], what `kacast
//! capture` hands to `kaenv3 -a`. The YAML is written line by line rather than
//! through serde_yaml so that the fields come in kaenv3's order, only fields
//! kaenv3 knows are written, and strings that a YAML 1.1 reader (kaenv3's Ruby)
//! would take for booleans, dates or times are quoted.

use super::names::{compression_name, NO_SCRIPT};
use super::{Compression, Environment};

impl Environment {
    /// The description as kaenv3 YAML, fields in kaenv3's own order and only
    /// fields it knows, so `kaenv3 -a` records it. kaenv3 requires `os`:
    /// `linux` is written when none is set. Uncompressed images have no kaenv3
    /// spelling: their `compression` is left out (kacast reads that back as
    /// none unless the file name implies otherwise, in which case kacast's own
    /// `none` is written). Strings that YAML 1.1 readers (kaenv3's Ruby) could
    /// take for something else (`yes`, `2024-01-01`, `12:30`) are quoted.
    pub fn to_yaml(&self) -> String {
        let mut out = String::from("---\n");
        let mut line = |indent: &str, key: &str, value: String| {
            out.push_str(&format!("{indent}{key}:"));
            if !value.is_empty() {
                out.push(' ');
                out.push_str(&value);
            }
            out.push('\n');
        };
        line("", "name", yaml_text(&self.name));
        if let Some(v) = &self.version {
            // kaenv3 wants a number; text that is not one stays text.
            let numeric = v.bytes().all(|b| b.is_ascii_digit()) && v.parse::<i64>().is_ok();
            line("", "version", if numeric { v.clone() } else { yaml_text(v) });
        }
        if let Some(v) = &self.description {
            line("", "description", yaml_text(v));
        }
        if let Some(v) = &self.author {
            line("", "author", yaml_text(v));
        }
        line("", "os", yaml_text(self.os.as_deref().unwrap_or("linux")));
        line("", "image", String::new());
        line("  ", "file", yaml_text(&self.image.file));
        line("  ", "kind", self.image.kind.as_str().to_string());
        if let Some(c) = compression_to_write(self.image.compression, &self.image.file) {
            line("  ", "compression", c.to_string());
        }
        if !self.postinstalls.is_empty() {
            line("", "postinstalls", String::new());
            for post in &self.postinstalls {
                line("- ", "archive", yaml_text(&post.archive));
                if let Some(c) = compression_to_write(post.compression, &post.archive) {
                    line("  ", "compression", c.to_string());
                }
                line("  ", "script", yaml_text(post.script.as_deref().unwrap_or(NO_SCRIPT)));
            }
        }
        let boot = [
            ("kernel", &self.boot.kernel),
            ("initrd", &self.boot.initrd),
            ("kernel_params", &self.boot.kernel_params),
        ];
        if boot.iter().any(|(_, v)| v.is_some()) {
            line("", "boot", String::new());
            for (key, value) in boot {
                if let Some(v) = value {
                    line("  ", key, yaml_text(v));
                }
            }
        }
        line("", "multipart", self.multipart.to_string());
        if let Some(fs) = &self.filesystem {
            line("", "filesystem", yaml_text(fs));
        }
        if let Some(t) = self.partition_type {
            line("", "partition_type", t.to_string());
        }
        out
    }
}

/// The `compression:` to write for `c`, if any (see [`Environment::to_yaml`]).
fn compression_to_write(c: Compression, file: &str) -> Option<&'static str> {
    match c {
        Compression::None if Compression::from_extension(file).is_none() => None,
        c => Some(compression_name(c)),
    }
}

/// Words YAML 1.1 (kaenv3's Ruby Psych) reads as booleans or null.
const YAML11_WORDS: &[&str] = &["y", "n", "yes", "no", "on", "off", "true", "false", "null"];

/// `s` as a YAML scalar: plain when it cannot be mistaken for anything but
/// text (it starts with a letter or `/`, has no `: ` or ` #`, only ordinary
/// characters), else double-quoted. A JSON string is a valid YAML double-quoted
/// scalar, escapes included.
fn yaml_text(s: &str) -> String {
    let ordinary = |c: char| c.is_ascii_alphanumeric() || " _./+@=,:-".contains(c);
    let plain = s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '/')
        && s.chars().all(ordinary)
        && !s.ends_with([' ', ':'])
        && !s.contains(": ")
        && !YAML11_WORDS.contains(&s.to_ascii_lowercase().as_str());
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).expect("a string always serialises")
    }
}

#[cfg(test)]
mod tests {
    use serde_yaml::Value;

    use super::super::test_util::{g5k, LEGACY_XEN};
    use super::super::yaml::YAML_FIELDS;
    use super::super::Postinstall;
    use super::*;

    #[test]
    fn round_trips_through_yaml() {
        let mut env = g5k();
        env.boot.kernel_params = Some("console=ttyS0,115200 quiet".into());
        env.description = Some("multi\nline: with \"quotes\" # and a hash".into());
        env.author = Some("yes".into());
        env.version = Some("2024-01-01".into());
        env.postinstalls.push(Postinstall {
            archive: "local://p.tar".into(),
            compression: Compression::None,
            script: None,
        });
        let yaml = env.to_yaml();
        assert_eq!(Environment::parse_yaml(&yaml, "out.yaml").unwrap(), env, "{yaml}");
        // kaenv3's spelling: a numeric version and partition type, `none` scripts, no kacast-only keys.
        let plain = g5k().to_yaml();
        assert!(plain.contains("\nversion: 2023040314\n"), "{plain}");
        assert!(plain.contains("\npartition_type: 131\n"), "{plain}");
        assert!(plain.contains("\n  kind: tar\n  compression: zstd\n"), "{plain}");
        assert!(yaml.contains("\n  script: none\n"), "{yaml}");
        assert!(yaml.contains("\nauthor: \"yes\"\n"), "YAML 1.1 would read yes as a boolean: {yaml}");
        assert!(!plain.contains("\narch:") && !plain.contains("\nvisibility:"), "{plain}");
        // Every top-level key is one kaenv3 knows.
        let doc: Value = serde_yaml::from_str(&yaml).unwrap();
        for key in doc.as_mapping().unwrap().keys() {
            assert!(YAML_FIELDS.contains(&key.as_str().unwrap()), "{key:?}");
        }
        // kaenv3 needs an os.
        let mut no_os = g5k();
        no_os.os = None;
        assert!(no_os.to_yaml().contains("\nos: linux\n"));
        // A legacy description converts.
        let legacy = Environment::parse_legacy(LEGACY_XEN, "xen.dsc").unwrap();
        assert_eq!(Environment::parse_yaml(&legacy.to_yaml(), "xen.yaml").unwrap(), legacy);
    }
}
