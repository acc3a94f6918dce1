//! One test per check class of docs/system-image.md, each asserting the
//! exact messages. Images are hand-made files in a scratch directory;
//! `example:` images resolve through a stand-in locator, so nothing here
//! depends on the real guest-sdk examples.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::guest_image::{ImageLayout, fake_image};
use super::*;
use crate::units::GIB;

/// The file name the messages carry; it need not exist, because the
/// source is passed in and only `example:` images are used.
const FILE: &str = "systems/demo.toml";

const BOARD: &str = "\
[board]
name = \"qemu-virt\"
gic-version = 3
cpus = 4
memory = \"1G\"
";

const ALPHA: &str = "\
[[vm]]
name = \"alpha\"
image = \"example:hello\"
ram = \"64M\"
cpus = [1]
";

/// Maps example names to image files.
struct Examples(BTreeMap<String, PathBuf>);

impl ImageLocator for Examples {
    fn example_image(&mut self, name: &str) -> Result<PathBuf, String> {
        self.0
            .get(name)
            .cloned()
            .ok_or_else(|| format!("guest-sdk has no example \"{name}\""))
    }

    /// The trees QEMU 10 itself writes for virt (`dumpdtb`), which the
    /// hypervisor's tests read too.
    fn board_device_tree(&mut self, machine: Machine) -> Result<Vec<u8>, String> {
        Ok(match machine {
            Machine::VirtGicv2 => {
                include_bytes!("../../../hypervisor/testdata/qemu-virt-gicv2-2cpu.dtb").to_vec()
            }
            Machine::Raspi4b => crate::firmware_dt::raspi4b_dtb().map_err(|err| err.to_string())?,
            _ => include_bytes!("../../../hypervisor/testdata/qemu-virt-gicv3-4cpu.dtb").to_vec(),
        })
    }
}

