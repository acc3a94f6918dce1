//! `tessera`: the host tool. Builds hypervisor images, boots them under
//! QEMU, and runs the end-to-end scenarios.

#![forbid(unsafe_code)]

mod builder;
mod image;
mod machine;
mod matcher;
mod process;
mod runner;
mod scenario;
mod variant;
mod workspace;

use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, anyhow};
use clap::{Parser, Subcommand};

use crate::machine::{Board, Machine, QEMU_PROGRAM, QemuRequest, qemu_args, shell_words};
use crate::process::Ending;
use crate::variant::{SEMIHOSTING_FEATURE, Variant};

#[derive(Debug, Parser)]
#[command(
    name = "tessera",
    version,
    about = "Build, run and test the Tessera hypervisor"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Build the flat hypervisor image for a board and print its path.
    Build {
        #[arg(long, value_enum)]
        board: Board,
        /// Extra cargo features of tessera-hypervisor, comma-separated.
        #[arg(long, value_delimiter = ',')]
        features: Vec<String>,
    },
    /// Build for a machine and boot it under QEMU, serial on this terminal.
    /// Exits with QEMU's exit status.
    Run {
        #[arg(long, value_enum)]
        machine: Machine,
        #[arg(long, default_value_t = 4)]
        cpus: u32,
        /// Memory size for QEMU's -m, e.g. 2G (virt machines; default 1G).
        #[arg(long)]
        memory: Option<String>,
        /// Extra cargo features of tessera-hypervisor, comma-separated.
        #[arg(long, value_delimiter = ',')]
        features: Vec<String>,
        /// Further QEMU arguments, after `--`.
        #[arg(last = true)]
        qemu_args: Vec<String>,
    },
    /// Run the end-to-end scenarios under tests/<dir>/*.toml.
    Test {
        /// Only scenarios whose name contains this.
        #[arg(long)]
        filter: Option<String>,
        /// List the scenarios and check their files, without running them.
        #[arg(long)]
        list: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("tessera: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Commands) -> Result<ExitCode> {
    let root = workspace::find_root()?;
    match command {
        Commands::Build { board, features } => {
            let variant = Variant::new(board, &features).map_err(|reason| anyhow!(reason))?;
            let image = builder::build_image(&root, &variant)?;
            println!("{}", workspace::display(&image));
            Ok(ExitCode::SUCCESS)
        }
        Commands::Run {
            machine,
            cpus,
            memory,
            features,
            qemu_args,
        } => run_interactive(
            &root,
            machine,
            cpus,
            memory.as_deref(),
            &features,
            &qemu_args,
        ),
        Commands::Test { filter, list } => {
            runner::run_tests(&root, &runner::TestOptions { filter, list })
        }
    }
}

fn run_interactive(
    root: &Path,
    machine: Machine,
    cpus: u32,
    memory: Option<&str>,
    features: &[String],
    extra_args: &[String],
) -> Result<ExitCode> {
    // Checked before the build so a wrong --cpus does not cost a build.
    machine
        .check_topology(cpus, memory)
        .map_err(|reason| anyhow!(reason))?;
    let variant = Variant::new(machine.board(), features).map_err(|reason| anyhow!(reason))?;
    builder::build_image(root, &variant)?;

    let image = variant.image_path();
    let args = qemu_args(&QemuRequest {
        machine,
        cpus,
        memory,
        semihosting: variant.has_feature(SEMIHOSTING_FEATURE),
        image: &image,
        extra_args,
    })
    .map_err(|reason| anyhow!(reason))?;
    eprintln!("tessera: {}", shell_words(QEMU_PROGRAM, &args));
    let status = Command::new(QEMU_PROGRAM)
        .args(&args)
        .current_dir(root)
        .status()
        .with_context(|| format!("cannot start {QEMU_PROGRAM} (`make deps` installs it)"))?;
    let code = Ending::from_status(status).shell_status();
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn features_split_on_commas_and_repeat() {
        let cli = Cli::try_parse_from([
            "tessera",
            "build",
            "--board",
            "rpi4",
            "--features",
            "b,a",
            "--features",
            "c",
        ])
        .unwrap();
        let Commands::Build { board, features } = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(board, Board::Rpi4);
        assert_eq!(features, ["b", "a", "c"]);
    }

    #[test]
    fn run_defaults_to_four_cpus_and_takes_qemu_args_after_dashes() {
        let cli = Cli::try_parse_from([
            "tessera",
            "run",
            "--machine",
            "virt-gicv2",
            "--",
            "-dtb",
            "x.dtb",
        ])
        .unwrap();
        let Commands::Run {
            machine,
            cpus,
            qemu_args,
            ..
        } = cli.command
        else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(machine, Machine::VirtGicv2);
        assert_eq!(cpus, 4);
        assert_eq!(qemu_args, ["-dtb", "x.dtb"]);
    }

    #[test]
    fn unknown_machine_is_rejected_by_the_parser() {
        assert!(Cli::try_parse_from(["tessera", "run", "--machine", "virt"]).is_err());
    }
}
