//! cpio archives in the `070702` format ("newc" with a per-file checksum),
//! the container of a system package. Layout of each entry: a 110-byte
//! ASCII header (the magic, then 13 fields of 8 hex digits), the
//! NUL-terminated name, padding to 4 bytes, the data, padding to 4 bytes;
//! an entry named `TRAILER!!!` ends the archive.
//!
//! The reader works in place and hands out borrowed slices. It parses only
//! the header fields it needs to walk the archive (file size, name size),
//! because the hypervisor reads the package on every boot and walks it
//! again for each file it looks up; the others, the checksum among them,
//! are read on demand ([`Entry::field`]).

use core::fmt;

use crate::escape::Escaped;
use tessera_arm_defs::text::nul_ended_entry;

use zerocopy::FromBytes;

/// The first six bytes of every header.
pub const MAGIC: &[u8; 6] = b"070702";
/// The name of the entry that ends an archive.
pub const TRAILER: &str = "TRAILER!!!";
/// Digits in each header field.
pub const FIELD_LEN: usize = 8;
/// The header: the magic and every field.
pub const HEADER_LEN: usize = MAGIC.len() + Field::ALL.len() * FIELD_LEN;
const _: () = assert!(HEADER_LEN == 110, "the newc header is 110 bytes");

/// A regular file, rw-r--r--: the mode a package's entries have.
pub const REGULAR_FILE_MODE: u32 = 0o100644;
const FILE_TYPE_MASK: u32 = 0o170000;
const REGULAR_FILE_TYPE: u32 = 0o100000;

/// The header fields after the magic, in header order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Ino,
    Mode,
    Uid,
    Gid,
    Nlink,
    Mtime,
    FileSize,
    DevMajor,
    DevMinor,
    RdevMajor,
    RdevMinor,
    NameSize,
    /// The checksum of the file's data ([`checksum`]).
    Check,
}

impl Field {
    /// Every field, in header order.
    pub const ALL: [Self; 13] = [
        Self::Ino,
        Self::Mode,
        Self::Uid,
        Self::Gid,
        Self::Nlink,
        Self::Mtime,
        Self::FileSize,
        Self::DevMajor,
        Self::DevMinor,
        Self::RdevMajor,
        Self::RdevMinor,
        Self::NameSize,
        Self::Check,
    ];

    /// The names cpio documentation gives them, in header order, for
    /// [`nul_ended_entry`].
    const NAMES: &'static str = concat!(
        "ino\0",
        "mode\0",
        "uid\0",
        "gid\0",
        "nlink\0",
        "mtime\0",
        "filesize\0",
        "devmajor\0",
        "devminor\0",
        "rdevmajor\0",
        "rdevminor\0",
        "namesize\0",
        "check\0",
    );

    /// The name cpio documentation gives it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        nul_ended_entry(Self::NAMES, self as usize)
    }

    /// Where its digits start, from the start of the header.
    #[must_use]
    pub const fn offset(self) -> usize {
        MAGIC.len() + self as usize * FIELD_LEN
    }
}

const _: () = assert!(tessera_arm_defs::text::holds_nul_ended_entries(
    Field::NAMES,
    Field::ALL.len()
));

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `value` rounded up to the 4-byte boundary names and data are padded to.
#[must_use]
pub const fn align4(value: usize) -> usize {
    value.div_ceil(4) * 4
}

/// A header as a writer puts it: the magic, then each field's `value` as
/// eight lower-case hex digits.
#[must_use]
pub fn encode_header(value: impl Fn(Field) -> u32) -> [u8; HEADER_LEN] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut header = [0; HEADER_LEN];
    header[..MAGIC.len()].copy_from_slice(MAGIC);
    for field in Field::ALL {
        let value = value(field);
        let digits = &mut header[field.offset()..field.offset() + FIELD_LEN];
        for (position, digit) in digits.iter_mut().enumerate() {
            let shift = 4 * (FIELD_LEN - 1 - position);
            *digit = DIGITS[(value >> shift) as usize & 0xF];
        }
    }
    header
}