/// A directory of its own for each test.
fn scratch(test: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("tessera-system-test-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A locator with `hello`: an Image with text_offset 0x8_0000 needing 1 MiB.
fn examples(test: &str) -> Examples {
    let dir = scratch(test);
    let hello = dir.join("hello.bin");
    std::fs::write(&hello, fake_image(0x8_0000, MIB, 4096)).unwrap();
    Examples(BTreeMap::from([("hello".to_string(), hello)]))
}

fn check_in(source: &str, file: &Path, test: &str) -> Result<LoadedSystem, Vec<String>> {
    check(source, file, &mut examples(test))
        .map_err(|errors| errors.0.iter().map(ToString::to_string).collect())
}

fn load_ok(source: &str, test: &str) -> LoadedSystem {
    check_in(source, Path::new(FILE), test).unwrap_or_else(|errors| panic!("{errors:#?}"))
}

fn errors(source: &str, test: &str) -> Vec<String> {
    match check_in(source, Path::new(FILE), test) {
        Ok(system) => panic!("accepted: {system:#?}"),
        Err(errors) => errors,
    }
}

/// The one error of a config that is `BOARD` and `ALPHA` with `edit`
/// applied as (from, to) replacements.
fn only_error(edits: &[(&str, &str)], extra: &str, test: &str) -> String {
    let mut source = format!("{BOARD}{ALPHA}");
    for (from, to) in edits {
        assert!(source.contains(from), "{from}");
        source = source.replacen(from, to, 1);
    }
    source.push_str(extra);
    let errors = errors(&source, test);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    errors[0].clone()
}

#[test]
fn a_full_configuration_loads() {
    // guest-sdk examples run only at the default base: beta has an image
    // of its own.
    let beta = scratch("full-beta").join("beta.bin");
    std::fs::write(&beta, fake_image(0x8_0000, MIB, 4096)).unwrap();
    let source = format!(
        "{BOARD}{ALPHA}
[[vm]]
name = \"beta\"
image = {beta:?}
ram = \"128M\"
ram-base = 0x8000_0000
cpus = [3, 2]
bootargs = \"console=ttyAMA0\"
"
    );
    let system = load_ok(&source, "full");
    let config = &system.config;
    assert_eq!(config.board.spec.name, "qemu-virt");
    assert_eq!(config.board.gic_version, 3);
    assert_eq!(config.board.cpus, 4);
    assert_eq!(config.board.memory, GIB);
    assert_eq!(config.machine(), Machine::VirtGicv3);
    assert_eq!(config.qemu_memory().as_deref(), Some("1024M"));
    assert_eq!(
        config.vms[0],
        VmConfig {
            name: "alpha".into(),
            image: ImageSource::Example("hello".into()),
            ram: 64 * MIB,
            ram_base: 0x4000_0000,
            cpus: vec![1],
            bootargs: None,
            start_delay_ms: 0,
            passthrough: Vec::new(),
            shmem: Vec::new(),
        }
    );
    assert_eq!(config.vms[1].ram_base, 0x8000_0000);
    assert_eq!(config.vms[1].cpus, [3, 2]);
    assert_eq!(config.vms[1].bootargs.as_deref(), Some("console=ttyAMA0"));
    assert_eq!(system.images.len(), 2);
    assert_eq!(
        system.images[0].layout,
        ImageLayout {
            load_offset: 0x8_0000,
            size: MIB
        }
    );
}

#[test]
fn rpi4_runs_on_raspi4b_with_its_fixed_memory() {
    let source = format!(
        "{}{ALPHA}",
        BOARD
            .replace("qemu-virt", "rpi4")
            .replace("= 3", "= 2")
            .replace("1G", "948M")
    );
    let system = load_ok(&source, "rpi4");
    assert_eq!(system.config.machine(), Machine::Raspi4b);
    assert_eq!(system.config.qemu_memory(), None);
}

#[test]
fn gic_version_2_runs_on_virt_gicv2() {
    let source = format!("{}{ALPHA}", BOARD.replace("= 3", "= 2"));
    assert_eq!(
        load_ok(&source, "gicv2").config.machine(),
        Machine::VirtGicv2
    );
}

#[test]
fn relative_image_paths_are_read_beside_the_configuration() {
    let dir = scratch("relative");
    std::fs::create_dir_all(dir.join("guests")).unwrap();
    std::fs::write(dir.join("guests/raw.bin"), [0x14u8; 100]).unwrap();
    let file = dir.join("sys.toml");
    let source = format!(
        "{BOARD}{}",
        ALPHA.replace("example:hello", "guests/raw.bin")
    );
    let system = check_in(&source, &file, "relative-examples").unwrap();
    assert_eq!(
        system.config.vms[0].image,
        ImageSource::File(dir.join("guests/raw.bin"))
    );
    assert_eq!(
        system.images[0].layout,
        ImageLayout {
            load_offset: 0,
            size: 100
        }
    );
    assert_eq!(system.images[0].bytes, [0x14u8; 100]);
}

// --- syntax / types ---

#[test]
fn not_toml_is_reported_at_its_position() {
    let errors = errors("[board]\nname = \"qemu-virt\ncpus = 4\n", "syntax");
    assert_eq!(
        errors,
        ["systems/demo.toml:2:18: invalid basic string, expected `\"`"]
    );
}

#[test]
fn values_of_the_wrong_type() {
    assert_eq!(
        only_error(&[("ram = \"64M\"", "ram = 64")], "", "type-ram"),
        "systems/demo.toml: vm[0].ram: must be a string with a unit, e.g. \"64M\", not the integer 64"
    );
    assert_eq!(
        only_error(&[("cpus = 4", "cpus = \"4\"")], "", "type-board-cpus"),
        "systems/demo.toml: board.cpus: must be an integer, not the string \"4\""
    );
    assert_eq!(
        only_error(&[("memory = \"1G\"", "memory = 1")], "", "type-memory"),
        "systems/demo.toml: board.memory: must be a string with a unit, e.g. \"1G\", not the integer 1"
    );
    assert_eq!(
        only_error(&[("cpus = [1]", "cpus = 1")], "", "type-vm-cpus"),
        "systems/demo.toml: vm[0].cpus: must be an array of CPU numbers, e.g. [1], not the integer 1"
    );
    assert_eq!(
        only_error(&[("cpus = [1]", "cpus = [\"1\"]")], "", "type-cpu"),
        "systems/demo.toml: vm[0].cpus: the string \"1\" is not a CPU number"
    );
    assert_eq!(
        only_error(&[("name = \"alpha\"", "name = true")], "", "type-name"),
        "systems/demo.toml: vm[0].name: must be a string, not the boolean true"
    );
    assert_eq!(
        only_error(
            &[("ram = \"64M\"", "ram = \"64M\"\nram-base = \"0x4000_0000\"")],
            "",
            "type-ram-base"
        ),
        "systems/demo.toml: vm[0].ram-base: must be an integer, not the string \"0x4000_0000\""
    );
}

#[test]
fn tables_of_the_wrong_shape() {
    assert_eq!(
        errors(&format!("board = \"qemu-virt\"\n{ALPHA}"), "shape-board"),
        ["systems/demo.toml: board: must be a table ([board]), not the string \"qemu-virt\""]
    );
    assert_eq!(
        errors(
            &format!("{BOARD}{}", ALPHA.replace("[[vm]]", "[vm]")),
            "shape-vm"
        ),
        ["systems/demo.toml: vm: must be an array of tables ([[vm]]), not a table"]
    );
    assert_eq!(
        errors(&format!("vm = [1]\n{BOARD}"), "shape-vm-entry"),
        ["systems/demo.toml: vm[0]: must be a table, not the integer 1"]
    );
}

// --- unknown keys ---

#[test]
fn unknown_keys_name_the_expected_ones() {
    assert_eq!(
        only_error(
            &[("ram = \"64M\"", "ram = \"64M\"\nmemory = \"64M\"")],
            "",
            "unknown-vm"
        ),
        "systems/demo.toml: vm[0].memory: unknown key (expected one of: name, image, ram, ram-base, cpus, bootargs, start-delay, passthrough, vdev-shmem)"
    );
    assert_eq!(
        only_error(
            &[("cpus = 4", "cpus = 4\ncolour = \"red\"")],
            "",
            "unknown-board"
        ),
        "systems/demo.toml: board.colour: unknown key (expected one of: name, gic-version, cpus, memory, device-tree)"
    );
    let errors = errors(&format!("version = 1\n{BOARD}{ALPHA}"), "unknown-top");
    assert_eq!(
        errors,
        ["systems/demo.toml: version: unknown key (expected one of: board, vm, shmem)"]
    );
}

// --- missing keys ---

#[test]
fn missing_keys() {
    assert_eq!(
        only_error(&[("image = \"example:hello\"\n", "")], "", "missing-image"),
        "systems/demo.toml: vm[0].image: missing"
    );
    assert_eq!(
        only_error(&[("gic-version = 3\n", "")], "", "missing-gic"),
        "systems/demo.toml: board.gic-version: missing"
    );
    assert_eq!(
        errors(ALPHA, "missing-board"),
        ["systems/demo.toml: board: missing"]
    );
    assert_eq!(
        errors(BOARD, "missing-vm"),
        ["systems/demo.toml: vm: missing"]
    );
    assert_eq!(
        errors(&format!("vm = []\n{BOARD}"), "empty-vm"),
        ["systems/demo.toml: vm: empty; give at least one [[vm]] table"]
    );
}

// --- bad sizes ---

#[test]
fn bad_ram_sizes() {
    let cases = [
        ("\"3M\"", "\"3M\" is not a multiple of 2 MiB"),
        ("\"0M\"", "\"0M\" is zero; a VM needs at least 2 MiB"),
        (
            "\"12Q\"",
            "\"12Q\" is not a size: expected digits and a unit K, M or G, e.g. \"64M\"",
        ),
        ("\"1025K\"", "\"1025K\" is not a multiple of 2 MiB"),
        ("\"99999999999999G\"", "\"99999999999999G\" is too large"),
    ];
    for (value, reason) in cases {
        assert_eq!(
            only_error(&[("\"64M\"", value)], "", "size-ram"),
            format!("systems/demo.toml: vm[0].ram: {reason}")
        );
    }
}

#[test]
fn bad_board_memory_sizes() {
    assert_eq!(
        only_error(&[("\"1G\"", "\"0G\"")], "", "size-memory-zero"),
        "systems/demo.toml: board.memory: \"0G\" is zero"
    );
    assert_eq!(
        only_error(&[("\"1G\"", "\"1048577K\"")], "", "size-memory-mib"),
        "systems/demo.toml: board.memory: \"1048577K\" is not a whole number of MiB (QEMU's -m counts MiB)"
    );
}

// --- overlapping guest-physical ranges ---

#[test]
fn guest_ram_must_avoid_the_device_window() {
    assert_eq!(
        only_error(
            &[("ram = \"64M\"", "ram = \"64M\"\nram-base = 0x0600_0000")],
            "",
            "overlap"
        ),
        "systems/demo.toml: vm[0].ram-base: guest RAM 0x0600_0000..0x0a00_0000 overlaps the \
         device window 0x0800_0000..0x0a00_0000 (GIC, UART)"
    );
    // Ending exactly where the window starts is fine (for an image that is
    // not a guest-sdk example, which runs only at the default base).
    let raw = scratch("touching-image").join("raw.bin");
    std::fs::write(&raw, [0x14u8; 100]).unwrap();
    let source = format!(
        "{BOARD}{}",
        ALPHA
            .replace("ram = \"64M\"", "ram = \"128M\"\nram-base = 0")
            .replace("\"example:hello\"", &format!("{raw:?}"))
    );
    let errors = check_in(&source, Path::new(FILE), "touching").err();
    assert_eq!(errors, None);
}

#[test]
fn guest_ram_must_fit_in_39_bits() {
    assert_eq!(
        only_error(
            &[("ram = \"64M\"", "ram = \"64M\"\nram-base = 0x7F_FE00_0000")],
            "",
            "39-bits"
        ),
        "systems/demo.toml: vm[0].ram-base: guest RAM 0x7f_fe00_0000..0x80_0200_0000 ends past \
         the 39-bit guest-physical space (0x80_0000_0000)"
    );
    // With the default base, the size is to blame.
    let source = format!(
        "{}{}",
        BOARD.replace("\"1G\"", "\"600G\""),
        ALPHA.replace("\"64M\"", "\"512G\"")
    );
    assert_eq!(
        errors(&source, "39-bits-ram"),
        [
            "systems/demo.toml: vm[0].ram: guest RAM 0x4000_0000..0x80_4000_0000 ends past \
          the 39-bit guest-physical space (0x80_0000_0000)"
        ]
    );
}

#[test]
fn ram_base_must_be_2_mib_aligned_and_positive() {
    assert_eq!(
        only_error(
            &[("ram = \"64M\"", "ram = \"64M\"\nram-base = 0x4010_0000")],
            "",
            "aligned"
        ),
        "systems/demo.toml: vm[0].ram-base: 0x4010_0000 is not 2 MiB aligned"
    );
    assert_eq!(
        only_error(
            &[("ram = \"64M\"", "ram = \"64M\"\nram-base = -2")],
            "",
            "negative"
        ),
        "systems/demo.toml: vm[0].ram-base: -2 is negative"
    );
}

// --- CPUs ---

#[test]
fn a_cpu_used_by_two_vms() {
    let beta = ALPHA.replace("alpha", "beta").replace("[1]", "[2]");
    let gamma = ALPHA.replace("alpha", "gamma").replace("[1]", "[3, 2]");
    assert_eq!(
        errors(&format!("{BOARD}{ALPHA}{beta}{gamma}"), "cpu-twice"),
        ["systems/demo.toml: vm[2].cpus: CPU 2 is already used by vm \"beta\""]
    );
}

#[test]
fn a_cpu_taken_by_a_vm_without_a_valid_name_is_named_by_index() {
    let first = ALPHA.replace("alpha", "Alpha");
    let second = ALPHA.replace("alpha", "beta");
    let errors = errors(&format!("{BOARD}{first}{second}"), "cpu-owner-index");
    assert_eq!(
        errors[1],
        "systems/demo.toml: vm[1].cpus: CPU 1 is already used by vm[0]"
    );
}

#[test]
fn cpus_the_board_does_not_have_or_none_at_all() {
    assert_eq!(
        only_error(&[("cpus = [1]", "cpus = [4]")], "", "cpu-missing"),
        "systems/demo.toml: vm[0].cpus: CPU 4 does not exist; the board has CPUs 0 to 3"
    );
    assert_eq!(
        only_error(&[("cpus = [1]", "cpus = []")], "", "cpu-none"),
        "systems/demo.toml: vm[0].cpus: empty; a VM needs at least one CPU"
    );
    assert_eq!(
        only_error(&[("cpus = [1]", "cpus = [1, 1]")], "", "cpu-repeat"),
        "systems/demo.toml: vm[0].cpus: CPU 1 is listed twice"
    );
    assert_eq!(
        only_error(&[("cpus = [1]", "cpus = [-1]")], "", "cpu-negative"),
        "systems/demo.toml: vm[0].cpus: -1 is not a CPU number"
    );
}

// --- images ---

#[test]
fn image_file_missing_or_unreadable() {
    let dir = scratch("image-missing");
    let file = dir.join("sys.toml");
    let source = format!("{BOARD}{}", ALPHA.replace("example:hello", "nope.bin"));
    let errors = check_in(&source, &file, "image-missing-examples").unwrap_err();
    assert_eq!(
        errors,
        [format!(
            "{}: vm[0].image: {} does not exist",
            file.display(),
            dir.join("nope.bin").display()
        )]
    );
}

#[test]
fn image_that_is_not_valid() {
    let dir = scratch("image-elf");
    std::fs::write(dir.join("guest.elf"), b"\x7fELF\x02\x01\x01\x00").unwrap();
    std::fs::write(dir.join("empty.bin"), b"").unwrap();
    let file = dir.join("sys.toml");
    let second = ALPHA
        .replace("alpha", "beta")
        .replace("[1]", "[2]")
        .replace("example:hello", "empty.bin");
    let source = format!(
        "{BOARD}{}{second}",
        ALPHA.replace("example:hello", "guest.elf")
    );
    let errors = check_in(&source, &file, "image-elf-examples").unwrap_err();
    assert_eq!(
        errors,
        [
            format!(
                "{}: vm[0].image: {} is an ELF file, not a flat image (convert it with llvm-objcopy -O binary)",
                file.display(),
                dir.join("guest.elf").display()
            ),
            format!(
                "{}: vm[1].image: {} is empty",
                file.display(),
                dir.join("empty.bin").display()
            ),
        ]
    );
}

#[test]
fn image_larger_than_the_vm_ram_allows() {
    let dir = scratch("image-large");
    // text_offset 0x8_0000 + image_size 3.5M ends 0.5M past a 6M VM's
    // device tree at 4M.
    std::fs::write(dir.join("big.bin"), fake_image(0x8_0000, 6 * MIB, 4096)).unwrap();
    let file = dir.join("sys.toml");
    let source = format!(
        "{BOARD}{}",
        ALPHA
            .replace("example:hello", "big.bin")
            .replace("64M", "6M")
    );
    let errors = check_in(&source, &file, "image-large-examples").unwrap_err();
    assert_eq!(
        errors,
        [format!(
            "{}: vm[0].image: {} (6M, loaded at 0x4008_0000) ends at 0x4068_0000, past the \
             device tree at 0x405f_0000 (the last 64 KiB of the VM's 6M of RAM); give the VM more RAM",
            file.display(),
            dir.join("big.bin").display()
        )]
    );
}

#[test]
fn image_names() {
    assert_eq!(
        only_error(
            &[("example:hello", "example:helo")],
            "",
            "image-unknown-example"
        ),
        "systems/demo.toml: vm[0].image: guest-sdk has no example \"helo\""
    );
    assert_eq!(
        only_error(
            &[("example:hello", "example:../x")],
            "",
            "image-bad-example"
        ),
        "systems/demo.toml: vm[0].image: \"example:../x\" does not name a guest-sdk example \
         (letters, digits, _ and -, starting with a letter)"
    );
    assert_eq!(
        only_error(&[("example:hello", "")], "", "image-empty"),
        "systems/demo.toml: vm[0].image: empty; give \"example:NAME\" or a path to an image file"
    );
}

// --- memory ---

#[test]
fn vm_ram_plus_the_reserve_must_fit_the_board() {
    let beta = ALPHA
        .replace("alpha", "beta")
        .replace("[1]", "[2]")
        .replace("64M", "32M");
    assert_eq!(
        errors(
            &format!("{}{ALPHA}{beta}", BOARD.replace("\"1G\"", "\"127M\"")),
            "budget"
        ),
        [
            "systems/demo.toml: board.memory: the VMs' RAM (96M) plus the hypervisor's reserve (32M) \
          is 128M, more than the board's 127M"
        ]
    );
    // Exactly full is fine.
    let source = format!("{}{ALPHA}{beta}", BOARD.replace("\"1G\"", "\"128M\""));
    load_ok(&source, "budget-exact");
}

// --- names ---

#[test]
fn duplicate_and_malformed_names() {
    let again = ALPHA.replace("[1]", "[2]");
    assert_eq!(
        errors(&format!("{BOARD}{ALPHA}{again}"), "name-dup"),
        ["systems/demo.toml: vm[1].name: \"alpha\" is also the name of vm[0]"]
    );
    for bad in ["Alpha", "1st", "", "a_b", "sixteen-letters1", "-a"] {
        assert_eq!(
            only_error(&[("\"alpha\"", &format!("\"{bad}\""))], "", "name-bad"),
            format!(
                "systems/demo.toml: vm[0].name: \"{bad}\" is not a VM name \
                 (1 to 15 of a-z, 0-9 and -, starting with a letter)"
            )
        );
    }
    load_ok(
        &format!("{BOARD}{}", ALPHA.replace("alpha", "a-15-chars-long")),
        "name-longest",
    );
}

// --- board ---

#[test]
fn unknown_board() {
    let errors = errors(
        &format!("{}{ALPHA}", BOARD.replace("qemu-virt", "pi5")),
        "board-unknown",
    );
    assert_eq!(
        errors,
        ["systems/demo.toml: board.name: unknown board \"pi5\" (expected one of: qemu-virt, rpi4)"]
    );
}

#[test]
fn board_facts() {
    assert_eq!(
        only_error(
            &[("gic-version = 3", "gic-version = 4")],
            "",
            "board-gic-virt"
        ),
        "systems/demo.toml: board.gic-version: qemu-virt supports GIC version 2 or 3, not 4"
    );
    let rpi4 = |edits: &[(&str, &str)], test| {
        let mut all = vec![
            ("qemu-virt", "rpi4"),
            ("= 3", "= 2"),
            ("\"1G\"", "\"948M\""),
        ];
        all.extend_from_slice(edits);
        only_error(&all, "", test)
    };
    assert_eq!(
        rpi4(&[("gic-version = 2", "gic-version = 3")], "board-gic-rpi4"),
        "systems/demo.toml: board.gic-version: rpi4 supports GIC version 2 only, not 3"
    );
    assert_eq!(
        rpi4(&[("cpus = 4", "cpus = 2")], "board-cpus-rpi4"),
        "systems/demo.toml: board.cpus: rpi4 has 4 CPUs, not 2"
    );
    assert_eq!(
        rpi4(&[("\"948M\"", "\"2G\"")], "board-memory-rpi4"),
        "systems/demo.toml: board.memory: rpi4 has at most 948M of usable memory, not 2G"
    );
    assert_eq!(
        only_error(&[("cpus = 4", "cpus = 9")], "", "board-cpus-virt"),
        "systems/demo.toml: board.cpus: qemu-virt has 1 to 8 CPUs, not 9"
    );
}

// --- bootargs ---

#[test]
fn bootargs_must_fit_a_command_line() {
    let long = "x".repeat(2048);
    assert_eq!(
        only_error(
            &[("cpus = [1]", &format!("cpus = [1]\nbootargs = \"{long}\""))],
            "",
            "bootargs-long"
        ),
        "systems/demo.toml: vm[0].bootargs: is 2048 bytes long; a guest command line holds at most 2047"
    );
    assert_eq!(
        only_error(
            &[("cpus = [1]", "cpus = [1]\nbootargs = \"a\\u0000b\"")],
            "",
            "bootargs-nul"
        ),
        "systems/demo.toml: vm[0].bootargs: contains a NUL character, which cannot be in a device tree string"
    );
}

// --- start-delay ---

#[test]
fn start_delays_are_durations_of_at_most_a_minute() {
    let with_delay = |value: &str| {
        let source = format!("{BOARD}{ALPHA}start-delay = {value}\n");
        check_in(&source, Path::new(FILE), "start-delay")
            .map(|system| system.config.vms[0].start_delay_ms)
    };
    for (value, milliseconds) in [
        ("\"20ms\"", 20),
        ("\"1s\"", 1000),
        ("\"0ms\"", 0),
        ("\"0s\"", 0),
        ("\"60s\"", 60_000),
        ("\"60000ms\"", 60_000),
    ] {
        assert_eq!(with_delay(value), Ok(milliseconds), "{value}");
    }
    assert_eq!(
        load_ok(&format!("{BOARD}{ALPHA}"), "start-delay-absent")
            .config
            .vms[0]
            .start_delay_ms,
        0,
        "absent: at once"
    );
    let refused = |value: &str| with_delay(value).unwrap_err();
    let key = "systems/demo.toml: vm[0].start-delay:";
    for bad in [
        "", "20", "ms", "s", "1.5s", "20 ms", " 20ms", "20MS", "20S", "-1s", "+1s", "1m", "20us",
        "1h", "0x10ms",
    ] {
        assert_eq!(
            refused(&format!("\"{bad}\"")),
            [format!(
                "{key} \"{bad}\" is not a duration: expected digits and a unit ms or s, e.g. \"20ms\""
            )],
            "{bad:?}"
        );
    }
    // Shown escaped, as every value is.
    assert_eq!(
        refused("\"é\""),
        [format!(
            "{key} \"\\xc3\\xa9\" is not a duration: expected digits and a unit ms or s, e.g. \"20ms\""
        )]
    );
    for long in [
        "61s",
        "60001ms",
        "18446744073709551615s",
        "18446744073709551616ms",
    ] {
        assert_eq!(
            refused(&format!("\"{long}\"")),
            [format!(
                "{key} \"{long}\" is longer than the 60 s a VM's start may be delayed"
            )],
        );
    }
    assert_eq!(
        refused("20"),
        [format!(
            "{key} must be a string with a unit, e.g. \"20ms\", not the integer 20"
        )]
    );
}

// --- every mistake at once ---

#[test]
fn every_mistake_is_reported_in_one_pass() {
    let source = "\
colour = \"red\"
[board]
name = \"qemu-virt\"
gic-version = 3
cpus = 2
memory = \"64M\"

[[vm]]
name = \"Alpha\"
image = \"example:hello\"
ram = \"64\"
cpus = [1, 5]

[[vm]]
name = \"beta\"
image = \"example:hello\"
ram = \"62M\"
ram-base = 0x0800_0000
cpus = [1]
memory = \"2M\"
";
    assert_eq!(
        errors(source, "everything"),
        [
            "systems/demo.toml: colour: unknown key (expected one of: board, vm, shmem)",
            "systems/demo.toml: vm[0].name: \"Alpha\" is not a VM name (1 to 15 of a-z, 0-9 and -, starting with a letter)",
            "systems/demo.toml: vm[0].ram: \"64\" is not a size: expected digits and a unit K, M or G, e.g. \"64M\"",
            "systems/demo.toml: vm[0].cpus: CPU 5 does not exist; the board has CPUs 0 to 1",
            "systems/demo.toml: vm[1].memory: unknown key (expected one of: name, image, ram, ram-base, cpus, bootargs, start-delay, passthrough, vdev-shmem)",
            "systems/demo.toml: vm[1].ram-base: guest RAM 0x0800_0000..0x0be0_0000 overlaps the device window 0x0800_0000..0x0a00_0000 (GIC, UART)",
            "systems/demo.toml: vm[1].cpus: CPU 1 is already used by vm[0]",
            "systems/demo.toml: board.memory: the VMs' RAM (62M) plus the hypervisor's reserve (32M) is 94M, more than the board's 64M",
        ]
    );
}

#[test]
fn load_config_reads_the_file_and_skips_image_checks() {
    let dir = scratch("load-config");
    let file = dir.join("sys.toml");
    std::fs::write(
        &file,
        format!("{BOARD}{}", ALPHA.replace("example:hello", "absent.bin")),
    )
    .unwrap();
    let config = load_config(&file).unwrap();
    assert_eq!(
        config.vms[0].image,
        ImageSource::File(dir.join("absent.bin"))
    );
    let err = load_config(&dir.join("nope.toml")).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "{}: cannot read: ",
            dir.join("nope.toml").display()
        )),
        "{err}"
    );
}

