//! `tessera`: the host tool. Builds hypervisor images, checks system
//! configurations and packs them into system packages, boots them under
//! QEMU, and runs the end-to-end scenarios.

#![forbid(unsafe_code)]

mod bench;
mod builder;
#[cfg(test)]
mod device_tree_reading;
mod escape;
mod firmware_dt;
mod guests;
mod image;
mod machine;
mod matcher;
mod package;
mod process;
mod runner;
mod scenario;
mod system;
mod system_commands;
mod units;
mod variant;
mod verdict;
mod workspace;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, anyhow};
use clap::{Parser, Subcommand};

use crate::firmware_dt::FirmwareTrees;
use crate::machine::{Board, Clock, Machine, QEMU_PROGRAM, QemuRequest, qemu_args, shell_words};
use crate::process::{Ending, Watched};
use crate::system::BoardSpec;
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
    /// Build for a machine, or for a system configuration with its package,
    /// and boot it under QEMU, serial on this terminal. Ends QEMU once the
    /// hypervisor has printed its verdict (`tessera: power off, status N`)
    /// and exits with that status: 0 when every VM succeeded. Without a
    /// verdict, exits with QEMU's exit status.
    Run {
        #[arg(
            long,
            value_enum,
            required_unless_present = "system",
            conflicts_with = "system"
        )]
        machine: Option<Machine>,
        /// A system configuration (TOML): the machine, CPUs and memory come
        /// from its board, and its package is passed as -initrd.
        #[arg(long)]
        system: Option<PathBuf>,
        #[arg(long, default_value_t = 4, conflicts_with = "system")]
        cpus: u32,
        /// Memory size for QEMU's -m, e.g. 2G (virt machines; default 1G).
        #[arg(long, conflicts_with = "system")]
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
        /// Only runs whose name contains this (`<dir>-<file>`, and
        /// `-<machine>` for a file that lists machines).
        #[arg(long)]
        filter: Option<String>,
        /// List the scenarios and check their files, without running them.
        #[arg(long)]
        list: bool,
        /// Run the long soaks under tests/soak/ (`make soak`) instead of
        /// the other scenarios.
        #[arg(long)]
        soak: bool,
    },
    /// Run the benchmarks (`make bench`): boot the bench guest natively
    /// and under Tessera with QEMU counting instructions, and write
    /// target/bench/results.json and docs/benchmarks.md.
    Bench,
    /// Check a system configuration, building the guest examples it names
    /// so their images can be checked too. Prints `FILE: OK`, or every
    /// mistake as `FILE: KEY: REASON`.
    Check {
        #[arg(long)]
        system: PathBuf,
    },
    /// Check a system configuration and write its package; prints the
    /// package's path.
    Package {
        #[arg(long)]
        system: PathBuf,
        /// Default: target/packages/ at the configuration's path below the
        /// workspace, .toml replaced by .cpio.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List a package's entries and verify its checksums and layout.
    Inspect { package: PathBuf },
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
            system: Some(system),
            features,
            qemu_args,
            ..
        } => system_commands::run_system(&root, &system, &features, &qemu_args),
        Commands::Run {
            machine,
            cpus,
            memory,
            features,
            qemu_args,
            ..
        } => {
            // Without --system, clap has insisted on --machine.
            let machine = machine.ok_or_else(|| anyhow!("give --machine or --system"))?;
            let target = Target {
                machine,
                cpus,
                memory: memory.as_deref(),
                initrd: None,
            };
            run_interactive(&root, &target, &features, &qemu_args)
        }
        Commands::Test { filter, list, soak } => {
            runner::run_tests(&root, &runner::TestOptions { filter, list, soak })
        }
        Commands::Bench => bench::run_bench(&root),
        Commands::Check { system } => Ok(system_commands::check(&root, &system)),
        Commands::Package { system, out } => {
            system_commands::package(&root, &system, out.as_deref())
        }
        Commands::Inspect { package } => system_commands::inspect(&package),
    }
}

/// What `tessera run` boots.
#[derive(Debug)]
pub struct Target<'a> {
    pub machine: Machine,
    pub cpus: u32,
    pub memory: Option<&'a str>,
    /// A system package, relative to the workspace root or absolute.
    pub initrd: Option<&'a Path>,
}

pub fn run_interactive(
    root: &Path,
    target: &Target<'_>,
    features: &[String],
    extra_args: &[String],
) -> Result<ExitCode> {
    // Checked before the build so a wrong --cpus does not cost a build.
    check_cpus(target.machine, target.cpus).map_err(|reason| anyhow!(reason))?;
    target
        .machine
        .check_topology(target.cpus, target.memory)
        .map_err(|reason| anyhow!(reason))?;
    let variant =
        Variant::new(target.machine.board(), features).map_err(|reason| anyhow!(reason))?;
    builder::build_image(root, &variant)?;

    let image = variant.image_path();
    // A `-dtb` among the extra arguments comes later, so QEMU takes it
    // instead of this one.
    let device_tree =
        FirmwareTrees::default().for_boot(root, target.machine, target.initrd.is_some())?;
    let args = qemu_args(&QemuRequest {
        machine: target.machine,
        cpus: target.cpus,
        memory: target.memory,
        semihosting: variant.has_feature(SEMIHOSTING_FEATURE),
        image: &image,
        initrd: target.initrd,
        device_tree: device_tree.as_deref(),
        extra_args,
        clock: Clock::Host,
        cpu_model: None,
    })
    .map_err(|reason| anyhow!(reason))?;
    eprintln!("tessera: {}", shell_words(QEMU_PROGRAM, &args));
    let watched =
        process::run_until_verdict(Command::new(QEMU_PROGRAM).args(&args).current_dir(root))
            .with_context(|| format!("cannot start {QEMU_PROGRAM} (`make deps` installs it)"))?;
    let (code, note) = exit_status(&watched);
    if let Some(note) = note {
        eprintln!("tessera: {note}");
    }
    Ok(ExitCode::from(code))
}

