//! The arm64 Linux `Image` header check. Boot loaders (QEMU `-kernel`,
//! U-Boot `booti`, the Pi firmware) only treat a flat binary as a kernel,
//! and enter it at EL2 with a device tree in x0, when this header is right;
//! otherwise they quietly boot it some other way. So a bad header is caught
//! here, before anything is run. Layout: Linux
//! `Documentation/arch/arm64/booting.rst`.

use std::fmt;

// The header layout, for this check and for the guest images the system
// configuration names (`system::guest_image`).

/// Bytes 0x38..0x3c of the header.
pub(crate) const MAGIC: [u8; 4] = *b"ARM\x64";
pub(crate) const MAGIC_OFFSET: usize = 0x38;
/// Little-endian u64 fields.
pub(crate) const TEXT_OFFSET_OFFSET: usize = 0x08;
pub(crate) const IMAGE_SIZE_OFFSET: usize = 0x10;
pub(crate) const HEADER_LEN: usize = 0x40;
/// What an image that was not converted to a flat binary starts with.
pub(crate) const ELF_MAGIC: [u8; 4] = *b"\x7fELF";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    /// Where, above a 2 MiB boundary, the image wants to be loaded.
    pub text_offset: u64,
    /// How much memory the image needs from its load address, .bss included.
    pub image_size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageError {
    TooShort { len: usize },
    IsElf,
    BadMagic { found: [u8; 4] },
    ZeroImageSize,
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::TooShort { len } => write!(
                f,
                "is {len} bytes long, shorter than the {HEADER_LEN}-byte arm64 Image header"
            ),
            ImageError::IsElf => write!(
                f,
                "is an ELF file, not a flat arm64 Image (was objcopy -O binary skipped?)"
            ),
            ImageError::BadMagic { found } => write!(
                f,
                "has no arm64 Image magic at offset {MAGIC_OFFSET:#x}: expected \
                 41 52 4d 64 (\"ARM\\x64\"), found {:02x} {:02x} {:02x} {:02x}; \
                 the hypervisor's entry code must start with the Image header",
                found[0], found[1], found[2], found[3]
            ),
            ImageError::ZeroImageSize => write!(
                f,
                "has image_size 0 at offset {IMAGE_SIZE_OFFSET:#x}; boot loaders \
                 would not know how much memory it needs"
            ),
        }
    }
}

impl std::error::Error for ImageError {}

pub fn check_arm64_image(bytes: &[u8]) -> Result<ImageHeader, ImageError> {
    if bytes.starts_with(&ELF_MAGIC) {
        return Err(ImageError::IsElf);
    }
    if bytes.len() < HEADER_LEN {
        return Err(ImageError::TooShort { len: bytes.len() });
    }
    let found: [u8; 4] = bytes[MAGIC_OFFSET..MAGIC_OFFSET + 4]
        .try_into()
        .expect("slice of 4 bytes");
    if found != MAGIC {
        return Err(ImageError::BadMagic { found });
    }
    let header = ImageHeader {
        text_offset: read_u64_le(bytes, TEXT_OFFSET_OFFSET),
        image_size: read_u64_le(bytes, IMAGE_SIZE_OFFSET),
    };
    if header.image_size == 0 {
        return Err(ImageError::ZeroImageSize);
    }
    Ok(header)
}

/// The header's u64 field at `offset`; `bytes` holds the whole header.
pub(crate) fn read_u64_le(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(
        bytes[offset..offset + 8]
            .try_into()
            .expect("slice of 8 bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text_offset: u64, image_size: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; 4096];
        bytes[TEXT_OFFSET_OFFSET..TEXT_OFFSET_OFFSET + 8]
            .copy_from_slice(&text_offset.to_le_bytes());
        bytes[IMAGE_SIZE_OFFSET..IMAGE_SIZE_OFFSET + 8].copy_from_slice(&image_size.to_le_bytes());
        bytes[MAGIC_OFFSET..MAGIC_OFFSET + 4].copy_from_slice(&[0x41, 0x52, 0x4d, 0x64]);
        bytes
    }

    #[test]
    fn accepts_a_valid_header() {
        let parsed = check_arm64_image(&header(0x8_0000, 0x12_3000)).unwrap();
        assert_eq!(
            parsed,
            ImageHeader {
                text_offset: 0x8_0000,
                image_size: 0x12_3000
            }
        );
    }

    #[test]
    fn text_offset_zero_is_fine() {
        assert!(check_arm64_image(&header(0, 4096)).is_ok());
    }

    #[test]
    fn rejects_bad_magic_and_shows_it() {
        let mut bytes = header(0, 4096);
        bytes[MAGIC_OFFSET] = 0;
        let err = check_arm64_image(&bytes).unwrap_err();
        assert_eq!(
            err,
            ImageError::BadMagic {
                found: [0, 0x52, 0x4d, 0x64]
            }
        );
        assert!(err.to_string().contains("found 00 52 4d 64"), "{err}");
    }

    #[test]
    fn rejects_zero_image_size() {
        assert_eq!(
            check_arm64_image(&header(0, 0)),
            Err(ImageError::ZeroImageSize)
        );
    }

    #[test]
    fn rejects_short_files() {
        assert_eq!(
            check_arm64_image(&[0u8; 0x3f]),
            Err(ImageError::TooShort { len: 0x3f })
        );
        assert_eq!(check_arm64_image(&[]), Err(ImageError::TooShort { len: 0 }));
    }

    #[test]
    fn recognises_an_elf_given_by_mistake() {
        let mut bytes = header(0, 4096);
        bytes[..4].copy_from_slice(b"\x7fELF");
        assert_eq!(check_arm64_image(&bytes), Err(ImageError::IsElf));
    }
}