// --- sums past 2^64, message forms, the cap ---

#[test]
fn ram_base_plus_ram_past_2_pow_64_is_reported_not_wrapped() {
    let source = format!(
        "{BOARD}{}",
        ALPHA.replace(
            "ram = \"64M\"",
            "ram = \"17179869183G\"\nram-base = 0x7FFF_FFFF_FFE0_0000"
        )
    );
    assert_eq!(
        errors(&source, "overflow-base"),
        [
            "systems/demo.toml: vm[0].ram-base: guest RAM of 17179869183G at 0x7fff_ffff_ffe0_0000 \
             ends past 2^64, so past the 39-bit guest-physical space (0x80_0000_0000)",
            "systems/demo.toml: board.memory: the VMs' RAM (17179869183G) plus the hypervisor's \
             reserve (32M) is 17592186043424M, more than the board's 1G",
        ]
    );
}

#[test]
fn the_sum_of_all_vm_ram_past_2_pow_64_is_reported_not_wrapped() {
    let huge = ALPHA.replace("\"64M\"", "\"17179869183G\"");
    let source = format!(
        "{BOARD}{huge}{}",
        huge.replace("alpha", "beta").replace("[1]", "[2]")
    );
    assert_eq!(
        errors(&source, "overflow-sum"),
        [
            "systems/demo.toml: vm[0].ram: guest RAM of 17179869183G at 0x4000_0000 ends past \
             2^64, so past the 39-bit guest-physical space (0x80_0000_0000)",
            "systems/demo.toml: vm[1].ram: guest RAM of 17179869183G at 0x4000_0000 ends past \
             2^64, so past the 39-bit guest-physical space (0x80_0000_0000)",
            "systems/demo.toml: board.memory: the RAM of the 2 VMs plus the hypervisor's reserve \
             (32M) is more than 2^64 bytes, far more than the board's 1G",
        ]
    );
}

