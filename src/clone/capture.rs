//! `kacast capture`: records this golden node as an image and a Kadeploy
//! environment description, so it can be deployed later (`kacast clone
//! --env`) or by Kadeploy itself.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tracing::info;

use crate::disk::compression::Compression;
use crate::disk::env::{find_boot, Environment, Image, ImageKind};
use crate::disk::golden::{read_golden, GoldenSpec, TreeSource};
use crate::disk::PartType;
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// What to record (root, excludes, left-out disks); descs are ignored.
    pub golden: GoldenSpec,
    /// The environment's name, and the files' base name.
    pub name: String,
    /// Directory the image, its description and its desc are written to.
    pub output: PathBuf,
}

/// The files `kacast capture` wrote.
#[derive(Debug, Clone)]
pub struct Captured {
    pub image: PathBuf,
    pub description: PathBuf,
    pub desc: PathBuf,
    pub bytes: u64,
}

/// Records the golden node: every filesystem of its fstab as one tarball
/// (multi-threaded zstd), the environment description, and the desc of the
/// disk holding `/` (a layout to deploy it with).
pub fn capture(c: &CaptureConfig) -> Result<Captured> {
    let golden = read_golden(&c.golden).map_err(|e| Error::Config(format!("golden node: {e}")))?;
    let plan = &golden.plan;
    let root_fs = plan
        .filesystem_at("/")
        .ok_or_else(|| Error::Config("the golden node has no root filesystem to record".into()))?;
    let Some(TreeSource::Command(tree)) = &golden.tree else {
        return Err(Error::Config("the golden node has no filesystem to record".into()));
    };
    fs::create_dir_all(&c.output).map_err(|e| Error::Config(format!("{}: {e}", c.output.display())))?;
    let image = c.output.join(format!("{}.tar.zst", c.name));
    let bytes = write_image(tree, &image)?;
    let descs = plan.descs().map_err(|e| Error::Config(e.to_string()))?;
    let desc = &descs[root_fs.disk.as_str()];
    let partition_type =
        desc.partitions.iter().find(|p| p.number == root_fs.partition).map(|p| match &p.ptype {
            PartType::Mbr(code) => u32::from(*code),
            PartType::Gpt(_) => 0x83,
        });
    let env = Environment {
        name: c.name.clone(),
        version: Some("1".into()),
        description: Some(format!("{} recorded by kacast capture", plan.golden)),
        author: None,
        os: Some("linux".into()),
        image: Image {
            file: image.file_name().expect("a file name").to_string_lossy().into_owned(),
            kind: ImageKind::Tar,
            compression: Compression::Zstd,
        },
        postinstalls: Vec::new(),
        boot: find_boot(&c.golden.root),
        filesystem: Some(root_fs.fstype.clone()),
        partition_type,
        multipart: false,
    };
    let description = c.output.join(format!("{}.yaml", c.name));
    write(&description, &env.to_yaml())?;
    let desc_file = c.output.join(format!("{}.desc", c.name));
    write(&desc_file, &format!("# desc of the golden {}, by kacast capture\n{desc}", root_fs.disk))?;
    info!(
        "recorded {} ({bytes} bytes), {} and {}",
        image.display(),
        description.display(),
        desc_file.display()
    );
    Ok(Captured { image, description, desc: desc_file, bytes })
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(|e| Error::Config(format!("write {}: {e}", path.display())))
}

/// Runs the golden tar into `zstd -T0` (every core: recording is CPU-bound),
/// written aside and renamed, so a failed capture leaves no half image.
fn write_image(tree: &str, image: &Path) -> Result<u64> {
    let partial = image.with_extension("zst.partial");
    let spawn =
        |cmd: &mut Command, what: &str| cmd.spawn().map_err(|e| Error::Config(format!("start {what}: {e}")));
    let mut tar = spawn(Command::new("sh").arg("-c").arg(tree).stdout(Stdio::piped()), "tar")?;
    let out = fs::File::create(&partial).map_err(|e| Error::Config(format!("{}: {e}", partial.display())))?;
    let mut zstd = spawn(
        Command::new("zstd").args(["-T0", "-q", "-c"]).stdin(tar.stdout.take().expect("piped")).stdout(out),
        "zstd (install zstd)",
    )?;
    let tar_status = tar.wait().map_err(|e| Error::Config(format!("tar: {e}")))?;
    let zstd_status = zstd.wait().map_err(|e| Error::Config(format!("zstd: {e}")))?;
    if !tar_status.success() || !zstd_status.success() {
        let _ = fs::remove_file(&partial);
        return Err(Error::Config(format!("recording failed: tar {tar_status}, zstd {zstd_status}")));
    }
    fs::rename(&partial, image).map_err(|e| Error::Config(format!("{}: {e}", image.display())))?;
    Ok(fs::metadata(image).map(|m| m.len()).unwrap_or(0))
}
