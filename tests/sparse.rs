//! Sparse raw images through real chains: an ext4 partition costs its used
//! blocks on the wire, and every node's partition, filled with garbage
//! beforehand, reads back exactly what the golden one holds (zeros included:
//! they were made, not assumed).

mod common;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use common::disks::{sh, LoopDisk, Mounts};
use common::*;
use kacast::chain::{ImageSink, Sink};
use kacast::clone::{image_input, read_source, RawSource};
use kacast::session::{Input, Server, SessionReport};

const MIB: u64 = 1 << 20;

/// Sends `input` to one node per target, each writing a sparse image there.
fn send(session: &str, input: Input, targets: &[PathBuf], decompress: Option<&str>) -> SessionReport {
    let server = Server::bind(loopback_server(session, targets.len())).unwrap();
    let sinks = targets
        .iter()
        .map(|t| {
            Sink::Image(ImageSink { path: t.clone(), sparse: true, decompress: decompress.map(String::from) })
        })
        .collect();
    let clients = spawn_clients(session, server.control_addr(), sinks);
    let report = server.run(input).unwrap();
    for c in clients {
        c.join().unwrap().unwrap();
    }
    report
}

/// Fills a device or file with 0xFF, so zeros that are not made show.
fn fill_with_garbage(path: &Path, bytes: u64) {
    let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
    let block = vec![0xFFu8; MIB as usize];
    for _ in 0..bytes / MIB {
        f.write_all(&block).unwrap();
    }
    f.sync_all().unwrap();
}

fn hash_of(path: &Path, bytes: u64) -> String {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::io::Read::take(File::open(path).unwrap(), bytes)).unwrap();
    h.finalize().to_hex().to_string()
}

fn needs(tools: &[&str]) -> Option<String> {
    if !is_root() {
        return Some("needs root for loop devices".into());
    }
    tools.iter().find_map(|t| missing_tool(t))
}

#[test]
fn an_ext4_partition_costs_its_used_blocks_and_comes_back_whole() {
    if let Some(why) = needs(&["mkfs.ext4", "e2image", "e2fsck", "zstd"]) {
        return skip(&why);
    }
    const SIZE: u64 = 256 * MIB;
    let golden = LoopDisk::new(SIZE);
    let dev = golden.dev.to_str().unwrap();
    sh("mkfs.ext4", &["-q", "-F", "-E", "nodiscard", dev]).unwrap();
    let work = tempfile::tempdir().unwrap();
    let mnt = work.path().join("golden");
    let mut mounts = Mounts::default();
    mounts.mount(&golden.dev, &mnt, &[]);
    fs::write(mnt.join("random"), pattern(16 * MIB as usize, 5)).unwrap();
    // Zeros a file holds: skipped on the wire like free blocks, so each node
    // must make them, over its garbage.
    fs::write(mnt.join("zeros"), vec![0u8; 3 * MIB as usize]).unwrap();
    fs::create_dir(mnt.join("etc")).unwrap();
    fs::write(mnt.join("etc/hostname"), "golden\n").unwrap();
    let want = |root: &Path| {
        ["random", "zeros", "etc/hostname"].map(|f| blake3_hex(&fs::read(root.join(f)).unwrap())).join(" ")
    };
    let files = want(&mnt);
    mounts.unmount_all();

    assert_eq!(read_source(&golden.dev), RawSource::UsedBlocks);
    let nodes: Vec<LoopDisk> = (0..2).map(|_| LoopDisk::new(SIZE)).collect();
    let image_file = work.path().join("node-image");
    for (level, decompress) in [(None, None), (Some(3), Some("zstd -dc"))] {
        let input = image_input(golden.dev.clone(), true, level);
        for n in &nodes {
            fill_with_garbage(&n.dev, SIZE);
        }
        fs::write(&image_file, vec![0xFFu8; MIB as usize]).unwrap();
        let mut targets: Vec<PathBuf> = nodes.iter().map(|n| n.dev.clone()).collect();
        targets.push(image_file.clone());
        let report = send(&format!("ext4-{}", level.unwrap_or(0)), input, &targets, decompress);
        assert_eq!(report.exit_code(), 0, "{}", report.render());

        // 16 MiB of random data and the filesystem's metadata travel; the
        // 237 free MiB and the 3 MiB of zeros do not.
        let wire = report.nodes[0].bytes;
        assert!(wire > 16 * MIB && wire < 22 * MIB, "{wire} bytes on the wire for 16 MiB of data");

        for (i, target) in targets.iter().enumerate() {
            sh("e2fsck", &["-fn", target.to_str().unwrap()])
                .unwrap_or_else(|e| panic!("node {i}'s filesystem is damaged ({level:?}): {e}"));
            let dir = work.path().join(format!("node{i}"));
            mounts.mount(target, &dir, &["ro", "loop"]);
            assert_eq!(want(&dir), files, "node {i}'s files differ ({level:?})");
            mounts.unmount_all();
        }
        // The image file holds the image's length in holes, not in blocks.
        let meta = fs::metadata(&image_file).unwrap();
        assert_eq!(meta.len(), SIZE);
        assert!(
            std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 24 * MIB,
            "the image file is not sparse"
        );
    }
}

