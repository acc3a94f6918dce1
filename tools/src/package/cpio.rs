//! cpio archives in the `070702` format ("newc" with a per-file checksum),
//! the container of a system package: a writer, and a reader that checks
//! the structure so the checksums can be verified. Layout: a 110-byte ASCII
//! header (magic and 13 fields of 8 hex digits), the NUL-terminated name,
//! padding to 4 bytes, the data, padding to 4 bytes; `TRAILER!!!` ends it.

use std::fmt;

pub const MAGIC: &[u8; 6] = b"070702";
pub const TRAILER: &str = "TRAILER!!!";
/// A regular file, rw-r--r--.
pub const REGULAR_FILE_MODE: u32 = 0o100644;
const FILE_TYPE_MASK: u32 = 0o170000;
const REGULAR_FILE_TYPE: u32 = 0o100000;

const HEADER_LEN: usize = MAGIC.len() + FIELDS.len() * 8;
const FIELDS: [&str; 13] = [
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
    "check",
];
const MODE: usize = 1;
const FILESIZE: usize = 6;
const NAMESIZE: usize = 11;
const CHECK: usize = 12;

/// The `070702` checksum: the wrapping 32-bit sum of the bytes.
pub fn checksum(data: &[u8]) -> u32 {
    data.iter()
        .fold(0u32, |sum, byte| sum.wrapping_add(u32::from(*byte)))
}

fn align4(value: usize) -> usize {
    value.div_ceil(4) * 4
}

/// Builds an archive of regular files in the order they are added. Every
/// owner, time and device field is 0 so the same input always gives the
/// same bytes.
#[derive(Debug, Default)]
pub struct Writer {
    out: Vec<u8>,
    files: u32,
}

impl Writer {
    pub fn new() -> Self {
        Writer::default()
    }

    pub fn add_file(&mut self, name: &str, data: &[u8]) -> Result<(), String> {
        if name.is_empty() || name.contains('\0') || name == TRAILER {
            return Err(format!("{name:?} cannot be a cpio entry name"));
        }
        let size = u32::try_from(data.len())
            .map_err(|_| format!("{name} is {} bytes; cpio entries end at 4 GiB", data.len()))?;
        self.files += 1;
        self.entry(self.files, REGULAR_FILE_MODE, name, data, size);
        Ok(())
    }

    /// The archive, with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry(0, 0, TRAILER, &[], 0);
        self.out
    }

    fn entry(&mut self, ino: u32, mode: u32, name: &str, data: &[u8], size: u32) {
        // Names are short; the length fits easily.
        let name_size = name.len() as u32 + 1;
        let fields = [
            ino,
            mode,
            0,
            0,
            1,
            0,
            size,
            0,
            0,
            0,
            0,
            name_size,
            checksum(data),
        ];
        self.out.extend_from_slice(MAGIC);
        for field in fields {
            self.out
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.out.resize(align4(self.out.len()), 0);
        self.out.extend_from_slice(data);
        self.out.resize(align4(self.out.len()), 0);
    }
}

/// One file of an archive as read, before its checksum is verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Of its header, from the start of the archive.
    pub offset: usize,
    pub name: &'a str,
    pub mode: u32,
    pub data: &'a [u8],
    /// The header's `check` field.
    pub stored_checksum: u32,
}

impl Entry<'_> {
    pub fn checksum_ok(&self) -> bool {
        checksum(self.data) == self.stored_checksum
    }

    pub fn is_regular_file(&self) -> bool {
        self.mode & FILE_TYPE_MASK == REGULAR_FILE_TYPE
    }
}

