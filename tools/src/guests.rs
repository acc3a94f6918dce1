//! Guest-sdk examples as guest images: `image = "example:NAME"` in a
//! system configuration is built with cargo for the guest target and
//! flattened to `target/guests/NAME.bin`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::builder::{cargo_program, flatten, run_checked};
use crate::machine::{Machine, QEMU_PROGRAM, shell_words};
use crate::system::ImageLocator;

pub const GUEST_PACKAGE: &str = "tessera-guest-sdk";
/// Guests may use FP/SIMD, unlike the hypervisor.
pub const GUEST_TARGET: &str = "aarch64-unknown-none";
const EXAMPLES_DIR: &str = "guest-sdk/examples";
const TARGET_DIR: &str = "target";
const IMAGE_DIR: &str = "target/guests";
/// Where the board device trees QEMU writes (`dumpdtb`) go.
const BOARD_TREE_DIR: &str = "target/machines";

/// Arguments to `cargo` that build example `name`. The target directory
/// is given so CARGO_TARGET_DIR cannot move the ELF elsewhere.
pub fn cargo_build_args(name: &str) -> Vec<String> {
    [
        "build",
        "--release",
        "-p",
        GUEST_PACKAGE,
        "--example",
        name,
        "--target",
        GUEST_TARGET,
        "--target-dir",
        TARGET_DIR,
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect()
}

/// Where cargo leaves the example's ELF, relative to the workspace root.
pub fn elf_path(name: &str) -> PathBuf {
    Path::new(TARGET_DIR)
        .join(GUEST_TARGET)
        .join("release/examples")
        .join(name)
}

/// Where the flat image goes, relative to the workspace root.
pub fn image_path(name: &str) -> PathBuf {
    Path::new(IMAGE_DIR).join(format!("{name}.bin"))
}

/// The examples cargo would find by itself: `examples/NAME.rs` and
/// `examples/NAME/main.rs`, sorted.
pub fn available_examples(root: &Path) -> Vec<String> {
    let Ok(read) = std::fs::read_dir(root.join(EXAMPLES_DIR)) else {
        return Vec::new();
    };
    let mut names: Vec<String> = read
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                path.join("main.rs").is_file().then_some(name)
            } else {
                name.strip_suffix(".rs").map(str::to_string)
            }
        })
        .collect();
    names.sort();
    names
}

/// Builds each example the first time it is asked for, and remembers the
/// outcome, so a system (or a test run) with many VMs builds it once.
#[derive(Debug)]
pub struct ExampleBuilder {
    root: PathBuf,
    built: BTreeMap<String, Result<PathBuf, String>>,
}

impl ExampleBuilder {
    pub fn new(root: &Path) -> Self {
        ExampleBuilder {
            root: root.to_path_buf(),
            built: BTreeMap::new(),
        }
    }

    fn build(&self, name: &str) -> Result<PathBuf, String> {
        let available = available_examples(&self.root);
        if !available.iter().any(|example| example == name) {
            let known = if available.is_empty() {
                "it has none yet".to_string()
            } else {
                format!("it has: {}", available.join(", "))
            };
            return Err(format!(
                "guest-sdk has no example \"{name}\" (no {EXAMPLES_DIR}/{name}.rs); {known}"
            ));
        }
        let args = cargo_build_args(name);
        eprintln!(
            "tessera: building guest {name}: {}",
            shell_words("cargo", &args)
        );
        run_checked(
            Command::new(cargo_program())
                .args(&args)
                .current_dir(&self.root),
            "cargo build",
        )
        .and_then(|()| {
            let image = self.root.join(image_path(name));
            flatten(&self.root, &self.root.join(elf_path(name)), &image)?;
            Ok(image)
        })
        .map_err(|err| format!("example \"{name}\" did not build: {err:#}"))
    }
}

