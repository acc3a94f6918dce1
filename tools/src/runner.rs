//! `tessera test`: the end-to-end runner. Loads every scenario under
//! `tests/<dir>/*.toml`, builds each image variant and each system package
//! they need once, boots
//! the scenarios one at a time (QEMU's TCG with several vCPUs already
//! keeps a 2-core machine busy), and reports one line per scenario and a
//! closing `N passed, N failed` line.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::builder;
use crate::firmware_dt::FirmwareTrees;
use crate::guests::ExampleBuilder;
use crate::machine::{Clock, QEMU_PROGRAM, QemuRequest, qemu_args, shell_words};
use crate::matcher::{Expectations, Mismatch};
use crate::package;
use crate::package::corpus::Corruption;
use crate::process::{Ending, run_logged};
use crate::scenario::{self, Scenario, ScenarioError, SystemMachine};
use crate::system;
use crate::variant::Variant;
use crate::workspace;

const TESTS_DIR: &str = "tests";
const LOG_DIR: &str = "target/e2e-logs";
/// Where the corrupted packages of `corrupt` scenarios go, one directory
/// per corruption, away from the packages `tessera package` writes.
const CORRUPT_PACKAGE_DIR: &str = "target/corrupt-packages";
/// A failure line shows this many reasons; the log has the rest.
const MAX_REASONS_SHOWN: usize = 3;

#[derive(Debug)]
pub struct TestOptions {
    pub filter: Option<String>,
    pub list: bool,
    /// The long runs under `tests/soak/` instead of everything else.
    pub soak: bool,
}

/// The directory of `tests/` whose scenarios are long soaks (`make soak`),
/// which `make test` leaves out.
const SOAK_DIR: &str = "soak";

/// Whether `file` (relative to the root) is a soak scenario.
fn is_soak(file: &Path) -> bool {
    file.starts_with(Path::new(TESTS_DIR).join(SOAK_DIR))
}

/// A scenario file, loaded or not: a file that does not load still gets a
/// line in the report, so one typo cannot hide the others' results.
#[derive(Debug)]
struct Entry {
    name: String,
    loaded: Result<Scenario, ScenarioError>,
}