/// Field `field` of the header at the start of `header`: eight ASCII hex
/// digits, either case, as cpio writes them. `None` when they are not, or
/// when `header` ends first.
fn hex_field(header: &[u8], field: Field) -> Option<u32> {
    let start = field.offset();
    header
        .get(start..start + FIELD_LEN)?
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

/// Whether all eight bytes of `word` are ASCII hex digits, either case:
/// one field at once. For bytes below 0x80, `byte + (0x80 - c)` has its top
/// bit set exactly when `byte >= c`, and never carries into the next byte.
const fn all_hex(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const fn at_least(word: u64, c: u64) -> u64 {
        (word + (0x80 - c) * ONES) & HIGH
    }
    if word & HIGH != 0 {
        return false;
    }
    let digit = at_least(word, 0x30) & !at_least(word, 0x3A);
    let lower = word | (0x20 * ONES);
    let letter = at_least(lower, 0x61) & !at_least(lower, 0x67);
    digit | letter == HIGH
}

/// The `070702` checksum: the wrapping 32-bit sum of the bytes.
///
/// Eight bytes at a time: each word's bytes are added in four 16-bit lanes,
/// which cannot overflow within 128 words (128 × 2 × 255 < 65536).
/// Checking the package is on every boot's path.
#[must_use]
pub fn checksum(data: &[u8]) -> u32 {
    const LOW_BYTES: u64 = 0x00FF_00FF_00FF_00FF;
    const LANE: u64 = 0xFFFF;
    let byte_sum = |bytes: &[u8]| bytes.iter().map(|byte| u64::from(*byte)).sum::<u64>();
    let (head, words, tail) = split_words(data);
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

/// `data` as unaligned head bytes, the aligned 8-byte words in the middle
/// and tail bytes. Aligned word loads matter: the hypervisor's target is
/// strict-align, so a load the compiler cannot prove aligned becomes eight
/// byte loads.
fn split_words(data: &[u8]) -> (&[u8], &[u64], &[u8]) {
    // `align_offset` may answer "never"; then every byte is in the head.
    let (head, rest) = data.split_at(data.as_ptr().align_offset(8).min(data.len()));
    // The view cannot fail (`rest` is aligned, the count fits); bytes are the
    // fallback all the same.
    let (words, tail) =
        <[u64]>::ref_from_prefix_with_elems(rest, rest.len() / 8).unwrap_or((&[], rest));
    (head, words, tail)
}

/// Why an archive, or an entry of it, was refused. `entry` counts the
/// archive's entries from 0; offsets are of the entry's header, from the
/// start of the archive; names are borrowed from the archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadError<'a> {
    /// No `070702` where a header should start.
    BadMagic { entry: usize, offset: usize },
    /// A header field is not eight hex digits; `digits` as found.
    BadField {
        entry: usize,
        offset: usize,
        field: Field,
        digits: [u8; FIELD_LEN],
    },
    /// The header runs past the end of the archive.
    Truncated { entry: usize, offset: usize },
    /// The name (`namesize`) or the data (`filesize`) runs past the end of
    /// the archive: `value` is that field's.
    TooLarge {
        entry: usize,
        offset: usize,
        field: Field,
        value: u32,
    },
    /// The name is not NUL-terminated UTF-8 (an empty `namesize` among
    /// them).
    BadName { entry: usize, offset: usize },
    /// The archive ends without a `TRAILER!!!` entry.
    NoTrailer,
    /// Something other than zero padding after the trailer
    /// ([`Entries::check_padding`]).
    DataAfterTrailer { offset: usize },
    /// The entry's mode is not that of a regular file.
    NotAFile { entry: &'a str, mode: u32 },
    /// The entry's bytes do not add up to its header's checksum.
    Checksum {
        entry: &'a str,
        expected: u32,
        actual: u32,
    },
    /// The archive has no entry of this name ([`Archive::file`]).
    Missing { entry: &'a str },
}

/// What to do about a package that breaks the format.
const REBUILD: &str = "rebuild the package with `tessera package`";

impl fmt::Display for ReadError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Where, what, then what to do: the place and the advice are the
        // same for many cases, so each is written once rather than in
        // every case's format string.
        match *self {
            Self::BadMagic { entry, offset }
            | Self::BadField { entry, offset, .. }
            | Self::Truncated { entry, offset }
            | Self::TooLarge { entry, offset, .. }
            | Self::BadName { entry, offset } => {
                write!(f, "entry {entry} at offset {offset:#x}: ")?;
            }
            Self::NotAFile { entry, .. } | Self::Checksum { entry, .. } => {
                write!(f, "{}: ", Escaped(entry.as_bytes()))?;
            }
            Self::NoTrailer | Self::DataAfterTrailer { .. } | Self::Missing { .. } => {}
        }
        match *self {
            Self::BadMagic { .. } => {
                f.write_str("no \"070702\" cpio header (not a package, or corrupted)")
            }
            Self::BadField { field, digits, .. } => write!(
                f,
                "field {field}: \"{}\" is not 8 hex digits",
                Escaped(&digits)
            ),
            Self::Truncated { .. } => f.write_str("the archive ends inside its header"),
            Self::TooLarge { field, value, .. } => write!(
                f,
                "field {field}: {value:#x} bytes run past the end of the archive"
            ),
            Self::BadName { .. } => {
                f.write_str("field namesize: its name is not NUL-terminated UTF-8")
            }
            Self::NoTrailer => write!(f, "the archive ends without {TRAILER}"),
            Self::DataAfterTrailer { offset } => {
                write!(f, "data after {TRAILER}, at offset {offset:#x}")
            }
            Self::NotAFile { mode, .. } => {
                write!(f, "field mode: {mode:#o} is not a regular file")
            }
            Self::Checksum {
                expected, actual, ..
            } => write!(
                f,
                "field check: {expected:#010x} in its header, but its data sums to \
                 {actual:#010x}"
            ),
            Self::Missing { entry } => {
                write!(f, "the archive has no entry {}", Escaped(entry.as_bytes()))
            }
        }?;
        f.write_str("; ")?;
        f.write_str(REBUILD)
    }
}

impl core::error::Error for ReadError<'_> {}

/// One file of an archive as read: its header is well-formed, its checksum
/// not yet verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Its place in the archive, from 0.
    pub index: usize,
    /// Of its header, from the start of the archive.
    pub offset: usize,
    pub name: &'a str,
    pub data: &'a [u8],
    header: &'a [u8; HEADER_LEN],
}

