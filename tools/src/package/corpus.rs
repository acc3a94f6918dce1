//! A corpus of corrupted packages, made from a good one, and the named
//! corruptions `tessera test` boots (a scenario's `corrupt` key,
//! tests/README.md).
//!
//! The model ([`System`]) is a manifest with every property replaceable as
//! raw bytes, written the way `tessera package` writes it; a good package's
//! manifest reads back into it, so a corruption of the manifest is a change
//! to the model, written back with the checksums recomputed.
//!
//! The host tests build the corpus: every header field of every entry
//! flipped to a non-hex digit and set to an impossible value, the package
//! cut short at many points, each manifest rule broken once (with the
//! checksums recomputed), no VMs, a name with control characters. For each,
//! the hypervisor's checks (the same library calls `load_system` makes,
//! plus the image check its VM builder makes) refuse it with a message
//! naming the entry and field, and `inspect` refuses it too, with the same
//! message where the manifest is at fault. The named corruptions are cases
//! of that corpus, checked there too, which the end-to-end scenarios then
//! boot on each machine.

use tessera_hypervisor::boot::manifest;
use tessera_package::cpio::{FIELD_LEN, Field};
use vm_fdt::FdtWriter;

use super::cpio::{self, Writer};

/// One VM of a manifest, each property replaceable.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Vm {
    name: Vec<u8>,
    ram_base: u64,
    ram_size: u64,
    cpus: Vec<u32>,
    /// Package entry names.
    image: String,
    load_offset: u64,
    device_tree: String,
}

/// A system as written into a package, root properties as raw bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct System {
    board: Vec<u8>,
    gic_version: Vec<u8>,
    vms: Vec<Vm>,
}

impl System {
    /// A good manifest, read back into the model by the hypervisor's own
    /// reader (which refuses a bad one).
    fn read(blob: &[u8]) -> Result<Self, String> {
        let system = manifest::parse(blob).map_err(|error| error.to_string())?;
        Ok(Self {
            board: [system.board.as_bytes(), b"\0"].concat(),
            gic_version: system.gic_version.to_be_bytes().to_vec(),
            vms: system
                .vms()
                .map(|vm| Vm {
                    name: vm.name.as_bytes().to_vec(),
                    ram_base: vm.ram_base,
                    ram_size: vm.ram_size,
                    cpus: vm.physical_cpus().to_vec(),
                    image: vm.image.to_string(),
                    load_offset: vm.image_load_offset,
                    device_tree: vm.device_tree.to_string(),
                })
                .collect(),
        })
    }
}

/// The manifest, property for property as `tessera package` writes it.
fn manifest_blob(system: &System) -> Result<Vec<u8>, vm_fdt::Error> {
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", "tessera,system")?;
    fdt.property_u32("tessera,format-version", manifest::FORMAT_VERSION)?;
    fdt.property("board", &system.board)?;
    fdt.property("gic-version", &system.gic_version)?;
    let vms = fdt.begin_node("vms")?;
    for (index, vm) in system.vms.iter().enumerate() {
        let node = fdt.begin_node(&format!("vm@{index}"))?;
        fdt.property("name", &[&vm.name[..], b"\0"].concat())?;
        fdt.property_u64("ram-base", vm.ram_base)?;
        fdt.property_u64("ram-size", vm.ram_size)?;
        fdt.property_array_u32("cpus", &vm.cpus)?;
        fdt.property_string("image", &vm.image)?;
        fdt.property_u64("image-load-offset", vm.load_offset)?;
        fdt.property_string("device-tree", &vm.device_tree)?;
        fdt.end_node(node)?;
    }
    fdt.end_node(vms)?;
    fdt.end_node(root)?;
    fdt.finish()
}

/// A package of `manifest` and then `files`, in order, checksums and all,
/// as `tessera package` lays it out.
fn archive<'a>(
    manifest: &[u8],
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<Vec<u8>, String> {
    let mut writer = Writer::new();
    writer.add_file(manifest::MANIFEST_ENTRY, manifest)?;
    for (name, data) in files {
        writer.add_file(name, data)?;
    }
    Ok(writer.finish())
}

