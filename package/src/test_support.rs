//! For tests only: the crate's own, and other crates' through the
//! `test-support` feature (a dev-dependency feature, so no image links it).
//! A test describes a package by its files and gets the bytes
//! `tessera package` would write for them, so each test need not encode
//! headers itself.

extern crate alloc;

use alloc::vec::Vec;

use crate::cpio::{Field, REGULAR_FILE_MODE, TRAILER, align4, checksum, encode_header};

/// A `070702` archive of `files` (name, data), in that order, then the
/// trailer, laid out as `tessera package` writes it: regular files with
/// inode numbers from 1 and one link each, every owner, time and device
/// field 0, each header with the checksum of its file's data.
///
/// # Panics
/// When a file is 4 GiB or more, which no header can describe.
#[must_use]
pub fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (ino, (name, data)) in (1..).zip(files) {
        append(&mut out, ino, REGULAR_FILE_MODE, name, data);
    }
    append(&mut out, 0, 0, TRAILER, &[]);
    out
}

/// One entry: its header, its NUL-terminated name and its data, each
/// padded to 4 bytes.
fn append(out: &mut Vec<u8>, ino: u32, mode: u32, name: &str, data: &[u8]) {
    let size = |bytes: usize| u32::try_from(bytes).expect("a test file is under 4 GiB");
    out.extend_from_slice(&encode_header(|field| match field {
        Field::Ino => ino,
        Field::Mode => mode,
        Field::Nlink => 1,
        Field::FileSize => size(data.len()),
        Field::NameSize => size(name.len() + 1),
        Field::Check => checksum(data),
        // Owners, time and devices.
        _ => 0,
    }));
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.resize(align4(out.len()), 0);
    out.extend_from_slice(data);
    out.resize(align4(out.len()), 0);
}