/// The CPU counts the hypervisor runs on, as `tessera check` applies them
/// to a configuration's `board.cpus`: those of the board the machine's
/// image is built for. QEMU's own limit is checked after this.
fn check_cpus(machine: Machine, cpus: u32) -> Result<(), String> {
    let Some(board) = BoardSpec::for_build(machine.board()) else {
        return Ok(());
    };
    if board.cpus.contains(&cpus) {
        Ok(())
    } else {
        Err(format!(
            "--cpus: {} (the board of {}) has {}, not {cpus}",
            board.name,
            machine.name(),
            board.cpus_text()
        ))
    }
}

/// `tessera run`'s exit status, and a line saying where it came from when
/// that is not plain: the hypervisor's verdict when it printed one, QEMU's
/// status otherwise.
fn exit_status(watched: &Watched) -> (u8, Option<String>) {
    match (watched.verdict, watched.ending) {
        (Some(status), Ending::Stopped) => (
            verdict::exit_status(status),
            Some(format!(
                "the system powered off with status {status}; QEMU was stopped"
            )),
        ),
        (Some(status), _) => (verdict::exit_status(status), None),
        (None, ending) => (
            u8::try_from(ending.shell_status()).unwrap_or(1),
            Some(format!(
                "QEMU ended ({ending}) without the hypervisor's verdict"
            )),
        ),
    }
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
        assert_eq!(machine, Some(Machine::VirtGicv2));
        assert_eq!(cpus, 4);
        assert_eq!(qemu_args, ["-dtb", "x.dtb"]);
    }

    #[test]
    fn run_takes_a_system_instead_of_a_machine() {
        let cli = Cli::try_parse_from(["tessera", "run", "--system", "systems/demo.toml"]).unwrap();
        let Commands::Run {
            machine, system, ..
        } = cli.command
        else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(machine, None);
        assert_eq!(system, Some(PathBuf::from("systems/demo.toml")));

        for conflicting in [
            &["--machine", "virt-gicv3"][..],
            &["--cpus", "2"][..],
            &["--memory", "2G"][..],
        ] {
            let mut args = vec!["tessera", "run", "--system", "s.toml"];
            args.extend_from_slice(conflicting);
            assert!(Cli::try_parse_from(&args).is_err(), "{conflicting:?}");
        }
        assert!(Cli::try_parse_from(["tessera", "run"]).is_err());
    }

    #[test]
    fn system_subcommands() {
        let cli = Cli::try_parse_from([
            "tessera", "package", "--system", "s.toml", "--out", "p.cpio",
        ])
        .unwrap();
        let Commands::Package { system, out } = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(system, PathBuf::from("s.toml"));
        assert_eq!(out, Some(PathBuf::from("p.cpio")));
        assert!(Cli::try_parse_from(["tessera", "check", "--system", "s.toml"]).is_ok());
        assert!(Cli::try_parse_from(["tessera", "check"]).is_err());
        assert!(Cli::try_parse_from(["tessera", "inspect", "p.cpio"]).is_ok());
        assert!(matches!(
            Cli::try_parse_from(["tessera", "bench"]).unwrap().command,
            Commands::Bench
        ));
    }

    #[test]
    fn run_takes_the_cpu_counts_check_takes() {
        assert_eq!(
            check_cpus(Machine::VirtGicv3, 9).unwrap_err(),
            "--cpus: qemu-virt (the board of virt-gicv3) has 1 to 8 CPUs, not 9"
        );
        assert!(check_cpus(Machine::VirtGicv3, 0).is_err());
        for cpus in 1..=8 {
            assert!(check_cpus(Machine::VirtGicv3, cpus).is_ok(), "{cpus}");
            assert!(check_cpus(Machine::VirtGicv2, cpus).is_ok(), "{cpus}");
        }
        assert_eq!(
            check_cpus(Machine::Raspi4b, 2).unwrap_err(),
            "--cpus: rpi4 (the board of raspi4b) has 4 CPUs, not 2"
        );
        assert!(check_cpus(Machine::Raspi4b, 4).is_ok());
    }

    #[test]
    fn run_exits_with_the_verdict_else_with_qemus_status() {
        let watched = |ending, verdict| exit_status(&Watched { ending, verdict });
        assert_eq!(watched(Ending::Exited(0), Some(0)), (0, None));
        assert_eq!(watched(Ending::Exited(1), Some(1)), (1, None));
        let (code, note) = watched(Ending::Stopped, Some(1));
        assert_eq!(code, 1);
        assert_eq!(
            note.unwrap(),
            "the system powered off with status 1; QEMU was stopped"
        );
        assert_eq!(watched(Ending::Stopped, Some(0)).0, 0);
        assert_eq!(watched(Ending::Stopped, Some(300)).0, 255);
        let (code, note) = watched(Ending::Exited(3), None);
        assert_eq!(code, 3);
        assert_eq!(
            note.unwrap(),
            "QEMU ended (exit status 3) without the hypervisor's verdict"
        );
        assert_eq!(watched(Ending::Signalled(15), None).0, 143);
        assert_eq!(watched(Ending::Exited(-1), None).0, 1);
    }

    #[test]
    fn unknown_machine_is_rejected_by_the_parser() {
        assert!(Cli::try_parse_from(["tessera", "run", "--machine", "virt"]).is_err());
    }
}