#[test]
fn a_guest_sdk_example_runs_only_at_the_default_ram_base() {
    assert_eq!(
        only_error(
            &[("ram = \"64M\"", "ram = \"64M\"\nram-base = 0x8000_0000")],
            "",
            "example-base"
        ),
        "systems/demo.toml: vm[0].ram-base: 0x8000_0000: guest-sdk examples (here example:hello) \
         only run with RAM at the default 0x4000_0000; leave ram-base out, or use an image built \
         for this base"
    );
    // Written out, the default is fine.
    let source = format!(
        "{BOARD}{}",
        ALPHA.replace("ram = \"64M\"", "ram = \"64M\"\nram-base = 0x4000_0000")
    );
    assert!(check_in(&source, Path::new(FILE), "example-default").is_ok());
}

#[test]
fn a_file_that_is_not_utf8_is_reported_at_the_bad_byte() {
    let errors = check_bytes(
        b"[board]\nname = \"qemu\xffvirt\"\n",
        Path::new(FILE),
        &mut examples("utf8"),
    )
    .unwrap_err();
    assert_eq!(
        errors.to_string(),
        "systems/demo.toml:2:13: not UTF-8: byte 0xff at byte offset 20 does not begin a valid \
         character; save the file as UTF-8"
    );
    // A lead byte without its continuation, after a multi-byte character:
    // the column counts characters.
    let errors = check_bytes(
        b"# \xc3\xa9\xc3(\n",
        Path::new(FILE),
        &mut examples("utf8-2"),
    )
    .unwrap_err();
    assert_eq!(
        errors.to_string(),
        "systems/demo.toml:1:4: not UTF-8: byte 0xc3 at byte offset 4 does not begin a valid \
         character; save the file as UTF-8"
    );
}

