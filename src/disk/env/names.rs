//! The names descriptions give to image kinds, compressions and "no script":
//! kaenv3's long spellings (`tar`, `zstd`), Kadeploy's short kinds (`tgz`,
//! `ddzst`) and the compression guessed from a file name. The YAML reader, the
//! old-format reader and the YAML writer all use them, so they are kept in one
//! place rather than in any one format's module.

use super::error::{field_error, EnvError};
use super::{Compression, ImageKind};

/// Script value meaning "extract the archive, run nothing" in both formats.
pub(super) const NO_SCRIPT: &str = "none";

/// Compression names, as kaenv3 spells them (`none` is kacast's, for the
/// uncompressed images kaenv3 cannot describe).
pub(super) fn compression_name(c: Compression) -> &'static str {
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
pub(super) fn short_kind(kind: &str) -> Option<(ImageKind, Compression)> {
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
pub(super) const SHORT_KINDS: &str = "tgz, tbz2, txz, tzst, ddgz, ddbz2, ddxz, ddzst";

impl ImageKind {
    pub(super) fn as_str(&self) -> &'static str {
        match self {
            ImageKind::Tar => "tar",
            ImageKind::Dd => "dd",
        }
    }
}

/// The compression a description gives, else the one the file name implies,
/// else none.
pub(super) fn resolve_compression(
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
pub(super) fn script_value(script: Option<String>) -> Option<String> {
    script.filter(|s| s != NO_SCRIPT)
}