/// `package` with its manifest read into the model, changed, and written
/// back, every other entry kept as it was; the checksums are recomputed,
/// so only the change is wrong.
fn with_manifest(
    package: &[u8],
    change: impl FnOnce(&mut System) -> Result<(), String>,
) -> Result<Vec<u8>, String> {
    let entries = cpio::read(package).map_err(|error| error.to_string())?;
    let (first, rest) = entries
        .split_first()
        .filter(|(first, _)| first.name == manifest::MANIFEST_ENTRY)
        .ok_or_else(|| format!("its first entry is not {}", manifest::MANIFEST_ENTRY))?;
    let mut system = System::read(first.data)?;
    change(&mut system)?;
    let blob =
        manifest_blob(&system).map_err(|error| format!("cannot write the manifest: {error}"))?;
    archive(&blob, rest.iter().map(|entry| (entry.name, entry.data)))
}

/// `package` with one header digit replaced by a byte that is not a hex
/// digit; nothing else changes.
fn with_header_digit(
    package: &[u8],
    entry: usize,
    field: Field,
    position: usize,
) -> Result<Vec<u8>, String> {
    debug_assert!(position < FIELD_LEN);
    let offset = cpio::read(package)
        .map_err(|error| error.to_string())?
        .get(entry)
        .ok_or_else(|| format!("it has no entry {entry}"))?
        .offset;
    let mut bad = package.to_vec();
    bad[offset + field.offset() + position] = b'z';
    Ok(bad)
}

/// A VM name that would print a line of its own if printed raw: it erases
/// the line so far (ESC [2K), ends it, and forges a hypervisor verdict.
const FORGING_NAME: &[u8] = b"a\x1b[2K\ntessera: OK";

/// A corruption `tessera test` applies to a system's package before
/// booting it (a scenario's `corrupt` key): one case of the corpus, which
/// the hypervisor must refuse before it builds any VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Corruption {
    /// The manifest lists no VMs.
    ZeroVms,
    /// The first VM's RAM is 3 MiB, not a multiple of 2 MiB: a manifest
    /// rule broken, with the checksums recomputed.
    OddRamSize,
    /// The first digit of the first VM image's `filesize` is not a hex
    /// digit.
    NonHexFileSize,
    /// The first VM's name holds ESC, a newline and a forged hypervisor
    /// line ([`FORGING_NAME`]).
    ControlCharsInName,
}

impl Corruption {
    pub const ALL: [Self; 4] = [
        Self::ZeroVms,
        Self::OddRamSize,
        Self::NonHexFileSize,
        Self::ControlCharsInName,
    ];

    /// As a scenario names it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::ZeroVms => "zero-vms",
            Self::OddRamSize => "odd-ram-size",
            Self::NonHexFileSize => "non-hex-filesize",
            Self::ControlCharsInName => "control-chars-in-name",
        }
    }

    pub fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|case| case.name() == name)
    }

    /// Every name, for a message.
    pub fn names() -> String {
        Self::ALL.map(Self::name).join(", ")
    }

    /// A good package (as `tessera package` writes it), corrupted; the
    /// error says why it cannot be (a package without a VM, say).
    pub fn apply(self, package: &[u8]) -> Result<Vec<u8>, String> {
        // A manifest that reads back has a VM (the rules refuse none);
        // still, a change that finds nothing to change says so.
        let first_vm = |system: &mut System, change: &dyn Fn(&mut Vm)| {
            let vm = system.vms.first_mut().ok_or("its manifest lists no VM")?;
            change(vm);
            Ok(())
        };
        let corrupted = match self {
            Self::ZeroVms => with_manifest(package, |system| {
                system.vms.clear();
                Ok(())
            }),
            Self::OddRamSize => with_manifest(package, |system| {
                first_vm(system, &|vm| vm.ram_size = 0x30_0000)
            }),
            Self::NonHexFileSize => with_header_digit(package, 1, Field::FileSize, 0),
            Self::ControlCharsInName => with_manifest(package, |system| {
                first_vm(system, &|vm| vm.name = FORGING_NAME.to_vec())
            }),
        };
        corrupted.map_err(|reason| format!("cannot apply corruption {}: {reason}", self.name()))
    }
}

#[cfg(test)]
mod tests {
    use tessera_hypervisor::boot::manifest;
    use tessera_package::cpio::{Archive, Field, HEADER_LEN, entries};
    use tessera_package::rules;

    use super::super::inspect;
    use super::*;