pub fn run_tests(root: &Path, options: &TestOptions) -> Result<ExitCode> {
    let mut files = discover(root)?;
    files.retain(|file| is_soak(file) == options.soak);
    let mut entries = load_all(root, &files);
    if let Some(filter) = &options.filter {
        entries.retain(|entry| entry.name.contains(filter.as_str()));
    }

    if options.list {
        return Ok(list(&entries));
    }
    if entries.is_empty() {
        let filter = options
            .filter
            .as_ref()
            .map(|f| format!(" whose name contains `{f}`"))
            .unwrap_or_default();
        eprintln!("tessera: no scenario{filter} under {TESTS_DIR}/*/*.toml");
        println!("0 passed, 0 failed");
        return Ok(ExitCode::FAILURE);
    }

    let images = build_images(root, &entries);
    let packages = build_packages(root, &entries);
    let log_dir = root.join(LOG_DIR);
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;

    let mut firmware_trees = FirmwareTrees::default();
    let (mut passed, mut failed) = (0, 0);
    for entry in &entries {
        let log = log_dir.join(format!("{}.log", entry.name));
        let verdict = match &entry.loaded {
            Err(err) => Verdict::failed_before_boot(err.to_string()),
            Ok(scenario) => {
                let package = scenario
                    .system
                    .as_ref()
                    .map(|system| &packages[&(system.clone(), scenario.corrupt)]);
                match (&images[&scenario.variant], package) {
                    (Err(reason), _) => Verdict::failed_before_boot(format!(
                        "image {} did not build: {reason}",
                        scenario.variant.name()
                    )),
                    (Ok(_), Some(Err(reason))) => Verdict::failed_before_boot(format!(
                        "the package of system {}{} was not built: {reason}",
                        scenario
                            .system
                            .as_deref()
                            .unwrap_or(Path::new(""))
                            .display(),
                        corrupted(scenario.corrupt)
                    )),
                    (Ok(_), Some(Ok(package))) => {
                        run_scenario(root, scenario, Some(package), &mut firmware_trees, &log)
                    }
                    (Ok(_), None) => run_scenario(root, scenario, None, &mut firmware_trees, &log),
                }
            }
        };
        if verdict.reasons.is_empty() {
            passed += 1;
            println!(
                "PASS {} ({:.1}s)",
                entry.name,
                verdict.elapsed.as_secs_f64()
            );
        } else {
            failed += 1;
            println!(
                "FAIL {}: {}{}",
                entry.name,
                summarise(&verdict.reasons),
                if verdict.booted {
                    format!(" (log: {})", workspace::display(&log))
                } else {
                    // A log from an earlier run would mislead.
                    let _ = std::fs::remove_file(&log);
                    String::new()
                }
            );
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `tests/<dir>/*.toml`, relative to the root, sorted so runs are
/// repeatable.
fn discover(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for dir in sorted_entries(root, Path::new(TESTS_DIR))? {
        if !root.join(&dir).is_dir() {
            if dir.extension().is_some_and(|ext| ext == "toml") {
                eprintln!(
                    "tessera: warning: {} is not in a subdirectory of {TESTS_DIR}/, so it is not a scenario",
                    dir.display()
                );
            }
            continue;
        }
        for file in sorted_entries(root, &dir)? {
            if file.extension().is_some_and(|ext| ext == "toml") && root.join(&file).is_file() {
                files.push(file);
            }
        }
    }
    Ok(files)
}

/// The entries of `root/dir`, as paths relative to `root` (which keeps
/// messages and default names independent of where the workspace is
/// checked out), sorted by name. A missing directory is empty.
fn sorted_entries(root: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
    let absolute = root.join(dir);
    let read = match std::fs::read_dir(&absolute) {
        Ok(read) => read,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => {
            return Err(err).with_context(|| format!("cannot read {}", absolute.display()));
        }
    };
    let mut names = Vec::new();
    for entry in read {
        let entry = entry.with_context(|| format!("cannot read {}", absolute.display()))?;
        names.push(entry.file_name());
    }
    names.sort();
    Ok(names.into_iter().map(|name| dir.join(name)).collect())
}

fn load_all(root: &Path, files: &[PathBuf]) -> Vec<Entry> {
    // Several scenarios may boot one system; it is read once.
    let mut systems: HashMap<PathBuf, Result<SystemMachine, String>> = HashMap::new();
    let mut resolve = |path: &Path| {
        systems
            .entry(path.to_path_buf())
            .or_insert_with(|| load_system_machine(root, path))
            .clone()
    };
    let mut entries = Vec::new();
    for file in files {
        let loaded = std::fs::read_to_string(root.join(file))
            .map_err(|err| ScenarioError {
                file: file.clone(),
                position: None,
                key: None,
                reason: format!("cannot read: {err}"),
            })
            .and_then(|source| scenario::parse(&source, file, &mut resolve));
        match loaded {
            Ok(runs) => entries.extend(runs.into_iter().map(|run| Entry {
                name: run.name.clone(),
                loaded: Ok(run),
            })),
            // The file's runs are not known, so it fails once, under the
            // name its file gives it.
            Err(err) => entries.push(Entry {
                name: scenario::default_name(file),
                loaded: Err(err),
            }),
        }
    }
    reject_duplicate_names(&mut entries);
    entries
}

/// What a scenario takes from the system configuration at `path`
/// (relative to `root`). Only the text is checked here; images are checked
/// when the package is built.
fn load_system_machine(root: &Path, path: &Path) -> Result<SystemMachine, String> {
    let config = system::load_config(&root.join(path)).map_err(|errors| one_line(&errors))?;
    Ok(SystemMachine {
        machine: config.machine(),
        cpus: config.board.cpus,
        qemu_memory: config.qemu_memory(),
        memory: config.board.memory,
    })
}

/// A configuration's errors joined to fit on a scenario's result line.
fn one_line(errors: &system::ConfigErrors) -> String {
    errors
        .0
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Two scenarios with one name would overwrite each other's logs and make
/// `--filter` ambiguous; the second and later ones fail.
fn reject_duplicate_names(entries: &mut [Entry]) {
    let mut first_file: HashMap<String, PathBuf> = HashMap::new();
    for entry in entries.iter_mut() {
        let Ok(scenario) = &entry.loaded else {
            continue;
        };
        match first_file.get(&entry.name) {
            None => {
                first_file.insert(entry.name.clone(), scenario.file.clone());
            }
            Some(first) => {
                entry.loaded = Err(ScenarioError {
                    file: scenario.file.clone(),
                    position: None,
                    key: Some("name".into()),
                    reason: format!("`{}` is also the name of {}", entry.name, first.display()),
                });
            }
        }
    }
}

fn list(entries: &[Entry]) -> ExitCode {
    let mut invalid = false;
    for entry in entries {
        match &entry.loaded {
            Ok(scenario) => println!(
                "{}: {}, {} CPUs, image {}, {}{}{}",
                entry.name,
                scenario.machine.name(),
                scenario.cpus,
                scenario.variant.name(),
                scenario
                    .system
                    .as_ref()
                    .map(|system| format!(
                        "system {}{}, ",
                        system.display(),
                        corrupted(scenario.corrupt)
                    ))
                    .unwrap_or_default(),
                scenario.file.display(),
                scenario
                    .description
                    .as_ref()
                    .map(|d| format!(" - {d}"))
                    .unwrap_or_default()
            ),
            Err(err) => {
                invalid = true;
                println!("{}: INVALID: {err}", entry.name);
            }
        }
    }
    if invalid {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Each distinct variant once, in a fixed order, before any scenario runs.
fn build_images(root: &Path, entries: &[Entry]) -> BTreeMap<Variant, Result<PathBuf, String>> {
    let mut images = BTreeMap::new();
    for entry in entries {
        if let Ok(scenario) = &entry.loaded {
            images
                .entry(scenario.variant.clone())
                .or_insert(Ok(PathBuf::new()));
        }
    }
    for (variant, image) in images.iter_mut() {
        *image = builder::build_image(root, variant).map_err(|err| format!("{err:#}"));
        if let Err(reason) = image {
            eprintln!("tessera: image {} did not build: {reason}", variant.name());
        }
    }
    images
}

/// A package a run boots: a system's (by its configuration's path,
/// relative to the root), as built or with a corruption applied.
type PackageKey = (PathBuf, Option<Corruption>);

/// `" (corrupted: NAME)"` after a system's path, or nothing.
fn corrupted(corruption: Option<Corruption>) -> String {
    corruption
        .map(|corruption| format!(" (corrupted: {})", corruption.name()))
        .unwrap_or_default()
}

/// Each distinct package once, after the images: each system's (its guests
/// are built and its images checked here), then each corruption of it a
/// scenario asks for, made from its bytes.
fn build_packages(root: &Path, entries: &[Entry]) -> BTreeMap<PackageKey, Result<PathBuf, String>> {
    let mut examples = ExampleBuilder::new(root);
    let mut packages = BTreeMap::new();
    for entry in entries {
        let Ok(Scenario {
            system: Some(system),
            corrupt,
            ..
        }) = &entry.loaded
        else {
            continue;
        };
        let good = (system.clone(), None);
        if !packages.contains_key(&good) {
            let out = package::default_path(root, &root.join(system));
            let built = system::load(&root.join(system), &mut examples)
                .map_err(|errors| one_line(&errors))
                .and_then(|loaded| package::write(&loaded, &out).map_err(|err| format!("{err:#}")))
                .map(|()| out);
            if let Err(reason) = &built {
                eprintln!(
                    "tessera: the package of system {} was not built: {reason}",
                    system.display()
                );
            }
            packages.insert(good.clone(), built);
        }
        let Some(corruption) = *corrupt else {
            continue;
        };
        let key = (system.clone(), Some(corruption));
        if packages.contains_key(&key) {
            continue;
        }
        // A system whose package did not build has been reported once.
        let corrupted_package = match &packages[&good] {
            Err(reason) => Err(reason.clone()),
            Ok(good) => write_corrupted(root, system, good, corruption).inspect_err(|reason| {
                eprintln!(
                    "tessera: the package of system {}{} was not built: {reason}",
                    system.display(),
                    corrupted(Some(corruption))
                );
            }),
        };
        packages.insert(key, corrupted_package);
    }
    packages
}

/// Writes `good` (the package of `system`) with `corruption` applied, to
/// `target/corrupt-packages/<corruption>/<the configuration's path, .toml
/// as .cpio>`.
fn write_corrupted(
    root: &Path,
    system: &Path,
    good: &Path,
    corruption: Corruption,
) -> Result<PathBuf, String> {
    let bytes = std::fs::read(good)
        .map_err(|err| format!("cannot read {}: {err}", workspace::display(good)))?;
    let out = root
        .join(CORRUPT_PACKAGE_DIR)
        .join(corruption.name())
        .join(system.with_extension("cpio"));
    workspace::write_whole_file(&out, &corruption.apply(&bytes)?)
        .map_err(|err| format!("{err:#}"))?;
    Ok(out)
}

#[derive(Debug)]
struct Verdict {
    /// Empty means the scenario passed.
    reasons: Vec<String>,
    elapsed: Duration,
    /// Whether QEMU ran, so there is a log to point to.
    booted: bool,
}

impl Verdict {
    fn failed_before_boot(reason: String) -> Self {
        Verdict {
            reasons: vec![reason],
            elapsed: Duration::ZERO,
            booted: false,
        }
    }
}

fn run_scenario(
    root: &Path,
    scenario: &Scenario,
    package: Option<&Path>,
    firmware_trees: &mut FirmwareTrees,
    log: &Path,
) -> Verdict {
    let image = scenario.variant.image_path();
    // Relative to the root, where QEMU runs, so the .cmd file is portable.
    let initrd = package.map(|package| package.strip_prefix(root).unwrap_or(package));
    let device_tree = match firmware_trees.for_boot(root, scenario.machine, initrd.is_some()) {
        Ok(device_tree) => device_tree,
        Err(err) => return Verdict::failed_before_boot(format!("{err:#}")),
    };
    let request = QemuRequest {
        machine: scenario.machine,
        cpus: scenario.cpus,
        memory: scenario.memory.as_deref(),
        semihosting: true,
        image: &image,
        initrd,
        device_tree: device_tree.as_deref(),
        extra_args: &scenario.qemu_args,
        clock: Clock::Host,
        cpu_model: scenario.cpu_model.as_deref(),
    };
    let args = match qemu_args(&request) {
        Ok(args) => args,
        Err(reason) => return Verdict::failed_before_boot(reason),
    };
    // The command beside the log, so a failure can be rerun by hand from
    // the workspace root.
    let _ = std::fs::write(
        log.with_extension("cmd"),
        shell_words(QEMU_PROGRAM, &args) + "\n",
    );

    let mut command = Command::new(QEMU_PROGRAM);
    command.args(&args).current_dir(root);
    let finished = match run_logged(&mut command, log, scenario.timeout) {
        Ok(finished) => finished,
        Err(err) => {
            return Verdict::failed_before_boot(format!(
                "cannot start {QEMU_PROGRAM}: {err} (`make deps` installs it)"
            ));
        }
    };
    let output = match std::fs::read(log) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(err) => format!("<cannot read {}: {err}>", log.display()),
    };
    Verdict {
        reasons: judge(
            &scenario.expectations,
            scenario.exit_status,
            finished.ending,
            &output,
        ),
        elapsed: finished.elapsed,
        booted: true,
    }
}

/// Every reason a run failed, most telling first: forbidden lines (a panic
/// explains everything after it), then how QEMU ended, then the expected
/// lines that never came. Empty means it passed.
fn judge(
    expectations: &Expectations,
    expected_status: i32,
    ending: Ending,
    log: &str,
) -> Vec<String> {
    let (forbidden, missing): (Vec<Mismatch>, Vec<Mismatch>) = expectations
        .check(log)
        .into_iter()
        .partition(|mismatch| matches!(mismatch, Mismatch::Forbidden { .. }));
    let mut reasons: Vec<String> = forbidden.iter().map(ToString::to_string).collect();
    match ending {
        Ending::Exited(status) if status == expected_status => {}
        Ending::Exited(status) => {
            reasons.push(format!("exit status {status}, expected {expected_status}"))
        }
        Ending::Signalled(_) | Ending::TimedOut(_) | Ending::Stopped => {
            reasons.push(ending.to_string());
        }
    }
    if log.trim().is_empty() {
        reasons.push("QEMU printed nothing".into());
    }
    reasons.extend(missing.iter().map(ToString::to_string));
    reasons
}

fn summarise(reasons: &[String]) -> String {
    let mut text = reasons
        .iter()
        .take(MAX_REASONS_SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if reasons.len() > MAX_REASONS_SHOWN {
        text.push_str(&format!("; and {} more", reasons.len() - MAX_REASONS_SHOWN));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matcher::Pattern;

    fn expectations() -> Expectations {
        Expectations {
            ordered: vec![Pattern::new("boot").unwrap(), Pattern::new("done").unwrap()],
            unordered: vec![],
            forbidden: vec![Pattern::new("PANIC").unwrap()],
        }
    }

    #[test]
    fn a_clean_run_passes() {
        let reasons = judge(&expectations(), 0, Ending::Exited(0), "boot\ndone\n");
        assert!(reasons.is_empty(), "{reasons:?}");
    }

    #[test]
    fn every_expected_line_is_not_enough_without_the_exit_status() {
        let reasons = judge(&expectations(), 0, Ending::Exited(1), "boot\ndone\n");
        assert_eq!(reasons, ["exit status 1, expected 0"]);
    }

    #[test]
    fn a_nonzero_exit_status_can_be_the_expected_one() {
        let reasons = judge(&expectations(), 3, Ending::Exited(3), "boot\ndone\n");
        assert!(reasons.is_empty());
    }

    #[test]
    fn a_timeout_fails_even_when_every_line_was_seen() {
        let reasons = judge(
            &expectations(),
            0,
            Ending::TimedOut(Duration::from_secs(30)),
            "boot\ndone\n",
        );
        assert_eq!(reasons, ["timed out after 30s"]);
    }

    #[test]
    fn reasons_come_most_telling_first() {
        let reasons = judge(
            &expectations(),
            0,
            Ending::Exited(1),
            "boot\nPANIC: stage-2 fault\n",
        );
        assert_eq!(
            reasons,
            [
                "forbidden line 2 matches /PANIC/: PANIC: stage-2 fault",
                "exit status 1, expected 0",
                "expected line 2 /done/ never seen after line 1",
            ]
        );
    }

    #[test]
    fn silence_is_called_out() {
        let reasons = judge(&expectations(), 0, Ending::Signalled(9), "");
        assert_eq!(reasons[0], "killed by signal 9");
        assert_eq!(reasons[1], "QEMU printed nothing");
    }

    #[test]
    fn summaries_are_capped() {
        let reasons: Vec<String> = (1..=5).map(|i| format!("r{i}")).collect();
        assert_eq!(summarise(&reasons), "r1; r2; r3; and 2 more");
        assert_eq!(summarise(&reasons[..1]), "r1");
    }

    fn scratch_workspace(test: &str, files: &[(&str, &str)]) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("tessera-runner-test-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (path, text) in files {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        root
    }

    #[test]
    fn soak_scenarios_are_told_apart_by_their_directory() {
        assert!(is_soak(Path::new("tests/soak/pingpong.toml")));
        assert!(!is_soak(Path::new("tests/shmem/pingpong.toml")));
        assert!(!is_soak(Path::new("tests/soaked/x.toml")));
    }

    #[test]
    fn discovery_finds_toml_one_level_down_in_order() {
        let root = scratch_workspace(
            "discovery",
            &[
                ("tests/README.md", ""),
                ("tests/stray.toml", ""),
                ("tests/shmem/ping.toml", ""),
                ("tests/boot/b.toml", ""),
                ("tests/boot/a.toml", ""),
                ("tests/boot/notes.txt", ""),
                ("tests/boot/guests/config.toml", ""),
            ],
        );
        let files = discover(&root).unwrap();
        assert_eq!(
            files,
            [
                PathBuf::from("tests/boot/a.toml"),
                PathBuf::from("tests/boot/b.toml"),
                PathBuf::from("tests/shmem/ping.toml"),
            ]
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn invalid_and_duplicate_scenarios_become_failing_entries() {
        let good = "machine = 'virt-gicv3'\nexpect = ['x']\n";
        let root = scratch_workspace(
            "invalid",
            &[
                ("tests/boot/a.toml", good),
                ("tests/boot/broken.toml", "machine = 'nope'\n"),
                (
                    "tests/other/a.toml",
                    "name = 'boot-a'\nmachine = 'virt-gicv2'\nexpect = ['x']\n",
                ),
            ],
        );
        let entries = load_all(&root, &discover(&root).unwrap());
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["boot-a", "boot-broken", "boot-a"]);
        assert!(entries[0].loaded.is_ok());
        let broken = entries[1].loaded.as_ref().unwrap_err().to_string();
        assert!(
            broken.starts_with("tests/boot/broken.toml:1:11: unknown variant"),
            "{broken}"
        );
        let duplicate = entries[2].loaded.as_ref().unwrap_err().to_string();
        assert_eq!(
            duplicate,
            "tests/other/a.toml: name: `boot-a` is also the name of tests/boot/a.toml"
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    const SYSTEM: &str = "\
[board]
name = \"qemu-virt\"
gic-version = 2
cpus = 2
memory = \"512M\"

[[vm]]
name = \"alpha\"
image = \"guest.bin\"
ram = \"64M\"
cpus = [1]
";

    #[test]
    fn scenarios_take_their_machine_from_a_system() {
        let root = scratch_workspace(
            "system",
            &[
                ("tests/guests/systems/pair.toml", SYSTEM),
                (
                    "tests/guests/pair.toml",
                    "system = 'tests/guests/systems/pair.toml'\nexpect = ['x']\n",
                ),
                (
                    "tests/guests/broken.toml",
                    "system = 'tests/guests/systems/broken.toml'\nexpect = ['x']\n",
                ),
                (
                    "tests/guests/systems/broken.toml",
                    &SYSTEM.replace("\"64M\"", "\"3M\"").replace("[1]", "[2]"),
                ),
            ],
        );
        let files = discover(&root).unwrap();
        // The configurations one level deeper are not scenarios.
        assert_eq!(
            files,
            [
                PathBuf::from("tests/guests/broken.toml"),
                PathBuf::from("tests/guests/pair.toml"),
            ]
        );
        let entries = load_all(&root, &files);
        let broken = entries[0].loaded.as_ref().unwrap_err().to_string();
        let config = root.join("tests/guests/systems/broken.toml");
        assert_eq!(
            broken,
            format!(
                "tests/guests/broken.toml: system: {0}: vm[0].ram: \"3M\" is not a multiple of 2 MiB; \
                 {0}: vm[0].cpus: CPU 2 does not exist; the board has CPUs 0 to 1",
                config.display()
            )
        );
        let pair = entries[1].loaded.as_ref().unwrap();
        assert_eq!(pair.machine, crate::machine::Machine::VirtGicv2);
        assert_eq!(pair.cpus, 2);
        assert_eq!(pair.memory.as_deref(), Some("512M"));
        assert_eq!(
            pair.system.as_deref(),
            Some(Path::new("tests/guests/systems/pair.toml"))
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_file_with_machines_becomes_one_entry_per_run() {
        let root = scratch_workspace(
            "machines",
            &[
                ("tests/guests/systems/pair-gicv2.toml", SYSTEM),
                (
                    "tests/guests/systems/pair-gicv3.toml",
                    &SYSTEM.replace("gic-version = 2", "gic-version = 3"),
                ),
                (
                    "tests/guests/pair.toml",
                    "machines = ['virt-gicv3', 'virt-gicv2']\nexpect = ['x']\n\
                     [system]\n\
                     virt-gicv2 = 'tests/guests/systems/pair-gicv2.toml'\n\
                     virt-gicv3 = 'tests/guests/systems/pair-gicv3.toml'\n",
                ),
                (
                    "tests/guests/broken.toml",
                    "machines = ['virt-gicv3', 'virt-gicv3']\nexpect = ['x']\n",
                ),
                (
                    "tests/guests/same.toml",
                    "name = 'guests-pair-virt-gicv2'\nmachine = 'virt-gicv2'\nexpect = ['x']\n",
                ),
            ],
        );
        let entries = load_all(&root, &discover(&root).unwrap());
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "guests-broken",
                "guests-pair-virt-gicv3",
                "guests-pair-virt-gicv2",
                "guests-pair-virt-gicv2"
            ]
        );
        let broken = entries[0].loaded.as_ref().unwrap_err().to_string();
        assert_eq!(
            broken,
            "tests/guests/broken.toml: machines, entry 2: `virt-gicv3` is listed twice"
        );
        let v3 = entries[1].loaded.as_ref().unwrap();
        assert_eq!(v3.machine, crate::machine::Machine::VirtGicv3);
        assert_eq!(
            v3.system.as_deref(),
            Some(Path::new("tests/guests/systems/pair-gicv3.toml"))
        );
        let v2 = entries[2].loaded.as_ref().unwrap();
        assert_eq!(v2.machine, crate::machine::Machine::VirtGicv2);
        assert_eq!(
            v2.system.as_deref(),
            Some(Path::new("tests/guests/systems/pair-gicv2.toml"))
        );
        let duplicate = entries[3].loaded.as_ref().unwrap_err().to_string();
        assert_eq!(
            duplicate,
            "tests/guests/same.toml: name: `guests-pair-virt-gicv2` is also the name of \
             tests/guests/pair.toml"
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn packages_are_built_once_per_system_and_named_by_their_path() {
        let root = scratch_workspace(
            "packages",
            &[
                ("tests/guests/systems/pair.toml", SYSTEM),
                ("tests/guests/systems/guest.bin", "raw guest code"),
                (
                    "tests/guests/a.toml",
                    "system = 'tests/guests/systems/pair.toml'\nexpect = ['x']\n",
                ),
                (
                    "tests/guests/b.toml",
                    "system = 'tests/guests/systems/pair.toml'\nexpect = ['y']\n",
                ),
            ],
        );
        let entries = load_all(&root, &discover(&root).unwrap());
        let packages = build_packages(&root, &entries);
        assert_eq!(packages.len(), 1);
        let built = packages[&(PathBuf::from("tests/guests/systems/pair.toml"), None)]
            .as_ref()
            .unwrap();
        assert_eq!(
            built,
            &root.join("target/packages/tests/guests/systems/pair.cpio")
        );
        let bytes = std::fs::read(built).unwrap();
        let inspection = package::inspect(&bytes);
        assert!(inspection.problems.is_empty(), "{:?}", inspection.problems);
        let entries = package::cpio::read(&bytes).unwrap();
        assert_eq!(entries[1].name, "vm/alpha/image");
        assert_eq!(entries[1].data, b"raw guest code");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_corrupt_scenario_boots_its_systems_package_corrupted() {
        let pair = "tests/guests/systems/pair.toml";
        let corrupt = |name: &str| {
            format!("system = '{pair}'\ncorrupt = '{name}'\nexit_status = 1\nexpect = ['x']\n")
        };
        let root = scratch_workspace(
            "corrupt",
            &[
                (pair, SYSTEM),
                ("tests/guests/systems/guest.bin", "raw guest code"),
                ("tests/guests/a.toml", &corrupt("zero-vms")),
                ("tests/guests/b.toml", &corrupt("zero-vms")),
                ("tests/guests/c.toml", &corrupt("non-hex-filesize")),
            ],
        );
        let entries = load_all(&root, &discover(&root).unwrap());
        let packages = build_packages(&root, &entries);
        // The system's own package, and one per corruption asked for.
        let keys: Vec<&PackageKey> = packages.keys().collect();
        assert_eq!(
            keys,
            [
                &(PathBuf::from(pair), None),
                &(PathBuf::from(pair), Some(Corruption::ZeroVms)),
                &(PathBuf::from(pair), Some(Corruption::NonHexFileSize)),
            ]
        );
        let good = packages[&(PathBuf::from(pair), None)].as_ref().unwrap();
        let good_bytes = std::fs::read(good).unwrap();
        assert!(package::inspect(&good_bytes).problems.is_empty());

        let zero_vms = packages[&(PathBuf::from(pair), Some(Corruption::ZeroVms))]
            .as_ref()
            .unwrap();
        assert_eq!(
            zero_vms,
            &root.join("target/corrupt-packages/zero-vms/tests/guests/systems/pair.cpio")
        );
        let bytes = std::fs::read(zero_vms).unwrap();
        assert_eq!(bytes, Corruption::ZeroVms.apply(&good_bytes).unwrap());
        assert_eq!(
            package::inspect(&bytes).problems,
            [
                "tessera/manifest.dtb: field vms: 0: a system with no VMs; it needs at least one; \
                 rebuild the package with `tessera package`"
            ]
        );
        let non_hex = packages[&(PathBuf::from(pair), Some(Corruption::NonHexFileSize))]
            .as_ref()
            .unwrap();
        assert_eq!(
            non_hex,
            &root.join("target/corrupt-packages/non-hex-filesize/tests/guests/systems/pair.cpio")
        );
        let problems = package::inspect(&std::fs::read(non_hex).unwrap()).problems;
        assert!(
            problems.len() == 1 && problems[0].contains("entry 1 at offset 0x"),
            "{problems:?}"
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_corruption_of_a_system_that_did_not_build_is_not_built() {
        let root = scratch_workspace(
            "corrupt-unbuilt",
            &[
                ("tests/guests/systems/pair.toml", SYSTEM),
                (
                    "tests/guests/a.toml",
                    "system = 'tests/guests/systems/pair.toml'\ncorrupt = 'zero-vms'\n\
                     exit_status = 1\nexpect = ['x']\n",
                ),
            ],
        );
        // No guest.bin: the system's package cannot be built.
        let entries = load_all(&root, &discover(&root).unwrap());
        let packages = build_packages(&root, &entries);
        let good = packages[&(PathBuf::from("tests/guests/systems/pair.toml"), None)]
            .as_ref()
            .unwrap_err();
        let corrupted = packages[&(
            PathBuf::from("tests/guests/systems/pair.toml"),
            Some(Corruption::ZeroVms),
        )]
            .as_ref()
            .unwrap_err();
        assert_eq!(corrupted, good);
        assert!(!root.join("target/corrupt-packages").exists());
        std::fs::remove_dir_all(root).unwrap();
    }
}
