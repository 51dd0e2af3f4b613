//! kaenv3's YAML descriptions, read: [`Environment::parse_yaml`] and the fields
//! kaenv3 knows at each level (anything else is warned about, not refused). The
//! typed getters it uses are in `yaml_fields`, the writer in `yaml_write`; this
//! file is the one place that says which field means what.

use serde_yaml::Value;
use tracing::warn;

use super::error::EnvError;
use super::names::{compression_name, resolve_compression, script_value, short_kind, SHORT_KINDS};
use super::yaml_fields::{kind_of, Fields};
use super::{Boot, Environment, Image, ImageKind, Postinstall};

/// kaenv3's top-level fields; anything else is warned about and ignored.
pub(super) const YAML_FIELDS: &[&str] = &[
    "name",
    "version",
    "arch",
    "description",
    "author",
    "visibility",
    "destructive",
    "os",
    "image",
    "preinstall",
    "postinstalls",
    "boot",
    "multipart",
    "filesystem",
    "partition_type",
    "options",
];
const IMAGE_FIELDS: &[&str] = &["file", "kind", "compression"];
const POSTINSTALL_FIELDS: &[&str] = &["archive", "compression", "script"];
/// `block_device` and `partition` only matter for multipart environments.
const BOOT_FIELDS: &[&str] =
    &["kernel", "initrd", "kernel_params", "hypervisor", "hypervisor_params", "block_device", "partition"];

