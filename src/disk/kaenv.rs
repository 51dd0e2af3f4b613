//! Kadeploy environment descriptions: how a recorded image is described, so
//! kacast deploys Kadeploy's images and Kadeploy deploys kacast's recordings.
//!
//! Two spellings are read: kaenv3's YAML (`image: {file, kind, compression}`,
//! `postinstalls`, `boot`, `filesystem`, `partition_type`, `multipart`) and
//! Kadeploy 2's `key : value` lines (`tarball : file|tgz`, `postinstall :
//! file|tgz|script`, `fdisktype`). kacast writes the YAML, with only fields
//! kaenv3 knows.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::compression::Compression;
use super::mkfs;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {problem}")]
pub struct EnvError {
    pub source_name: String,
    pub problem: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageKind {
    /// A tarball of the filesystem tree.
    Tar,
    /// A raw partition image (`dd`).
    Dd,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub file: String,
    pub kind: ImageKind,
    #[serde(default)]
    pub compression: Compression,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Postinstall {
    pub archive: String,
    #[serde(default)]
    pub compression: Compression,
    /// `none` in a description means no script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Boot {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_params: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    pub image: Image,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub postinstalls: Vec<Postinstall>,
    #[serde(default)]
    pub boot: Boot,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_type: Option<u32>,
    #[serde(default)]
    pub multipart: bool,
}

/// The raw YAML, before short kinds (`tgz`) and versions as numbers are
/// normalised.
#[derive(Deserialize)]
struct RawEnv {
    name: String,
    version: Option<serde_yaml::Value>,
    description: Option<String>,
    author: Option<String>,
    os: Option<String>,
    image: Option<RawImage>,
    #[serde(default)]
    postinstalls: Vec<RawPostinstall>,
    #[serde(default)]
    boot: Boot,
    filesystem: Option<String>,
    partition_type: Option<u32>,
    #[serde(default)]
    multipart: bool,
}

#[derive(Deserialize)]
struct RawImage {
    file: String,
    kind: String,
    compression: Option<String>,
}

#[derive(Deserialize)]
struct RawPostinstall {
    archive: String,
    compression: Option<String>,
    script: Option<String>,
}

/// A kind as Kadeploy spells it: `tar`/`dd` with a separate compression, or
/// the short kinds `tgz`, `tbz2`, `txz`, `tzst`, `ddgz`, `ddbz2`, `ddxz`, `ddzst`.
fn parse_kind(word: &str) -> Option<(ImageKind, Option<Compression>)> {
    let (kind, rest) = match word {
        "tar" => return Some((ImageKind::Tar, None)),
        "dd" => return Some((ImageKind::Dd, None)),
        w if w.starts_with("dd") => (ImageKind::Dd, &w[2..]),
        w if w.starts_with('t') => (ImageKind::Tar, &w[1..]),
        _ => return None,
    };
    let c = match rest {
        "gz" => Compression::Gzip,
        "bz2" => Compression::Bzip2,
        "xz" => Compression::Xz,
        "zst" | "zstd" => Compression::Zstd,
        _ => return None,
    };
    Some((kind, Some(c)))
}

fn parse_compression(word: &str) -> Option<Compression> {
    Some(match word {
        "gzip" | "gz" => Compression::Gzip,
        "bzip2" | "bz2" => Compression::Bzip2,
        "xz" => Compression::Xz,
        "zstd" | "zst" => Compression::Zstd,
        "none" => Compression::None,
        _ => return None,
    })
}

impl Environment {
    /// Reads either spelling: YAML when the text is a YAML mapping with an
    /// `image`, Kadeploy 2's lines otherwise.
    pub fn parse(text: &str, source: &str) -> Result<Environment, EnvError> {
        if text.lines().any(|l| l.trim_start().starts_with("tarball :")) {
            Environment::parse_legacy(text, source)
        } else {
            Environment::parse_yaml(text, source)
        }
    }

    pub fn parse_yaml(text: &str, source: &str) -> Result<Environment, EnvError> {
        let err = |problem: String| EnvError { source_name: source.into(), problem };
        let raw: RawEnv = serde_yaml::from_str(text).map_err(|e| err(e.to_string()))?;
        let image = raw.image.ok_or_else(|| err("no image (image: {file, kind, compression})".into()))?;
        let (kind, short) = parse_kind(&image.kind).ok_or_else(|| {
            err(format!("image kind '{}' is not tar, dd or a short kind like tgz, ddzst", image.kind))
        })?;
        let compression = match (image.compression.as_deref(), short) {
            (Some(c), _) => parse_compression(c).ok_or_else(|| {
                err(format!("image compression '{c}' is not gzip, bzip2, xz, zstd or none"))
            })?,
            (None, Some(c)) => c,
            (None, None) => Compression::from_extension(&image.file).unwrap_or_default(),
        };
        let postinstalls = raw
            .postinstalls
            .into_iter()
            .map(|p| {
                let c = match p.compression.as_deref() {
                    Some(c) => parse_compression(c)
                        .ok_or_else(|| err(format!("postinstall compression '{c}' is unknown")))?,
                    None => Compression::from_extension(&p.archive).unwrap_or_default(),
                };
                Ok(Postinstall {
                    archive: p.archive,
                    compression: c,
                    script: p.script.filter(|s| s != "none"),
                })
            })
            .collect::<Result<Vec<_>, EnvError>>()?;
        let version = raw.version.map(|v| match v {
            serde_yaml::Value::String(s) => s,
            other => serde_yaml::to_string(&other).unwrap_or_default().trim().to_string(),
        });
        let env = Environment {
            name: raw.name,
            version,
            description: raw.description,
            author: raw.author,
            os: raw.os,
            image: Image { file: image.file, kind, compression },
            postinstalls,
            boot: raw.boot,
            filesystem: raw.filesystem,
            partition_type: raw.partition_type,
            multipart: raw.multipart,
        };
        env.check_in(source)?;
        Ok(env)
    }

    /// Kadeploy 2's `key : value` lines.
    pub fn parse_legacy(text: &str, source: &str) -> Result<Environment, EnvError> {
        let err = |problem: String| EnvError { source_name: source.into(), problem };
        let mut fields = std::collections::BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once(" : ")
                .ok_or_else(|| err(format!("line {}: expected 'key : value'", i + 1)))?;
            fields.insert(k.trim().to_string(), v.trim().to_string());
        }
        let get = |k: &str| fields.get(k).cloned();
        let tarball = get("tarball").ok_or_else(|| err("no tarball".into()))?;
        let (file, k) =
            tarball.split_once('|').ok_or_else(|| err(format!("tarball '{tarball}': expected FILE|KIND")))?;
        let (kind, c) = parse_kind(k)
            .ok_or_else(|| err(format!("tarball kind '{k}' is not tgz, tbz2, ddgz or ddbz2")))?;
        let postinstalls = match get("postinstall") {
            Some(p) => p
                .split(',')
                .map(|one| {
                    let parts: Vec<&str> = one.split('|').collect();
                    let c = parts.get(1).and_then(|k| parse_kind(k)).and_then(|(_, c)| c).unwrap_or_default();
                    let script = parts.get(2).map(|s| s.to_string()).filter(|s| s != "none");
                    Postinstall { archive: parts[0].trim().to_string(), compression: c, script }
                })
                .collect(),
            None => Vec::new(),
        };
        let partition_type = match get("fdisktype") {
            Some(t) => {
                Some(u32::from_str_radix(&t, 16).map_err(|_| err(format!("fdisktype '{t}' is not hex")))?)
            }
            None => None,
        };
        let env = Environment {
            name: get("name").ok_or_else(|| err("no name".into()))?,
            version: get("version"),
            description: get("description"),
            author: get("author"),
            os: get("environment_kind"),
            image: Image { file: file.to_string(), kind, compression: c.unwrap_or_default() },
            postinstalls,
            boot: Boot { kernel: get("kernel"), initrd: get("initrd"), kernel_params: get("kernel_params") },
            filesystem: get("filesystem"),
            partition_type,
            multipart: false,
        };
        env.check_in(source)?;
        Ok(env)
    }

    /// kaenv3's YAML.
    pub fn to_yaml(&self) -> String {
        format!("---\n{}", serde_yaml::to_string(self).expect("an environment always serialises"))
    }

    pub fn check(&self) -> Result<(), EnvError> {
        self.check_in(&self.name)
    }

    fn check_in(&self, source: &str) -> Result<(), EnvError> {
        let err = |problem: String| Err(EnvError { source_name: source.into(), problem });
        if self.multipart {
            return err("multipart environments are not supported yet".into());
        }
        if let Some(t) = self.partition_type {
            if !(1..=255).contains(&t) {
                return err(format!("partition_type {t} is not an MBR type (1 to 255)"));
            }
        }
        if self.image.kind == ImageKind::Tar {
            match &self.filesystem {
                Some(f) if mkfs::SUPPORTED.contains(&f.as_str()) => {}
                Some(f) => {
                    return err(format!("filesystem '{f}' is not one of {}", mkfs::SUPPORTED.join(", ")))
                }
                None => return err("a tar image needs a filesystem (filesystem: ext4)".into()),
            }
        }
        Ok(())
    }
}

/// The local path of an image or archive named in a description: plain or
/// `local://`/`server://` paths, relative ones from the description's
/// directory. `None` for http(s) (not fetched).
pub fn local_path(file: &str, base: &Path) -> Option<PathBuf> {
    let path = file.strip_prefix("local://").or_else(|| file.strip_prefix("server://")).unwrap_or(file);
    if path.contains("://") {
        return None;
    }
    Some(if Path::new(path).is_absolute() { PathBuf::from(path) } else { base.join(path) })
}

/// The kernel and initrd of a root tree, as paths inside it: Debian's
/// `/vmlinuz` and `/initrd.img` links, else the newest `/boot/vmlinuz-*`.
/// Not the golden node's command line: its `root=` would be wrong on a node.
pub fn find_boot(root: &Path) -> Boot {
    let exists = |p: &str| root.join(p.trim_start_matches('/')).symlink_metadata().is_ok();
    if exists("/vmlinuz") {
        let initrd = exists("/initrd.img").then(|| "/initrd.img".to_string());
        return Boot { kernel: Some("/vmlinuz".into()), initrd, kernel_params: None };
    }
    let mut versions: Vec<String> = std::fs::read_dir(root.join("boot"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("vmlinuz-").map(str::to_string))
        .collect();
    versions.sort_by_key(|v| natural(v));
    match versions.pop() {
        Some(v) => {
            let initrd = exists(&format!("/boot/initrd.img-{v}")).then(|| format!("/boot/initrd.img-{v}"));
            Boot { kernel: Some(format!("/boot/vmlinuz-{v}")), initrd, kernel_params: None }
        }
        None => Boot::default(),
    }
}

/// A version's numbers in order, so `6.1.0-10` sorts after `6.1.0-9`.
fn natural(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const G5K: &str = "---\nname: debian11-min\nversion: 2023031417\ndescription: debian 11 (bullseye) - min\nauthor: support-staff@lists.grid5000.fr\nvisibility: public\ndestructive: false\nos: linux\nimage:\n  file: server:///grid5000/images/debian11-min-2023031417.tar.zst\n  kind: tar\n  compression: zstd\npostinstalls:\n- archive: server:///grid5000/postinstalls/g5k-postinstall.tgz\n  compression: gzip\n  script: g5k-postinstall --net debian\nboot:\n  kernel: \"/vmlinuz\"\n  initrd: \"/initrd.img\"\n  kernel_params: ''\nfilesystem: ext4\npartition_type: 131\nmultipart: false\n";

    const LEGACY: &str = "name : xen\nversion : 1\ndescription : https://www.grid5000.fr/index.php/Etch-x64-xen-1.0\nauthor : John Smith\ntarball : /grid5000/etch-x64-xen-1.0.tgz|tgz\npostinstall : /home/john/test/post_install.tgz|tgz|traitement.sh\nkernel : /boot/vmlinuz-2.6.18-6-xen-amd64\nkernel_params : console=tty0 console=ttyS1,38400n8\ninitrd : /boot/initrd.img-2.6.18-6-xen-amd64\nfdisktype : 83\nfilesystem : ext2\nenvironment_kind : xen\nvisibility : shared\ndemolishing_env : 0\n";

    #[test]
    fn a_grid5000_description() {
        let e = Environment::parse(G5K, "debian11-min.yaml").unwrap();
        assert_eq!((e.image.kind, e.image.compression), (ImageKind::Tar, Compression::Zstd));
        assert_eq!(e.version.as_deref(), Some("2023031417"));
        assert_eq!(e.postinstalls[0].script.as_deref(), Some("g5k-postinstall --net debian"));
        assert_eq!(e.boot.kernel.as_deref(), Some("/vmlinuz"));
        assert_eq!((e.filesystem.as_deref(), e.partition_type), (Some("ext4"), Some(131)));
        let again = Environment::parse_yaml(&e.to_yaml(), "again").unwrap();
        assert_eq!(again, e);
        assert_eq!(
            local_path(&e.image.file, Path::new("/x")),
            Some(PathBuf::from("/grid5000/images/debian11-min-2023031417.tar.zst"))
        );
        assert_eq!(local_path("img.tgz", Path::new("/envs")), Some(PathBuf::from("/envs/img.tgz")));
        assert_eq!(local_path("http://h/img.tgz", Path::new("/envs")), None);
    }

    #[test]
    fn the_kadeploy2_example() {
        let e = Environment::parse(LEGACY, "xen.dsc").unwrap();
        assert_eq!(e.image.file, "/grid5000/etch-x64-xen-1.0.tgz");
        assert_eq!((e.image.kind, e.image.compression), (ImageKind::Tar, Compression::Gzip));
        assert_eq!(e.postinstalls[0].script.as_deref(), Some("traitement.sh"));
        assert_eq!((e.partition_type, e.filesystem.as_deref()), (Some(0x83), Some("ext2")));
        assert_eq!(e.boot.initrd.as_deref(), Some("/boot/initrd.img-2.6.18-6-xen-amd64"));
    }

    #[test]
    fn short_kinds_and_errors() {
        let y = |kind: &str, extra: &str| format!("name: x\nimage:\n  file: a\n  kind: {kind}\n{extra}");
        let e = Environment::parse(&y("ddzst", ""), "s").unwrap();
        assert_eq!((e.image.kind, e.image.compression), (ImageKind::Dd, Compression::Zstd));
        let e = Environment::parse(&y("tbz2", "filesystem: xfs\n"), "s").unwrap();
        assert_eq!(e.image.compression, Compression::Bzip2);
        let bad = |text: String, want: &str| {
            let e = Environment::parse(&text, "env.yaml").unwrap_err().to_string();
            assert!(e.starts_with("env.yaml: ") && e.contains(want), "{want}: {e}");
        };
        bad(y("zip", ""), "image kind 'zip'");
        bad(y("tar", "filesystem: ntfs\n"), "filesystem 'ntfs'");
        bad(y("tar", ""), "needs a filesystem");
        bad(y("dd", "partition_type: 511\n"), "partition_type 511");
        bad(y("dd", "multipart: true\n"), "multipart");
        bad("name: x\n".into(), "no image");
        bad("name: x\nimage:\n  file: a\n  kind: dd\n  compression: lz4\n".into(), "compression 'lz4'");
    }

    #[test]
    fn boot_files_of_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        let boot = dir.path().join("boot");
        std::fs::create_dir(&boot).unwrap();
        for v in ["6.1.0-9-amd64", "6.1.0-10-amd64"] {
            std::fs::write(boot.join(format!("vmlinuz-{v}")), "").unwrap();
        }
        std::fs::write(boot.join("initrd.img-6.1.0-10-amd64"), "").unwrap();
        let b = find_boot(dir.path());
        assert_eq!(b.kernel.as_deref(), Some("/boot/vmlinuz-6.1.0-10-amd64"));
        assert_eq!(b.initrd.as_deref(), Some("/boot/initrd.img-6.1.0-10-amd64"));
        std::os::unix::fs::symlink("boot/vmlinuz-6.1.0-9-amd64", dir.path().join("vmlinuz")).unwrap();
        assert_eq!(find_boot(dir.path()).kernel.as_deref(), Some("/vmlinuz"));
        assert_eq!(find_boot(dir.path()).initrd, None);
    }
}