#[test]
fn a_dotted_key_too_deep_is_reported_at_its_line() {
    let key = (0..100)
        .map(|n| format!("k{n}"))
        .collect::<Vec<_>>()
        .join(".");
    let source = format!("{BOARD}\n  {key} = 1\n");
    assert_eq!(
        errors(&source, "deep-key"),
        ["systems/demo.toml:7:3: recursion limit: a key has too many dotted parts"]
    );
    let nested = format!("{BOARD}x = {}{}\n", "[".repeat(200), "]".repeat(200));
    let errors = errors(&nested, "deep-array");
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with("systems/demo.toml:6:"),
        "{}",
        errors[0]
    );
}

#[test]
fn at_most_40_mistakes_are_shown_then_a_count() {
    let cpus = vec!["99"; 100].join(", ");
    let source = format!("{BOARD}{}", ALPHA.replace("[1]", &format!("[{cpus}]")));
    let errors = check(&source, Path::new(FILE), &mut examples("cap")).unwrap_err();
    assert_eq!(errors.0.len(), MAX_SHOWN);
    assert_eq!(errors.1, 60);
    let text = errors.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 41);
    assert!(lines[..40].iter().all(|line| *line
        == "systems/demo.toml: vm[0].cpus: CPU 99 does not exist; the board has CPUs 0 to 3"));
    assert_eq!(
        lines[40],
        "systems/demo.toml: 60 more mistakes not shown (the first 40 are above)"
    );
}

#[test]
fn keys_that_are_not_bare_are_quoted_and_control_characters_escaped() {
    let source = format!(
        "\"a b\" = 1\n\"\" = 2\n\"\\u001b[2J\" = 3\n{}{ALPHA}",
        BOARD.replace("qemu-virt", "\\u001b[32mOK\\n")
    );
    assert_eq!(
        errors(&source, "quoted"),
        [
            "systems/demo.toml: \"\": unknown key (expected one of: board, vm, shmem)",
            "systems/demo.toml: \"\\x1b[2J\": unknown key (expected one of: board, vm, shmem)",
            "systems/demo.toml: \"a b\": unknown key (expected one of: board, vm, shmem)",
            "systems/demo.toml: board.name: unknown board \"\\x1b[32mOK\\x0a\" (expected one of: \
             qemu-virt, rpi4)",
        ]
    );
}

// Passthrough (docs/system-image.md, "Passthrough"). The virt board tree
// is QEMU's own (`dumpdtb`), from hypervisor/testdata.

const BETA: &str = "\
[[vm]]
name = \"beta\"
image = \"example:hello\"
ram = \"64M\"
ram-base = 0x40000000
cpus = [2]
";

/// `ALPHA` given the passthrough entries `entries` (TOML table bodies).
fn alpha_with(entries: &[&str]) -> String {
    let mut source = format!("{BOARD}{ALPHA}");
    for entry in entries {
        source.push_str(&format!("[[vm.passthrough]]\n{entry}\n"));
    }
    source
}

#[test]
fn a_board_device_tree_node_is_given_with_what_the_board_tree_says() {
    let system = load_ok(&alpha_with(&["path = \"/pl031@9010000\""]), "pt-rtc");
    assert_eq!(
        system.config.vms[0].passthrough,
        [PassthroughSpec::Node("/pl031@9010000".into())]
    );
    let device = &system.devices[0][0];
    assert_eq!(device.ranges, [(0x0901_0000, 0x1000)]);
    assert_eq!(device.spis, [2]);
    let node = device.node.as_ref().unwrap();
    assert_eq!(node.name, "pl031@9010000");
    assert_eq!(node.compatible, b"arm,pl031\0arm,primecell\0");
    assert_eq!(node.interrupts, [0, 2, 4]);
    assert_eq!(node.clock_names.as_deref(), Some(&b"apb_pclk\0"[..]));
    assert_eq!(node.clocks.len(), 1);
    assert_eq!(node.clocks[0].name, "apb-pclk");
    // The same node found by its name without a unit address; a VM
    // without devices has none.
    let source = format!("{}{BETA}", alpha_with(&["path = \"/pl061\""]));
    let system = load_ok(&source, "pt-gpio");
    assert_eq!(system.devices[0][0].ranges, [(0x0903_0000, 0x1000)]);
    assert_eq!(system.devices[0][0].spis, [7]);
    assert!(system.devices[1].is_empty());
}

