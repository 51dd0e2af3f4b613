//! Kadeploy environment descriptions (kaenv3), read and written.
//!
//! A recorded image is only useful with the facts needed to deploy it: what the
//! file is (a tarball or a raw partition image, how it is compressed), which
//! filesystem to make for a tarball, which MBR type the partition gets, what to
//! run after extraction and what to boot. Kadeploy3 already describes its
//! environments that way and Grid'5000 publishes hundreds of them, so kacast
//! reads the same descriptions instead of inventing a format, and `kacast
//! capture` writes one that `kaenv3 -a` accepts.
//!
//! Two spellings are read:
//!
//! - **kaenv3 YAML** ([`Environment::parse_yaml`]): `name`, `version`,
//!   `description`, `author`, `visibility`, `destructive`, `os`, `image: {file,
//!   kind: tar|dd, compression: gzip|bzip2|xz|zstd}`, `postinstalls: [{archive,
//!   compression, script}]`, `boot: {kernel, initrd, kernel_params}`,
//!   `filesystem`, `partition_type` (a decimal number: 131 is 0x83),
//!   `multipart`. kacast also reads the short kinds (`tgz`, `ddzst`…) in
//!   `image.kind`, which kaenv3 itself only accepts in the old format, and
//!   guesses a missing `compression` from the file's extension.
//! - **the old `key : value` lines** of Kadeploy 3.0 ([`Environment::parse_legacy`]):
//!   `tarball : FILE|KIND`, `postinstall : FILE|KIND|SCRIPT,…`, `kernel`,
//!   `initrd`, `kernel_params`, `fdisktype` (hexadecimal), `filesystem`,
//!   `environment_kind`.
//!
//! [`Environment::parse`] picks the right one. Fields kacast has no use for
//! (`visibility`, `destructive`, `arch`, `preinstall`, the Xen hypervisor) are
//! accepted and dropped; fields nobody knows are reported with a warning, as
//! kaenv3 does, rather than refused, since newer Kadeploy versions add fields.
//!
//! The code is cut by concept: the types and [`Environment::check`] here,
//! [`EnvError`] in `error`, the names both formats share (short kinds,
//! compressions) in `names`, the YAML reader in `yaml` (with the typed field
//! getters of `yaml_fields`), the YAML writer in `yaml_write`, the old format in
//! `legacy`, and what a description boots in `boot` ([`find_boot`]). The
//! grub.cfg for an image without one is written on the node from the plan's
//! boot entry (`disk::recorded::grub_cfg`).

use std::fs;
use std::path::{Path, PathBuf};

use super::mkfs;

mod boot;
mod error;
mod legacy;
mod names;
#[cfg(test)]
mod test_util;
mod yaml;
mod yaml_fields;
mod yaml_write;

pub use boot::find_boot;
use error::field_error;
pub use error::EnvError;

/// The compression of images and post-install archives. The crate has one such
/// type, shared with the recorder and the node side; it is re-exported here
/// because every description names one.
pub use super::compression::Compression;

/// What the image file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageKind {
    /// A tarball of the root tree, extracted onto a filesystem kacast makes
    /// (so the node's partition may differ in size from the golden one).
    Tar,
    /// A raw image of one partition, written as is (`dd`); it carries its own
    /// filesystem, so the description needs none.
    Dd,
}

/// The image to deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// As written in the description: a plain path, `server://`, `local://`,
    /// `http(s)://`. See [`local_path`].
    pub file: String,
    pub kind: ImageKind,
    pub compression: Compression,
}

/// A tarball extracted after the image, whose script then adapts the clone
/// (Grid'5000's g5k-postinstall writes the network and fstab configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Postinstall {
    pub archive: String,
    pub compression: Compression,
    /// The script and its arguments; Kadeploy's `none` (no script) is `None`.
    pub script: Option<String>,
}

/// What to boot, as paths inside the image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Boot {
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    /// Parameters besides `root=`, which depends on where the image lands.
    pub kernel_params: Option<String>,
}

