//! Kadeploy 3.0's old descriptions, read: [`Environment::parse_legacy`] for the
//! `key : value` lines (`tarball : FILE|KIND`, hexadecimal `fdisktype`…), and
//! the keys only that format has, by which [`Environment::parse`] tells it from
//! YAML. Grid'5000 and older Kadeploy sites still keep descriptions written this
//! way; kacast reads them but only ever writes YAML.

use tracing::warn;

use super::error::{field_error, EnvError};
use super::names::{script_value, short_kind, SHORT_KINDS};
use super::{Boot, Environment, Image, ImageKind, Postinstall};

/// Keys that exist only in the old format, at the start of a line. A file with
/// one of them is old-style: the old lines (`name : xen`) are valid YAML too, so
/// the syntax alone cannot tell, but kaenv3 YAML keeps these under `boot` or
/// names them differently (`image`, `postinstalls`, `partition_type`, `os`).
pub(super) const LEGACY_ONLY_KEYS: &[&str] = &[
    "tarball",
    "preinstall",
    "postinstall",
    "kernel",
    "kernel_params",
    "initrd",
    "hypervisor",
    "hypervisor_params",
    "fdisktype",
    "environment_kind",
    "demolishing_env",
];

impl Environment {
    /// Reads Kadeploy 3.0's `key : value` lines. Unlike Kadeploy, which skipped
    /// lines it could not read (a `name: x` without the space vanished and the
    /// error came later, as a missing field), kacast reports them; blank lines
    /// and `#` comments are allowed, and the spaces around `:` are optional.
    pub fn parse_legacy(text: &str, source: &str) -> Result<Environment, EnvError> {
        let line_err =
            |line: usize, problem: String| EnvError::Line { origin: source.to_string(), line, problem };
        let mut seen: Vec<&str> = Vec::new();
        let mut name = None;
        let mut version = None;
        let mut description = None;
        let mut author = None;
        let mut os = None;
        let mut image = None;
        let mut postinstalls = Vec::new();
        let mut boot = Boot::default();
        let mut filesystem = None;
        let mut partition_type = None;

        for (index, raw) in text.lines().enumerate() {
            let number = index + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                return Err(line_err(number, format!("expected 'key : value', found '{line}'")));
            };
            let key = key.trim();
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(line_err(number, format!("expected 'key : value', found '{line}'")));
            }
            if seen.contains(&key) {
                return Err(line_err(number, format!("{key}: given twice")));
            }
            seen.push(key);
            let value = value.trim();
            // Kadeploy ignored `key : ` with nothing after it: absent.
            let text = (!value.is_empty()).then(|| value.to_string());
            match key {
                "name" => name = text,
                "version" => version = text,
                "description" => description = text,
                "author" => author = text,
                "environment_kind" => os = text,
                "kernel" => boot.kernel = text,
                "initrd" => boot.initrd = text,
                "kernel_params" => boot.kernel_params = text,
                "filesystem" => filesystem = text,
                "fdisktype" if value.is_empty() => {}
                "fdisktype" => {
                    let hex = value.trim_start_matches("0x");
                    partition_type = Some(u32::from_str_radix(hex, 16).map_err(|_| {
                        line_err(number, format!("fdisktype: '{value}' is not a hexadecimal type like 83"))
                    })?);
                }
                "tarball" if value.is_empty() => {}
                "tarball" => {
                    let (file, kind) = value.split_once('|').ok_or_else(|| {
                        line_err(number, format!("tarball: expected FILE|KIND, found '{value}'"))
                    })?;
                    let (kind, compression) = short_kind(kind.trim()).ok_or_else(|| {
                        line_err(
                            number,
                            format!("tarball: unknown kind '{}' (expected {SHORT_KINDS})", kind.trim()),
                        )
                    })?;
                    image = Some(Image { file: file.trim().to_string(), kind, compression });
                }
                "postinstall" if value.is_empty() => {}
                "postinstall" => {
                    // FILE|KIND|SCRIPT [ARGS],FILE|KIND|SCRIPT…, as Kadeploy split it.
                    for entry in value.split(',') {
                        let mut parts = entry.splitn(3, '|').map(str::trim);
                        let archive = parts.next().unwrap_or("");
                        let kind = parts.next().ok_or_else(|| {
                            line_err(
                                number,
                                format!("postinstall: expected FILE|KIND|SCRIPT, found '{entry}'"),
                            )
                        })?;
                        let compression = match short_kind(kind) {
                            Some((ImageKind::Tar, c)) => c,
                            _ => {
                                return Err(line_err(
                                    number,
                                    format!(
                                        "postinstall: kind '{kind}' is not a tarball (tgz, tbz2, txz, tzst)"
                                    ),
                                ))
                            }
                        };
                        let script = script_value(parts.next().filter(|s| !s.is_empty()).map(str::to_string));
                        postinstalls.push(Postinstall { archive: archive.to_string(), compression, script });
                    }
                }
                "preinstall" | "hypervisor" | "hypervisor_params" => {
                    warn!("{source}, line {number}: {key} is ignored by kacast");
                }
                "visibility" | "demolishing_env" => {}
                other => return Err(line_err(number, format!("unknown field '{other}'"))),
            }
        }

        Ok(Environment {
            name: name.ok_or_else(|| field_error(source, "name", "missing (it is mandatory)"))?,
            version,
            description,
            author,
            os,
            image: image.ok_or_else(|| field_error(source, "tarball", "missing (it is mandatory)"))?,
            postinstalls,
            boot,
            filesystem,
            partition_type,
            multipart: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{field_of, LEGACY_XEN};
    use super::super::Compression;
    use super::*;

    #[test]
    fn reads_the_user_guide_legacy_example() {
        let env = Environment::parse_legacy(LEGACY_XEN, "xen.dsc").unwrap();
        assert_eq!(env.name, "xen");
        assert_eq!(env.version.as_deref(), Some("1"));
        assert_eq!(env.description.as_deref(), Some("https://www.grid5000.fr/index.php/Etch-x64-xen-1.0"));
        assert_eq!(env.author.as_deref(), Some("John Smith"));
        assert_eq!(env.os.as_deref(), Some("xen"));
        assert_eq!(
            env.image,
            Image {
                file: "/grid5000/etch-x64-xen-1.0.tgz".into(),
                kind: ImageKind::Tar,
                compression: Compression::Gzip
            }
        );
        assert_eq!(
            env.postinstalls,
            vec![Postinstall {
                archive: "/home/john/test/post_install.tgz".into(),
                compression: Compression::Gzip,
                script: Some("traitement.sh".into()),
            }]
        );
        assert_eq!(env.boot.kernel.as_deref(), Some("/boot/vmlinuz-2.6.18-6-xen-amd64"));
        assert_eq!(env.boot.initrd.as_deref(), Some("/boot/initrd.img-2.6.18-6-xen-amd64"));
        assert_eq!(env.boot.kernel_params.as_deref(), Some("console=tty0 console=ttyS1,38400n8"));
        // fdisktype is hexadecimal: 83 is 0x83, not 83.
        assert_eq!(env.partition_type, Some(0x83));
        assert_eq!(env.filesystem.as_deref(), Some("ext2"));
        assert!(!env.multipart);
        assert_eq!(Environment::parse(LEGACY_XEN, "xen.dsc").unwrap(), env);
    }

    #[test]
    fn legacy_details() {
        let text = "# comment\nname: dd\n\ntarball : /img/sda3.ddzst|ddzst\n\
                    postinstall : a.tbz2|tbz2|none,b.txz|txz|run.sh --fast\nfdisktype : 0xa5\n";
        let env = Environment::parse(text, "dd.dsc").unwrap();
        assert_eq!(env.image.kind, ImageKind::Dd);
        assert_eq!(env.image.compression, Compression::Zstd);
        assert_eq!(env.postinstalls.len(), 2);
        assert_eq!(env.postinstalls[0].script, None);
        assert_eq!(env.postinstalls[0].compression, Compression::Bzip2);
        assert_eq!(env.postinstalls[1].script.as_deref(), Some("run.sh --fast"));
        assert_eq!(env.partition_type, Some(0xa5));
        assert_eq!(env.check(), Ok(()), "a dd image needs no filesystem");

        let err = Environment::parse_legacy("name : x\ntarball : a.zip|zip\n", "z.dsc").unwrap_err();
        assert!(matches!(err, EnvError::Line { line: 2, .. }), "{err}");
        assert!(err.to_string().contains("tarball") && err.to_string().contains("'zip'"), "{err}");
        let err = Environment::parse_legacy("name : x\n", "z.dsc").unwrap_err();
        assert_eq!(field_of(&err), "tarball");
        let err = Environment::parse_legacy("name : x\nfilesytem : ext4\n", "z.dsc").unwrap_err();
        assert!(err.to_string().contains("filesytem"), "{err}");
        let err = Environment::parse_legacy("name : x\nfdisktype : 8g\n", "z.dsc").unwrap_err();
        assert!(err.to_string().contains("fdisktype"), "{err}");
    }
}