/// Why an archive could not be read. Offsets are of the entry's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadError {
    BadMagic {
        offset: usize,
    },
    BadField {
        offset: usize,
        field: &'static str,
    },
    Truncated {
        offset: usize,
    },
    BadName {
        offset: usize,
    },
    NoTrailer,
    /// Something other than zero padding after the trailer.
    DataAfterTrailer {
        offset: usize,
    },
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::BadMagic { offset } => write!(
                f,
                "no \"070702\" cpio header at offset {offset:#x} (not a package, or corrupted)"
            ),
            ReadError::BadField { offset, field } => write!(
                f,
                "header at offset {offset:#x}: field {field} is not 8 hex digits"
            ),
            ReadError::Truncated { offset } => {
                write!(
                    f,
                    "entry at offset {offset:#x} runs past the end of the archive"
                )
            }
            ReadError::BadName { offset } => write!(
                f,
                "entry at offset {offset:#x}: its name is not NUL-terminated UTF-8"
            ),
            ReadError::NoTrailer => write!(f, "the archive ends without {TRAILER}"),
            ReadError::DataAfterTrailer { offset } => {
                write!(f, "data after {TRAILER}, at offset {offset:#x}")
            }
        }
    }
}

impl std::error::Error for ReadError {}

/// The files of `archive` in order, the trailer left out. Checksums are
/// not verified here, so a listing can show which entries are wrong.
pub fn read(archive: &[u8]) -> Result<Vec<Entry<'_>>, ReadError> {
    let mut entries = Vec::new();
    let mut offset = 0;
    loop {
        if offset >= archive.len() {
            return Err(ReadError::NoTrailer);
        }
        let (entry, next) = read_entry(archive, offset)?;
        if entry.name == TRAILER {
            // Archivers pad the end to a block size with zeros.
            if let Some(extra) = archive[next.min(archive.len())..]
                .iter()
                .position(|byte| *byte != 0)
            {
                return Err(ReadError::DataAfterTrailer {
                    offset: next + extra,
                });
            }
            return Ok(entries);
        }
        entries.push(entry);
        offset = next;
    }
}

