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

use std::cmp::Ordering;
use std::ffi::OsString;
use std::fs;
use std::path::{Component, Path, PathBuf};

use serde_yaml::{Mapping, Value};
use tracing::warn;

use super::mkfs;

/// The compression of images and post-install archives. The crate has one such
/// type, shared with the recorder and the node side; it is re-exported here
/// because every description names one.
pub use super::compression::Compression;

/// A description that cannot be read, or that kacast cannot deploy.
///
/// Every variant names where the problem is (the description file, or the
/// environment by name for [`Environment::check`]) and, when there is one, the
/// field, spelled as in the description (`image.compression`,
/// `postinstalls[0].archive`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// The description file could not be read.
    #[error("{origin}: cannot read the environment description: {message}")]
    Read { origin: String, message: String },
    /// Not YAML at all (or not a mapping at its top).
    #[error("{origin}: not a kaenv3 YAML environment description: {message}")]
    Syntax { origin: String, message: String },
    /// A field is missing, has the wrong type or a value kacast does not accept.
    #[error("{origin}: field '{field}': {problem}")]
    Field { origin: String, field: String, problem: String },
    /// A line of an old `key : value` description.
    #[error("{origin}, line {line}: {problem}")]
    Line { origin: String, line: usize, problem: String },
}

fn field_error(origin: &str, field: &str, problem: impl Into<String>) -> EnvError {
    EnvError::Field { origin: origin.to_string(), field: field.to_string(), problem: problem.into() }
}

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

impl ImageKind {
    fn as_str(&self) -> &'static str {
        match self {
            ImageKind::Tar => "tar",
            ImageKind::Dd => "dd",
        }
    }
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

/// kaenv3's top-level fields; anything else is warned about and ignored.
const YAML_FIELDS: &[&str] = &[
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

/// Keys that exist only in the old format, at the start of a line. A file with
/// one of them is old-style: the old lines (`name : xen`) are valid YAML too, so
/// the syntax alone cannot tell, but kaenv3 YAML keeps these under `boot` or
/// names them differently (`image`, `postinstalls`, `partition_type`, `os`).
const LEGACY_ONLY_KEYS: &[&str] = &[
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

/// Script value meaning "extract the archive, run nothing" in both formats.
const NO_SCRIPT: &str = "none";

/// Compression names, as kaenv3 spells them (`none` is kacast's, for the
/// uncompressed images kaenv3 cannot describe).
fn compression_name(c: Compression) -> &'static str {
    match c {
        Compression::None => "none",
        Compression::Gzip => "gzip",
        Compression::Bzip2 => "bzip2",
        Compression::Xz => "xz",
        Compression::Zstd => "zstd",
    }
}

fn compression_from_name(name: &str) -> Option<Compression> {
    Some(match name {
        "none" => Compression::None,
        "gzip" => Compression::Gzip,
        "bzip2" => Compression::Bzip2,
        "xz" => Compression::Xz,
        "zstd" => Compression::Zstd,
        _ => return None,
    })
}

/// Kadeploy's short kinds (the old `tarball : FILE|KIND` and its database),
/// plus zstd ones, which Kadeploy 3.0 predates: both `tzst` (the file
/// extension) and `tzstd` (kind + compression name) are read.
fn short_kind(kind: &str) -> Option<(ImageKind, Compression)> {
    Some(match kind {
        "tgz" => (ImageKind::Tar, Compression::Gzip),
        "tbz2" => (ImageKind::Tar, Compression::Bzip2),
        "txz" => (ImageKind::Tar, Compression::Xz),
        "tzst" | "tzstd" => (ImageKind::Tar, Compression::Zstd),
        "ddgz" => (ImageKind::Dd, Compression::Gzip),
        "ddbz2" => (ImageKind::Dd, Compression::Bzip2),
        "ddxz" => (ImageKind::Dd, Compression::Xz),
        "ddzst" | "ddzstd" => (ImageKind::Dd, Compression::Zstd),
        _ => return None,
    })
}

/// The short kinds, for error messages.
const SHORT_KINDS: &str = "tgz, tbz2, txz, tzst, ddgz, ddbz2, ddxz, ddzst";

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

/// The compression a description gives, else the one the file name implies,
/// else none.
fn resolve_compression(
    origin: &str,
    field: &str,
    given: Option<String>,
    file: &str,
) -> Result<Compression, EnvError> {
    match given {
        Some(name) => compression_from_name(&name).ok_or_else(|| {
            field_error(
                origin,
                field,
                format!("unknown compression '{name}' (expected gzip, bzip2, xz, zstd or none)"),
            )
        }),
        None => Ok(Compression::from_extension(file).unwrap_or(Compression::None)),
    }
}

/// A script value: `none` and empty mean no script.
fn script_value(script: Option<String>) -> Option<String> {
    script.filter(|s| s != NO_SCRIPT)
}

/// Reading one mapping of a kaenv3 description, with errors naming the field's
/// full path.
struct Fields<'a> {
    origin: &'a str,
    map: &'a Mapping,
    /// `""` at the top, `image.`, `postinstalls[0].`…
    prefix: String,
}

