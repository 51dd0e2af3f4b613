//! A `newc` cpio archive, the format the kernel unpacks an initramfs from.
//!
//! Entries are written in the order given, each with uid/gid 0, one fixed
//! mtime and inode numbers counted from 1, so the same inputs always give the
//! same bytes (a reproducible initrd).

use std::io::{self, Write};

/// What one entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir,
    File {
        data: Vec<u8>,
        executable: bool,
    },
    Symlink(String),
    /// A character device (`/dev/console` must exist before devtmpfs is
    /// mounted, or the kernel starts init without a console).
    CharDev {
        major: u32,
        minor: u32,
    },
}

pub struct Writer<W: Write> {
    out: W,
    ino: u32,
    mtime: u32,
    written: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W, mtime: u32) -> Writer<W> {
        Writer { out, ino: 0, mtime, written: 0 }
    }

    /// Adds `path` (relative, no leading `/`).
    pub fn add(&mut self, path: &str, entry: &Entry) -> io::Result<()> {
        let (mode, data): (u32, &[u8]) = match entry {
            Entry::Dir => (0o040755, &[]),
            Entry::File { data, executable } => (if *executable { 0o100755 } else { 0o100644 }, data),
            Entry::Symlink(target) => (0o120777, target.as_bytes()),
            Entry::CharDev { .. } => (0o020600, &[]),
        };
        let (rmajor, rminor) = match entry {
            Entry::CharDev { major, minor } => (*major, *minor),
            _ => (0, 0),
        };
        self.ino += 1;
        let nlink = if matches!(entry, Entry::Dir) { 2 } else { 1 };
        self.header(path, self.ino, mode, nlink, data.len() as u32, rmajor, rminor)?;
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        self.pad()
    }

    /// The trailer; returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 0, 1, 0, 0, 0)?;
        // The kernel reads the archive in 512-byte blocks.
        while self.written % 512 != 0 {
            self.out.write_all(&[0])?;
            self.written += 1;
        }
        Ok(self.out)
    }

    #[allow(clippy::too_many_arguments)]
    fn header(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        size: u32,
        rmajor: u32,
        rminor: u32,
    ) -> io::Result<()> {
        let mtime = if ino == 0 { 0 } else { self.mtime };
        let fields = [ino, mode, 0, 0, nlink, mtime, size, 0, 0, rmajor, rminor, name.len() as u32 + 1, 0];
        let mut h = String::from("070701");
        for f in fields {
            h.push_str(&format!("{f:08X}"));
        }
        self.out.write_all(h.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.written += (h.len() + name.len() + 1) as u64;
        self.pad()
    }

    fn pad(&mut self) -> io::Result<()> {
        while self.written % 4 != 0 {
            self.out.write_all(&[0])?;
            self.written += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_newc_and_deterministic() {
        let build = || {
            let mut w = Writer::new(Vec::new(), 0);
            w.add("bin", &Entry::Dir).unwrap();
            w.add("bin/sh", &Entry::Symlink("busybox".into())).unwrap();
            w.add("init", &Entry::File { data: b"#!/bin/sh\n".to_vec(), executable: true }).unwrap();
            w.add("dev/console", &Entry::CharDev { major: 5, minor: 1 }).unwrap();
            w.finish().unwrap()
        };
        let a = build();
        assert_eq!(a, build());
        assert_eq!(a.len() % 512, 0);
        assert!(a.starts_with(b"070701"));
        // The first header: inode 1, a directory, name "bin" (4 bytes with NUL).
        assert_eq!(&a[6..14], b"00000001");
        assert_eq!(&a[14..22], b"000041ED");
        assert_eq!(&a[94..102], b"00000004");
        assert_eq!(&a[110..114], b"bin\0");
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("TRAILER!!!"));
        assert!(text.contains("#!/bin/sh\n"));
    }
}