    fn good() -> System {
        let vm = |index: usize, name: &str, cpus: Vec<u32>, ram_base| Vm {
            name: name.as_bytes().to_vec(),
            ram_base,
            ram_size: 0x400_0000,
            cpus,
            image: format!("vm/{index}/image"),
            load_offset: 0x8_0000,
            device_tree: format!("vm/{index}/guest.dtb"),
        };
        System {
            board: b"qemu-virt\0".to_vec(),
            gic_version: 3u32.to_be_bytes().to_vec(),
            vms: vec![
                vm(0, "alpha", vec![1], 0x4000_0000),
                vm(1, "beta", vec![2, 3], 0x8000_0000),
            ],
        }
    }

    /// The package of `system`, each VM with a 4 KiB image and a device
    /// tree under the entry names its manifest gives.
    fn package(system: &System) -> Vec<u8> {
        let image = [0xAB; 4096];
        let files = system.vms.iter().flat_map(|vm| {
            [
                (vm.image.as_str(), &image[..]),
                (vm.device_tree.as_str(), &b"dtb"[..]),
            ]
        });
        archive(&manifest_blob(system).unwrap(), files).unwrap()
    }

    /// What the hypervisor decides: the library calls of `load_system` on the
    /// machine the package was built for, then the image check.
    fn hypervisor_verdict(bytes: &[u8]) -> Result<(), String> {
        let package = Archive::parse(bytes).map_err(|error| error.to_string())?;
        let blob = package
            .file(manifest::MANIFEST_ENTRY)
            .map_err(|error| error.to_string())?;
        let system = manifest::parse(blob).map_err(|error| error.to_string())?;
        let board = rules::board(system.board).map_err(|error| error.to_string())?;
        system
            .check_against_machine(board.name, system.gic_version, *board.cpus.end() as usize)
            .and_then(|()| system.check_package(&package))
            .map_err(|error| error.to_string())
    }

    /// Both refuse `bytes`; the hypervisor's message is one printable line
    /// containing every one of `names`, and says what to do.
    fn refused(bytes: &[u8], names: &[&str], case: &str) -> String {
        let message = hypervisor_verdict(bytes).expect_err(case);
        for name in names {
            assert!(message.contains(name), "{case}: {message:?} lacks {name:?}");
        }
        assert!(message.contains("tessera package"), "{case}: {message}");
        assert!(
            message.bytes().all(|byte| (0x20..=0x7E).contains(&byte)),
            "{case}: {message:?}"
        );
        let problems = inspect(bytes).problems;
        assert!(!problems.is_empty(), "{case}: inspect calls it good");
        message
    }

    #[test]
    fn the_good_package_is_good_for_both() {
        let bytes = package(&good());
        assert_eq!(hypervisor_verdict(&bytes), Ok(()));
        assert_eq!(inspect(&bytes).problems, Vec::<String>::new());
    }

    #[test]
    fn every_header_field_of_every_entry_flipped_or_impossible_is_refused() {
        let bytes = package(&good());
        let offsets: Vec<usize> = entries(&bytes).map(|entry| entry.unwrap().offset).collect();
        assert_eq!(offsets.len(), 5);
        let mut cases = 0;
        for (index, &offset) in offsets.iter().enumerate() {
            let entry = format!("entry {index} at offset {offset:#x}");
            for field in Field::ALL {
                let at = offset + field.offset();
                for position in [0, 7] {
                    let mut bad = bytes.clone();
                    bad[at + position] = b'z';
                    let case = format!("{field} digit {position} of entry {index}");
                    refused(&bad, &[&entry, &format!("field {field}")], &case);
                    cases += 1;
                }
            }
            // Values no package can have, for the fields that carry one.
            let name = entries(&bytes).nth(index).unwrap().unwrap().name;
            for (field, value, names) in [
                (
                    Field::FileSize,
                    *b"ffffffff",
                    vec![entry.clone(), "field filesize".into()],
                ),
                (
                    Field::NameSize,
                    *b"ffffffff",
                    vec![entry.clone(), "field namesize".into()],
                ),
                (
                    Field::NameSize,
                    *b"00000000",
                    vec![entry.clone(), "field namesize".into()],
                ),
                (
                    Field::Mode,
                    *b"000041ed",
                    vec![name.to_string(), "field mode".into()],
                ),
                (
                    Field::Check,
                    *b"00000000",
                    vec![name.to_string(), "field check".into()],
                ),
            ] {
                let mut bad = bytes.clone();
                bad[offset + field.offset()..][..8].copy_from_slice(&value);
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                refused(
                    &bad,
                    &names,
                    &format!("{field} of entry {index} set to {value:?}"),
                );
                cases += 1;
            }
        }
        assert_eq!(cases, 5 * (13 * 2 + 5));
    }

