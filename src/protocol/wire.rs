//! Big-endian field readers and writers shared by every frame layout.

use super::ProtocolError;

/// Reads fields off a payload, naming the frame kind and field in every error.
pub(crate) struct Fields<'a> {
    kind: &'static str,
    buf: &'a [u8],
}

impl<'a> Fields<'a> {
    pub(crate) fn new(kind: &'static str, buf: &'a [u8]) -> Self {
        Fields { kind, buf }
    }

    pub(crate) fn bytes(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(ProtocolError::Truncated { kind: self.kind, field });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ProtocolError> {
        let b = self.bytes(field, N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, ProtocolError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, ProtocolError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, ProtocolError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn i32(&mut self, field: &'static str) -> Result<i32, ProtocolError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    /// A u16-length-prefixed UTF-8 string of at most `max` bytes.
    pub(crate) fn string(&mut self, field: &'static str, max: usize) -> Result<String, ProtocolError> {
        let len = self.u16(field)? as usize;
        if len > max {
            return Err(ProtocolError::FieldTooLong { kind: self.kind, field, len, max });
        }
        let raw = self.bytes(field, len)?;
        String::from_utf8(raw.to_vec()).map_err(|_| ProtocolError::Utf8 { kind: self.kind, field })
    }

    pub(crate) fn bad(&self, field: &'static str, value: u64) -> ProtocolError {
        ProtocolError::BadValue { kind: self.kind, field, value }
    }

    /// Every field has been read: anything left is an error, not silently ignored.
    pub(crate) fn finish(self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::Trailing { kind: self.kind, extra: self.buf.len() })
        }
    }
}

pub(crate) fn put_string(out: &mut Vec<u8>, s: &str, max: usize) {
    // Encoders truncate on a char boundary rather than emit a frame the peer refuses.
    let mut end = s.len().min(max).min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

/// Session names travel in UDP broadcasts and end up in file names and logs:
/// 1 to 64 characters of `[A-Za-z0-9._-]`.
pub fn validate_session(name: &str) -> Result<(), ProtocolError> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 64 {
        Some("it is longer than 64 characters")
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        Some("only letters, digits, '.', '_' and '-' are allowed")
    } else {
        None
    };
    match why {
        Some(why) => Err(ProtocolError::Session { name: name.to_string(), why }),
        None => Ok(()),
    }
}

/// The refusal a server sends a node that asks for another session. Installs
/// run their sessions one after another on one port, so a node early for the
/// next one recognises this refusal ([`is_other_session`]) and tries again.
pub fn other_session(running: &str, asked: &str) -> String {
    format!("this server runs session '{running}', not '{asked}'")
}

/// Whether a refusal is [`other_session`]'s.
pub fn is_other_session(reason: &str) -> bool {
    reason.starts_with("this server runs session '")
}
