//! `tessera check` end to end: the built binary on the configurations in
//! `tests/fixtures/`, one per check class of docs/system-image.md, with
//! the exact messages on stderr and the exit status. The fixtures use
//! image files beside them, never guest-sdk examples, so nothing is built.
//! Configurations that cannot be kept as text (not UTF-8, thousands of
//! mistakes) are written to a scratch folder by the test.

use std::path::Path;
use std::process::{Command, Output};

fn check(config: &str) -> Output {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["check", "--system", config])
        .current_dir(fixtures)
        .output()
        .expect("the tessera binary runs")
}

/// `tessera check` on `contents`, written as `config` in a scratch folder
/// of this test's own.
fn check_written(test: &str, config: &str, contents: &[u8]) -> Output {
    let dir = std::env::temp_dir().join(format!("tessera-check-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch folder");
    std::fs::write(dir.join(config), contents).expect("the configuration is written");
    let output = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["check", "--system", config])
        .current_dir(&dir)
        .output()
        .expect("the tessera binary runs");
    let _ = std::fs::remove_dir_all(&dir);
    output
}

/// Asserts that checking `config` fails with exactly `expected` on stderr.
fn assert_rejected(config: &str, expected: &[&str]) {
    assert_output(config, &check(config), expected);
}

fn assert_output(config: &str, output: &Output, expected: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines, expected, "{config}");
    assert_eq!(output.status.code(), Some(1), "{config}");
    assert!(output.stdout.is_empty(), "{config}: nothing on stdout");
}

#[test]
fn a_good_configuration_is_ok() {
    let output = check("good.toml");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "good.toml: OK\n");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
    assert_eq!(output.status.code(), Some(0));
}

#[test]
fn syntax() {
    assert_rejected(
        "syntax.toml",
        &["syntax.toml:3:18: invalid basic string, expected `\"`"],
    );
}

#[test]
fn types() {
    assert_rejected(
        "types.toml",
        &["types.toml: vm[0].ram: must be a string with a unit, e.g. \"64M\", not the integer 64"],
    );
}

#[test]
fn unknown_keys() {
    assert_rejected(
        "unknown-key.toml",
        &[
            "unknown-key.toml: vm[0].memory: unknown key (expected one of: name, image, ram, ram-base, cpus, bootargs, start-delay, passthrough, vdev-shmem)",
        ],
    );
}

#[test]
fn missing_keys() {
    assert_rejected(
        "missing-key.toml",
        &["missing-key.toml: vm[0].image: missing"],
    );
}

#[test]
fn bad_sizes() {
    assert_rejected(
        "bad-size.toml",
        &[
            "bad-size.toml: vm[0].ram: \"3M\" is not a multiple of 2 MiB",
            "bad-size.toml: vm[1].ram: \"12Q\" is not a size: expected digits and a unit K, M or G, e.g. \"64M\"",
        ],
    );
}

#[test]
fn overlapping_guest_physical_ranges() {
    assert_rejected(
        "overlap.toml",
        &[
            "overlap.toml: vm[0].ram-base: guest RAM 0x0800_0000..0x0c00_0000 overlaps the device window 0x0800_0000..0x0a00_0000 (GIC, UART)",
        ],
    );
}

#[test]
fn cpus() {
    assert_rejected(
        "cpus.toml",
        &[
            "cpus.toml: vm[1].cpus: CPU 1 is already used by vm \"alpha\"",
            "cpus.toml: vm[1].cpus: CPU 7 does not exist; the board has CPUs 0 to 3",
            "cpus.toml: vm[2].cpus: empty; a VM needs at least one CPU",
        ],
    );
}

#[test]
fn images() {
    assert_rejected(
        "images.toml",
        &[
            "images.toml: vm[0].image: images/absent.bin does not exist",
            "images.toml: vm[1].image: images/elf.bin is an ELF file, not a flat image (convert it with llvm-objcopy -O binary)",
            "images.toml: vm[2].image: images/big.bin (128M, loaded at 0x4008_0000) ends at 0x4808_0000, past the device tree at 0x43ff_0000 (the last 64 KiB of the VM's 64M of RAM); give the VM more RAM",
        ],
    );
}

#[test]
fn memory() {
    assert_rejected(
        "memory.toml",
        &[
            "memory.toml: board.memory: the VMs' RAM (128M) plus the hypervisor's reserve (32M) is 160M, more than the board's 128M",
        ],
    );
}

#[test]
fn names() {
    assert_rejected(
        "names.toml",
        &[
            "names.toml: vm[1].name: \"alpha\" is also the name of vm[0]",
            "names.toml: vm[2].name: \"Gamma_1\" is not a VM name (1 to 15 of a-z, 0-9 and -, starting with a letter)",
        ],
    );
}