impl<'a> Fields<'a> {
    fn new(origin: &'a str, value: &'a Value, field: &str, prefix: String) -> Result<Self, EnvError> {
        match value {
            Value::Mapping(map) => Ok(Fields { origin, map, prefix }),
            other => Err(field_error(origin, field, format!("should be a mapping, not {}", kind_of(other)))),
        }
    }

    fn path(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn err(&self, key: &str, problem: impl Into<String>) -> EnvError {
        field_error(self.origin, &self.path(key), problem)
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// Text; numbers are taken as their text (a `version: 2023040314`, a
    /// numeric `name`). Empty text is absent, as kaenv3 treats `kernel_params: ''`.
    fn text(&self, key: &str) -> Result<Option<String>, EnvError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone()).filter(|s| !s.is_empty())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(other) => Err(self.err(key, format!("should be text, not {}", kind_of(other)))),
        }
    }

    fn required_text(&self, key: &str) -> Result<String, EnvError> {
        self.text(key)?.ok_or_else(|| self.err(key, "missing (it is mandatory)"))
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, EnvError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.err(key, format!("should be true or false, not {}", kind_of(other)))),
        }
    }

    /// A non-negative number; kaenv3 writes them in decimal, YAML also reads
    /// `0x83`, and a quoted `"0x83"` is accepted too.
    fn number(&self, key: &str) -> Result<Option<u32>, EnvError> {
        let bad = |shown: String| self.err(key, format!("{shown} is not a number from 0 to {}", u32::MAX));
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_u64().and_then(|v| u32::try_from(v).ok()) {
                Some(v) => Ok(Some(v)),
                None => Err(bad(n.to_string())),
            },
            Some(Value::String(s)) => parse_number(s).map(Some).ok_or_else(|| bad(format!("'{s}'"))),
            Some(other) => Err(self.err(key, format!("should be a number, not {}", kind_of(other)))),
        }
    }

    /// Warns about keys outside `known`, as kaenv3 does ("Unused field"): a
    /// typo is visible, and fields of newer Kadeploy versions do not fail.
    fn warn_unknown(&self, known: &[&str]) {
        for key in self.map.keys() {
            let name = match key {
                Value::String(s) => s.clone(),
                other => format!("{other:?}"),
            };
            if !known.contains(&name.as_str()) {
                warn!("{}: field '{}' is not a kaenv3 field, ignored", self.origin, self.path(&name));
            }
        }
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// `131`, `0x83`.
fn parse_number(s: &str) -> Option<u32> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
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
            !line.starts_with(char::is_whitespace) && LEGACY_ONLY_KEYS.contains(&key)
        });
        if legacy {
            Environment::parse_legacy(text, source)
        } else {
            Environment::parse_yaml(text, source)
        }
    }

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