impl<'a> Entry<'a> {
    /// Any field of its header.
    ///
    /// # Errors
    /// `BadField` when the field is not eight hex digits (only the size
    /// fields are known to be, from reading the entry).
    pub fn field(&self, field: Field) -> Result<u32, ReadError<'a>> {
        hex_field(self.header, field)
            .ok_or_else(|| bad_field(self.header, self.index, self.offset, field))
    }

    /// Checks every field of its header: eight hex digits each (the walk
    /// itself reads only the sizes), and a mode that says regular file.
    ///
    /// # Errors
    /// `BadField` for the first field that is not hex digits; `NotAFile`.
    pub fn check_fields(&self) -> Result<(), ReadError<'a>> {
        for field in Field::ALL {
            let digits = &self.header[field.offset()..field.offset() + FIELD_LEN];
            let word = u64::from_le_bytes([
                digits[0], digits[1], digits[2], digits[3], digits[4], digits[5], digits[6],
                digits[7],
            ]);
            if !all_hex(word) {
                return Err(bad_field(self.header, self.index, self.offset, field));
            }
        }
        let mode = self.mode()?;
        if mode & FILE_TYPE_MASK == REGULAR_FILE_TYPE {
            Ok(())
        } else {
            Err(ReadError::NotAFile {
                entry: self.name,
                mode,
            })
        }
    }

    /// The `mode` field: file type and permissions.
    ///
    /// # Errors
    /// `BadField` when it is not eight hex digits.
    pub fn mode(&self) -> Result<u32, ReadError<'a>> {
        self.field(Field::Mode)
    }

    /// Whether its mode says regular file (false if the mode is unreadable).
    #[must_use]
    pub fn is_regular_file(&self) -> bool {
        self.mode()
            .is_ok_and(|mode| mode & FILE_TYPE_MASK == REGULAR_FILE_TYPE)
    }

    /// The header's `check` field.
    ///
    /// # Errors
    /// `BadField` when it is not eight hex digits.
    pub fn stored_checksum(&self) -> Result<u32, ReadError<'a>> {
        self.field(Field::Check)
    }

    /// Whether its data adds up to its header's checksum.
    #[must_use]
    pub fn checksum_ok(&self) -> bool {
        self.verify_checksum().is_ok()
    }

    /// Checks its data against its header's checksum.
    ///
    /// # Errors
    /// `Checksum`, with both sums, when they differ; `BadField` when the
    /// header's checksum is not eight hex digits.
    pub fn verify_checksum(&self) -> Result<(), ReadError<'a>> {
        let expected = self.stored_checksum()?;
        let actual = checksum(self.data);
        if actual == expected {
            Ok(())
        } else {
            Err(ReadError::Checksum {
                entry: self.name,
                expected,
                actual,
            })
        }
    }
}