#[test]
fn a_device_without_a_node_is_given_by_reg_and_spis() {
    let system = load_ok(
        &alpha_with(&["reg = [[0x9010000, 0x1000]]\nspis = [2]"]),
        "pt-explicit",
    );
    assert_eq!(
        system.devices[0],
        [PassthroughDevice {
            ranges: vec![(0x0901_0000, 0x1000)],
            spis: vec![2],
            node: None
        }]
    );
}

#[test]
fn a_device_given_to_two_vms_is_refused() {
    let source = format!(
        "{}{BETA}[[vm.passthrough]]\npath = \"/pl031@9010000\"\n",
        alpha_with(&["path = \"/pl031@9010000\""])
    );
    assert_eq!(
        errors(&source, "pt-twice"),
        [
            "systems/demo.toml: vm[1].passthrough[0].path: \"/pl031@9010000\": overlaps the range \
             0x0901_0000..0x0901_1000, already given to vm \"alpha\"",
            "systems/demo.toml: vm[1].passthrough[0].path: \"/pl031@9010000\": SPI 2 is already \
             given to vm \"alpha\"",
        ]
    );
    // Its SPI alone, named twice by one VM.
    assert_eq!(
        errors(
            &alpha_with(&[
                "path = \"/pl031@9010000\"",
                "reg = [[0x9020000, 0x1000]]\nspis = [2]"
            ]),
            "pt-spi-twice"
        ),
        ["systems/demo.toml: vm[0].passthrough[1].spis: SPI 2 is listed twice"]
    );
}

#[test]
fn passthrough_ranges_the_rules_refuse() {
    let one = |entry: &str, test: &str| {
        let errors = errors(&alpha_with(&[entry]), test);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        errors[0].clone()
    };
    let cases = [
        (
            "reg = [[0x9000000, 0x1000]]",
            "vm[0].passthrough[0].reg: the range 0x0900_0000..0x0900_1000 overlaps the console \
             UART at 0x0900_0000..0x0900_1000, which the hypervisor keeps for itself",
        ),
        (
            "reg = [[0x8000000, 0x10000]]",
            "vm[0].passthrough[0].reg: the range 0x0800_0000..0x0801_0000 overlaps the GIC at \
             0x0800_0000..0x0900_0000, which the hypervisor keeps for itself",
        ),
        (
            "reg = [[0xa000000, 0x200]]",
            "vm[0].passthrough[0].reg: the range 0x0a00_0000 of 0x200 is not in whole 4 KiB \
             pages (base and size must be multiples of 0x1000)",
        ),
        (
            "path = \"/virtio_mmio@a000000\"",
            "vm[0].passthrough[0].path: \"/virtio_mmio@a000000\": the range 0x0a00_0000 of \
             0x200 is not in whole 4 KiB pages (base and size must be multiples of 0x1000)",
        ),
        (
            "reg = [[0xa000000, 0x1000]]",
            "vm[0].passthrough[0].reg: the range 0x0a00_0000..0x0a00_1000 is outside \
             qemu-virt's device space (0x0800_0000..0x0a00_0000)",
        ),
        (
            "reg = [[0x40000000, 0x1000]]",
            "vm[0].passthrough[0].reg: the range 0x4000_0000..0x4000_1000 is outside \
             qemu-virt's device space (0x0800_0000..0x0a00_0000)",
        ),
        (
            "reg = [[0x9010000, 0]]",
            "vm[0].passthrough[0].reg: the range at 0x0901_0000 is empty",
        ),
    ];
    for (index, (entry, expected)) in cases.into_iter().enumerate() {
        assert_eq!(
            one(entry, &format!("pt-range-{index}")),
            format!("systems/demo.toml: {expected}")
        );
    }
    // The console UART by its node: its registers and its interrupt.
    assert_eq!(
        errors(&alpha_with(&["path = \"/pl011@9000000\""]), "pt-range-uart"),
        [
            "systems/demo.toml: vm[0].passthrough[0].path: \"/pl011@9000000\": the range \
             0x0900_0000..0x0900_1000 overlaps the console UART at 0x0900_0000..0x0900_1000, \
             which the hypervisor keeps for itself",
            "systems/demo.toml: vm[0].passthrough[0].path: \"/pl011@9000000\": SPI 1 (INTID 33) \
             is the interrupt of the console UART",
        ]
    );
}

#[test]
fn passthrough_spis_the_rules_refuse() {
    let one = |spis: &str, test: &str| {
        let errors = errors(
            &alpha_with(&[&format!("reg = [[0x9010000, 0x1000]]\nspis = {spis}")]),
            test,
        );
        assert_eq!(errors.len(), 1, "{errors:#?}");
        errors[0].clone()
    };
    assert_eq!(
        one("[224]", "pt-spi-range"),
        "systems/demo.toml: vm[0].passthrough[0].spis: SPI 224 is not an SPI the virtual GIC \
         has (SPIs 0 to 223, INTIDs 32 to 255)"
    );
    assert_eq!(
        one("[1]", "pt-spi-console"),
        "systems/demo.toml: vm[0].passthrough[0].spis: SPI 1 (INTID 33) is the interrupt of \
         the console UART"
    );
    assert_eq!(
        one("[-3]", "pt-spi-negative"),
        "systems/demo.toml: vm[0].passthrough[0].spis: -3 is not an SPI number"
    );
    assert_eq!(
        one("[2, 3, 4, 5, 6, 7, 8, 9, 10]", "pt-spi-count"),
        "systems/demo.toml: vm[0].passthrough: 9 passthrough SPIs, more than the 8 a VM may have"
    );
}