    #[test]
    fn a_package_cut_short_anywhere_is_refused() {
        let bytes = package(&good());
        let mut cuts: Vec<usize> = (0..bytes.len()).step_by(37).collect();
        for entry in entries(&bytes) {
            let offset = entry.unwrap().offset;
            cuts.extend([
                offset,
                offset + 1,
                offset + HEADER_LEN - 1,
                offset + HEADER_LEN,
            ]);
        }
        cuts.extend(bytes.len() - 4..bytes.len());
        for cut in cuts {
            let message = refused(&bytes[..cut], &[], &format!("cut at {cut:#x}"));
            assert!(
                message.contains("entry") || message.contains("TRAILER!!!"),
                "cut at {cut:#x}: {message}"
            );
        }
    }

    #[test]
    fn each_manifest_rule_broken_once_is_refused_by_both_alike() {
        let with = |change: &dyn Fn(&mut System)| {
            let mut system = good();
            change(&mut system);
            package(&system)
        };
        let cases: Vec<(Vec<u8>, &[&str])> = vec![
            (with(&|s| s.vms.clear()), &["field vms", "no VMs"]),
            (
                with(&|s| s.vms[0].ram_size = 0x10_0000),
                &["vm[0]", "field ram-size", "0x10_0000"],
            ),
            (
                with(&|s| s.vms[1].ram_size = 0x30_0000),
                &["vm[1]", "field ram-size", "0x30_0000"],
            ),
            (
                with(&|s| s.vms[0].ram_base = 0x4010_0000),
                &["field ram-base", "0x4010_0000"],
            ),
            (
                with(&|s| s.vms[0].ram_base = 0x0800_0000),
                &["field ram-base", "device window"],
            ),
            (
                with(&|s| s.vms[0].ram_base = 1 << 39),
                &["field ram-base", "39-bit"],
            ),
            (
                with(&|s| s.vms[1].ram_base = u64::MAX - 0x1F_FFFF),
                &["field ram-base", "2^64"],
            ),
            (
                with(&|s| s.vms[0].load_offset = 0x400_0000),
                &["field image-load-offset", "0x400_0000"],
            ),
            (
                with(&|s| s.vms[0].load_offset = 0x3FE_F800),
                &["field image-load-offset", "device tree"],
            ),
            (
                with(&|s| s.vms[1].name = b"alpha".to_vec()),
                &["vm[1]", "field name", "also the name of vm[0]"],
            ),
            (
                with(&|s| s.vms[0].name = Vec::new()),
                &["vm[0]", "field name"],
            ),
            (
                with(&|s| s.vms[0].name = vec![b'a'; 300]),
                &["vm[0]", "field name"],
            ),
            (
                with(&|s| s.vms[0].name = b"a\x1b[2K\ntessera: OK".to_vec()),
                &["field name", "a\\x1b[2K\\x0atessera: OK"],
            ),
            (
                with(&|s| s.vms[0].name = b"al\0pha".to_vec()),
                &["vm[0]", "field name"],
            ),
            (
                with(&|s| s.vms[0].cpus = Vec::new()),
                &["vm[0]", "field cpus"],
            ),
            (
                with(&|s| s.vms[0].cpus = vec![9]),
                &["vm[0]", "field cpus", "CPU 9"],
            ),
            (
                with(&|s| s.vms[1].cpus = vec![1]),
                &["vm[1]", "field cpus", "already used by vm[0]"],
            ),
            (
                with(&|s| s.vms[1].cpus = vec![2, 2]),
                &["vm[1]", "field cpus", "listed twice"],
            ),
            (
                with(&|s| s.board = b"pi5\0".to_vec()),
                &["field board", "\"pi5\""],
            ),
            (
                with(&|s| s.board = b"rpi4\0qemu-virt\0".to_vec()),
                &["field board", "rpi4\\x00qemu-virt\\x00"],
            ),
            (with(&|s| s.board = b"qemu-virt".to_vec()), &["field board"]),
            (
                with(&|s| s.gic_version = 4u32.to_be_bytes().to_vec()),
                &["field gic-version", "not 4"],
            ),
            (
                with(&|s| s.gic_version = [7u32.to_be_bytes(), 3u32.to_be_bytes()].concat()),
                &["field gic-version"],
            ),
            (
                with(&|s| {
                    let extra = s.vms[0].clone();
                    s.vms = (0..9u8)
                        .map(|index| Vm {
                            name: vec![b'a' + index],
                            cpus: vec![u32::from(index % 8)],
                            image: format!("vm/{index}/image"),
                            device_tree: format!("vm/{index}/guest.dtb"),
                            ..extra.clone()
                        })
                        .collect();
                }),
                &["field vms", "9 VMs"],
            ),
        ];
        for (index, (bytes, names)) in cases.iter().enumerate() {
            let mut names = names.to_vec();
            names.push("tessera/manifest.dtb");
            let message = refused(bytes, &names, &format!("manifest case {index}"));
            // `inspect` refuses with the hypervisor's own words.
            let problems = inspect(bytes).problems;
            assert!(
                problems.contains(&message),
                "case {index}: {problems:?} vs {message}"
            );
        }
    }

