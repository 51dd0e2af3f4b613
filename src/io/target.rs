//! Where a raw image lands on a node: a partition (block device) or an image
//! file, and how the zeros a sparse image did not send are made.
//!
//! A region left unwritten must still read back as zeros, because the golden
//! side cannot tell a free block from a block of zeros some file holds. So
//! zeros are only skipped where the target is known to read back zeros:
//! - an **image file** is truncated to nothing first, and every byte not
//!   written is a hole, which reads as zeros (POSIX); nothing is written.
//! - a **block device** holds whatever was there before. Runs of at least
//!   [`ZEROOUT_MIN`] get `BLKZEROOUT`, whose contract is that the range reads
//!   back zeros: the kernel offloads it (WRITE ZEROES, UNMAP, a loop file's
//!   hole punch) where the device can, and writes zero pages itself where it
//!   cannot, which still keeps them off the network. Shorter runs are written
//!   as zeros with the data, since a synchronous ioctl per block would cost
//!   more than the bytes.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;

use super::sparse::Extents;

/// Shortest zero run given to BLKZEROOUT: below this, a write of zeros from
/// memory is cheaper than a synchronous round trip to the device.
pub const ZEROOUT_MIN: u64 = 1 << 20;
/// `BLKZEROOUT` = `_IO(0x12, 127)` from linux/fs.h, which the libc crate lacks.
const BLKZEROOUT: libc::c_ulong = 0x127f;
/// Zeros are written from this buffer, a piece at a time.
const ZERO_PIECE: usize = 1 << 20;

/// What a target did with an image, for the node's log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetStats {
    /// Bytes of data written.
    pub written: u64,
    /// Zeros written as bytes (short runs, or a device that refused the ioctl).
    pub zeros_written: u64,
    /// Zeros made by BLKZEROOUT.
    pub zeroed_out: u64,
    /// Zeros left as holes of an image file.
    pub holes: u64,
}

impl std::fmt::Display for TargetStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::size::human;
        write!(f, "{} of data written", human(self.written))?;
        if self.holes > 0 {
            write!(f, ", {} left as holes", human(self.holes))?;
        }
        if self.zeroed_out > 0 {
            write!(f, ", {} zeroed by the device (BLKZEROOUT)", human(self.zeroed_out))?;
        }
        if self.zeros_written > 0 {
            write!(f, ", {} of zeros written", human(self.zeros_written))?;
        }
        Ok(())
    }
}

pub struct DiskTarget {
    file: File,
    block_device: bool,
    /// A block device's size: nothing may be written past it.
    capacity: Option<u64>,
    zeros: Vec<u8>,
    pub stats: TargetStats,
}

impl DiskTarget {
    /// Opens a partition to be written over from its start, or an image file
    /// to be replaced.
    pub fn open(path: &Path) -> io::Result<DiskTarget> {
        let mut file = OpenOptions::new().write(true).create(true).truncate(false).open(path)?;
        let block_device = file.metadata()?.file_type().is_block_device();
        let capacity = if block_device {
            Some(file.seek(SeekFrom::End(0))?)
        } else {
            file.set_len(0)?;
            None
        };
        Ok(DiskTarget { file, block_device, capacity, zeros: Vec::new(), stats: TargetStats::default() })
    }

    fn check_room(&self, offset: u64, len: u64) -> io::Result<()> {
        match self.capacity {
            Some(cap) if offset.saturating_add(len) > cap => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the image goes past the end of the device ({} bytes > {cap})",
                    offset.saturating_add(len)
                ),
            )),
            _ => Ok(()),
        }
    }

    fn write_zeros(&mut self, mut offset: u64, mut len: u64) -> io::Result<()> {
        if self.zeros.is_empty() {
            self.zeros = vec![0; ZERO_PIECE];
        }
        self.stats.zeros_written += len;
        while len > 0 {
            let n = len.min(ZERO_PIECE as u64) as usize;
            self.file.write_all_at(&self.zeros[..n], offset)?;
            offset += n as u64;
            len -= n as u64;
        }
        Ok(())
    }

    /// BLKZEROOUT on a 512-aligned range; false if the device refused it.
    fn zero_out(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        let range: [u64; 2] = [offset, len];
        // SAFETY: BLKZEROOUT reads two u64 (start, length) from the pointer.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), BLKZEROOUT as _, range.as_ptr()) };
        if r == 0 {
            self.stats.zeroed_out += len;
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINVAL | libc::ENOTTY | libc::EOPNOTSUPP) => Ok(false),
            _ => Err(e),
        }
    }
}

impl Extents for DiskTarget {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check_room(offset, data.len() as u64)?;
        self.file.write_all_at(data, offset)?;
        self.stats.written += data.len() as u64;
        Ok(())
    }

    fn zero(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.check_room(offset, len)?;
        if !self.block_device {
            self.stats.holes += len;
            return Ok(());
        }
        // The ioctl wants 512-byte multiples; a sparse image's runs are 4 KiB
        // aligned but for the image's tail.
        let aligned = if offset % 512 == 0 { len / 512 * 512 } else { 0 };
        if aligned >= ZEROOUT_MIN && self.zero_out(offset, aligned)? {
            return self.write_zeros(offset + aligned, len - aligned);
        }
        self.write_zeros(offset, len)
    }

    fn finish(&mut self, total: u64) -> io::Result<()> {
        if !self.block_device {
            // Trailing holes: the file is as long as the image.
            self.file.set_len(total)?;
        }
        self.file.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn an_image_file_gets_holes_not_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, vec![0xFFu8; 1 << 20]).unwrap();
        let mut t = DiskTarget::open(&path).unwrap();
        t.zero(0, 64 << 20).unwrap();
        t.write_at(64 << 20, b"data").unwrap();
        t.zero((64 << 20) + 4, 1000).unwrap();
        t.finish((64 << 20) + 1004).unwrap();
        assert_eq!(t.stats.holes, (64 << 20) + 1000);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), (64 << 20) + 1004);
        // The old contents are gone, and the holes take no room.
        assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
        let image = std::fs::read(&path).unwrap();
        assert!(image[..64 << 20].iter().all(|&b| b == 0));
        assert_eq!(&image[64 << 20..(64 << 20) + 4], b"data");
    }
}
