//! Loop disks and mounts for the tests that write real filesystems: each over
//! an image file in its own temporary directory, undone when dropped, so a
//! failing test leaves no loop device or mount behind and touches no other disk.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// Runs a tool, returning its stdout or why it failed.
pub fn sh(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A loop device over a sparse image file; its partitions are dropped and the
/// device detached when this is dropped.
pub struct LoopDisk {
    pub dev: PathBuf,
    pub image: PathBuf,
    _dir: TempDir,
}

impl LoopDisk {
    pub fn new(bytes: u64) -> LoopDisk {
        let dir = tempfile::tempdir().expect("temporary directory");
        let image = dir.path().join("disk.img");
        File::create(&image).and_then(|f| f.set_len(bytes)).expect("sparse image");
        let dev = sh("losetup", &["-f", "--show", image.to_str().unwrap()]).expect("losetup");
        LoopDisk { dev: PathBuf::from(dev.trim()), image, _dir: dir }
    }

    /// The kernel name (`loop7`), which is how a plan names the disk.
    pub fn name(&self) -> String {
        self.dev.file_name().unwrap().to_string_lossy().into_owned()
    }

    pub fn part(&self, n: u32) -> PathBuf {
        PathBuf::from(format!("{}p{n}", self.dev.display()))
    }

    /// The whole image's BLAKE3, to prove that a refused install wrote nothing.
    pub fn hash(&self) -> String {
        let mut h = blake3::Hasher::new();
        h.update_reader(File::open(&self.dev).expect("open loop device")).expect("read loop device");
        h.finalize().to_hex().to_string()
    }

    /// `sfdisk -d` without what differs between two disks of the same layout
    /// (device names, the label id), for comparing partition tables.
    pub fn table(&self) -> String {
        let dump = sh("sfdisk", &["-d", self.dev.to_str().unwrap()]).expect("sfdisk -d");
        dump.lines()
            .filter(|l| !l.starts_with("label-id:") && !l.starts_with("device:"))
            .map(|l| match l.split_once(" : ") {
                // GPT partition UUIDs are identifiers too.
                Some((_, rest)) => {
                    rest.split(", ").filter(|f| !f.starts_with("uuid=")).collect::<Vec<_>>().join(", ")
                }
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `TYPE UUID LABEL` of partition `n`, from a low-level probe.
    pub fn ids(&self, n: u32) -> String {
        let out = sh("blkid", &["-p", "-o", "export", self.part(n).to_str().unwrap()]).unwrap_or_default();
        let get =
            |k: &str| out.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).unwrap_or("-").to_string();
        format!("{} {} {}", get("TYPE"), get("UUID"), get("LABEL"))
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let dev = self.dev.to_str().unwrap();
        let _ = sh("partx", &["-d", dev]);
        if let Err(e) = sh("losetup", &["-d", dev]) {
            eprintln!("cannot detach {dev}: {e}");
        }
    }
}

/// Mounts, undone in reverse order when dropped.
#[derive(Default)]
pub struct Mounts(Vec<PathBuf>);

impl Mounts {
    pub fn mount(&mut self, dev: &Path, dir: &Path, options: &[&str]) {
        std::fs::create_dir_all(dir).expect("mount point");
        let mut args = vec![];
        if !options.is_empty() {
            args.push("-o".to_string());
            args.push(options.join(","));
        }
        args.push(dev.display().to_string());
        args.push(dir.display().to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sh("mount", &args).expect("mount");
        self.0.push(dir.to_path_buf());
    }

    pub fn unmount_all(&mut self) {
        while let Some(dir) = self.0.pop() {
            if let Err(e) = sh("umount", &[dir.to_str().unwrap()]) {
                eprintln!("cannot unmount {}: {e}", dir.display());
            }
        }
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        self.unmount_all();
    }
}