/// An environment description, in either spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    pub name: String,
    /// Kadeploy numbers versions (often a date, `2023040314`); any text is read.
    pub version: Option<String>,
    pub description: Option<String>,
    pub author: Option<String>,
    /// kaenv3's `os` (the old format's `environment_kind`): `linux`, `xen`, `other`.
    pub os: Option<String>,
    pub image: Image,
    pub postinstalls: Vec<Postinstall>,
    pub boot: Boot,
    /// The filesystem to make for a tar image, as mkfs and blkid name it.
    pub filesystem: Option<String>,
    /// The MBR partition type (0x83 = 131 for Linux).
    pub partition_type: Option<u32>,
    /// One image per partition; kacast refuses it in [`Environment::check`].
    pub multipart: bool,
}

/// Where `file` (an image or archive as a description names it) is on this
/// machine. kacast runs where the images are, so Kadeploy's `server://` (on the
/// Kadeploy server) and `local://` (where kaenv3 runs) are both local files, as
/// are `file://` and plain paths; relative ones are relative to `base_dir`, the
/// description's directory, so a recording can be moved as a whole. `http://`,
/// `https://` and other schemes are not files here: `None`.
pub fn local_path(file: &str, base_dir: &Path) -> Option<PathBuf> {
    let path = match file.split_once("://") {
        Some(("server" | "local" | "file", rest)) => rest,
        Some((scheme, _)) if !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric()) => {
            return None
        }
        _ => file,
    };
    if path.is_empty() {
        return None;
    }
    Some(base_dir.join(path))
}

impl Environment {
    /// Reads a description file in either format, naming it in errors.
    pub fn from_file(path: &Path) -> Result<Environment, EnvError> {
        let origin = path.display().to_string();
        let text = fs::read_to_string(path)
            .map_err(|e| EnvError::Read { origin: origin.clone(), message: e.to_string() })?;
        Environment::parse(&text, &origin)
    }

    /// Reads either format: the old one when a line starts with a key only it
    /// has (`tarball`, `fdisktype`, a top-level `kernel`…), else YAML.
    /// `source` names the description in errors.
    pub fn parse(text: &str, source: &str) -> Result<Environment, EnvError> {
        let legacy = text.lines().any(|line| {
            let key = line.split(':').next().unwrap_or("").trim_end();
            !line.starts_with(char::is_whitespace) && legacy::LEGACY_ONLY_KEYS.contains(&key)
        });
        if legacy {
            Environment::parse_legacy(text, source)
        } else {
            Environment::parse_yaml(text, source)
        }
    }