#[test]
fn board() {
    assert_rejected(
        "board.toml",
        &[
            "board.toml: board.gic-version: rpi4 supports GIC version 2 only, not 3",
            "board.toml: board.memory: rpi4 has at most 948M of usable memory, not 2G",
        ],
    );
    assert_rejected(
        "unknown-board.toml",
        &[
            "unknown-board.toml: board.name: unknown board \"pi5\" (expected one of: qemu-virt, rpi4)",
        ],
    );
}

#[test]
fn an_unreadable_configuration() {
    let output = check("absent.toml");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("absent.toml: cannot read: "), "{stderr}");
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn sums_past_2_pow_64() {
    assert_rejected(
        "overflow.toml",
        &[
            "overflow.toml: vm[0].ram-base: guest RAM of 17179869183G at 0x7fff_ffff_ffe0_0000 ends past 2^64, so past the 39-bit guest-physical space (0x80_0000_0000)",
            "overflow.toml: vm[1].ram: guest RAM of 17179869183G at 0x4000_0000 ends past 2^64, so past the 39-bit guest-physical space (0x80_0000_0000)",
            "overflow.toml: board.memory: the RAM of the 2 VMs plus the hypervisor's reserve (32M) is more than 2^64 bytes, far more than the board's 1G",
        ],
    );
}

#[test]
fn a_dotted_key_too_deep_is_a_syntax_error_at_its_line() {
    let key = (0..90)
        .map(|n| format!("k{n}"))
        .collect::<Vec<_>>()
        .join(".");
    let output = check_written(
        "deep",
        "deep.toml",
        format!("# deep\n{key} = 1\n").as_bytes(),
    );
    assert_output(
        "deep.toml",
        &output,
        &["deep.toml:2:1: recursion limit: a key has too many dotted parts"],
    );
}

#[test]
fn a_file_that_is_not_utf8() {
    let output = check_written(
        "utf8",
        "latin1.toml",
        b"[board]\nname = \"qemu-virt\"\n# caf\xe9\n",
    );
    assert_output(
        "latin1.toml",
        &output,
        &[
            "latin1.toml:3:6: not UTF-8: byte 0xe9 at byte offset 32 does not begin a valid character; save the file as UTF-8",
        ],
    );
}

#[test]
fn at_most_40_mistakes_then_a_count() {
    // The case in small: one long `cpus` array, every entry wrong.
    let cpus = vec!["-1"; 200_000].join(",");
    let config = format!(
        "[board]\nname = \"qemu-virt\"\ngic-version = 3\ncpus = 4\nmemory = \"1G\"\n\n\
         [[vm]]\nname = \"a\"\nimage = \"a.bin\"\nram = \"2M\"\ncpus = [{cpus}]\n"
    );
    let output = check_written("cap", "long.toml", config.as_bytes());
    let mut expected = vec!["long.toml: vm[0].cpus: -1 is not a CPU number"; 40];
    // The other 199,960 entries, and the image, which does not exist.
    expected.push("long.toml: 199961 more mistakes not shown (the first 40 are above)");
    assert_output("long.toml", &output, &expected);
}

#[test]
fn passthrough() {
    assert_rejected(
        "passthrough.toml",
        &[
            "passthrough.toml: vm[1].passthrough[0].path: \"/pl031@9010000\": overlaps the range \
             0x0901_0000..0x0901_1000, already given to vm \"alpha\"",
            "passthrough.toml: vm[1].passthrough[0].path: \"/pl031@9010000\": SPI 2 is already \
             given to vm \"alpha\"",
            "passthrough.toml: vm[1].passthrough[1].reg: the range 0x0900_0000..0x0900_1000 \
             overlaps the console UART at 0x0900_0000..0x0900_1000, which the hypervisor keeps \
             for itself",
        ],
    );
}

#[test]
fn shared_memory() {
    assert_rejected(
        "shmem.toml",
        &[
            "shmem.toml: vm[0].vdev-shmem[0].allow: \"two words\" byte 3 is not printable ASCII \
             without space (0x21 to 0x7e), so no name can hold it",
            "shmem.toml: vm[0].vdev-shmem[1].loc: 0x4000_0000 overlaps the VM's RAM \
             0x4000_0000..0x4400_0000",
            "shmem.toml: vm[0].vdev-shmem[1].intr: INTID 40 is already used by this VM (another \
             vdev-shmem instance or a passthrough SPI)",
            "shmem.toml: shmem.region[1].size: the boot regions take 17 pages (68K), more than \
             the limit of 16 pages (64K)",
            "shmem.toml: vm[1].vdev-shmem[0].loc: overlaps a passthrough range of this VM at \
             0x0901_0000..0x0901_1000",
            "shmem.toml: vm[1].vdev-shmem[0].intr: INTID 34 is already used by this VM (another \
             vdev-shmem instance or a passthrough SPI)",
        ],
    );
}
