//! How a recorded image is compressed. The chain carries the compressed bytes
//! (fewer on the wire, and relays never spend CPU on them); each node
//! decompresses only for its own disk.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

impl Compression {
    /// A filter from stdin to stdout, for raw images.
    pub fn decompress_command(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Gzip => Some("gzip -dc"),
            Compression::Bzip2 => Some("bzip2 -dc"),
            Compression::Xz => Some("xz -dc"),
            Compression::Zstd => Some("zstd -dc"),
        }
    }

    /// GNU tar's option for it, for tarballs.
    pub fn tar_flag(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Gzip => Some("--gzip"),
            Compression::Bzip2 => Some("--bzip2"),
            Compression::Xz => Some("--xz"),
            Compression::Zstd => Some("--zstd"),
        }
    }

    /// From a file name: `.tgz`/`.tar.gz`/`.gz`, `.tbz2`/`.bz2`, `.txz`/`.xz`, `.tzst`/`.zst`.
    pub fn from_extension(path: &str) -> Option<Compression> {
        let p = path.to_ascii_lowercase();
        let ends = |exts: &[&str]| exts.iter().any(|e| p.ends_with(e));
        if ends(&[".tgz", ".gz"]) {
            Some(Compression::Gzip)
        } else if ends(&[".tbz2", ".tbz", ".bz2"]) {
            Some(Compression::Bzip2)
        } else if ends(&[".txz", ".xz"]) {
            Some(Compression::Xz)
        } else if ends(&[".tzst", ".zst"]) {
            Some(Compression::Zstd)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions() {
        assert_eq!(Compression::from_extension("a.tar.zst"), Some(Compression::Zstd));
        assert_eq!(Compression::from_extension("A.TGZ"), Some(Compression::Gzip));
        assert_eq!(Compression::from_extension("x.tbz2"), Some(Compression::Bzip2));
        assert_eq!(Compression::from_extension("x.img.xz"), Some(Compression::Xz));
        assert_eq!(Compression::from_extension("x.tar"), None);
        assert_eq!(Compression::Zstd.tar_flag(), Some("--zstd"));
        assert_eq!(Compression::None.decompress_command(), None);
    }
}
