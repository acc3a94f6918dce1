//! Reading the system package: a cpio archive in the `070702` format ("newc"
//! with a per-file checksum), as written by `tessera package`. See
//! docs/system-image.md.
//!
//! The reader works in place on the boot loader's copy of the archive and
//! hands out borrowed slices; it checks every header field and checksum
//! before a file is used.

/// Why a package was refused. `entry` names are borrowed from the archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackageError<'a> {
    /// A header does not start with `070702`.
    BadMagic { offset: usize },
    /// A header field is not 8 hex digits, or a size runs past the end.
    Truncated { offset: usize },
    /// A name is not NUL-terminated UTF-8.
    BadName { offset: usize },
    /// The file's bytes do not add up to its header checksum.
    Checksum {
        entry: &'a str,
        expected: u32,
        actual: u32,
    },
    /// The archive has no `TRAILER!!!`.
    NoTrailer,
    /// A required entry is missing.
    Missing { entry: &'a str },
}

/// One file of the archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
}

const MAGIC: &[u8; 6] = b"070702";
const HEADER_SIZE: usize = 110;
const TRAILER: &str = "TRAILER!!!";

fn align4(value: usize) -> usize {
    value.div_ceil(4) * 4
}

/// Header field `field` (after the magic): eight ASCII hex digits, either
/// case, as cpio writes them.
fn hex_field(archive: &[u8], offset: usize, field: usize) -> Option<u32> {
    let start = offset + 6 + field * 8;
    archive
        .get(start..start + 8)?
        .iter()
        .try_fold(0u32, |value, digit| {
            let nibble = match digit {
                b'0'..=b'9' => digit - b'0',
                b'a'..=b'f' => digit - b'a' + 10,
                b'A'..=b'F' => digit - b'A' + 10,
                _ => return None,
            };
            Some((value << 4) | u32::from(nibble))
        })
}

/// The package's checksum: the wrapping 32-bit sum of the bytes.
///
/// Eight bytes at a time: each word's bytes are added in four 16-bit lanes,
/// which cannot overflow within 128 words (128 × 2 × 255 < 65536).
/// Checking the package is on every boot's path.
#[must_use]
pub fn checksum(data: &[u8]) -> u32 {
    const LOW_BYTES: u64 = 0x00FF_00FF_00FF_00FF;
    const LANE: u64 = 0xFFFF;
    let byte_sum = |bytes: &[u8]| bytes.iter().map(|byte| u64::from(*byte)).sum::<u64>();
    // SAFETY: every bit pattern is a valid u64; `align_to` only reinterprets
    // the aligned middle of the slice. Word loads matter: the target is
    // strict-align, so an unaligned 8-byte read would be eight byte loads.
    let (head, words, tail) = unsafe { data.align_to::<u64>() };
    let mut total = byte_sum(head) + byte_sum(tail);
    for block in words.chunks(128) {
        // Two independent lane sums per step halve the loop overhead.
        let mut lanes: u64 = 0;
        let mut pairs = block.chunks_exact(2);
        for pair in &mut pairs {
            let (first, second) = (u64::from_le(pair[0]), u64::from_le(pair[1]));
            lanes += (first & LOW_BYTES) + ((first >> 8) & LOW_BYTES);
            lanes += (second & LOW_BYTES) + ((second >> 8) & LOW_BYTES);
        }
        for word in pairs.remainder() {
            let value = u64::from_le(*word);
            lanes += (value & LOW_BYTES) + ((value >> 8) & LOW_BYTES);
        }
        total += (lanes & LANE) + ((lanes >> 16) & LANE) + ((lanes >> 32) & LANE) + (lanes >> 48);
    }
    total as u32
}

/// A checked archive.
#[derive(Clone, Copy, Debug)]
pub struct Package<'a> {
    archive: &'a [u8],
}

