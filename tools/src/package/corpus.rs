//! A corpus of corrupted packages, made from a good one: every header field
//! of every entry flipped to a non-hex digit and set to an impossible
//! value, the package cut short at many points, each manifest rule broken
//! once (with the checksums recomputed), no VMs, a name with control
//! characters. For each, the hypervisor's checks (the same library calls
//! `load_system` makes, plus the image check its VM builder makes) refuse
//! it with a message naming the entry and field, and `inspect` refuses it
//! too, with the same message where the manifest is at fault.

use tessera_hypervisor::boot::manifest;
use tessera_package::cpio::{Archive, Field, HEADER_LEN, entries};
use tessera_package::rules;
use vm_fdt::FdtWriter;

use super::cpio::Writer;
use super::inspect;

/// One VM of a manifest, each property replaceable.
#[derive(Clone)]
struct Vm {
    name: Vec<u8>,
    ram_base: u64,
    ram_size: u64,
    cpus: Vec<u32>,
    load_offset: u64,
}

/// A system as written into a package, root properties as raw bytes.
#[derive(Clone)]
struct System {
    board: Vec<u8>,
    gic_version: Vec<u8>,
    vms: Vec<Vm>,
}

fn good() -> System {
    let vm = |name: &str, cpus: Vec<u32>, ram_base| Vm {
        name: name.as_bytes().to_vec(),
        ram_base,
        ram_size: 0x400_0000,
        cpus,
        load_offset: 0x8_0000,
    };
    System {
        board: b"qemu-virt\0".to_vec(),
        gic_version: 3u32.to_be_bytes().to_vec(),
        vms: vec![
            vm("alpha", vec![1], 0x4000_0000),
            vm("beta", vec![2, 3], 0x8000_0000),
        ],
    }
}

fn manifest_blob(system: &System) -> Vec<u8> {
    let mut fdt = FdtWriter::new().unwrap();
    let root = fdt.begin_node("").unwrap();
    fdt.property_string("compatible", "tessera,system").unwrap();
    fdt.property_u32("tessera,format-version", 1).unwrap();
    fdt.property("board", &system.board).unwrap();
    fdt.property("gic-version", &system.gic_version).unwrap();
    let vms = fdt.begin_node("vms").unwrap();
    for (index, vm) in system.vms.iter().enumerate() {
        let node = fdt.begin_node(&format!("vm@{index}")).unwrap();
        let mut name = vm.name.clone();
        name.push(0);
        fdt.property("name", &name).unwrap();
        fdt.property_u64("ram-base", vm.ram_base).unwrap();
        fdt.property_u64("ram-size", vm.ram_size).unwrap();
        fdt.property_array_u32("cpus", &vm.cpus).unwrap();
        fdt.property_string("image", &format!("vm/{index}/image"))
            .unwrap();
        fdt.property_u64("image-load-offset", vm.load_offset)
            .unwrap();
        fdt.property_string("device-tree", &format!("vm/{index}/guest.dtb"))
            .unwrap();
        fdt.end_node(node).unwrap();
    }
    fdt.end_node(vms).unwrap();
    fdt.end_node(root).unwrap();
    fdt.finish().unwrap()
}

/// The package, checksums and all, as `tessera package` lays it out.
fn package(system: &System) -> Vec<u8> {
    let mut writer = Writer::new();
    writer
        .add_file(manifest::MANIFEST_ENTRY, &manifest_blob(system))
        .unwrap();
    for index in 0..system.vms.len() {
        writer
            .add_file(&format!("vm/{index}/image"), &[0xAB; 4096])
            .unwrap();
        writer
            .add_file(&format!("vm/{index}/guest.dtb"), b"dtb")
            .unwrap();
    }
    writer.finish()
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