/// An image of random blocks and zero runs of every length (shorter and
/// longer than what BLKZEROOUT gets, unaligned at the end).
fn patchwork(size: u64) -> Vec<u8> {
    let mut image = pattern(size as usize, 9);
    let runs = [(0, 8192), (MIB / 2, 4096 * 3), (3 * MIB, 5 * MIB), (12 * MIB, MIB), (size - 1000, 1000)];
    for (start, len) in runs {
        image[start as usize..(start + len) as usize].fill(0);
    }
    image
}

#[test]
fn a_partition_without_a_filesystem_comes_back_byte_for_byte() {
    if let Some(why) = needs(&["zstd"]) {
        return skip(&why);
    }
    const SIZE: u64 = 20 * MIB;
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source.img");
    let image = patchwork(SIZE);
    fs::write(&source, &image).unwrap();
    assert_eq!(read_source(&source), RawSource::Whole);
    let node = LoopDisk::new(SIZE);
    let bigger = LoopDisk::new(SIZE + 4 * MIB);
    for (level, decompress) in [(None, None), (Some(1), Some("zstd -dc"))] {
        fill_with_garbage(&node.dev, SIZE);
        fill_with_garbage(&bigger.dev, SIZE + 4 * MIB);
        let input = image_input(source.clone(), true, level);
        let report = send(
            &format!("patch-{}", level.unwrap_or(0)),
            input,
            &[node.dev.clone(), bigger.dev.clone()],
            decompress,
        );
        assert_eq!(report.exit_code(), 0, "{}", report.render());
        assert!(report.nodes[0].bytes < SIZE - 6 * MIB, "{} bytes on the wire", report.nodes[0].bytes);
        let want = blake3_hex(&image);
        assert_eq!(hash_of(&node.dev, SIZE), want, "the node's partition differs ({level:?})");
        assert_eq!(hash_of(&bigger.dev, SIZE), want, "the bigger partition's start differs ({level:?})");
    }
}

#[test]
fn an_image_larger_than_the_partition_fails_the_node_and_says_so() {
    if let Some(why) = needs(&[]) {
        return skip(&why);
    }
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source.img");
    fs::write(&source, patchwork(16 * MIB)).unwrap();
    let small = LoopDisk::new(8 * MIB);
    let input = image_input(source, true, None);
    let report = send("too-big", input, std::slice::from_ref(&small.dev), None);
    assert_ne!(report.exit_code(), 0);
    let error = report.nodes[0].error.clone().unwrap_or_default();
    assert!(error.contains("past the end of the device"), "{error}");
}

#[test]
fn a_stream_that_is_not_sparse_fails_the_node_with_the_reason() {
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("image");
    let report =
        send("not-sparse", Input::Reader(Box::new(std::io::Cursor::new(pattern(5000, 1)))), &[target], None);
    assert_ne!(report.exit_code(), 0);
    let error = report.nodes[0].error.clone().unwrap_or_default();
    assert!(error.contains("not a kacast sparse image"), "{error}");
}