#[test]
fn passthrough_entries_that_name_no_usable_device() {
    let one = |entry: &str, test: &str| {
        let errors = errors(&alpha_with(&[entry]), test);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        errors[0].clone()
    };
    let cases = [
        (
            "path = \"/rtc@9010000\"",
            "vm[0].passthrough[0].path: \"/rtc@9010000\": the board's device tree has no such \
             node",
        ),
        (
            "path = \"pl031@9010000\"",
            "vm[0].passthrough[0].path: \"pl031@9010000\" is not the full path of a device node \
             (e.g. \"/pl031@9010000\")",
        ),
        (
            "path = \"/timer\"",
            "vm[0].passthrough[0].path: \"/timer\": it has no reg",
        ),
        (
            "path = \"/pl031@9010000\"\nreg = [[0x9010000, 0x1000]]",
            "vm[0].passthrough[0]: give either path (a node of the board's device tree) or reg \
             and spis, not both",
        ),
        ("spis = [2]", "vm[0].passthrough[0].reg: missing"),
        (
            "path = \"/pl031@9010000\"\nsize = 4",
            "vm[0].passthrough[0].size: unknown key (expected one of: path, reg, spis)",
        ),
        (
            "reg = [0x9010000, 0x1000]",
            "vm[0].passthrough[0].reg: is a flat list of numbers; write each range as a \
             [base, size] pair, e.g. [[0x9010000, 0x1000]]",
        ),
        (
            "reg = []",
            "vm[0].passthrough[0].reg: empty; give each register range as a [base, size] pair, \
             e.g. [[0x9010000, 0x1000]]",
        ),
        (
            "reg = [[0x9010000, -1]]",
            "vm[0].passthrough[0].reg: an array is not a [base, size] pair of non-negative \
             integers",
        ),
    ];
    for (index, (entry, expected)) in cases.into_iter().enumerate() {
        let found = one(entry, &format!("pt-bad-{index}"));
        assert_eq!(found, format!("systems/demo.toml: {expected}"));
    }
    let source = format!("{BOARD}{ALPHA}passthrough = 3\n");
    assert_eq!(
        errors(&source, "pt-bad-type"),
        [
            "systems/demo.toml: vm[0].passthrough: must be an array of tables ([[vm.passthrough]]), \
             not the integer 3"
        ]
    );
}

#[test]
fn rpi4_addresses_are_translated_through_the_bus_ranges() {
    // The tool's own rpi4 tree has uart0 under /soc at its VideoCore bus
    // address 0x7e20_1000, which the CPU sees at 0xfe20_1000: the console.
    let board = BOARD
        .replace("qemu-virt", "rpi4")
        .replace("= 3", "= 2")
        .replace("1G", "948M");
    let source = format!("{board}{ALPHA}[[vm.passthrough]]\npath = \"/soc/serial@7e201000\"\n");
    assert_eq!(
        errors(&source, "pt-rpi4"),
        [
            "systems/demo.toml: vm[0].passthrough[0].path: \"/soc/serial@7e201000\": the range \
             0xfe20_1000..0xfe20_2000 overlaps the console UART at 0xfe20_1000..0xfe20_2000, which \
             the hypervisor keeps for itself",
            "systems/demo.toml: vm[0].passthrough[0].path: \"/soc/serial@7e201000\": SPI 121 \
             (INTID 153) is the interrupt of the console UART",
        ]
    );
    // A peripheral the board has, given by hand.
    let source =
        format!("{board}{ALPHA}[[vm.passthrough]]\nreg = [[0xfe200000, 0x1000]]\nspis = [113]\n");
    let system = load_ok(&source, "pt-rpi4-gpio");
    assert_eq!(system.devices[0][0].ranges, [(0xFE20_0000, 0x1000)]);
}

#[test]
fn a_board_device_tree_file_of_the_users_own() {
    let dir = scratch("pt-own-tree");
    let file = dir.join("demo.toml");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../hypervisor/testdata/qemu-virt-gicv2-2cpu.dtb"
        ),
        dir.join("virt.dtb"),
    )
    .unwrap();
    let source = alpha_with(&["path = \"/pl031@9010000\""]).replace(
        "memory = \"1G\"",
        "memory = \"1G\"\ndevice-tree = \"virt.dtb\"",
    );
    let system = check_in(&source, &file, "pt-own-tree-examples").unwrap();
    assert_eq!(system.devices[0][0].ranges, [(0x0901_0000, 0x1000)]);
    let source = source.replace("virt.dtb", "absent.dtb");
    let errors = check_in(&source, &file, "pt-own-tree-examples").unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("board.device-tree: cannot read ") && errors[0].contains("absent.dtb"),
        "{}",
        errors[0]
    );
}

// vdev-shmem (docs/system-image.md, "Shared memory").

const SHMEM: &str = "\
[[vm.vdev-shmem]]
loc = 0x100000000
intr = 40
window = [0x100010000, 0x100000]
";

/// `ALPHA` with one vdev-shmem instance (`SHMEM` with `edits` applied)
/// and `extra` after it.
fn shmem_error(edits: &[(&str, &str)], extra: &str, test: &str) -> Vec<String> {
    let mut entry = SHMEM.to_string();
    for (from, to) in edits {
        assert!(entry.contains(from), "{from}");
        entry = entry.replacen(from, to, 1);
    }
    errors(&format!("{BOARD}{ALPHA}{entry}{extra}"), test)
}

#[test]
fn vdev_shmem_instances_and_boot_regions_load() {
    let source = format!(
        "{BOARD}{ALPHA}{SHMEM}allow = [\"ping*\", \"log\"]\ndeny = [\"ping-secret\"]\n\
         [[vm.vdev-shmem]]\nloc = 0x100200000\nintr = 41\nwindow = [0x100300000, 0x4000]\n\
         [shmem]\nlimit = \"1M\"\n[[shmem.region]]\nname = \"log\"\nsize = \"64K\"\n\
         [[shmem.region]]\nname = \"ping\"\nsize = \"4K\"\n"
    );
    let system = load_ok(&source, "shmem-ok");
    assert_eq!(
        system.config.vms[0].shmem,
        [
            ShmemDevice {
                loc: 0x1_0000_0000,
                intr: 40,
                window: (0x1_0001_0000, 0x10_0000),
                allow: vec!["ping*".into(), "log".into()],
                deny: vec!["ping-secret".into()],
            },
            ShmemDevice {
                loc: 0x1_0020_0000,
                intr: 41,
                window: (0x1_0030_0000, 0x4000),
                allow: Vec::new(),
                deny: Vec::new(),
            }
        ]
    );
    assert_eq!(system.config.shmem.limit_pages, 256);
    let regions: Vec<_> = system
        .config
        .shmem
        .regions
        .iter()
        .map(|region| (region.name.as_str(), region.size))
        .collect();
    assert_eq!(regions, [("log", 0x1_0000), ("ping", 0x1000)]);
    // Without [shmem]: the default limit, no boot regions.
    let system = load_ok(&format!("{BOARD}{ALPHA}"), "shmem-default");
    assert_eq!(system.config.shmem, ShmemSystem::default());
    assert_eq!(system.config.shmem.limit_pages, 4096);
    assert!(system.config.vms[0].shmem.is_empty());
}