    /// What the refusal of each named corruption must name.
    fn refusal_names(case: Corruption) -> &'static [&'static str] {
        match case {
            Corruption::ZeroVms => &["tessera/manifest.dtb", "field vms", "no VMs"],
            Corruption::OddRamSize => &[
                "tessera/manifest.dtb",
                "vm[0]",
                "field ram-size",
                "0x30_0000",
            ],
            Corruption::NonHexFileSize => &[
                "entry 1 at offset 0x",
                "field filesize",
                "\"z",
                "not 8 hex digits",
            ],
            Corruption::ControlCharsInName => &[
                "tessera/manifest.dtb",
                "vm[0]",
                "field name",
                "\"a\\x1b[2K\\x0atessera: OK\"",
            ],
        }
    }

    #[test]
    fn corruptions_are_named_once_each() {
        for case in Corruption::ALL {
            assert_eq!(Corruption::named(case.name()), Some(case));
        }
        assert_eq!(Corruption::named("zero-VMs"), None);
        assert_eq!(
            Corruption::names(),
            "zero-vms, odd-ram-size, non-hex-filesize, control-chars-in-name"
        );
    }

    #[test]
    fn a_good_manifest_reads_back_into_the_model_unchanged() {
        let blob = manifest_blob(&good()).unwrap();
        assert_eq!(System::read(&blob), Ok(good()));
        // A package `tessera package` wrote, its manifest read into the
        // model and written back: the same bytes, so a corruption changes
        // only what it means to.
        let real = super::super::build(&super::super::tests::system()).unwrap();
        assert_eq!(with_manifest(&real, |_| Ok(())), Ok(real.clone()));
        let changed = with_manifest(&real, |system| {
            system.vms[1].ram_size = 0x200_0000;
            Ok(())
        })
        .unwrap();
        assert_ne!(changed, real);
        assert_eq!(changed.len(), real.len());
    }

    #[test]
    fn each_named_corruption_is_refused_by_both_before_any_vm_is_built() {
        let real = super::super::build(&super::super::tests::system()).unwrap();
        for good in [package(&good()), real] {
            for case in Corruption::ALL {
                let bad = case.apply(&good).unwrap();
                let message = refused(&bad, refusal_names(case), case.name());
                // Refused by the checks `load_system` makes, which come
                // before any VM is built; not by the image check the VM
                // builder makes.
                let package = Archive::parse(&bad).map_err(|error| error.to_string());
                let manifest_refused = package.as_ref().is_ok_and(|package| {
                    let blob = package.file(manifest::MANIFEST_ENTRY).unwrap();
                    manifest::parse(blob).is_err()
                });
                assert!(
                    package.is_err() || manifest_refused,
                    "{}: {message}",
                    case.name()
                );
            }
        }
    }

    #[test]
    fn a_corruption_says_when_it_cannot_be_applied() {
        let empty = Writer::new().finish();
        assert_eq!(
            Corruption::NonHexFileSize.apply(&empty),
            Err("cannot apply corruption non-hex-filesize: it has no entry 1".into())
        );
        let not_a_manifest = archive(b"not a tree", []).unwrap();
        let error = Corruption::ZeroVms.apply(&not_a_manifest).unwrap_err();
        assert!(
            error.starts_with(
                "cannot apply corruption zero-vms: tessera/manifest.dtb: not a device tree"
            ),
            "{error}"
        );
    }
}