/// The entry at `offset` and the offset of the next header.
fn read_entry(archive: &[u8], offset: usize) -> Result<(Entry<'_>, usize), ReadError> {
    if archive.get(offset..offset + MAGIC.len()) != Some(MAGIC.as_slice()) {
        return Err(ReadError::BadMagic { offset });
    }
    let truncated = ReadError::Truncated { offset };
    let header = archive
        .get(offset..offset + HEADER_LEN)
        .ok_or(truncated.clone())?;
    let field = |index: usize| -> Result<u32, ReadError> {
        let start = MAGIC.len() + index * 8;
        let text = &header[start..start + 8];
        std::str::from_utf8(text)
            .ok()
            .filter(|text| text.bytes().all(|byte| byte.is_ascii_hexdigit()))
            .and_then(|text| u32::from_str_radix(text, 16).ok())
            .ok_or(ReadError::BadField {
                offset,
                field: FIELDS[index],
            })
    };
    for index in 0..FIELDS.len() {
        field(index)?;
    }
    let mode = field(MODE)?;
    let file_size = field(FILESIZE)? as usize;
    let name_size = field(NAMESIZE)? as usize;
    let stored_checksum = field(CHECK)?;

    let name_start = offset + HEADER_LEN;
    let name_bytes = archive
        .get(name_start..name_start + name_size)
        .ok_or(truncated.clone())?;
    let name = name_bytes
        .split_last()
        .filter(|(last, _)| **last == 0)
        .and_then(|(_, name)| std::str::from_utf8(name).ok())
        .ok_or(ReadError::BadName { offset })?;
    let data_start = align4(name_start + name_size);
    let data = archive
        .get(data_start..data_start + file_size)
        .ok_or(truncated)?;
    let entry = Entry {
        offset,
        name,
        mode,
        data,
        stored_checksum,
    };
    Ok((entry, align4(data_start + file_size)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut writer = Writer::new();
        for (name, data) in files {
            writer.add_file(name, data).unwrap();
        }
        writer.finish()
    }

    #[test]
    fn round_trip() {
        let bytes = archive(&[("a", b"hello"), ("dir/b", &[]), ("c", &[0xff; 7])]);
        let entries = read(&bytes).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name).collect();
        assert_eq!(names, ["a", "dir/b", "c"]);
        assert_eq!(entries[0].data, b"hello");
        assert_eq!(entries[1].data, b"");
        assert_eq!(entries[2].data, [0xff; 7]);
        assert!(entries.iter().all(Entry::checksum_ok));
        assert!(entries.iter().all(Entry::is_regular_file));
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn header_layout_is_newc_with_checksum() {
        let bytes = archive(&[("ab", b"xyz")]);
        let header = std::str::from_utf8(&bytes[..HEADER_LEN]).unwrap();
        assert_eq!(
            header,
            "070702\
             00000001000081a4000000000000000000000001000000000000000300000000\
             000000000000000000000000000000030000016b"
        );
        // The 110-byte header plus "ab\0" is padded to 116; then the data.
        assert_eq!(&bytes[HEADER_LEN..HEADER_LEN + 6], b"ab\0\0\0\0");
        assert_eq!(&bytes[116..120], b"xyz\0");
        assert_eq!(&bytes[120..126], MAGIC);
        assert_eq!(checksum(b"xyz"), 0x16b);
    }

    #[test]
    fn checksums_wrap() {
        assert_eq!(checksum(&[]), 0);
        let big = vec![0xffu8; (u32::MAX / 0xff) as usize + 2];
        assert_eq!(checksum(&big), 0x1fd);
    }

    #[test]
    fn a_changed_byte_fails_its_checksum_only() {
        let mut bytes = archive(&[("a", b"hello"), ("b", b"world")]);
        let position = bytes.windows(5).position(|w| w == b"world").unwrap();
        bytes[position] = b'W';
        let entries = read(&bytes).unwrap();
        assert!(entries[0].checksum_ok());
        assert!(!entries[1].checksum_ok());
    }

    #[test]
    fn broken_archives_are_refused_with_the_offset() {
        let good = archive(&[("a", b"hello")]);
        assert_eq!(read(b"not cpio"), Err(ReadError::BadMagic { offset: 0 }));
        assert_eq!(read(&[]), Err(ReadError::NoTrailer));

        let without_trailer = &good[..good.len() - 124];
        assert_eq!(read(without_trailer), Err(ReadError::NoTrailer));

        assert_eq!(read(&good[..50]), Err(ReadError::Truncated { offset: 0 }));
        assert_eq!(read(&good[..114]), Err(ReadError::Truncated { offset: 0 }));

        let mut bad_field = good.clone();
        bad_field[6 + 6 * 8] = b'z';
        assert_eq!(
            read(&bad_field),
            Err(ReadError::BadField {
                offset: 0,
                field: "filesize"
            })
        );

        let mut unterminated = good.clone();
        unterminated[HEADER_LEN + 1] = b'x';
        assert_eq!(read(&unterminated), Err(ReadError::BadName { offset: 0 }));
    }

    #[test]
    fn zero_padding_after_the_trailer_is_allowed_but_nothing_else() {
        let mut bytes = archive(&[("a", b"hello")]);
        let end = bytes.len();
        bytes.resize(512, 0);
        assert_eq!(read(&bytes).unwrap().len(), 1);
        bytes[end + 3] = 1;
        assert_eq!(
            read(&bytes),
            Err(ReadError::DataAfterTrailer { offset: end + 3 })
        );
    }

    #[test]
    fn unusable_names_are_refused() {
        let mut writer = Writer::new();
        assert!(writer.add_file("", b"").is_err());
        assert!(writer.add_file("a\0b", b"").is_err());
        assert!(writer.add_file(TRAILER, b"").is_err());
    }

    #[test]
    fn errors_read_well() {
        assert_eq!(
            ReadError::BadField {
                offset: 0x74,
                field: "check"
            }
            .to_string(),
            "header at offset 0x74: field check is not 8 hex digits"
        );
        assert_eq!(
            ReadError::NoTrailer.to_string(),
            "the archive ends without TRAILER!!!"
        );
    }
}