#[test]
fn vdev_shmem_areas_must_be_whole_pages_clear_of_ram_devices_and_each_other() {
    assert_eq!(
        shmem_error(
            &[("loc = 0x100000000", "loc = 0x100000800")],
            "",
            "shmem-align"
        ),
        [
            "systems/demo.toml: vm[0].vdev-shmem[0].loc: 0x1_0000_0800 of 0x1000 bytes is not \
             whole 4 KiB pages (base and size multiples of 4 KiB)"
        ]
    );
    assert_eq!(
        shmem_error(
            &[(
                "window = [0x100010000, 0x100000]",
                "window = [0x100010000, 0]"
            )],
            "",
            "shmem-empty"
        ),
        ["systems/demo.toml: vm[0].vdev-shmem[0].window: 0x1_0001_0000 is empty"]
    );
    assert_eq!(
        shmem_error(
            &[("loc = 0x100000000", "loc = 0x40001000")],
            "",
            "shmem-ram"
        ),
        [
            "systems/demo.toml: vm[0].vdev-shmem[0].loc: 0x4000_1000 overlaps the VM's RAM \
             0x4000_0000..0x4400_0000"
        ]
    );
    assert_eq!(
        shmem_error(
            &[("loc = 0x100000000", "loc = 0x9000000")],
            "",
            "shmem-uart"
        ),
        [
            "systems/demo.toml: vm[0].vdev-shmem[0].loc: 0x0900_0000..0x0900_1000 overlaps the \
             guest's virtual UART at 0x0900_0000..0x0900_1000"
        ]
    );
    assert_eq!(
        shmem_error(
            &[(
                "window = [0x100010000, 0x100000]",
                "window = [0x7fffff0000, 0x20000]"
            )],
            "",
            "shmem-limit"
        ),
        [
            "systems/demo.toml: vm[0].vdev-shmem[0].window: 0x7f_ffff_0000..0x80_0001_0000 ends \
             past the 39-bit guest-physical space (0x80_0000_0000)"
        ]
    );
    // The factory page inside its own window, and a second instance on
    // the first one's window.
    assert_eq!(
        shmem_error(
            &[("loc = 0x100000000", "loc = 0x100020000")],
            "",
            "shmem-own"
        ),
        [
            "systems/demo.toml: vm[0].vdev-shmem[0].window: overlaps a vdev-shmem factory page \
             of this VM at 0x1_0002_0000..0x1_0002_1000"
        ]
    );
    assert_eq!(
        shmem_error(
            &[],
            "[[vm.vdev-shmem]]\nloc = 0x100200000\nintr = 41\nwindow = [0x100080000, 0x1000]\n",
            "shmem-two"
        ),
        [
            "systems/demo.toml: vm[0].vdev-shmem[1].window: overlaps a vdev-shmem window of \
             this VM at 0x1_0001_0000..0x1_0011_0000"
        ]
    );
    // Another VM's guest-physical space is its own: the same addresses
    // are fine there.
    let source = format!(
        "{BOARD}{ALPHA}{SHMEM}[[vm]]\nname = \"beta\"\nimage = \"example:hello\"\nram = \"64M\"\n\
         cpus = [2]\n{SHMEM}"
    );
    load_ok(&source, "shmem-two-vms");
}

#[test]
fn vdev_shmem_areas_and_vectors_stay_off_passthrough_devices() {
    let source = format!(
        "{}{}",
        alpha_with(&["path = \"/pl031@9010000\""]),
        SHMEM
            .replace("loc = 0x100000000", "loc = 0x9010000")
            .replace("intr = 40", "intr = 34")
    );
    assert_eq!(
        errors(&source, "shmem-pt"),
        [
            "systems/demo.toml: vm[0].vdev-shmem[0].loc: overlaps a passthrough range of this VM \
             at 0x0901_0000..0x0901_1000",
            "systems/demo.toml: vm[0].vdev-shmem[0].intr: INTID 34 is already used by this VM \
             (another vdev-shmem instance or a passthrough SPI)",
        ]
    );
}

#[test]
fn vdev_shmem_vectors_are_spis_used_once() {
    for (intr, reason) in [
        (
            "31",
            "INTID 31 is not an SPI the virtual GIC has (INTIDs 32 to 255)",
        ),
        (
            "256",
            "INTID 256 is not an SPI the virtual GIC has (INTIDs 32 to 255)",
        ),
        (
            "-1",
            "-1 is not an SPI the virtual GIC has (INTIDs 32 to 255)",
        ),
        (
            "33",
            "SPI 1 (INTID 33) is the interrupt of the guest's virtual UART",
        ),
    ] {
        assert_eq!(
            shmem_error(
                &[("intr = 40", &format!("intr = {intr}"))],
                "",
                "shmem-intr"
            ),
            [format!(
                "systems/demo.toml: vm[0].vdev-shmem[0].intr: {reason}"
            )]
        );
    }
    assert_eq!(
        shmem_error(
            &[],
            "[[vm.vdev-shmem]]\nloc = 0x100200000\nintr = 40\nwindow = [0x100300000, 0x1000]\n",
            "shmem-intr-twice"
        ),
        [
            "systems/demo.toml: vm[0].vdev-shmem[1].intr: INTID 40 is already used by this VM \
             (another vdev-shmem instance or a passthrough SPI)"
        ]
    );
}

#[test]
fn vdev_shmem_patterns_follow_the_models_rules() {
    assert_eq!(
        shmem_error(
            &[],
            "allow = [\"two words\", \"\", \"0123456789012345678901234567890123\", 3]\n",
            "shmem-patterns"
        ),
        [
            "systems/demo.toml: vm[0].vdev-shmem[0].allow: \"two words\" byte 3 is not printable \
             ASCII without space (0x21 to 0x7e), so no name can hold it",
            "systems/demo.toml: vm[0].vdev-shmem[0].allow: \"\" is empty; a pattern has 1 to 31 \
             bytes",
            "systems/demo.toml: vm[0].vdev-shmem[0].allow: \"0123456789012345678901234567890123\" \
             is longer than the 31 bytes a pattern may have",
            "systems/demo.toml: vm[0].vdev-shmem[0].allow: the integer 3 is not a pattern (a \
             string)",
        ]
    );
    let nine: Vec<String> = (0..9).map(|n| format!("\"p{n}\"")).collect();
    assert_eq!(
        shmem_error(
            &[],
            &format!("allow = [{}]\ndeny = [\"x\"]\n", nine[..5].join(", ")).replace(
                "deny = [\"x\"]",
                &format!("deny = [{}]", nine[5..].join(", "))
            ),
            "shmem-rules"
        ),
        [
            "systems/demo.toml: vm[0].vdev-shmem[0].allow: 9 allow and deny patterns, more than \
             the 8 an instance may have"
        ]
    );
}

#[test]
fn boot_regions_are_named_sized_and_within_the_limit() {
    let with = |shmem: &str, test: &str| errors(&format!("{BOARD}{ALPHA}[shmem]\n{shmem}"), test);
    assert_eq!(
        with(
            "limit = \"8K\"\n[[shmem.region]]\nname = \"a\"\nsize = \"4K\"\n\
             [[shmem.region]]\nname = \"b\"\nsize = \"8K\"\n",
            "shmem-over"
        ),
        [
            "systems/demo.toml: shmem.region[1].size: the boot regions take 3 pages (12K), more \
             than the limit of 2 pages (8K)"
        ]
    );
    assert_eq!(
        with(
            "[[shmem.region]]\nname = \"a b\"\nsize = \"6K\"\n\
             [[shmem.region]]\nname = \"c\"\nsize = \"4K\"\n\
             [[shmem.region]]\nname = \"c\"\nsize = \"4K\"\n",
            "shmem-regions"
        ),
        [
            "systems/demo.toml: shmem.region[0].name: \"a b\" is not a region name (1 to 31 bytes \
             of printable ASCII without space, 0x21 to 0x7e)",
            "systems/demo.toml: shmem.region[0].size: 0x1800 bytes is not a whole number of 4 KiB \
             pages from 1 to 2^32 - 1",
            "systems/demo.toml: shmem.region[2].name: \"c\" names a boot region already declared",
        ]
    );
    assert_eq!(
        with("limit = \"6K\"\nsize = 3\n", "shmem-keys"),
        [
            "systems/demo.toml: shmem.size: unknown key (expected one of: limit, region)",
            "systems/demo.toml: shmem.limit: \"6K\" is not a whole number of 4 KiB pages",
        ]
    );
}
