use thiserror::Error;

/// Why a sequence of bytes is not a valid frame. Every variant names the frame kind
/// or field involved so the log line says what the peer got wrong.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    #[error("{kind} frame has reserved flags 0x{flags:02x} set")]
    Flags { kind: &'static str, flags: u8 },
    #[error("{kind} frame announces {len} bytes, more than its maximum of {max}")]
    TooLong { kind: &'static str, len: u32, max: u32 },
    #[error("{kind} frame truncated: field '{field}' needs more bytes than the payload has")]
    Truncated { kind: &'static str, field: &'static str },
    #[error("{kind} frame has {extra} unexpected bytes after its last field")]
    Trailing { kind: &'static str, extra: usize },
    #[error("{kind} frame: field '{field}' is not valid UTF-8")]
    Utf8 { kind: &'static str, field: &'static str },
    #[error("{kind} frame: field '{field}' is {len} bytes, more than its maximum of {max}")]
    FieldTooLong { kind: &'static str, field: &'static str, len: usize, max: usize },
    #[error("{kind} frame: field '{field}' has invalid value {value}")]
    BadValue { kind: &'static str, field: &'static str, value: u64 },
    #[error("not a kacast peer: bad magic bytes {0:02x?}")]
    BadMagic([u8; 6]),
    #[error("protocol version mismatch: peer speaks version {peer}, this kacast speaks version {ours}")]
    Version { peer: u16, ours: u16 },
    #[error("invalid session name {name:?}: {why}")]
    Session { name: String, why: &'static str },
}
