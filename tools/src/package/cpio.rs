//! cpio archives in the `070702` format ("newc" with a per-file checksum),
//! the container of a system package: a writer, and a reader that checks
//! the structure so the checksums can be verified. The header layout and
//! the entry reader are `tessera_package::cpio`, shared with the
//! hypervisor, so that what the tool writes and checks is what the
//! hypervisor reads.

use tessera_package::cpio::{self, Field, REGULAR_FILE_MODE, align4, encode_header};
pub use tessera_package::cpio::{Entry, ReadError, TRAILER, checksum};

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
        self.out
            .extend_from_slice(&encode_header(|field| match field {
                Field::Ino => ino,
                Field::Mode => mode,
                Field::Nlink => 1,
                Field::FileSize => size,
                Field::NameSize => name_size,
                Field::Check => checksum(data),
                // Owners, time and devices.
                _ => 0,
            }));
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.out.resize(align4(self.out.len()), 0);
        self.out.extend_from_slice(data);
        self.out.resize(align4(self.out.len()), 0);
    }
}

/// The files of `archive` in order, the trailer left out, every header
/// field checked (the hypervisor's reader parses only those it uses) and
/// nothing but zero padding after the trailer. Checksums are not verified
/// here, so a listing can show which entries are wrong.
pub fn read(archive: &[u8]) -> Result<Vec<Entry<'_>>, ReadError<'_>> {
    let mut walk = cpio::entries(archive);
    let mut entries = Vec::new();
    for entry in &mut walk {
        let entry = entry?;
        for field in Field::ALL {
            entry.field(field)?;
        }
        entries.push(entry);
    }
    walk.check_padding()?;
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use tessera_package::cpio::{HEADER_LEN, MAGIC};

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
    fn the_archives_other_crates_tests_build_are_what_the_writer_writes() {
        let files: &[(&str, &[u8])] = &[("a", b"hello"), ("dir/b", &[]), ("c", &[0xff; 7])];
        assert_eq!(
            tessera_package::test_support::archive(files),
            archive(files)
        );
        assert_eq!(tessera_package::test_support::archive(&[]), archive(&[]));
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
        assert_eq!(
            read(b"not cpio"),
            Err(ReadError::BadMagic {
                entry: 0,
                offset: 0
            })
        );
        assert_eq!(read(&[]), Err(ReadError::NoTrailer));

        let without_trailer = &good[..good.len() - 124];
        assert_eq!(read(without_trailer), Err(ReadError::NoTrailer));

        assert_eq!(
            read(&good[..50]),
            Err(ReadError::Truncated {
                entry: 0,
                offset: 0
            })
        );
        assert_eq!(
            read(&good[..111]),
            Err(ReadError::TooLarge {
                entry: 0,
                offset: 0,
                field: Field::NameSize,
                value: 2
            })
        );

        let mut bad_field = good.clone();
        bad_field[6 + 6 * 8] = b'z';
        assert_eq!(
            read(&bad_field),
            Err(ReadError::BadField {
                entry: 0,
                offset: 0,
                field: Field::FileSize,
                digits: *b"z0000005"
            })
        );

        // Every field is checked, also those the hypervisor does not read.
        let mut bad_mode = good.clone();
        bad_mode[6 + 8] = b'g';
        assert_eq!(
            read(&bad_mode),
            Err(ReadError::BadField {
                entry: 0,
                offset: 0,
                field: Field::Mode,
                digits: *b"g00081a4"
            })
        );

        let mut unterminated = good.clone();
        unterminated[HEADER_LEN + 1] = b'x';
        assert_eq!(
            read(&unterminated),
            Err(ReadError::BadName {
                entry: 0,
                offset: 0
            })
        );
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
}