impl Environment {
    /// Reads kaenv3's YAML (what `kaenv3 -p` prints and `kaenv3 -a` takes).
    pub fn parse_yaml(text: &str, source: &str) -> Result<Environment, EnvError> {
        let doc: Value = serde_yaml::from_str(text)
            .map_err(|e| EnvError::Syntax { origin: source.to_string(), message: e.to_string() })?;
        if !doc.is_mapping() {
            return Err(EnvError::Syntax {
                origin: source.to_string(),
                message: format!("expected a mapping of fields, found {}", kind_of(&doc)),
            });
        }
        let top = Fields::new(source, &doc, "", String::new())?;
        top.warn_unknown(YAML_FIELDS);
        if top.get("preinstall").is_some() {
            warn!("{source}: 'preinstall' replaces Kadeploy's deployment environment; kacast ignores it");
        }

        let image_value = top.get("image").ok_or_else(|| top.err("image", "missing (it is mandatory)"))?;
        let image_fields = Fields::new(source, image_value, "image", "image.".into())?;
        image_fields.warn_unknown(IMAGE_FIELDS);
        let file = image_fields.required_text("file")?;
        let kind_name = image_fields.required_text("kind")?;
        let compression = image_fields.text("compression")?;
        let image = match kind_name.as_str() {
            "tar" | "dd" => Image {
                kind: if kind_name == "tar" { ImageKind::Tar } else { ImageKind::Dd },
                compression: resolve_compression(source, "image.compression", compression, &file)?,
                file,
            },
            "fsa" => {
                return Err(image_fields.err(
                    "kind",
                    "FSArchiver (fsa) images are not supported by kacast; record a tar or dd image",
                ))
            }
            short => {
                let (kind, implied) = short_kind(short).ok_or_else(|| {
                    image_fields.err(
                        "kind",
                        format!(
                            "unknown image kind '{short}' (expected tar, dd or a short kind: {SHORT_KINDS})"
                        ),
                    )
                })?;
                if let Some(given) = compression {
                    let given = resolve_compression(source, "image.compression", Some(given), &file)?;
                    if given != implied {
                        return Err(image_fields.err(
                            "compression",
                            format!(
                                "'{}' contradicts the kind '{short}', which means {}",
                                compression_name(given),
                                compression_name(implied)
                            ),
                        ));
                    }
                }
                Image { file, kind, compression: implied }
            }
        };

        let mut postinstalls = Vec::new();
        match top.get("postinstalls") {
            None => {}
            Some(Value::Sequence(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let prefix = format!("postinstalls[{i}].");
                    let post = Fields::new(source, item, prefix.trim_end_matches('.'), prefix.clone())?;
                    post.warn_unknown(POSTINSTALL_FIELDS);
                    let archive = post.required_text("archive")?;
                    let compression = resolve_compression(
                        source,
                        &post.path("compression"),
                        post.text("compression")?,
                        &archive,
                    )?;
                    let script = script_value(post.text("script")?);
                    postinstalls.push(Postinstall { archive, compression, script });
                }
            }
            Some(other) => {
                return Err(top.err("postinstalls", format!("should be a list, not {}", kind_of(other))))
            }
        }

        let mut boot = Boot::default();
        if let Some(value) = top.get("boot") {
            let fields = Fields::new(source, value, "boot", "boot.".into())?;
            fields.warn_unknown(BOOT_FIELDS);
            boot.kernel = fields.text("kernel")?;
            boot.initrd = fields.text("initrd")?;
            boot.kernel_params = fields.text("kernel_params")?;
            if fields.text("hypervisor")?.is_some() {
                warn!("{source}: boot.hypervisor is ignored: kacast boots the kernel directly");
            }
        }

        Ok(Environment {
            name: top.required_text("name")?,
            version: top.text("version")?,
            description: top.text("description")?,
            author: top.text("author")?,
            os: top.text("os")?,
            image,
            postinstalls,
            boot,
            filesystem: top.text("filesystem")?,
            partition_type: top.number("partition_type")?,
            multipart: top.boolean("multipart")?.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{field_of, g5k, G5K_YAML};
    use super::super::Compression;
    use super::*;

    #[test]
    fn reads_grid5000_yaml() {
        let env = g5k();
        assert_eq!(
            env,
            Environment {
                name: "debian11-min".into(),
                version: Some("2023040314".into()),
                description: Some("debian 11 (bullseye) for x64 - min".into()),
                author: Some("support-staff@lists.grid5000.fr".into()),
                os: Some("linux".into()),
                image: Image {
                    file: "server:///grid5000/images/debian11-min.tar.zst".into(),
                    kind: ImageKind::Tar,
                    compression: Compression::Zstd,
                },
                postinstalls: vec![Postinstall {
                    archive: "server:///grid5000/postinstalls/g5k-postinstall.tgz".into(),
                    compression: Compression::Gzip,
                    script: Some("g5k-postinstall --net debian --disk-aliases".into()),
                }],
                boot: Boot {
                    kernel: Some("/vmlinuz".into()),
                    initrd: Some("/initrd.img".into()),
                    kernel_params: None
                },
                filesystem: Some("ext4".into()),
                partition_type: Some(0x83),
                multipart: false,
            }
        );
        assert_eq!(env.check(), Ok(()));
        // parse() picks YAML for it.
        assert_eq!(Environment::parse(G5K_YAML, "x").unwrap(), env);
    }

    #[test]
    fn short_kinds_and_extensions() {
        let yaml = |kind: &str, extra: &str| {
            format!("name: e\nimage:\n  file: /i/img\n  kind: {kind}\n{extra}filesystem: ext4\n")
        };
        for (kind, want_kind, want_c) in [
            ("tgz", ImageKind::Tar, Compression::Gzip),
            ("tbz2", ImageKind::Tar, Compression::Bzip2),
            ("txz", ImageKind::Tar, Compression::Xz),
            ("tzst", ImageKind::Tar, Compression::Zstd),
            ("ddgz", ImageKind::Dd, Compression::Gzip),
            ("ddbz2", ImageKind::Dd, Compression::Bzip2),
            ("ddxz", ImageKind::Dd, Compression::Xz),
            ("ddzst", ImageKind::Dd, Compression::Zstd),
        ] {
            let env = Environment::parse_yaml(&yaml(kind, ""), "s.yaml").unwrap();
            assert_eq!((env.image.kind, env.image.compression), (want_kind, want_c), "{kind}");
        }
        // A short kind and a contradicting compression.
        let err = Environment::parse_yaml(&yaml("tgz", "  compression: xz\n"), "s.yaml").unwrap_err();
        assert_eq!(field_of(&err), "image.compression");
        // No compression: from the extension, else none.
        let env =
            Environment::parse_yaml("name: e\nimage:\n  file: a.tar.xz\n  kind: tar\n", "s.yaml").unwrap();
        assert_eq!(env.image.compression, Compression::Xz);
        let env = Environment::parse_yaml("name: e\nimage:\n  file: a.img\n  kind: dd\n", "s.yaml").unwrap();
        assert_eq!(env.image.compression, Compression::None);
        // Unknown kinds and fsa.
        let err = Environment::parse_yaml(&yaml("zip", ""), "s.yaml").unwrap_err();
        assert_eq!(field_of(&err), "image.kind");
        let err = Environment::parse_yaml(&yaml("fsa", ""), "s.yaml").unwrap_err();
        assert!(err.to_string().contains("FSArchiver"), "{err}");
    }
}