impl<'a> Package<'a> {
    /// Walks the whole archive once, checking every header and checksum, so
    /// that later look-ups cannot fail half-way.
    ///
    /// # Errors
    /// The first problem found, with the offset or entry name.
    pub fn parse(archive: &'a [u8]) -> Result<Self, PackageError<'a>> {
        let package = Self { archive };
        let mut entries = package.raw_entries();
        loop {
            match entries.next() {
                None => return Err(PackageError::NoTrailer),
                Some(Err(error)) => return Err(error),
                Some(Ok((entry, expected))) => {
                    if entry.name == TRAILER {
                        return Ok(package);
                    }
                    let actual = checksum(entry.data);
                    if actual != expected {
                        return Err(PackageError::Checksum {
                            entry: entry.name,
                            expected,
                            actual,
                        });
                    }
                }
            }
        }
    }

    fn raw_entries(&self) -> impl Iterator<Item = Result<(Entry<'a>, u32), PackageError<'a>>> + 'a {
        let archive = self.archive;
        let mut offset = 0;
        let mut done = false;
        core::iter::from_fn(move || {
            if done {
                return None;
            }
            let result = read_entry(archive, offset);
            match &result {
                Ok((entry, _, next)) => {
                    done = entry.name == TRAILER;
                    offset = *next;
                }
                Err(_) => done = true,
            }
            Some(result.map(|(entry, checksum, _)| (entry, checksum)))
        })
    }

    /// The files, in archive order, without the trailer.
    pub fn entries(&self) -> impl Iterator<Item = Entry<'a>> + 'a {
        self.raw_entries()
            .map_while(Result::ok)
            .map(|(entry, _)| entry)
            .take_while(|entry| entry.name != TRAILER)
    }

    /// The file called `name`.
    ///
    /// # Errors
    /// `Missing` when the archive has no such file.
    pub fn file(&self, name: &'a str) -> Result<&'a [u8], PackageError<'a>> {
        self.entries()
            .find(|entry| entry.name == name)
            .map(|entry| entry.data)
            .ok_or(PackageError::Missing { entry: name })
    }
}

/// Reads the entry at `offset`: the entry, its header checksum and the
/// offset of the next header.
fn read_entry(archive: &[u8], offset: usize) -> Result<(Entry<'_>, u32, usize), PackageError<'_>> {
    if archive.get(offset..offset + 6) != Some(MAGIC.as_slice()) {
        return Err(PackageError::BadMagic { offset });
    }
    let truncated = PackageError::Truncated { offset };
    // Fields after the magic: ino, mode, uid, gid, nlink, mtime, filesize,
    // devmajor, devminor, rdevmajor, rdevminor, namesize, check.
    let file_size = hex_field(archive, offset, 6).ok_or(truncated)? as usize;
    let name_size = hex_field(archive, offset, 11).ok_or(truncated)? as usize;
    let expected = hex_field(archive, offset, 12).ok_or(truncated)?;
    let name_start = offset + HEADER_SIZE;
    let name_bytes = archive
        .get(name_start..name_start + name_size)
        .ok_or(truncated)?;
    let name = name_bytes
        .split_last()
        .filter(|(last, _)| **last == 0)
        .and_then(|(_, name)| core::str::from_utf8(name).ok())
        .ok_or(PackageError::BadName { offset })?;
    let data_start = align4(name_start + name_size);
    let data = archive
        .get(data_start..data_start + file_size)
        .ok_or(truncated)?;
    Ok((
        Entry { name, data },
        expected,
        align4(data_start + file_size),
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a `070702` archive the way `tessera package` does.
    pub fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut add = |name: &str, data: &[u8]| {
            let fields = [
                1,
                0o100644,
                0,
                0,
                1,
                0,
                data.len() as u32,
                0,
                0,
                0,
                0,
                name.len() as u32 + 1,
                checksum(data),
            ];
            out.extend_from_slice(MAGIC);
            for field in fields {
                out.extend_from_slice(format!("{field:08x}").as_bytes());
            }
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            out.resize(align4(out.len()), 0);
            out.extend_from_slice(data);
            out.resize(align4(out.len()), 0);
        };
        for (name, data) in files {
            add(name, data);
        }
        add(TRAILER, &[]);
        out
    }

    #[test]
    fn checksum_is_the_byte_sum_for_every_length_and_value() {
        let data: Vec<u8> = (0..5000).map(|index| (index * 7 + 255) as u8).collect();
        for start in 0..9 {
            for length in [0, 1, 7, 8, 9, 1023, 1024, 1025, 4000] {
                let slice = &data[start..start + length];
                let expected = slice
                    .iter()
                    .fold(0u32, |sum, byte| sum.wrapping_add(u32::from(*byte)));
                assert_eq!(checksum(slice), expected, "start {start}, length {length}");
            }
        }
        let all_ones = vec![0xFF; 100_000];
        assert_eq!(checksum(&all_ones), 255 * 100_000);
    }

    #[test]
    fn header_fields_are_eight_hex_digits_in_either_case() {
        let header = b"070702000000010000ABcd";
        assert_eq!(hex_field(header, 0, 0), Some(1));
        assert_eq!(hex_field(header, 0, 1), Some(0xABCD));
        assert_eq!(hex_field(header, 0, 2), None, "runs past the end");
        let bad = b"0707020000001G";
        assert_eq!(hex_field(bad, 0, 0), None);
        let upper = b"07070200ABCDEF";
        assert_eq!(hex_field(upper, 0, 0), Some(0x00AB_CDEF));
    }

    #[test]
    fn reads_files_in_order() {
        let bytes = archive(&[
            ("tessera/manifest.dtb", b"abc"),
            ("vm/a/image", &[1, 2, 3, 4, 5]),
        ]);
        let package = Package::parse(&bytes).unwrap();
        let names: Vec<_> = package.entries().map(|entry| entry.name).collect();
        assert_eq!(names, ["tessera/manifest.dtb", "vm/a/image"]);
        assert_eq!(package.file("vm/a/image").unwrap(), &[1, 2, 3, 4, 5]);
        assert_eq!(
            package.file("vm/b/image"),
            Err(PackageError::Missing {
                entry: "vm/b/image"
            })
        );
    }

    #[test]
    fn a_corrupted_byte_is_caught_by_its_checksum() {
        let mut bytes = archive(&[("vm/a/image", b"guest code")]);
        let position = bytes
            .windows(5)
            .position(|window| window == b"guest")
            .unwrap();
        bytes[position] = b'G';
        assert_eq!(
            Package::parse(&bytes).unwrap_err(),
            PackageError::Checksum {
                entry: "vm/a/image",
                expected: checksum(b"guest code"),
                actual: checksum(b"Guest code"),
            }
        );
    }

    #[test]
    fn truncation_bad_magic_and_missing_trailer_are_refused() {
        let bytes = archive(&[("vm/a/image", &[7; 100])]);
        assert!(matches!(
            Package::parse(&bytes[..150]).unwrap_err(),
            PackageError::Truncated { offset: 0 }
        ));
        assert_eq!(
            Package::parse(b"070701 old newc format").unwrap_err(),
            PackageError::BadMagic { offset: 0 }
        );
        let mut no_trailer = archive(&[("a", b"x")]);
        let trailer_at = no_trailer.len() - 124;
        no_trailer.truncate(trailer_at);
        assert_eq!(
            Package::parse(&no_trailer).unwrap_err(),
            PackageError::BadMagic { offset: trailer_at }
        );
        assert_eq!(
            Package::parse(&[]).unwrap_err(),
            PackageError::BadMagic { offset: 0 }
        );
    }
}