/// The entries of `archive` in order, the trailer left out; see
/// [`Entries`].
#[must_use]
pub const fn entries(archive: &[u8]) -> Entries<'_> {
    Entries {
        archive,
        next: Some(0),
        index: 0,
        trailer_end: None,
    }
}

/// A walk through an archive's headers. Yields each entry before the
/// trailer; on a malformed header (or the end of the archive before the
/// trailer) yields that error and stops. Checksums are not verified, so
/// that a listing can show which entries are wrong.
#[derive(Clone, Debug)]
pub struct Entries<'a> {
    archive: &'a [u8],
    /// Where the next header starts; `None` once the walk has ended.
    next: Option<usize>,
    /// The next entry's place.
    index: usize,
    /// Just past the trailer, once it has been reached.
    trailer_end: Option<usize>,
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Entry<'a>, ReadError<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        let offset = self.next.take()?;
        if offset >= self.archive.len() {
            return Some(Err(ReadError::NoTrailer));
        }
        match read_entry(self.archive, offset, self.index) {
            Ok((entry, next)) if entry.name == TRAILER => {
                self.trailer_end = Some(next);
                None
            }
            Ok((entry, next)) => {
                self.next = Some(next);
                self.index += 1;
                Some(Ok(entry))
            }
            Err(error) => Some(Err(error)),
        }
    }
}

impl<'a> Entries<'a> {
    /// After a walk that reached the trailer: whether only zeros follow it,
    /// the padding archivers add to reach a block size. The hypervisor does
    /// not ask; the tool checks that a package is well-formed throughout.
    ///
    /// # Errors
    /// `DataAfterTrailer` at the first other byte; `NoTrailer` when the walk
    /// has not reached the trailer.
    pub fn check_padding(&self) -> Result<(), ReadError<'a>> {
        let end = self.trailer_end.ok_or(ReadError::NoTrailer)?;
        match self
            .archive
            .get(end..)
            .unwrap_or_default()
            .iter()
            .position(|byte| *byte != 0)
        {
            Some(extra) => Err(ReadError::DataAfterTrailer {
                offset: end + extra,
            }),
            None => Ok(()),
        }
    }
}

