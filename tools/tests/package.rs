//! `tessera package` and `tessera inspect` end to end, on the good fixture
//! (whose images are files beside it, so nothing is built).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tessera(args: &[&str]) -> Output {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .current_dir(fixtures)
        .output()
        .expect("the tessera binary runs")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-cli-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn package_then_inspect() {
    let dir = scratch("package");
    let out = dir.join("good.cpio");
    let out_text = out.to_str().unwrap();

    let packed = tessera(&["package", "--system", "good.toml", "--out", out_text]);
    assert_eq!(packed.status.code(), Some(0), "{packed:?}");
    assert_eq!(
        String::from_utf8_lossy(&packed.stdout),
        format!("{out_text}\n")
    );

    let inspected = tessera(&["inspect", out_text]);
    assert_eq!(inspected.status.code(), Some(0), "{inspected:?}");
    let listing = String::from_utf8_lossy(&inspected.stdout);
    let names: Vec<&str> = listing
        .lines()
        .skip(2)
        .take(5)
        .filter_map(|line| line.split_whitespace().nth(3))
        .collect();
    assert_eq!(
        names,
        [
            "tessera/manifest.dtb",
            "vm/alpha/image",
            "vm/alpha/guest.dtb",
            "vm/beta/image",
            "vm/beta/guest.dtb",
        ]
    );
    // The system, as the manifest (read by the hypervisor's code) has it.
    let raw_size = std::fs::metadata(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/raw.bin"),
    )
    .unwrap()
    .len();
    let system: Vec<&str> = listing.lines().skip(7).take(3).collect();
    assert_eq!(
        system,
        [
            "system: board qemu-virt, GICv3, 2 VM(s) on 3 CPU(s)".to_string(),
            format!(
                "vm[0] alpha: RAM 64M at 0x4000_0000, CPUs [1], image {raw_size} bytes at offset 0x0"
            ),
            format!(
                "vm[1] beta: RAM 32M at 0x8000_0000, CPUs [2, 3], image {raw_size} bytes at offset 0x0"
            ),
        ]
    );
    assert!(listing.ends_with(&format!("{out_text}: OK\n")), "{listing}");

    // One flipped byte in beta's image is caught by its checksum.
    let mut bytes = std::fs::read(&out).unwrap();
    let raw =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/raw.bin"))
            .unwrap();
    let last_image = bytes
        .windows(raw.len())
        .rposition(|window| window == raw.as_slice())
        .unwrap();
    bytes[last_image] ^= 1;
    std::fs::write(&out, &bytes).unwrap();
    let corrupted = tessera(&["inspect", out_text]);
    assert_eq!(corrupted.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&corrupted.stderr),
        format!(
            "{out_text}: vm/beta/image: field check: 0x00000140 in its header, but its data sums \
             to 0x00000141; rebuild the package with `tessera package`\n"
        )
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_bad_configuration_writes_no_package() {
    let dir = scratch("bad");
    let out = dir.join("bad.cpio");
    let output = tessera(&[
        "package",
        "--system",
        "memory.toml",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).starts_with("memory.toml: board.memory: "));
    assert!(!out.exists());
    std::fs::remove_dir_all(dir).unwrap();
}
