//! Random bytes from the kernel: fresh machine ids and random seeds, and
//! unguessable names for temporary files in the clone.

use std::io;

use crate::disk::error::DiskError;

/// `n` random bytes from the kernel.
pub(super) fn random_bytes(n: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        // SAFETY: writes at most the remaining length into our buffer.
        let r = unsafe { libc::getrandom(buf[got..].as_mut_ptr().cast(), n - got, 0) };
        if r >= 0 {
            got += r as usize;
        } else {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
    Ok(buf)
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn random_error(e: io::Error) -> DiskError {
    DiskError::io("reading random bytes from the kernel", e)
}