/// The error for a header field that is not eight hex digits.
fn bad_field<'a>(header: &[u8], entry: usize, offset: usize, field: Field) -> ReadError<'a> {
    let mut digits = [b'?'; FIELD_LEN];
    if let Some(found) = header.get(field.offset()..field.offset() + FIELD_LEN) {
        digits.copy_from_slice(found);
    }
    ReadError::BadField {
        entry,
        offset,
        field,
        digits,
    }
}

/// Reads entry `index`, whose header is at `offset`: the entry and the
/// offset of the next header. Sizes are checked against the archive before
/// any sum that could overflow.
fn read_entry(
    archive: &[u8],
    offset: usize,
    index: usize,
) -> Result<(Entry<'_>, usize), ReadError<'_>> {
    let truncated = ReadError::Truncated {
        entry: index,
        offset,
    };
    let rest = archive.get(offset..).ok_or(truncated)?;
    if !rest.starts_with(MAGIC) {
        return Err(ReadError::BadMagic {
            entry: index,
            offset,
        });
    }
    let header = rest.first_chunk::<HEADER_LEN>().ok_or(truncated)?;
    let field =
        |field| hex_field(header, field).ok_or_else(|| bad_field(header, index, offset, field));
    let file_size = field(Field::FileSize)?;
    let name_size = field(Field::NameSize)?;
    let too_large = |field, value| ReadError::TooLarge {
        entry: index,
        offset,
        field,
        value,
    };
    let name_start = offset + HEADER_LEN;
    let name_bytes = archive
        .get(name_start..)
        .and_then(|rest| rest.get(..name_size as usize))
        .ok_or(too_large(Field::NameSize, name_size))?;
    let name = name_bytes
        .split_last()
        .filter(|(last, _)| **last == 0)
        .and_then(|(_, name)| core::str::from_utf8(name).ok())
        .ok_or(ReadError::BadName {
            entry: index,
            offset,
        })?;
    let data_start = align4(name_start + name_bytes.len());
    let data = archive
        .get(data_start..)
        .and_then(|rest| rest.get(..file_size as usize))
        .ok_or(too_large(Field::FileSize, file_size))?;
    let entry = Entry {
        index,
        offset,
        name,
        data,
        header,
    };
    Ok((entry, align4(data_start + data.len())))
}

/// A checked archive: every header well-formed, every checksum right, a
/// trailer at the end.
#[derive(Clone, Copy, Debug)]
pub struct Archive<'a> {
    archive: &'a [u8],
}