/// QEMU's arguments that write `machine`'s own device tree to `out` and
/// exit: the tree QEMU would hand the hypervisor, whose device nodes do
/// not depend on the CPU count or memory size.
pub fn dump_tree_args(machine: Machine, out: &Path) -> Vec<String> {
    let preset = machine.preset();
    let mut args = vec![
        "-M".to_string(),
        format!("{},dumpdtb={}", preset.qemu_machine, out.display()),
    ];
    if let Some(cpu) = preset.cpu_model {
        args.extend(["-cpu".to_string(), cpu.to_string()]);
    }
    args.extend(["-display", "none"].map(str::to_string));
    args.extend(preset.extra_args.iter().map(|arg| arg.to_string()));
    args
}

impl ImageLocator for ExampleBuilder {
    fn example_image(&mut self, name: &str) -> Result<PathBuf, String> {
        if let Some(outcome) = self.built.get(name) {
            return outcome.clone();
        }
        let outcome = self.build(name);
        self.built.insert(name.to_string(), outcome.clone());
        outcome
    }

    /// The tree the machine hands the hypervisor: the one the tool writes
    /// for a machine whose firmware passes one (raspi4b, which holds only
    /// the GIC and the console UART), else the one QEMU writes itself.
    fn board_device_tree(&mut self, machine: Machine) -> Result<Vec<u8>, String> {
        if let Some(build) = machine.preset().firmware_tree {
            return build().map_err(|err| format!("cannot build its device tree: {err}"));
        }
        let out = self
            .root
            .join(BOARD_TREE_DIR)
            .join(format!("{}-board.dtb", machine.name()));
        std::fs::create_dir_all(self.root.join(BOARD_TREE_DIR))
            .map_err(|err| format!("cannot create {BOARD_TREE_DIR}: {err}"))?;
        let args = dump_tree_args(machine, &out);
        run_checked(
            Command::new(QEMU_PROGRAM).args(&args),
            &format!(
                "{} (writing the board's device tree)",
                shell_words(QEMU_PROGRAM, &args)
            ),
        )
        .map_err(|err| format!("{err:#}; give board.device-tree instead"))?;
        std::fs::read(&out).map_err(|err| format!("cannot read {}: {err}", out.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_command_line_and_paths() {
        assert_eq!(
            cargo_build_args("hello").join(" "),
            "build --release -p tessera-guest-sdk --example hello --target aarch64-unknown-none \
             --target-dir target"
        );
        assert_eq!(
            elf_path("hello"),
            PathBuf::from("target/aarch64-unknown-none/release/examples/hello")
        );
        assert_eq!(
            image_path("hello"),
            PathBuf::from("target/guests/hello.bin")
        );
    }

    #[test]
    fn the_board_tree_comes_from_qemu_as_it_boots_the_hypervisor() {
        assert_eq!(
            dump_tree_args(Machine::VirtGicv2, Path::new("target/machines/x.dtb")).join(" "),
            "-M virt,virtualization=on,gic-version=2,dumpdtb=target/machines/x.dtb \
             -cpu cortex-a72 -display none -nic none"
        );
    }

    #[test]
    fn unknown_examples_are_refused_before_cargo_runs() {
        let root = std::env::temp_dir().join(format!("tessera-guests-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mut builder = ExampleBuilder::new(&root);
        assert_eq!(
            builder.example_image("hello"),
            Err("guest-sdk has no example \"hello\" (no guest-sdk/examples/hello.rs); it has none yet".into())
        );
        std::fs::create_dir_all(root.join("guest-sdk/examples/ping")).unwrap();
        std::fs::write(root.join("guest-sdk/examples/ping/main.rs"), "").unwrap();
        std::fs::write(root.join("guest-sdk/examples/echo.rs"), "").unwrap();
        std::fs::write(root.join("guest-sdk/examples/notes.txt"), "").unwrap();
        assert_eq!(available_examples(&root), ["echo", "ping"]);
        let mut builder = ExampleBuilder::new(&root);
        assert_eq!(
            builder.example_image("helo"),
            Err("guest-sdk has no example \"helo\" (no guest-sdk/examples/helo.rs); it has: echo, ping".into())
        );
        std::fs::remove_dir_all(root).unwrap();
    }
}
