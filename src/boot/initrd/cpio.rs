//! The "newc" cpio format the kernel unpacks an initramfs from
//! (Documentation/driver-api/early-userspace/buffer-format.rst), and the
//! fixed gzip wrapping that keeps two builds of the same inputs byte-identical.

use std::io::{self, Write};

use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};

use super::tree::{Node, Tree};

const MAGIC: &str = "070701";
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
/// newc pads every header+name and every body to a multiple of 4 bytes.
const ALIGN: usize = 4;

/// The archive's modification time: `SOURCE_DATE_EPOCH` when set (the
/// reproducible-builds convention), else 0.
pub fn source_date_epoch() -> u32 {
    std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// Writes `tree` as a newc archive: entries in path order, inode numbers
/// counted from 1 in that order, owner root, every time `mtime`, then the
/// `TRAILER!!!` entry. Returns the bytes written.
pub fn write_newc(tree: &Tree, mtime: u32, out: &mut impl Write) -> io::Result<u64> {
    let mut w = Counting { inner: out, written: 0 };
    for (i, (path, node)) in tree.iter().enumerate() {
        let ino = u32::try_from(i + 1).map_err(|_| io::Error::other("more than 2^32 cpio entries"))?;
        let (mode, nlink, body, rdev): (u32, u32, &[u8], (u32, u32)) = match node {
            Node::Dir { mode } => (S_IFDIR | mode, 2, &[], (0, 0)),
            Node::File { mode, data } => (S_IFREG | mode, 1, data, (0, 0)),
            Node::Symlink { target } => (S_IFLNK | 0o777, 1, target.as_bytes(), (0, 0)),
            Node::CharDev { mode, major, minor } => (S_IFCHR | mode, 1, &[], (*major, *minor)),
        };
        entry(&mut w, path, Header { ino, mode, nlink, mtime, rdev }, body)?;
    }
    entry(&mut w, "TRAILER!!!", Header { ino: 0, mode: 0, nlink: 1, mtime: 0, rdev: (0, 0) }, &[])?;
    Ok(w.written)
}

struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    rdev: (u32, u32),
}

fn entry(w: &mut impl Write, name: &str, h: Header, body: &[u8]) -> io::Result<()> {
    let size = u32::try_from(body.len()).map_err(|_| io::Error::other(format!("{name}: over 4 GiB")))?;
    let namesize = name.len() + 1;
    // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
    let fields = [h.ino, h.mode, 0, 0, h.nlink, h.mtime, size, 0, 0, h.rdev.0, h.rdev.1, namesize as u32, 0];
    let mut header = String::with_capacity(110);
    header.push_str(MAGIC);
    for f in fields {
        header.push_str(&format!("{f:08X}"));
    }
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad(w, header.len() + namesize)?;
    w.write_all(body)?;
    pad(w, body.len())
}

fn pad(w: &mut impl Write, len: usize) -> io::Result<()> {
    let zeros = [0u8; ALIGN];
    w.write_all(&zeros[..(ALIGN - len % ALIGN) % ALIGN])
}

struct Counting<'a, W: Write> {
    inner: &'a mut W,
    written: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A gzip stream whose header holds no time and no file name, so the output
/// depends on the input bytes only.
pub fn fixed_gzip<W: Write>(out: W) -> GzEncoder<W> {
    GzBuilder::new().mtime(0).write(out, Compression::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_and_padding() {
        let mut t = Tree::new();
        t.insert("a", Node::File { mode: 0o644, data: b"xyz".to_vec() });
        let mut out = Vec::new();
        let n = write_newc(&t, 7, &mut out).unwrap();
        assert_eq!(n as usize, out.len());
        // 110-byte header + "a\0" = 112 (aligned), body 3 + 1 pad.
        assert_eq!(&out[..14], b"07070100000001");
        assert_eq!(&out[14..22], b"000081A4", "regular file, 0644");
        assert_eq!(&out[46..54], b"00000007", "mtime");
        assert_eq!(&out[54..62], b"00000003", "size");
        assert_eq!(&out[110..112], b"a\0");
        assert_eq!(&out[112..116], b"xyz\0");
        assert_eq!(&out[116..122], b"070701");
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
        assert_eq!(out.len() % ALIGN, 0);
    }
}
