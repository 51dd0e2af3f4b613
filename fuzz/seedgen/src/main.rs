//! Encodes one sample of every frame kind into `fuzz/seeds/frame` (and its
//! header into `fuzz/seeds/header`), so the fuzzers start from real frames.

use kacast::protocol::*;
fn main() {
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../seeds");
    // The library's own samples: one of every kind, so a new kind gets a seed.
    let frames: Vec<(String, Frame)> =
        Frame::samples().into_iter().enumerate().map(|(i, f)| (format!("{i:02}-{}", f.kind()), f)).collect();
    for (name, f) in frames {
        let bytes = f.encode();
        assert_eq!(Frame::parse(&bytes).unwrap(), f);
        std::fs::write(out.join("frame").join(&name), &bytes).unwrap();
        std::fs::write(out.join("header").join(&name), &bytes[..HEADER_LEN]).unwrap();
    }
    // a tagged header
    let mut h = Frame::Bye.encode();
    h[1] = FLAG_TAG;
    std::fs::write(out.join("header").join("bye-tagged"), &h[..HEADER_LEN]).unwrap();
}