    /// Whether kacast can deploy this environment: a tar image needs a
    /// filesystem kacast can make (and that can hold files: not swap), the
    /// partition type must fit an MBR entry, and multipart environments (one
    /// image per partition) are not supported yet. A dd image brings its own
    /// filesystem and needs none. Unlike kaenv3, a tar image without a kernel is
    /// accepted: kacast can boot it with its own grub.cfg.
    pub fn check(&self) -> Result<(), EnvError> {
        let origin = format!("environment '{}'", self.name);
        if self.multipart {
            return Err(field_error(
                &origin,
                "multipart",
                "multipart environments (one image per partition) are not supported yet by kacast",
            ));
        }
        if self.image.file.is_empty() {
            return Err(field_error(&origin, "image.file", "empty"));
        }
        if self.image.kind == ImageKind::Tar {
            let supported = || mkfs::SUPPORTED.iter().filter(|t| **t != "swap").copied().collect::<Vec<_>>();
            match self.filesystem.as_deref() {
                None => {
                    return Err(field_error(
                        &origin,
                        "filesystem",
                        format!("missing: a tar image needs one of {}", supported().join(", ")),
                    ))
                }
                Some(fs) if fs == "swap" || !mkfs::SUPPORTED.contains(&fs) => {
                    return Err(field_error(
                        &origin,
                        "filesystem",
                        format!("'{fs}' cannot receive a tar image; kacast makes {}", supported().join(", ")),
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some(t) = self.partition_type {
            if !(1..=255).contains(&t) {
                return Err(field_error(
                    &origin,
                    "partition_type",
                    format!(
                        "{t} (0x{t:x}) is not an MBR partition type (1 to 255, e.g. 131 = 0x83 for Linux)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::{field_of, g5k, G5K_YAML};
    use super::*;

    #[test]
    fn errors_name_the_field() {
        let err = Environment::parse_yaml("name: e\nfilesystem: ext4\n", "noimage.yaml").unwrap_err();
        assert_eq!(field_of(&err), "image");
        assert!(err.to_string().starts_with("noimage.yaml: field 'image'"), "{err}");

        let err = G5K_YAML.replace("compression: zstd", "compression: lz4");
        let err = Environment::parse_yaml(&err, "c.yaml").unwrap_err();
        assert_eq!(field_of(&err), "image.compression");
        assert!(err.to_string().contains("lz4"), "{err}");

        let err = G5K_YAML.replace("  compression: gzip", "  compression: rar");
        let err = Environment::parse_yaml(&err, "c.yaml").unwrap_err();
        assert_eq!(field_of(&err), "postinstalls[0].compression");

        let err = Environment::parse_yaml(&G5K_YAML.replace("multipart: false", "multipart: 3"), "m.yaml");
        assert_eq!(field_of(&err.unwrap_err()), "multipart");

        let err = Environment::parse_yaml("name: [a]\nimage: {file: a, kind: tar}\n", "n.yaml").unwrap_err();
        assert_eq!(field_of(&err), "name");

        let err = Environment::parse_yaml(": : :\n  - [", "bad.yaml").unwrap_err();
        assert!(matches!(err, EnvError::Syntax { .. }), "{err}");

        let unsupported = Environment::parse_yaml(&G5K_YAML.replace("ext4", "zfs"), "f.yaml").unwrap();
        let err = unsupported.check().unwrap_err();
        assert_eq!(field_of(&err), "filesystem");
        assert!(err.to_string().contains("'zfs'") && err.to_string().contains("xfs"), "{err}");
        let mut swap = g5k();
        swap.filesystem = Some("swap".into());
        assert_eq!(field_of(&swap.check().unwrap_err()), "filesystem");
        let mut none = g5k();
        none.filesystem = None;
        assert_eq!(field_of(&none.check().unwrap_err()), "filesystem");

        let big = Environment::parse_yaml(&G5K_YAML.replace("131", "0x1ff"), "p.yaml").unwrap();
        assert_eq!(big.partition_type, Some(0x1ff));
        let err = big.check().unwrap_err();
        assert_eq!(field_of(&err), "partition_type");
        assert!(err.to_string().contains("0x1ff"), "{err}");
        let mut zero = g5k();
        zero.partition_type = Some(0);
        assert!(zero.check().is_err());

        let multi =
            Environment::parse_yaml(&G5K_YAML.replace("multipart: false", "multipart: true"), "m").unwrap();
        let err = multi.check().unwrap_err();
        assert_eq!(field_of(&err), "multipart");
        assert!(err.to_string().contains("not supported yet"), "{err}");
    }

    #[test]
    fn local_paths() {
        let base = Path::new("/srv/images");
        assert_eq!(local_path("server:///grid5000/a.tgz", base), Some(PathBuf::from("/grid5000/a.tgz")));
        assert_eq!(local_path("local://sub/a.tgz", base), Some(PathBuf::from("/srv/images/sub/a.tgz")));
        assert_eq!(local_path("a.tar.zst", base), Some(PathBuf::from("/srv/images/a.tar.zst")));
        assert_eq!(local_path("/abs/a.tar.zst", base), Some(PathBuf::from("/abs/a.tar.zst")));
        assert_eq!(local_path("http://h/a.tgz", base), None);
        assert_eq!(local_path("https://h/a.tgz", base), None);
        // The file name survives parsing untouched.
        assert_eq!(g5k().image.file, "server:///grid5000/images/debian11-min.tar.zst");
    }
}
