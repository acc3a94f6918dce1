//! The image checks: a guest image is read, recognised as an arm64
//! `Image` (whose header gives the load offset and the memory it needs) or
//! taken as a raw binary, and must end below the device tree the
//! hypervisor puts in the last 64 KiB of the VM's RAM.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::image::{
    ELF_MAGIC, HEADER_LEN, IMAGE_SIZE_OFFSET, MAGIC, MAGIC_OFFSET, TEXT_OFFSET_OFFSET, read_u64_le,
};
use tessera_package::rules::{self, RuleError};

use crate::units::{address, format_size, hex};
use crate::workspace;

/// Room the hypervisor keeps at the top of each VM's RAM for its device
/// tree.
pub use tessera_package::rules::DEVICE_TREE_ROOM;

/// Where an image goes in its VM's RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageLayout {
    /// From the start of RAM: the header's `text_offset`, or 0 for a raw
    /// image.
    pub load_offset: u64,
    /// Memory it needs from its load address: the header's `image_size`
    /// (which covers .bss), or the file size.
    pub size: u64,
}

/// A checked guest image, ready to be packaged.
#[derive(Clone, Debug)]
pub struct GuestImage {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub layout: ImageLayout,
}

/// Reads `path`; the error is a reason naming the file.
pub fn read(path: &Path) -> Result<Vec<u8>, String> {
    let shown = workspace::display(path);
    if path.is_dir() {
        return Err(format!("{shown} is a directory, not an image file"));
    }
    // A device or a pipe (`/dev/zero`) could be read for ever.
    if let Ok(metadata) = std::fs::metadata(path)
        && !metadata.is_file()
    {
        return Err(format!("{shown} is not a regular file"));
    }
    std::fs::read(path).map_err(|err| match err.kind() {
        ErrorKind::NotFound => format!("{shown} does not exist"),
        ErrorKind::PermissionDenied => format!("{shown} is not readable (permission denied)"),
        _ => format!("cannot read {shown}: {err}"),
    })
}

/// Tells an arm64 Image from a raw binary and refuses what is neither.
/// `shown` names the file in the reason.
pub fn layout(bytes: &[u8], shown: &str) -> Result<ImageLayout, String> {
    if bytes.is_empty() {
        return Err(format!("{shown} is empty"));
    }
    if bytes.starts_with(&ELF_MAGIC) {
        return Err(format!(
            "{shown} is an ELF file, not a flat image (convert it with llvm-objcopy -O binary)"
        ));
    }
    let file_size = bytes.len() as u64;
    if bytes.len() < HEADER_LEN || bytes[MAGIC_OFFSET..MAGIC_OFFSET + 4] != MAGIC {
        return Ok(ImageLayout {
            load_offset: 0,
            size: file_size,
        });
    }
    let text_offset = read_u64_le(bytes, TEXT_OFFSET_OFFSET);
    let image_size = read_u64_le(bytes, IMAGE_SIZE_OFFSET);
    // Old kernels leave image_size 0, meaning "the file and a bit"; the file
    // is the best there is.
    if image_size == 0 {
        return Ok(ImageLayout {
            load_offset: text_offset,
            size: file_size,
        });
    }
    if image_size < file_size {
        return Err(format!(
            "{shown} has image_size {} in its arm64 Image header, less than its {file_size} bytes",
            hex(image_size)
        ));
    }
    Ok(ImageLayout {
        load_offset: text_offset,
        size: image_size,
    })
}

/// Checks that the image ends at or below the device tree's place,
/// `ram_base + ram - 64 KiB`. The offset and size come from the image's
/// header, so any 64-bit values: every sum is checked, and one past 2^64 is
/// reported by its parts, never wrapped.
pub fn check_fit(layout: ImageLayout, ram_base: u64, ram: u64, shown: &str) -> Result<(), String> {
    // The rule is the one the hypervisor applies (`rules::check_image_fit`);
    // the messages here name the file.
    match rules::check_image_fit(ram_base, ram, layout.load_offset, layout.size) {
        Ok(()) => Ok(()),
        Err(RuleError::RamPast2To64 { .. }) => Err(format!(
            "the VM's {} of RAM at {} ends past 2^64",
            format_size(ram),
            address(ram_base)
        )),
        Err(RuleError::ImageOverlapsDeviceTree {
            load,
            end,
            device_tree,
        }) => Err(format!(
            "{shown} ({}, loaded at {}) ends at {}, past the device tree at {} \
             (the last 64 KiB of the VM's {} of RAM); give the VM more RAM",
            format_size(layout.size),
            address(load),
            address(end),
            address(device_tree),
            format_size(ram)
        )),
        Err(_) => Err(format!(
            "{shown} ({}, load offset {}) does not fit the VM's {} of RAM at {}: it would end \
             past 2^64",
            format_size(layout.size),
            hex(layout.load_offset),
            format_size(ram),
            address(ram_base)
        )),
    }
}