/// Most symbolic links followed while resolving one path inside an image;
/// Linux's own limit (MAXSYMLINKS), beyond which a path is taken as a loop.
const MAX_SYMLINKS: usize = 40;

/// `inside` (an absolute path in the image rooted at `root`) resolved the way
/// the booted image would see it: symbolic links are followed, absolute targets
/// from the image's root, never the host's. `Some` with the resolved in-image
/// path when it ends at a regular file.
fn resolve_in_image(root: &Path, inside: &Path) -> Option<PathBuf> {
    let mut todo: Vec<OsString> = Vec::new();
    let push_components = |todo: &mut Vec<OsString>, path: &Path| {
        let parts: Vec<OsString> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect();
        todo.extend(parts.into_iter().rev());
    };
    push_components(&mut todo, inside);
    let mut done = PathBuf::from("/");
    let mut links = 0;
    while let Some(part) = todo.pop() {
        if part == ".." {
            done.pop();
            continue;
        }
        let next = done.join(&part);
        let host = root.join(next.strip_prefix("/").ok()?);
        let meta = fs::symlink_metadata(&host).ok()?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_SYMLINKS {
                return None;
            }
            let target = fs::read_link(&host).ok()?;
            if target.is_absolute() {
                done = PathBuf::from("/");
            }
            push_components(&mut todo, &target);
        } else {
            done = next;
        }
    }
    let host = root.join(done.strip_prefix("/").ok()?);
    fs::symlink_metadata(host).ok().filter(|m| m.is_file()).map(|_| done)
}

/// Compares version strings the way people read them: runs of digits as
/// numbers, so `6.1.0-10` is newer than `6.1.0-9`.
fn version_cmp(a: &str, b: &str) -> Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for ((da, sa), (db, sb)) in ca.iter().zip(cb.iter()) {
        let ord = if *da && *db {
            let (ta, tb) = (sa.trim_start_matches('0'), sb.trim_start_matches('0'));
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            sa.cmp(sb)
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    ca.len().cmp(&cb.len())
}

/// The links distributions keep to the current kernel and initrd: Debian's at
/// the root (`link_in_boot = no`, the default) or in /boot, SUSE's in /boot.
const KERNEL_LINKS: &[&str] = &["/vmlinuz", "/boot/vmlinuz"];
const INITRD_LINKS: &[&str] = &["/initrd.img", "/boot/initrd.img", "/boot/initrd"];

/// The initrd names that go with kernel `/boot/vmlinuz-VERSION`: Debian's,
/// Red Hat's and Arch's, SUSE's.
fn initrd_names(version: &str) -> [String; 3] {
    [format!("initrd.img-{version}"), format!("initramfs-{version}.img"), format!("initrd-{version}")]
}

/// What `kacast capture` finds in a root tree for the description's boot
/// section: the kernel and initrd (Debian's /vmlinuz and /initrd.img symlinks,
/// else the newest /boot/vmlinuz-* with its matching initrd.img-*), as paths
/// inside the image. The links are kept as links (Grid'5000's descriptions say
/// `/vmlinuz`), so a kernel upgrade in the image needs no new description.
/// kernel_params from /proc/cmdline is NOT read: the golden node's own `root=`
/// and console settings would be wrong on the clones.
pub fn find_boot(root: &Path) -> Boot {
    let resolves = |p: &str| resolve_in_image(root, Path::new(p));
    let kernel_link = KERNEL_LINKS.iter().find_map(|l| resolves(l).map(|target| (*l, target)));
    let initrd_link = INITRD_LINKS.iter().copied().find(|l| resolves(l).is_some());

    let (kernel, version) = match &kernel_link {
        Some((link, target)) => {
            let version = target
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(str::to_string);
            (link.to_string(), version)
        }
        None => match newest_kernel(root) {
            Some(version) => (format!("/boot/vmlinuz-{version}"), Some(version)),
            None => return Boot::default(),
        },
    };
    let initrd = match (kernel_link.is_some(), initrd_link) {
        (true, Some(link)) => Some(link.to_string()),
        _ => version.and_then(|v| {
            initrd_names(&v)
                .into_iter()
                .map(|n| format!("/boot/{n}"))
                .find(|p| resolve_in_image(root, Path::new(p)).is_some())
        }),
    };
    Boot { kernel: Some(kernel), initrd, kernel_params: None }
}

/// The VERSION of the newest `/boot/vmlinuz-VERSION` that is a kernel file,
/// leaving out rescue kernels (Red Hat's `vmlinuz-0-rescue-MACHINEID`, generic
/// and huge) and package-manager leftovers.
fn newest_kernel(root: &Path) -> Option<String> {
    let entries = fs::read_dir(root.join("boot")).ok()?;
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| name.strip_prefix("vmlinuz-").map(str::to_string))
        .filter(|v| !v.contains("rescue") && !v.ends_with(".old") && !v.contains(".dpkg-"))
        .filter(|v| resolve_in_image(root, &Path::new("/boot").join(format!("vmlinuz-{v}"))).is_some())
        .max_by(|a, b| version_cmp(a, b))
}

