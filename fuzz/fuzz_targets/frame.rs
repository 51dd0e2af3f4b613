//! Arbitrary bytes as a frame: `Frame::check`, `Frame::parse` and
//! `Frame::parse_payload` for every kind must never panic, must agree with each
//! other, and whatever parses must survive an encode/parse round trip.

#![no_main]

use kacast::protocol::{Frame, Header, Kind, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let checked = Frame::check(data);
    if let Ok(Some(n)) = checked {
        assert!((HEADER_LEN..=data.len()).contains(&n), "check measured {n} of {} bytes", data.len());
        // The measured prefix is what a reader hands to parse: it must not
        // be refused for its length.
        if let Ok(frame) = Frame::parse(&data[..n]) {
            round_trip(&frame);
        }
    }
    match Frame::parse(data) {
        Ok(frame) => {
            assert_eq!(checked, Ok(Some(data.len())), "parse accepted what check did not measure");
            let head: &[u8; HEADER_LEN] = data[..HEADER_LEN].try_into().unwrap();
            assert_eq!(Header::parse(head).map(|h| h.kind), Ok(frame.kind()));
            round_trip(&frame);
        }
        Err(_) => {
            // A header check failure must be the same for check and parse.
            if let Err(e) = &checked {
                assert_eq!(Frame::parse(data).as_ref().err(), Some(e));
            }
        }
    }
    for kind in (0..=u8::MAX).filter_map(|b| Kind::from_u8(b).ok()) {
        if let Ok(frame) = Frame::parse_payload(kind, data) {
            assert_eq!(frame.kind(), kind);
            round_trip(&frame);
        }
    }
});

/// A frame that parsed re-encodes to bytes that parse to the same frame, with a
/// header its own kind accepts.
fn round_trip(frame: &Frame) {
    let bytes = frame.encode();
    assert_eq!(Frame::check(&bytes), Ok(Some(bytes.len())), "{frame:?}");
    assert_eq!(Frame::parse(&bytes).as_ref(), Ok(frame), "{frame:?} encodes to {bytes:02x?}");
}