/// An arm64 Image header followed by zeros up to `file_size`, as a
/// stand-in for a real guest in tests.
#[cfg(test)]
pub fn fake_image(text_offset: u64, image_size: u64, file_size: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; file_size.max(HEADER_LEN)];
    bytes[TEXT_OFFSET_OFFSET..TEXT_OFFSET_OFFSET + 8].copy_from_slice(&text_offset.to_le_bytes());
    bytes[IMAGE_SIZE_OFFSET..IMAGE_SIZE_OFFSET + 8].copy_from_slice(&image_size.to_le_bytes());
    bytes[MAGIC_OFFSET..MAGIC_OFFSET + 4].copy_from_slice(&MAGIC);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::MIB;

    #[test]
    fn an_image_header_gives_offset_and_size() {
        let bytes = fake_image(0x8_0000, 0x12_3000, 4096);
        assert_eq!(
            layout(&bytes, "g.bin"),
            Ok(ImageLayout {
                load_offset: 0x8_0000,
                size: 0x12_3000
            })
        );
    }

    #[test]
    fn image_size_zero_means_the_file_size() {
        let bytes = fake_image(0x8_0000, 0, 8192);
        assert_eq!(
            layout(&bytes, "g.bin"),
            Ok(ImageLayout {
                load_offset: 0x8_0000,
                size: 8192
            })
        );
    }

    #[test]
    fn anything_else_is_raw() {
        assert_eq!(
            layout(b"\x00\x00\x00\x14 raw code", "g.bin"),
            Ok(ImageLayout {
                load_offset: 0,
                size: 13
            })
        );
        let mut bytes = fake_image(0x8_0000, 0, 4096);
        bytes[MAGIC_OFFSET] = b'X';
        assert_eq!(layout(&bytes, "g.bin").unwrap().load_offset, 0);
    }

    #[test]
    fn invalid_images() {
        assert_eq!(layout(b"", "g.bin"), Err("g.bin is empty".into()));
        assert_eq!(
            layout(b"\x7fELF\x02\x01\x01", "g.bin"),
            Err(
                "g.bin is an ELF file, not a flat image (convert it with llvm-objcopy -O binary)"
                    .into()
            )
        );
        assert_eq!(
            layout(&fake_image(0, 0x100, 4096), "g.bin"),
            Err(
                "g.bin has image_size 0x100 in its arm64 Image header, less than its 4096 bytes"
                    .into()
            )
        );
    }

    #[test]
    fn an_image_may_end_exactly_at_the_device_tree() {
        let fits = ImageLayout {
            load_offset: 0x8_0000,
            size: 6 * MIB - DEVICE_TREE_ROOM - 0x8_0000,
        };
        assert_eq!(check_fit(fits, 0x4000_0000, 6 * MIB, "g.bin"), Ok(()));
        let too_big = ImageLayout {
            size: fits.size + 1,
            ..fits
        };
        assert_eq!(
            check_fit(too_big, 0x4000_0000, 6 * MIB, "g.bin"),
            Err("g.bin (5701633 bytes, loaded at 0x4008_0000) ends at 0x405f_0001, past the \
                 device tree at 0x405f_0000 (the last 64 KiB of the VM's 6M of RAM); give the VM more RAM"
                .into())
        );
    }

    #[test]
    fn offsets_and_sizes_past_2_pow_64_are_reported_not_wrapped() {
        let far = ImageLayout {
            load_offset: u64::MAX - 0xFFF,
            size: 0x1000,
        };
        assert_eq!(
            check_fit(far, 0x4000_0000, 6 * MIB, "g.bin"),
            Err(
                "g.bin (4K, load offset 0xffff_ffff_ffff_f000) does not fit the VM's 6M of RAM \
                 at 0x4000_0000: it would end past 2^64"
                    .into()
            )
        );
        let huge = ImageLayout {
            load_offset: 0x8_0000,
            size: u64::MAX,
        };
        assert_eq!(
            check_fit(huge, 0x4000_0000, 6 * MIB, "g.bin"),
            Err(
                "g.bin (18446744073709551615 bytes, load offset 0x8_0000) does not fit the VM's \
                 6M of RAM at 0x4000_0000: it would end past 2^64"
                    .into()
            )
        );
        assert_eq!(
            check_fit(far, u64::MAX - MIB - 1, 2 * MIB, "g.bin"),
            Err("the VM's 2M of RAM at 0xffff_ffff_ffef_fffe ends past 2^64".into())
        );
    }

    #[test]
    fn a_device_is_not_an_image_file() {
        assert_eq!(
            read(Path::new("/dev/zero")),
            Err("/dev/zero is not a regular file".into())
        );
    }

    #[test]
    fn read_errors_name_the_file() {
        let missing = std::env::temp_dir().join("tessera-no-such-image.bin");
        assert_eq!(
            read(&missing),
            Err(format!("{} does not exist", missing.display()))
        );
        let dir = std::env::temp_dir();
        assert_eq!(
            read(&dir),
            Err(format!(
                "{} is a directory, not an image file",
                dir.display()
            ))
        );
    }
}
