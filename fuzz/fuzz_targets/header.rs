//! Any 6 bytes as a frame header: `Header::parse` never panics, never accepts
//! a length beyond its kind's maximum, and what it accepts encodes back to the
//! same bytes.

#![no_main]

use kacast::protocol::{Header, Kind, FLAG_TAG, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(bytes) = data.get(..HEADER_LEN) else {
        return;
    };
    let bytes: &[u8; HEADER_LEN] = bytes.try_into().unwrap();
    match Header::parse(bytes) {
        Ok(header) => {
            assert!(header.len <= header.kind.max_payload(), "{header:?} over the maximum");
            assert_eq!(header.kind as u8, bytes[0]);
            assert_eq!(header.tagged, bytes[1] == FLAG_TAG);
            assert_eq!(&header.to_bytes(), bytes, "{header:?}");
        }
        Err(_) => {
            // Refused for a reason a header can show: an unknown kind, a
            // reserved flag or a length over the maximum.
            let len = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
            assert!(
                Kind::from_u8(bytes[0]).map_or(true, |k| bytes[1] & !FLAG_TAG != 0 || len > k.max_payload()),
                "valid header {bytes:02x?} refused"
            );
        }
    }
});