/// grub's module reading each filesystem kacast makes (ext2 reads ext3/4).
fn grub_fs_module(fstype: &str) -> Option<&'static str> {
    Some(match fstype {
        "ext2" | "ext3" | "ext4" => "ext2",
        "xfs" => "xfs",
        "btrfs" => "btrfs",
        "vfat" => "fat",
        "jfs" => "jfs",
        "reiserfs" => "reiserfs",
        _ => return None,
    })
}

/// A minimal grub.cfg booting `boot` from the filesystem with UUID `root_uuid`
/// (used when a recorded image has no grub.cfg of its own): `search
/// --no-floppy --fs-uuid --set=root UUID`, `linux KERNEL root=UUID=... ro
/// PARAMS`, `initrd INITRD`, timeout 0 (nobody watches a rack's consoles), a
/// menuentry named after the environment. A `root=` in the description's
/// kernel_params comes after kacast's and wins, as on any kernel command line.
pub fn minimal_grub_cfg(env: &Environment, root_uuid: &str) -> Result<String, EnvError> {
    let origin = format!("environment '{}'", env.name);
    let kernel = env.boot.kernel.as_deref().ok_or_else(|| {
        field_error(&origin, "boot.kernel", "missing: cannot write a grub.cfg without a kernel")
    })?;
    if root_uuid.is_empty() || !root_uuid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(field_error(&origin, "root UUID", format!("'{root_uuid}' is not a filesystem UUID")));
    }
    // grub paths are absolute within the filesystem; unquoted, a space would
    // split the path.
    let grub_path = |field: &str, p: &str| {
        if p.chars().any(|c| c.is_whitespace() || c == '\'' || c == '"') {
            Err(field_error(&origin, field, format!("'{p}' has spaces or quotes, grub.cfg cannot name it")))
        } else if p.starts_with('/') {
            Ok(p.to_string())
        } else {
            Ok(format!("/{p}"))
        }
    };
    let kernel = grub_path("boot.kernel", kernel)?;
    let initrd = env.boot.initrd.as_deref().map(|i| grub_path("boot.initrd", i)).transpose()?;
    let title = env.name.replace('\'', "'\\''");

    let mut cfg = format!("# Written by kacast: the image of '{title}' has no grub.cfg of its own.\n");
    cfg.push_str("set timeout=0\nset default=0\n\n");
    cfg.push_str(&format!("menuentry '{title}' {{\n"));
    cfg.push_str("    insmod part_msdos\n    insmod part_gpt\n");
    if let Some(module) = env.filesystem.as_deref().and_then(grub_fs_module) {
        cfg.push_str(&format!("    insmod {module}\n"));
    }
    cfg.push_str(&format!("    search --no-floppy --fs-uuid --set=root {root_uuid}\n"));
    let mut linux = format!("    linux {kernel} root=UUID={root_uuid} ro");
    if let Some(params) = env.boot.kernel_params.as_deref().filter(|p| !p.trim().is_empty()) {
        linux.push(' ');
        linux.push_str(params.trim());
    }
    cfg.push_str(&linux);
    cfg.push('\n');
    if let Some(initrd) = initrd {
        cfg.push_str(&format!("    initrd {initrd}\n"));
    }
    cfg.push_str("}\n");
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Written like Grid'5000's debian11-min description (`kaenv3 -p debian11-min`).
    const G5K_YAML: &str = "---