impl<'a> Archive<'a> {
    /// Walks the whole archive once, checking every header field, mode and
    /// checksum, so that later look-ups cannot fail half-way.
    ///
    /// # Errors
    /// The first problem found, with the offset or entry name.
    pub fn parse(archive: &'a [u8]) -> Result<Self, ReadError<'a>> {
        for entry in entries(archive) {
            let entry = entry?;
            entry.check_fields()?;
            entry.verify_checksum()?;
        }
        // The walk ends without an error only at the trailer.
        Ok(Self { archive })
    }

    /// The files, in archive order, without the trailer.
    pub fn entries(&self) -> impl Iterator<Item = Entry<'a>> + 'a {
        entries(self.archive).map_while(Result::ok)
    }

    /// The file called `name`.
    ///
    /// # Errors
    /// `Missing` when the archive has no such file.
    pub fn file(&self, name: &'a str) -> Result<&'a [u8], ReadError<'a>> {
        self.entries()
            .find(|entry| entry.name == name)
            .map(|entry| entry.data)
            .ok_or(ReadError::Missing { entry: name })
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::string::ToString;
    use std::vec;
    use std::vec::Vec;

    use super::*;
    use crate::test_support::archive;

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
    fn checksum_reads_whole_aligned_words() {
        let words = vec![0u64; 100];
        let bytes = zerocopy::IntoBytes::as_bytes(words.as_slice());
        for start in 0..8 {
            let (head, middle, tail) = split_words(&bytes[start..]);
            assert_eq!(head.len(), (8 - start) % 8, "start {start}");
            assert_eq!(middle.len(), if start == 0 { 100 } else { 99 });
            assert_eq!(head.len() + middle.len() * 8 + tail.len(), 800 - start);
        }
    }

    #[test]
    fn checksums_wrap() {
        assert_eq!(checksum(&[]), 0);
        let big = vec![0xffu8; (u32::MAX / 0xff) as usize + 2];
        assert_eq!(checksum(&big), 0x1fd);
    }

    #[test]
    fn header_fields_are_eight_hex_digits_in_either_case() {
        let header = b"070702000000010000ABcd";
        assert_eq!(hex_field(header, Field::Ino), Some(1));
        assert_eq!(hex_field(header, Field::Mode), Some(0xABCD));
        assert_eq!(hex_field(header, Field::Uid), None, "runs past the end");
        let bad = b"0707020000001G";
        assert_eq!(hex_field(bad, Field::Ino), None);
        let upper = b"07070200ABCDEF";
        assert_eq!(hex_field(upper, Field::Ino), Some(0x00AB_CDEF));
    }

    #[test]
    fn encoded_headers_read_back_field_by_field() {
        let header = encode_header(|field| match field {
            Field::Ino => 0xDEAD_BEEF,
            Field::Check => 0x16b,
            other => other as u32,
        });
        assert_eq!(&header[..MAGIC.len()], MAGIC);
        assert_eq!(&header[Field::Ino.offset()..][..FIELD_LEN], b"deadbeef");
        assert_eq!(hex_field(&header, Field::Ino), Some(0xDEAD_BEEF));
        assert_eq!(hex_field(&header, Field::Check), Some(0x16b));
        for (index, field) in Field::ALL.into_iter().enumerate().skip(1).take(11) {
            assert_eq!(hex_field(&header, field), Some(index as u32), "{field}");
        }
        assert_eq!(Field::Check.offset() + FIELD_LEN, HEADER_LEN);
    }

    #[test]
    fn reads_files_in_order() {
        let bytes = archive(&[
            ("tessera/manifest.dtb", b"abc"),
            ("vm/a/image", &[1, 2, 3, 4, 5]),
        ]);
        let package = Archive::parse(&bytes).unwrap();
        let names: Vec<_> = package.entries().map(|entry| entry.name).collect();
        assert_eq!(names, ["tessera/manifest.dtb", "vm/a/image"]);
        assert_eq!(package.file("vm/a/image").unwrap(), &[1, 2, 3, 4, 5]);
        assert_eq!(
            package.file("vm/b/image"),
            Err(ReadError::Missing {
                entry: "vm/b/image"
            })
        );
    }

    #[test]
    fn entries_carry_their_offset_mode_and_checksum() {
        let bytes = archive(&[("a", b"hello"), ("dir/b", &[])]);
        let entries: Vec<_> = entries(&bytes).map(Result::unwrap).collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].offset, 0);
        // 110 + "a\0" padded to 112, then "hello" padded to 8.
        assert_eq!(entries[1].offset, 120);
        assert_eq!(entries[0].mode(), Ok(REGULAR_FILE_MODE));
        assert!(entries.iter().all(Entry::is_regular_file));
        assert_eq!(entries[0].stored_checksum(), Ok(checksum(b"hello")));
        assert_eq!(entries[1].field(Field::Nlink), Ok(1));
        assert!(entries.iter().all(Entry::checksum_ok));
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
            Archive::parse(&bytes).unwrap_err(),
            ReadError::Checksum {
                entry: "vm/a/image",
                expected: checksum(b"guest code"),
                actual: checksum(b"Guest code"),
            }
        );
        // A walk still reads it, and says which entry is wrong.
        let entry = entries(&bytes).next().unwrap().unwrap();
        assert!(!entry.checksum_ok());
    }

    #[test]
    fn truncation_bad_magic_and_missing_trailer_are_refused() {
        let bytes = archive(&[("vm/a/image", &[7; 100])]);
        assert_eq!(
            Archive::parse(&bytes[..150]).unwrap_err(),
            ReadError::TooLarge {
                entry: 0,
                offset: 0,
                field: Field::FileSize,
                value: 100
            }
        );
        assert_eq!(
            Archive::parse(&bytes[..115]).unwrap_err(),
            ReadError::TooLarge {
                entry: 0,
                offset: 0,
                field: Field::NameSize,
                value: 11
            }
        );
        assert_eq!(
            Archive::parse(&bytes[..50]).unwrap_err(),
            ReadError::Truncated {
                entry: 0,
                offset: 0
            },
            "a header cut short"
        );
        assert_eq!(
            Archive::parse(b"070701 old newc format").unwrap_err(),
            ReadError::BadMagic {
                entry: 0,
                offset: 0
            }
        );
        // Sizes near 2^32 are refused, never added up past the archive.
        let mut huge = bytes.clone();
        huge[Field::FileSize.offset()..][..FIELD_LEN].copy_from_slice(b"ffffffff");
        assert!(matches!(
            Archive::parse(&huge).unwrap_err(),
            ReadError::TooLarge {
                field: Field::FileSize,
                value: u32::MAX,
                ..
            }
        ));
        huge[Field::NameSize.offset()..][..FIELD_LEN].copy_from_slice(b"FFFFFFFF");
        assert!(matches!(
            Archive::parse(&huge).unwrap_err(),
            ReadError::TooLarge {
                field: Field::NameSize,
                ..
            }
        ));
        let mut no_trailer = archive(&[("a", b"x")]);
        let trailer_at = no_trailer.len() - 124;
        no_trailer.truncate(trailer_at);
        assert_eq!(
            Archive::parse(&no_trailer).unwrap_err(),
            ReadError::NoTrailer
        );
        no_trailer.extend_from_slice(b"0707");
        assert_eq!(
            Archive::parse(&no_trailer).unwrap_err(),
            ReadError::BadMagic {
                entry: 1,
                offset: trailer_at
            }
        );
        assert_eq!(Archive::parse(&[]).unwrap_err(), ReadError::NoTrailer);
    }

    #[test]
    fn every_field_has_its_cpio_name() {
        let names: Vec<_> = Field::ALL.iter().map(|field| field.to_string()).collect();
        assert_eq!(
            names,
            [
                "ino",
                "mode",
                "uid",
                "gid",
                "nlink",
                "mtime",
                "filesize",
                "devmajor",
                "devminor",
                "rdevmajor",
                "rdevminor",
                "namesize",
                "check"
            ]
        );
    }

    #[test]
    fn bad_fields_and_names_are_refused_with_the_field() {
        let good = archive(&[("a", b"hello")]);
        let mut bad_size = good.clone();
        bad_size[Field::FileSize.offset()] = b'z';
        assert_eq!(
            Archive::parse(&bad_size).unwrap_err(),
            ReadError::BadField {
                entry: 0,
                offset: 0,
                field: Field::FileSize,
                digits: *b"z0000005"
            }
        );
        let mut bad_check = good.clone();
        bad_check[Field::Check.offset()] = b'-';
        assert_eq!(
            Archive::parse(&bad_check).unwrap_err(),
            ReadError::BadField {
                entry: 0,
                offset: 0,
                field: Field::Check,
                digits: *b"-0000214"
            }
        );
        // A field the walk does not need is reported when asked for.
        let mut bad_mode = good.clone();
        bad_mode[Field::Mode.offset() + 7] = b' ';
        let entry = entries(&bad_mode).next().unwrap().unwrap();
        assert_eq!(
            entry.mode(),
            Err(ReadError::BadField {
                entry: 0,
                offset: 0,
                field: Field::Mode,
                digits: *b"000081a "
            })
        );
        assert!(!entry.is_regular_file());

        let mut unterminated = good.clone();
        unterminated[HEADER_LEN + 1] = b'x';
        assert_eq!(
            Archive::parse(&unterminated).unwrap_err(),
            ReadError::BadName {
                entry: 0,
                offset: 0
            }
        );
        let mut empty_name = good.clone();
        empty_name[Field::NameSize.offset()..][..FIELD_LEN].copy_from_slice(b"00000000");
        assert_eq!(
            Archive::parse(&empty_name).unwrap_err(),
            ReadError::BadName {
                entry: 0,
                offset: 0
            }
        );
    }

    #[test]
    fn every_field_of_every_entry_is_checked_by_the_archive() {
        let good = archive(&[("a", b"hello"), ("b", b"x")]);
        assert!(Archive::parse(&good).is_ok());
        let second = entries(&good).nth(1).unwrap().unwrap().offset;
        for (entry, start) in [(0, 0), (1, second)] {
            for field in Field::ALL {
                for position in 0..FIELD_LEN {
                    for bad in [b'g', b'G', b'/', b':', b'@', b'`', b' ', 0, 0x80, 0xff] {
                        let mut bytes = good.clone();
                        bytes[start + field.offset() + position] = bad;
                        let error = Archive::parse(&bytes).unwrap_err();
                        assert!(
                            matches!(error, ReadError::BadField { entry: e, field: f, .. } if e == entry && f == field),
                            "{field} {position} {bad:#x}: {error:?}"
                        );
                    }
                }
            }
        }
        let mut directory = good.clone();
        directory[Field::Mode.offset()..][..FIELD_LEN].copy_from_slice(b"000041ed");
        assert_eq!(
            Archive::parse(&directory).unwrap_err(),
            ReadError::NotAFile {
                entry: "a",
                mode: 0o40755
            }
        );
        for word in [*b"0123abcd", *b"ABCDEF98", *b"ffffffff"] {
            assert!(all_hex(u64::from_le_bytes(word)));
        }
    }

    #[test]
    fn zero_padding_after_the_trailer_is_allowed_but_nothing_else() {
        let mut bytes = archive(&[("a", b"hello")]);
        let end = bytes.len();
        fn walked(bytes: &[u8]) -> Result<(), ReadError<'_>> {
            let mut walk = entries(bytes);
            assert_eq!(walk.by_ref().count(), 1);
            walk.check_padding()
        }
        assert_eq!(walked(&bytes), Ok(()));
        bytes.resize(512, 0);
        assert_eq!(walked(&bytes), Ok(()));
        bytes[end + 3] = 1;
        assert_eq!(
            walked(&bytes),
            Err(ReadError::DataAfterTrailer { offset: end + 3 })
        );
        // The checked archive ignores what follows the trailer.
        assert!(Archive::parse(&bytes).is_ok());
        assert_eq!(entries(&bytes).check_padding(), Err(ReadError::NoTrailer));
    }

    #[test]
    fn errors_read_well() {
        assert_eq!(
            ReadError::BadField {
                entry: 3,
                offset: 0x74,
                field: Field::FileSize,
                digits: *b"00zz\x1b000"
            }
            .to_string(),
            "entry 3 at offset 0x74: field filesize: \"00zz\\x1b000\" is not 8 hex digits; \
             rebuild the package with `tessera package`"
        );
        assert_eq!(
            ReadError::TooLarge {
                entry: 1,
                offset: 0x88,
                field: Field::NameSize,
                value: 0xffff_ffff
            }
            .to_string(),
            "entry 1 at offset 0x88: field namesize: 0xffffffff bytes run past the end of the \
             archive; rebuild the package with `tessera package`"
        );
        assert_eq!(
            ReadError::NoTrailer.to_string(),
            "the archive ends without TRAILER!!!; rebuild the package with `tessera package`"
        );
        assert_eq!(
            ReadError::Checksum {
                entry: "vm/a\n/image",
                expected: 0x16b,
                actual: 0x18b
            }
            .to_string(),
            "vm/a\\x0a/image: field check: 0x0000016b in its header, but its data sums to \
             0x0000018b; rebuild the package with `tessera package`"
        );
    }
}
