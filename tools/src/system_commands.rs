//! The subcommands that work on system configurations and packages:
//! `check`, `package`, `inspect`, and `run --system`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::escape::escaped;
use crate::guests::ExampleBuilder;
use crate::system::{self, ConfigErrors, LoadedSystem};
use crate::units::{format_size, hex};
use crate::{Target, package, run_interactive, workspace};

/// `tessera check`: `FILE: OK` on stdout, or every mistake on stderr.
pub fn check(root: &Path, file: &Path) -> ExitCode {
    match load(root, file) {
        Ok(_) => {
            println!("{}: OK", escaped(&file.display().to_string()));
            ExitCode::SUCCESS
        }
        Err(errors) => report(&errors),
    }
}

/// `tessera package`: checks, builds the guests, writes the package and
/// prints its path.
pub fn package(root: &Path, file: &Path, out: Option<&Path>) -> Result<ExitCode> {
    let system = match load(root, file) {
        Ok(system) => system,
        Err(errors) => return Ok(report(&errors)),
    };
    let out = write_package(root, file, &system, out)?;
    for (vm, image) in system.config.vms.iter().zip(&system.images) {
        eprintln!(
            "tessera: vm {}: {} ({}, load offset {}), {} of RAM at {}, CPUs {:?}",
            escaped(&vm.name),
            escaped(&workspace::display(&image.path)),
            format_size(image.bytes.len() as u64),
            hex(image.layout.load_offset),
            format_size(vm.ram),
            hex(vm.ram_base),
            vm.cpus
        );
    }
    println!("{}", workspace::display(&out));
    Ok(ExitCode::SUCCESS)
}

/// `tessera inspect`: the listing on stdout; problems on stderr and exit 1.
pub fn inspect(file: &Path) -> Result<ExitCode> {
    let shown = escaped(&file.display().to_string()).to_string();
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {shown}"))?;
    let inspection = package::inspect(&bytes);
    println!("{shown}: {} bytes", bytes.len());
    for line in &inspection.listing {
        println!("{line}");
    }
    if inspection.problems.is_empty() {
        println!("{shown}: OK");
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &inspection.problems {
        eprintln!("{shown}: {problem}");
    }
    Ok(ExitCode::FAILURE)
}

/// `tessera run --system`: the machine, CPUs and memory come from the
/// board; the package goes to its default place and is passed as -initrd.
pub fn run_system(
    root: &Path,
    file: &Path,
    features: &[String],
    extra_args: &[String],
) -> Result<ExitCode> {
    let system = match load(root, file) {
        Ok(system) => system,
        Err(errors) => return Ok(report(&errors)),
    };
    let out = write_package(root, file, &system, None)?;
    let initrd = out.strip_prefix(root).unwrap_or(&out);
    let memory = system.config.qemu_memory();
    let target = Target {
        machine: system.config.machine(),
        cpus: system.config.board.cpus,
        memory: memory.as_deref(),
        initrd: Some(initrd),
    };
    run_interactive(root, &target, features, extra_args)
}

fn load(root: &Path, file: &Path) -> Result<LoadedSystem, ConfigErrors> {
    system::load(file, &mut ExampleBuilder::new(root))
}

fn report(errors: &ConfigErrors) -> ExitCode {
    eprintln!("{errors}");
    ExitCode::FAILURE
}

fn write_package(
    root: &Path,
    file: &Path,
    system: &LoadedSystem,
    out: Option<&Path>,
) -> Result<PathBuf> {
    let out = out.map_or_else(|| package::default_path(root, file), Path::to_path_buf);
    package::write(system, &out)?;
    Ok(out)
}