name: debian11-min
version: 2023040314
arch: x86_64
description: debian 11 (bullseye) for x64 - min
author: support-staff@lists.grid5000.fr
visibility: public
destructive: false
os: linux
image:
  file: server:///grid5000/images/debian11-min.tar.zst
  kind: tar
  compression: zstd
postinstalls:
- archive: server:///grid5000/postinstalls/g5k-postinstall.tgz
  compression: gzip
  script: g5k-postinstall --net debian --disk-aliases
boot:
  kernel: \"/vmlinuz\"
  initrd: \"/initrd.img\"
  kernel_params: ''
filesystem: ext4
partition_type: 131
multipart: false
";

    /// The example of Kadeploy 3's user guide ("Environment description").
    const LEGACY_XEN: &str = "name : xen
version : 1
description : https://www.grid5000.fr/index.php/Etch-x64-xen-1.0
author : John Smith
tarball : /grid5000/etch-x64-xen-1.0.tgz|tgz
preinstall : /home/john/test/pre_install.tgz|tgz|launch.sh
postinstall : /home/john/test/post_install.tgz|tgz|traitement.sh
kernel : /boot/vmlinuz-2.6.18-6-xen-amd64
kernel_params : console=tty0 console=ttyS1,38400n8
initrd : /boot/initrd.img-2.6.18-6-xen-amd64
hypervisor : /boot/xen-3.0.3-1-amd64.gz
hypervisor_params : dom0_mem=1000000
fdisktype : 83
filesystem : ext2
environment_kind : xen
visibility : shared
demolishing_env : 0
";

    fn g5k() -> Environment {
        Environment::parse_yaml(G5K_YAML, "debian11-min.yaml").unwrap()
    }

    fn field_of(err: &EnvError) -> &str {
        match err {
            EnvError::Field { field, .. } => field,
            other => panic!("expected a field error, got {other}"),
        }
    }

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

    #[test]
    fn versions_sort_naturally() {
        assert_eq!(version_cmp("6.1.0-10-amd64", "6.1.0-9-amd64"), Ordering::Greater);
        assert_eq!(version_cmp("5.10.0-21-amd64", "6.1.0-9-amd64"), Ordering::Less);
        assert_eq!(version_cmp("6.1.0-9-amd64", "6.1.0-9-amd64"), Ordering::Equal);
        assert_eq!(version_cmp("6.1", "6.1.0"), Ordering::Less);
    }

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, b"x").unwrap();
    }

    #[test]
    fn find_boot_prefers_debian_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(root, "boot/vmlinuz-6.1.0-9-amd64");
        touch(root, "boot/initrd.img-6.1.0-9-amd64");
        touch(root, "boot/vmlinuz-6.1.0-10-amd64");
        // An absolute target is the image's /boot, not the host's.
        symlink("/boot/vmlinuz-6.1.0-9-amd64", root.join("vmlinuz")).unwrap();
        symlink("boot/initrd.img-6.1.0-9-amd64", root.join("initrd.img")).unwrap();
        let boot = find_boot(root);
        assert_eq!(boot.kernel.as_deref(), Some("/vmlinuz"));
        assert_eq!(boot.initrd.as_deref(), Some("/initrd.img"));
        assert_eq!(boot.kernel_params, None);

        // Without the initrd link, the kernel link's own initrd.
        fs::remove_file(root.join("initrd.img")).unwrap();
        assert_eq!(find_boot(root).initrd.as_deref(), Some("/boot/initrd.img-6.1.0-9-amd64"));

        // A dangling link is not a kernel: the newest versioned one is.
        fs::remove_file(root.join("vmlinuz")).unwrap();
        symlink("boot/vmlinuz-gone", root.join("vmlinuz")).unwrap();
        assert_eq!(find_boot(root).kernel.as_deref(), Some("/boot/vmlinuz-6.1.0-10-amd64"));
    }

    #[test]
    fn find_boot_picks_the_newest_versioned_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for v in ["5.10.0-21-amd64", "6.1.0-9-amd64", "6.1.0-10-amd64"] {
            touch(root, &format!("boot/vmlinuz-{v}"));
            touch(root, &format!("boot/initrd.img-{v}"));
        }
        touch(root, "boot/vmlinuz-0-rescue-0123456789abcdef");
        touch(root, "boot/config-6.1.0-99-amd64");
        let boot = find_boot(root);
        assert_eq!(boot.kernel.as_deref(), Some("/boot/vmlinuz-6.1.0-10-amd64"));
        assert_eq!(boot.initrd.as_deref(), Some("/boot/initrd.img-6.1.0-10-amd64"));

        // Red Hat's initramfs name.
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "boot/vmlinuz-5.14.0-362.el9.x86_64");
        touch(dir.path(), "boot/initramfs-5.14.0-362.el9.x86_64.img");
        assert_eq!(
            find_boot(dir.path()).initrd.as_deref(),
            Some("/boot/initramfs-5.14.0-362.el9.x86_64.img")
        );

        // Nothing to boot.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(find_boot(empty.path()), Boot::default());
    }

    #[test]
    fn grub_cfg_boots_the_environment() {
        let mut env = g5k();
        env.boot.kernel_params = Some("console=ttyS0,115200".into());
        let cfg = minimal_grub_cfg(&env, "0a1b2c3d-0000-4000-8000-123456789abc").unwrap();
        assert!(cfg.contains("set timeout=0\n"), "{cfg}");
        assert!(cfg.contains("menuentry 'debian11-min' {\n"), "{cfg}");
        assert!(cfg.contains("    insmod ext2\n"), "{cfg}");
        assert!(
            cfg.contains(
                "    search --no-floppy --fs-uuid --set=root 0a1b2c3d-0000-4000-8000-123456789abc\n"
            ),
            "{cfg}"
        );
        assert!(
            cfg.contains(
                "    linux /vmlinuz root=UUID=0a1b2c3d-0000-4000-8000-123456789abc ro console=ttyS0,115200\n"
            ),
            "{cfg}"
        );
        assert!(cfg.contains("    initrd /initrd.img\n}\n"), "{cfg}");
        let search = cfg.find("search").unwrap();
        assert!(search < cfg.find("linux ").unwrap());

        // Without params or initrd.
        env.boot = Boot { kernel: Some("boot/vmlinuz-6.1".into()), initrd: None, kernel_params: None };
        let cfg = minimal_grub_cfg(&env, "ABCD-1234").unwrap();
        assert!(cfg.contains("    linux /boot/vmlinuz-6.1 root=UUID=ABCD-1234 ro\n"), "{cfg}");
        assert!(!cfg.contains("initrd"), "{cfg}");

        env.boot.kernel = None;
        let err = minimal_grub_cfg(&env, "ABCD-1234").unwrap_err();
        assert_eq!(field_of(&err), "boot.kernel");
        env.boot.kernel = Some("/vmlinuz".into());
        assert!(minimal_grub_cfg(&env, "x y").is_err());
    }
}
