//! `tessera inspect`: lists a package's entries and verifies what the
//! hypervisor will verify (magic, checksums, the manifest) before a boot
//! is spent finding out.

use std::collections::BTreeSet;

use super::cpio;
use super::manifest::MANIFEST_ENTRY;
use crate::escape::{escape, escaped};

/// What `inspect` found: a listing to print, and every problem. Entry names
/// and everything else read from the package are escaped (`crate::escape`),
/// so a crafted package cannot print a line of its own.
#[derive(Debug, Default)]
pub struct Inspection {
    pub listing: Vec<String>,
    pub problems: Vec<String>,
}

pub fn inspect(bytes: &[u8]) -> Inspection {
    let mut inspection = Inspection::default();
    let entries = match cpio::read(bytes) {
        Ok(entries) => entries,
        Err(err) => {
            inspection.problems.push(escape(&err.to_string()));
            return inspection;
        }
    };

    inspection.listing.push(format!(
        "{:>10}  {:>10}  {:>10}  name",
        "offset", "size", "checksum"
    ));
    for entry in &entries {
        inspection.listing.push(format!(
            "{:#10x}  {:>10}  {:#010x}  {}{}",
            entry.offset,
            entry.data.len(),
            // `cpio::read` has checked every field.
            entry.stored_checksum().unwrap_or_default(),
            escaped(entry.name),
            if entry.checksum_ok() {
                ""
            } else {
                "  (BAD CHECKSUM)"
            }
        ));
    }

    let mut seen = BTreeSet::new();
    for entry in &entries {
        if let Err(err) = entry.verify_checksum() {
            inspection.problems.push(escape(&err.to_string()));
        }
        if let Ok(mode) = entry.mode()
            && !entry.is_regular_file()
        {
            inspection.problems.push(format!(
                "{}: mode {mode:#o} is not a regular file",
                escaped(entry.name)
            ));
        }
        if !seen.insert(entry.name) {
            inspection
                .problems
                .push(format!("{}: appears more than once", escaped(entry.name)));
        }
    }
    if entries.first().map(|entry| entry.name) != Some(MANIFEST_ENTRY) {
        inspection
            .problems
            .push(format!("the first entry is not {MANIFEST_ENTRY}"));
    }
    // Each VM has an image and a device tree.
    for name in &seen {
        let partner = if let Some(vm) = name.strip_suffix("/image") {
            format!("{vm}/guest.dtb")
        } else if let Some(vm) = name.strip_suffix("/guest.dtb") {
            format!("{vm}/image")
        } else {
            continue;
        };
        if !seen.contains(partner.as_str()) {
            inspection.problems.push(format!(
                "{} has no {} beside it",
                escaped(name),
                escape(&partner)
            ));
        }
    }
    inspection
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut writer = cpio::Writer::new();
        for (name, data) in files {
            writer.add_file(name, data).unwrap();
        }
        writer.finish()
    }

    #[test]
    fn lists_every_entry() {
        let bytes = package(&[
            (MANIFEST_ENTRY, b"m"),
            ("vm/a/image", b"abc"),
            ("vm/a/guest.dtb", b"d"),
        ]);
        let inspection = inspect(&bytes);
        assert!(inspection.problems.is_empty(), "{:?}", inspection.problems);
        assert_eq!(
            inspection.listing,
            [
                "    offset        size    checksum  name",
                "       0x0           1  0x0000006d  tessera/manifest.dtb",
                "      0x88           3  0x00000126  vm/a/image",
                "     0x108           1  0x00000064  vm/a/guest.dtb",
            ]
        );
    }

    #[test]
    fn a_crafted_entry_name_is_escaped_in_the_listing_and_the_problems() {
        let name = "vm/a\n/tmp/p.cpio: OK\x1b[2K/image";
        let bytes = package(&[(MANIFEST_ENTRY, b"m"), (name, b"abc")]);
        let inspection = inspect(&bytes);
        let escaped = "vm/a\\x0a/tmp/p.cpio: OK\\x1b[2K/image";
        assert!(inspection.listing[2].ends_with(&format!("  {escaped}")));
        assert_eq!(
            inspection.problems,
            [format!(
                "{escaped} has no vm/a\\x0a/tmp/p.cpio: OK\\x1b[2K/guest.dtb beside it"
            )]
        );
        for line in inspection.listing.iter().chain(&inspection.problems) {
            assert!(
                line.bytes().all(|byte| (0x20..=0x7E).contains(&byte)),
                "{line:?}"
            );
        }
    }

    #[test]
    fn structural_problems() {
        let bytes = package(&[("vm/a/image", b"abc"), ("vm/a/image", b"abc")]);
        assert_eq!(
            inspect(&bytes).problems,
            [
                "vm/a/image: appears more than once",
                "the first entry is not tessera/manifest.dtb",
                "vm/a/image has no vm/a/guest.dtb beside it",
            ]
        );
        assert_eq!(
            inspect(b"hello").problems,
            ["no \"070702\" cpio header at offset 0x0 (not a package, or corrupted)"]
        );
    }
}
