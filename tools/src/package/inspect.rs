//! `tessera inspect`: lists a package's entries and verifies what the
//! hypervisor will verify (magic, checksums, the manifest) before a boot
//! is spent finding out. The manifest is read and checked by the
//! hypervisor's own code (`tessera_hypervisor::boot::manifest`, which
//! applies `tessera_package::rules`), so the verdict on a package is the
//! hypervisor's.

use std::collections::BTreeSet;

use tessera_hypervisor::boot::manifest::{self, SystemManifest, VmManifest};
use tessera_package::cpio::Archive;
use tessera_package::rules::{self, Address, Delay, Size};

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
        // The reader's messages escape what they quote from the package.
        Err(err) => {
            inspection.problems.push(err.to_string());
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
            inspection.problems.push(err.to_string());
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
    if let Some(entry) = entries.iter().find(|entry| entry.name == MANIFEST_ENTRY) {
        check_manifest(bytes, &entries, entry.data, &mut inspection);
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

/// Reads the manifest as the hypervisor does, lists the system, and adds
/// the hypervisor's refusal, if any, to the problems. The machine is the
/// one the package was built for: its board and GIC version, and as many
/// CPUs as that board may have.
fn check_manifest(
    archive: &[u8],
    entries: &[cpio::Entry<'_>],
    blob: &[u8],
    inspection: &mut Inspection,
) {
    // Messages of the hypervisor's errors are escaped already.
    let system = match manifest::parse(blob) {
        Ok(system) => system,
        Err(error) => {
            inspection.problems.push(error.to_string());
            return;
        }
    };
    list_system(&system, entries, inspection);
    // `parse` has checked the board is one the rules know.
    let Ok(board) = rules::board(system.board) else {
        return;
    };
    let cpus = *board.cpus.end() as usize;
    let mut verdict = system.check_against_machine(board.name, system.gic_version, cpus);
    if verdict.is_ok()
        && let Ok(package) = Archive::parse(archive)
    {
        verdict = system.check_package(&package);
    }
    if let Err(error) = verdict {
        inspection.problems.push(error.to_string());
    }
}

fn list_system(
    system: &SystemManifest<'_>,
    entries: &[cpio::Entry<'_>],
    inspection: &mut Inspection,
) {
    let cpus: usize = system.vms().map(|vm| vm.physical_cpus().len()).sum();
    inspection.listing.push(format!(
        "system: board {}, GICv{}, {} VM(s) on {cpus} CPU(s)",
        escaped(system.board),
        system.gic_version,
        system.vm_count()
    ));
    list_shmem_system(system, inspection);
    let image_size = |name: &str| {
        entries
            .iter()
            .find(|entry| entry.name == name)
            .map(|entry| entry.data.len() as u64)
    };
    for (index, vm) in system.vms().enumerate() {
        let image = image_size(vm.image)
            .map_or_else(|| "missing".to_string(), |size| Size(size).to_string());
        inspection.listing.push(format!(
            "vm[{index}] {}: RAM {} at {}, CPUs {:?}, image {} at offset {}",
            escaped(vm.name),
            Size(vm.ram_size),
            Address(vm.ram_base),
            vm.physical_cpus(),
            image,
            rules::Hex(vm.image_load_offset)
        ));
        if vm.start_delay_us > 0 {
            inspection.listing.push(format!(
                "vm[{index}] {}: starts {} after the VMs are started",
                escaped(vm.name),
                Delay(vm.start_delay_us)
            ));
        }
        list_shmem_devices(index, vm, inspection);
        if vm.passthrough_ranges().len() == 0 && vm.passthrough_spis().len() == 0 {
            continue;
        }
        let mut given: Vec<String> = vm
            .passthrough_ranges()
            .map(|(base, size)| format!("{}..{}", Address(base), Address(base + size)))
            .collect();
        given.extend(
            vm.passthrough_spis()
                .map(|spi| format!("SPI {spi} (INTID {})", spi + 32)),
        );
        inspection.listing.push(format!(
            "vm[{index}] {}: passthrough {}",
            escaped(vm.name),
            given.join(", ")
        ));
    }
}

/// A VM's vdev-shmem instances, one line each, with its rules in the
/// order the model checks them.
fn list_shmem_devices(index: usize, vm: &VmManifest<'_>, inspection: &mut Inspection) {
    for (number, device) in vm.shmem_devices().enumerate() {
        let rules: Vec<String> = vm
            .shmem_rules()
            .filter(|rule| rule.instance == number)
            .map(|rule| {
                let kind = if rule.allow { "allow" } else { "deny" };
                format!("{kind} {}", escaped(&String::from_utf8_lossy(rule.pattern)))
            })
            .collect();
        let rules = if rules.is_empty() {
            "every name".to_string()
        } else {
            rules.join(", ")
        };
        inspection.listing.push(format!(
            "vm[{index}] {}: vdev-shmem[{number}] factory {}, INTID {}, window {}..{}, names: {rules}",
            escaped(vm.name),
            Address(device.loc),
            device.intid,
            Address(device.window_base),
            Address(device.window_base.saturating_add(device.window_size)),
        ));
    }
}

/// The system's shared memory, for a system with any: the page limit and
/// the boot regions.
fn list_shmem_system(system: &SystemManifest<'_>, inspection: &mut Inspection) {
    let instances: usize = system.vms().map(|vm| vm.shmem_devices().len()).sum();
    let regions: Vec<String> = system
        .shmem_regions()
        .map(|(name, pages)| {
            format!(
                "{} ({})",
                escaped(&String::from_utf8_lossy(name)),
                Size(pages * rules::SHMEM_PAGE)
            )
        })
        .collect();
    if instances == 0 && regions.is_empty() {
        return;
    }
    let regions = if regions.is_empty() {
        "none".to_string()
    } else {
        regions.join(", ")
    };
    inspection.listing.push(format!(
        "shmem: {instances} vdev-shmem instance(s), page limit {} ({}), boot regions {regions}",
        system.shmem_page_limit,
        Size(system.shmem_page_limit.saturating_mul(rules::SHMEM_PAGE))
    ));
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

    /// A manifest of VMs with these names, each on the CPU of its index
    /// plus `first_cpu`, as `tessera package` writes it.
    pub fn manifest(names: &[&str], first_cpu: u32) -> Vec<u8> {
        let mut fdt = vm_fdt::FdtWriter::new().unwrap();
        let root = fdt.begin_node("").unwrap();
        fdt.property_string("compatible", "tessera,system").unwrap();
        fdt.property_u32("tessera,format-version", 1).unwrap();
        fdt.property_string("board", "qemu-virt").unwrap();
        fdt.property_u32("gic-version", 3).unwrap();
        let vms = fdt.begin_node("vms").unwrap();
        for (index, name) in names.iter().enumerate() {
            let node = fdt.begin_node(&format!("vm@{index}")).unwrap();
            fdt.property_string("name", name).unwrap();
            fdt.property_u64("ram-base", 0x4000_0000).unwrap();
            fdt.property_u64("ram-size", 0x400_0000).unwrap();
            fdt.property_array_u32("cpus", &[first_cpu + index as u32])
                .unwrap();
            fdt.property_string("image", &format!("vm/{name}/image"))
                .unwrap();
            fdt.property_u64("image-load-offset", 0x8_0000).unwrap();
            fdt.property_string("device-tree", &format!("vm/{name}/guest.dtb"))
                .unwrap();
            fdt.end_node(node).unwrap();
        }
        fdt.end_node(vms).unwrap();
        fdt.end_node(root).unwrap();
        fdt.finish().unwrap()
    }

    #[test]
    fn lists_every_entry_and_the_system() {
        let blob = manifest(&["a"], 1);
        let bytes = package(&[
            (MANIFEST_ENTRY, &blob),
            ("vm/a/image", b"abc"),
            ("vm/a/guest.dtb", b"d"),
        ]);
        let inspection = inspect(&bytes);
        assert!(inspection.problems.is_empty(), "{:?}", inspection.problems);
        // 110 header bytes and "tessera/manifest.dtb\0", padded to 4.
        let image_at = 0x84 + blob.len().div_ceil(4) * 4;
        assert_eq!(
            inspection.listing[0],
            "    offset        size    checksum  name"
        );
        assert!(inspection.listing[1].ends_with("  tessera/manifest.dtb"));
        assert_eq!(
            inspection.listing[2],
            format!("{image_at:#10x}           3  0x00000126  vm/a/image")
        );
        assert!(inspection.listing[3].ends_with("  0x00000064  vm/a/guest.dtb"));
        assert_eq!(
            inspection.listing[4..],
            [
                "system: board qemu-virt, GICv3, 1 VM(s) on 1 CPU(s)",
                "vm[0] a: RAM 64M at 0x4000_0000, CPUs [1], image 3 bytes at offset 0x8_0000",
            ]
        );
    }

    #[test]
    fn the_verdict_on_the_manifest_is_the_hypervisors() {
        let files = |blob: &[u8]| {
            package(&[
                (MANIFEST_ENTRY, blob),
                ("vm/a/image", b"abc"),
                ("vm/a/guest.dtb", b"d"),
                ("vm/b/image", b"abc"),
                ("vm/b/guest.dtb", b"d"),
            ])
        };
        // CPUs the board cannot have.
        let blob = manifest(&["a", "b"], 8);
        let expected = "tessera/manifest.dtb: vm[0] \"a\": field cpus: 8: CPU 8 does not exist; \
                        the board has CPUs 0 to 7; rebuild the package with `tessera package`";
        assert_eq!(inspect(&files(&blob)).problems, [expected]);
        // A name the rules refuse, printed escaped.
        let blob = manifest(&["a", "b\x1b[2K"], 0);
        let problems = inspect(&files(&blob)).problems;
        assert_eq!(
            problems[0],
            "tessera/manifest.dtb: vm[1] \"b\\x1b[2K\": field name: \"b\\x1b[2K\" is not a VM \
             name (1 to 15 of a-z, 0-9 and -, starting with a letter); rebuild the package with \
             `tessera package`"
        );
        // No VMs at all.
        let blob = manifest(&[], 0);
        assert_eq!(
            inspect(&files(&blob)).problems,
            [
                "tessera/manifest.dtb: field vms: 0: a system with no VMs; it needs at least one; \
              rebuild the package with `tessera package`"
            ]
        );
        // A missing image.
        let blob = manifest(&["a", "c"], 0);
        assert_eq!(
            inspect(&files(&blob)).problems,
            [
                "tessera/manifest.dtb: vm[1] \"c\": the package has no entry \"vm/c/image\"; \
              rebuild the package with `tessera package`"
            ]
        );
    }

    #[test]
    fn a_crafted_entry_name_is_escaped_in_the_listing_and_the_problems() {
        let name = "vm/a\n/tmp/p.cpio: OK\x1b[2K/image";
        let blob = manifest(&["a"], 1);
        let bytes = package(&[
            (MANIFEST_ENTRY, &blob),
            ("vm/a/image", b"abc"),
            ("vm/a/guest.dtb", b"d"),
            (name, b"abc"),
        ]);
        let inspection = inspect(&bytes);
        let escaped = "vm/a\\x0a/tmp/p.cpio: OK\\x1b[2K/image";
        assert!(inspection.listing[4].ends_with(&format!("  {escaped}")));
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
            [
                "entry 0 at offset 0x0: no \"070702\" cpio header (not a package, or corrupted); \
              rebuild the package with `tessera package`"
            ]
        );
    }
}
