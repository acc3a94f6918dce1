//! End-to-end scenario files (`tests/<dir>/<file>.toml`): parsing, and
//! validation that reports every mistake with its file, key and reason
//! before anything is built or booted. The format is documented in
//! `tests/README.md`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::machine::{Machine, PRESETS};
use crate::matcher::{Expectations, Pattern};
use crate::package::corpus::Corruption;
use crate::units::{format_size, parse_size};
use crate::variant::{SEMIHOSTING_FEATURE, Variant};

pub const DEFAULT_CPUS: u32 = 4;
pub const DEFAULT_TIMEOUT_SECS: u64 = 60;
/// Far above any sane scenario; catches a timeout given in milliseconds.
const MAX_TIMEOUT_SECS: u64 = 3600;

/// Forbidden in every scenario: a hypervisor panic is never expected.
const ALWAYS_FORBIDDEN: &[&str] = &["PANIC", "panicked at"];
/// Forbidden unless the scenario sets `allow_crash`, because it provokes a
/// crash report (and the guest's `FAIL` line that may come with it) on
/// purpose.
const CRASH_FORBIDDEN: &[&str] = &["CRASH REPORT", r"(^|\W)FAIL(\W|$)"];
/// Forbidden when the scenario boots a corrupted package (`corrupt`), which
/// the hypervisor must refuse before it builds any VM: the line that
/// follows building them, the line of each VM built (or stopped), and a
/// VM's output, which starts with its tag.
const CORRUPT_FORBIDDEN: &[&str] = &[r"VM\(s\) built", r"^tessera: vm ", r"^\[[^\]]*\] "];

/// QEMU options that the machine preset or a scenario key already sets;
/// giving them again in `qemu_args` would quietly contradict those.
const RESERVED_QEMU_OPTIONS: &[&str] = &["kernel", "M", "machine", "smp", "m", "cpu"];

/// The file as written. Integers are read as `i64` so range errors can be
/// reported here with the key's name rather than as a bare serde message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: Option<String>,
    description: Option<String>,
    machine: Option<Machine>,
    /// Names rather than [`Machine`]s, so a wrong one is reported with its
    /// entry number and the list of machines.
    machines: Option<Vec<String>>,
    system: Option<SystemKey>,
    /// A corruption's name; see [`Corruption`].
    corrupt: Option<String>,
    cpus: Option<i64>,
    memory: Option<String>,
    /// A QEMU CPU model instead of the machine's (`virt` machines only).
    cpu: Option<String>,
    #[serde(default)]
    features: Vec<String>,
    timeout_secs: Option<i64>,
    #[serde(default)]
    exit_status: i64,
    #[serde(default)]
    expect: Vec<PatternEntry>,
    #[serde(default)]
    expect_unordered: Vec<PatternEntry>,
    #[serde(default)]
    forbid: Vec<PatternEntry>,
    #[serde(default)]
    allow_crash: bool,
    #[serde(default)]
    qemu_args: Vec<String>,
}

/// `system = "PATH"` (one configuration, with `machine` or alone), or a
/// `[system]` table of one configuration per entry of `machines`.
#[derive(Debug)]
enum SystemKey {
    One(String),
    /// In the file's order.
    PerMachine(Vec<(String, String)>),
}

impl<'de> Deserialize<'de> for SystemKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SystemKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a path, or a table with one path per machine")
            }
            fn visit_str<E: serde::de::Error>(self, path: &str) -> Result<SystemKey, E> {
                Ok(SystemKey::One(path.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<SystemKey, A::Error> {
                let mut paths = Vec::new();
                while let Some(entry) = map.next_entry::<String, String>()? {
                    paths.push(entry);
                }
                Ok(SystemKey::PerMachine(paths))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// An entry of `expect`, `expect_unordered` or `forbid`: a pattern for
/// every machine of the scenario, or a table that limits it to some.
#[derive(Debug)]
struct PatternEntry {
    source: String,
    machines: Option<Vec<String>>,
}

/// `{ pattern = '...', machines = [...] }`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitedPattern {
    pattern: String,
    machines: Vec<String>,
}

impl<'de> Deserialize<'de> for PatternEntry {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = PatternEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a pattern, or a table { pattern = '...', machines = [...] }")
            }
            fn visit_str<E: serde::de::Error>(self, source: &str) -> Result<PatternEntry, E> {
                Ok(PatternEntry {
                    source: source.to_string(),
                    machines: None,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<PatternEntry, A::Error> {
                let limited =
                    LimitedPattern::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(PatternEntry {
                    source: limited.pattern,
                    machines: Some(limited.machines),
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// One run of a scenario: a scenario file runs once on its machine, or
/// once on each of its `machines`.
#[derive(Debug)]
pub struct Scenario {
    /// `<dir>-<file stem>` (or the file's `name`), followed by
    /// `-<machine>` when the file lists `machines`.
    pub name: String,
    /// As given to [`parse`]; relative to the workspace root.
    pub file: PathBuf,
    pub description: Option<String>,
    /// The system configuration booted, relative to the workspace root;
    /// its package is passed as QEMU's -initrd.
    pub system: Option<PathBuf>,
    /// Boot the system's package with this corruption applied, instead of
    /// the package itself.
    pub corrupt: Option<Corruption>,
    pub machine: Machine,
    pub cpus: u32,
    pub memory: Option<String>,
    /// Always includes semihosting, so the hypervisor's verdict reaches
    /// QEMU's exit status.
    pub variant: Variant,
    pub timeout: Duration,
    pub exit_status: i32,
    pub expectations: Expectations,
    pub qemu_args: Vec<String>,
    /// `cpu`: another CPU model than the machine's.
    pub cpu_model: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScenarioError {
    pub file: PathBuf,
    /// 1-based line and column, where the TOML parser knows them.
    pub position: Option<(usize, usize)>,
    pub key: Option<String>,
    pub reason: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        write!(f, "{}", self.reason)
    }
}

impl std::error::Error for ScenarioError {}

/// `tests/boot/virt-gicv3.toml` is `boot-virt-gicv3`: the directory keeps
/// names from different groups apart.
pub fn default_name(file: &Path) -> String {
    let stem = file
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default();
    match file.parent().and_then(Path::file_name) {
        Some(dir) => format!("{}-{stem}", dir.to_string_lossy()),
        None => stem,
    }
}

/// What a system configuration fixes about the machine it runs on; a
/// scenario that names the configuration takes these from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemMachine {
    pub machine: Machine,
    pub cpus: u32,
    /// QEMU's `-m`, where the machine takes one.
    pub qemu_memory: Option<String>,
    /// The configuration's `board.memory`, in bytes.
    pub memory: u64,
}

/// Loads the system configuration at a path relative to the workspace
/// root; the error is a reason for a message about the `system` key.
pub type SystemResolver<'a> = dyn FnMut(&Path) -> Result<SystemMachine, String> + 'a;

/// A key (with an entry number or machine where that helps) and a reason.
type KeyedReason = (String, String);

/// Where one run goes, as the file says it: the machine, if given (a
/// system configuration implies one), and the system booted, if any.
struct Placement {
    machine: Option<Machine>,
    system: Option<PathBuf>,
}

/// Parses and validates one scenario file into its runs: one, or one per
/// entry of `machines`, in that order. `file` is only used for messages
/// and the default name; `systems` loads the configurations the `system`
/// key names. A mistake in any part of the file fails the whole file.
pub fn parse(
    source: &str,
    file: &Path,
    systems: &mut SystemResolver<'_>,
) -> Result<Vec<Scenario>, ScenarioError> {
    let error = |(key, reason): KeyedReason| ScenarioError {
        file: file.to_path_buf(),
        position: None,
        key: Some(key),
        reason,
    };
    let keyed = |key: &'static str| move |reason: String| (key.to_string(), reason);

    let raw: ScenarioFile = toml::from_str(source).map_err(|err| toml_error(source, file, &err))?;

    let base_name = raw.name.clone().unwrap_or_else(|| default_name(file));
    check_name(&base_name).map_err(|reason| error(("name".into(), reason)))?;

    let listed = match &raw.machines {
        None => None,
        Some(names) => Some(check_machine_list(names).map_err(error)?),
    };
    let placements = placements(&raw, listed.as_deref()).map_err(error)?;
    let corrupt = match &raw.corrupt {
        None => None,
        Some(name) => Some(check_corrupt(name, &placements, raw.exit_status).map_err(error)?),
    };

    let cpus = match raw.cpus {
        None => None,
        Some(cpus) => Some(
            u32::try_from(cpus)
                .map_err(|_| error(("cpus".into(), format!("{cpus} is not a CPU count"))))?,
        ),
    };

    let timeout_secs = raw.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS as i64);
    if !(1..=MAX_TIMEOUT_SECS as i64).contains(&timeout_secs) {
        return Err(error((
            "timeout_secs".into(),
            format!("{timeout_secs} is outside 1 to {MAX_TIMEOUT_SECS} seconds"),
        )));
    }

    let exit_status = i32::try_from(raw.exit_status)
        .ok()
        .filter(|status| (0..=255).contains(status))
        .ok_or_else(|| {
            error((
                "exit_status".into(),
                format!(
                    "{} is not a process exit status (0 to 255)",
                    raw.exit_status
                ),
            ))
        })?;

    if raw.expect.is_empty() && raw.expect_unordered.is_empty() {
        return Err(error((
            "expect".into(),
            "no expected lines; a scenario passes only on positive evidence, \
             so give at least one line in expect or expect_unordered"
                .into(),
        )));
    }
    let ordered = compile_entries("expect", &raw.expect, listed.as_deref()).map_err(error)?;
    let unordered = compile_entries("expect_unordered", &raw.expect_unordered, listed.as_deref())
        .map_err(error)?;
    let forbidden = compile_entries("forbid", &raw.forbid, listed.as_deref()).map_err(error)?;
    let mut default_sources: Vec<String> = ALWAYS_FORBIDDEN.iter().map(|s| s.to_string()).collect();
    if !raw.allow_crash {
        default_sources.extend(CRASH_FORBIDDEN.iter().map(|s| s.to_string()));
    }
    if corrupt.is_some() {
        default_sources.extend(CORRUPT_FORBIDDEN.iter().map(|s| s.to_string()));
    }
    let default_forbidden = compile_patterns("default forbid", &default_sources)
        .expect("the default forbidden patterns are valid regexes");

    let mut runs = Vec::with_capacity(placements.len());
    for placement in placements {
        let (machine, cpus, memory) = resolve_machine(
            &placement,
            listed.is_some(),
            cpus,
            raw.memory.as_deref(),
            systems,
        )
        .map_err(error)?;
        // Where a file has several machines, a reason that depends on the
        // machine says which one it is about.
        let on_machine = |(key, reason): KeyedReason| match &listed {
            Some(_) => (format!("{key} (on {})", machine.name()), reason),
            None => (key, reason),
        };

        let variant = Variant::new(machine.board(), &raw.features)
            .map_err(keyed("features"))
            .map_err(error)?
            .with_feature(SEMIHOSTING_FEATURE);

        let expectations = Expectations {
            ordered: patterns_on(&ordered, machine),
            unordered: patterns_on(&unordered, machine),
            forbidden: {
                let mut patterns = patterns_on(&forbidden, machine);
                patterns.extend(default_forbidden.iter().cloned());
                patterns
            },
        };
        if expectations.ordered.is_empty() && expectations.unordered.is_empty() {
            return Err(error(on_machine((
                "expect".into(),
                "no expected lines on this machine; a scenario passes only on positive \
                 evidence, so give it at least one line in expect or expect_unordered"
                    .into(),
            ))));
        }

        if let Some(cpu) = &raw.cpu {
            let reason = if machine.preset().cpu_model.is_none() {
                Some(format!("{} has a fixed CPU model", machine.name()))
            } else if cpu.is_empty()
                || !cpu
                    .bytes()
                    .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
            {
                Some(format!(
                    "`{cpu}` is not a QEMU CPU model name (lowercase letters, digits and -)"
                ))
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(error(on_machine(("cpu".into(), reason))));
            }
        }

        check_qemu_args(
            &raw.qemu_args,
            placement.system.is_some().then_some(machine),
        )
        .map_err(keyed("qemu_args"))
        .map_err(|keyed| error(on_machine(keyed)))?;

        runs.push(Scenario {
            name: match &listed {
                Some(_) => format!("{base_name}-{}", machine.name()),
                None => base_name.clone(),
            },
            file: file.to_path_buf(),
            description: raw.description.clone(),
            system: placement.system,
            corrupt,
            machine,
            cpus,
            memory,
            variant,
            timeout: Duration::from_secs(timeout_secs as u64),
            exit_status,
            expectations,
            qemu_args: raw.qemu_args.clone(),
            cpu_model: raw.cpu.clone(),
        });
    }
    Ok(runs)
}

fn machine_names() -> String {
    PRESETS
        .iter()
        .map(|preset| preset.name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn machine_named(name: &str) -> Option<Machine> {
    PRESETS
        .iter()
        .find(|preset| preset.name == name)
        .map(|preset| preset.machine)
}

/// The `machines` list: known names, none twice, at least one.
fn check_machine_list(names: &[String]) -> Result<Vec<Machine>, KeyedReason> {
    if names.is_empty() {
        return Err((
            "machines".into(),
            "empty; list the machines to run on (or give one as machine)".into(),
        ));
    }
    let mut machines = Vec::with_capacity(names.len());
    for (index, name) in names.iter().enumerate() {
        let key = format!("machines, entry {}", index + 1);
        let machine = machine_named(name).ok_or_else(|| {
            (
                key.clone(),
                format!("`{name}` is not a machine (one of {})", machine_names()),
            )
        })?;
        if machines.contains(&machine) {
            return Err((key, format!("`{name}` is listed twice")));
        }
        machines.push(machine);
    }
    Ok(machines)
}

/// Pairs each run's machine with its system configuration. With
/// `machines`, `system` (if given) is a table with one configuration for
/// each of them; otherwise it is one path, and `machine` may be left to it.
fn placements(
    raw: &ScenarioFile,
    listed: Option<&[Machine]>,
) -> Result<Vec<Placement>, KeyedReason> {
    let system_path = |key: String, text: &str| check_system_path(text).map_err(|r| (key, r));
    let Some(listed) = listed else {
        let system = match &raw.system {
            None => None,
            Some(SystemKey::One(text)) => Some(system_path("system".into(), text)?),
            Some(SystemKey::PerMachine(_)) => {
                return Err((
                    "system".into(),
                    "a table of configurations, one per machine, goes with machines = [...]; \
                     for one machine give one path"
                        .into(),
                ));
            }
        };
        if raw.machine.is_none() && system.is_none() {
            return Err((
                "machine".into(),
                "missing; give machine, or system to boot a system configuration".into(),
            ));
        }
        return Ok(vec![Placement {
            machine: raw.machine,
            system,
        }]);
    };
    if raw.machine.is_some() {
        return Err((
            "machines".into(),
            "give machine (one) or machines (a list), not both".into(),
        ));
    }
    let paths = match &raw.system {
        None => {
            return Ok(listed
                .iter()
                .map(|&machine| Placement {
                    machine: Some(machine),
                    system: None,
                })
                .collect());
        }
        Some(SystemKey::One(text)) => {
            return Err((
                "system".into(),
                format!(
                    "`{text}` is one configuration, which runs on one machine; with machines, \
                     give a [system] table with a configuration for each of {}",
                    listed
                        .iter()
                        .map(|machine| machine.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Some(SystemKey::PerMachine(paths)) => paths,
    };
    for (name, _) in paths {
        if !machine_named(name).is_some_and(|machine| listed.contains(&machine)) {
            return Err((
                format!("system.{name}"),
                "not one of this scenario's machines".into(),
            ));
        }
    }
    listed
        .iter()
        .map(|&machine| {
            let (_, text) = paths
                .iter()
                .find(|(name, _)| name == machine.name())
                .ok_or_else(|| {
                    (
                        "system".into(),
                        format!("no configuration for {}", machine.name()),
                    )
                })?;
            Ok(Placement {
                machine: Some(machine),
                system: Some(system_path(format!("system.{}", machine.name()), text)?),
            })
        })
        .collect()
}

/// The `corrupt` key: a corruption of the corpus, applied to a system's
/// package, which the hypervisor must refuse, so the run must end with a
/// failure status.
fn check_corrupt(
    name: &str,
    placements: &[Placement],
    exit_status: i64,
) -> Result<Corruption, KeyedReason> {
    let corruption = Corruption::named(name).ok_or_else(|| {
        (
            "corrupt".to_string(),
            format!(
                "`{name}` is not a corruption (one of {})",
                Corruption::names()
            ),
        )
    })?;
    if placements
        .iter()
        .any(|placement| placement.system.is_none())
    {
        return Err((
            "corrupt".into(),
            "corrupts the package of the system booted, and this scenario boots none; give \
             system (or, with machines, a [system] table)"
                .into(),
        ));
    }
    if exit_status == 0 {
        return Err((
            "exit_status".into(),
            "0 (the default) is a clean run, but a corrupted package is refused and the \
             hypervisor powers off with status 1; give exit_status = 1"
                .into(),
        ));
    }
    Ok(corruption)
}

/// The machine, CPU count and QEMU memory of one run; `several` when the
/// file lists `machines`, and so gives a configuration per machine.
fn resolve_machine(
    placement: &Placement,
    several: bool,
    cpus: Option<u32>,
    memory: Option<&str>,
    systems: &mut SystemResolver<'_>,
) -> Result<(Machine, u32, Option<String>), KeyedReason> {
    let Some(path) = &placement.system else {
        let machine = placement
            .machine
            .expect("a run without a system has its machine");
        let cpus = cpus.unwrap_or(DEFAULT_CPUS);
        machine
            .check_topology(cpus, None)
            .map_err(|reason| ("cpus".to_string(), reason))?;
        if let Some(memory) = memory {
            machine
                .check_topology(cpus, Some(memory))
                .map_err(|reason| ("memory".to_string(), reason))?;
        }
        return Ok((machine, cpus, memory.map(str::to_string)));
    };
    let Some(machine) = placement.machine.filter(|_| several) else {
        let fixed = systems(path).map_err(|reason| ("system".to_string(), reason))?;
        check_consistent_with_system(path, &fixed, placement.machine, cpus, memory)
            .map_err(|(key, reason)| (key.to_string(), reason))?;
        return Ok((fixed.machine, fixed.cpus, fixed.qemu_memory));
    };
    // The configuration was chosen for this machine, so a board that runs
    // elsewhere is a mistake in the [system] table, not in machines.
    let key = format!("system.{}", machine.name());
    let fixed = systems(path).map_err(|reason| (key.clone(), reason))?;
    if fixed.machine != machine {
        return Err((
            key,
            format!(
                "{} runs on {} (its board), not {}",
                path.display(),
                fixed.machine.name(),
                machine.name()
            ),
        ));
    }
    check_consistent_with_system(path, &fixed, None, cpus, memory)
        .map_err(|(key, reason)| (key.to_string(), reason))?;
    Ok((fixed.machine, fixed.cpus, fixed.qemu_memory))
}

/// Names become log file names, so they stay plain.
fn check_name(name: &str) -> Result<(), String> {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if plain {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a plain name (letters, digits, `.`, `_` and `-`; not starting with `.`)"
        ))
    }
}

/// A compiled pattern, and the machines it is checked on (`None`: all).
struct CompiledEntry {
    pattern: Pattern,
    machines: Option<Vec<Machine>>,
}

/// Compiles a pattern list; `listed` is the file's `machines`, which the
/// machines of a limited entry must come from. On failure, returns the key
/// (with the 1-based entry number) and reason.
fn compile_entries(
    key: &str,
    entries: &[PatternEntry],
    listed: Option<&[Machine]>,
) -> Result<Vec<CompiledEntry>, KeyedReason> {
    let sources: Vec<String> = entries.iter().map(|entry| entry.source.clone()).collect();
    let patterns = compile_patterns(key, &sources)?;
    entries
        .iter()
        .zip(patterns)
        .enumerate()
        .map(|(index, (entry, pattern))| {
            let machines = match &entry.machines {
                None => None,
                Some(names) => Some(
                    check_limited_machines(names, listed)
                        .map_err(|reason| (format!("{key}, entry {}", index + 1), reason))?,
                ),
            };
            Ok(CompiledEntry { pattern, machines })
        })
        .collect()
}

/// The `machines` of one pattern: some of the scenario's own, none twice.
fn check_limited_machines(
    names: &[String],
    listed: Option<&[Machine]>,
) -> Result<Vec<Machine>, String> {
    let Some(listed) = listed else {
        return Err(
            "machines: this scenario runs on one machine; a pattern can be limited to \
             some machines only in a file with machines = [...]"
                .into(),
        );
    };
    if names.is_empty() {
        return Err("machines: empty; the pattern would never be checked".into());
    }
    let mut machines = Vec::with_capacity(names.len());
    for name in names {
        let machine = machine_named(name)
            .filter(|machine| listed.contains(machine))
            .ok_or_else(|| format!("machines: `{name}` is not one of this scenario's machines"))?;
        if machines.contains(&machine) {
            return Err(format!("machines: `{name}` is listed twice"));
        }
        machines.push(machine);
    }
    if machines.len() == listed.len() {
        return Err(
            "machines: names every machine of the scenario; write the pattern as a plain string"
                .into(),
        );
    }
    Ok(machines)
}

/// The patterns checked on `machine`, in the file's order.
fn patterns_on(entries: &[CompiledEntry], machine: Machine) -> Vec<Pattern> {
    entries
        .iter()
        .filter(|entry| {
            entry
                .machines
                .as_ref()
                .is_none_or(|machines| machines.contains(&machine))
        })
        .map(|entry| entry.pattern.clone())
        .collect()
}

/// On failure, returns the key (with the 1-based entry number) and reason.
fn compile_patterns(key: &str, sources: &[String]) -> Result<Vec<Pattern>, (String, String)> {
    sources
        .iter()
        .enumerate()
        .map(|(index, source)| {
            if source.is_empty() {
                return Err((
                    format!("{key}, entry {}", index + 1),
                    "empty pattern; it would match every line".into(),
                ));
            }
            Pattern::new(source).map_err(|err| {
                (
                    format!("{key}, entry {}", index + 1),
                    format!("invalid regex /{source}/: {}", regex_reason(&err)),
                )
            })
        })
        .collect()
}

/// The regex crate's syntax errors are a multi-line picture ending in an
/// `error: ...` line; that last line is the part that fits in a message.
fn regex_reason(err: &regex::Error) -> String {
    let text = err.to_string();
    text.lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .map(|line| line.trim().trim_start_matches("error: ").to_string())
        .unwrap_or(text)
}

/// `system_machine` is the machine a system configuration runs on, when
/// the scenario boots one.
fn check_qemu_args(args: &[String], system_machine: Option<Machine>) -> Result<(), String> {
    for arg in args {
        let option = arg.trim_start_matches('-');
        if !arg.starts_with('-') {
            continue;
        }
        if RESERVED_QEMU_OPTIONS.contains(&option) {
            return Err(format!(
                "`{arg}` is set by the runner from the machine preset and the \
                 scenario's keys (machine, cpus, memory, cpu); do not pass it here"
            ));
        }
        let Some(machine) = system_machine else {
            continue;
        };
        if option == "initrd" {
            return Err(format!(
                "`{arg}` is set by the runner to the system's package; do not pass it here"
            ));
        }
        if option == "dtb" && machine.preset().firmware_tree.is_some() {
            return Err(format!(
                "`{arg}` is set by the runner to the {} firmware device tree, which tells \
                 the hypervisor where the system's package is; do not pass it here",
                machine.name()
            ));
        }
    }
    Ok(())
}

/// A system configuration's path as a scenario gives it: relative to the
/// workspace root, and not where a scenario would be, or the runner would
/// also take it for one.
fn check_system_path(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    let plain = path
        .components()
        .all(|part| matches!(part, std::path::Component::Normal(_)));
    if text.is_empty() || !plain {
        return Err(format!(
            "`{text}` is not a plain path relative to the workspace root (no leading /, no ..)"
        ));
    }
    if path.extension().is_none_or(|ext| ext != "toml") {
        return Err(format!("`{text}` is not a .toml file"));
    }
    let parts: Vec<_> = path.components().collect();
    if parts.len() == 3 && parts[0].as_os_str() == "tests" {
        return Err(format!(
            "`{text}` is where scenario files live (tests/<dir>/*.toml); put system \
             configurations in a deeper directory, e.g. tests/<dir>/systems/"
        ));
    }
    Ok(path)
}

/// With a system configuration, machine, cpus and memory come from it;
/// the scenario may repeat them but not contradict them. On failure,
/// returns the key and the reason.
fn check_consistent_with_system(
    path: &Path,
    fixed: &SystemMachine,
    machine: Option<Machine>,
    cpus: Option<u32>,
    memory: Option<&str>,
) -> Result<(), (&'static str, String)> {
    let shown = path.display();
    if let Some(machine) = machine
        && machine != fixed.machine
    {
        return Err((
            "machine",
            format!(
                "{} conflicts with {shown}, whose board runs on {}; leave machine out",
                machine.name(),
                fixed.machine.name()
            ),
        ));
    }
    if let Some(cpus) = cpus
        && cpus != fixed.cpus
    {
        return Err((
            "cpus",
            format!(
                "{cpus} conflicts with board.cpus = {} in {shown}; leave cpus out",
                fixed.cpus
            ),
        ));
    }
    if let Some(memory) = memory {
        let bytes = parse_size(memory).map_err(|reason| ("memory", reason))?;
        if bytes != fixed.memory {
            return Err((
                "memory",
                format!(
                    "{memory} conflicts with board.memory = {} in {shown}; leave memory out",
                    format_size(fixed.memory)
                ),
            ));
        }
    }
    Ok(())
}

/// Turns a TOML or serde error into one line with its position. Type
/// errors do not name their key, so it is read off the source line.
fn toml_error(source: &str, file: &Path, err: &toml::de::Error) -> ScenarioError {
    let position = err.span().map(|span| line_and_column(source, span.start));
    let message = err.message().trim().to_string();
    let key = match (err.span(), message.starts_with("invalid")) {
        (Some(span), true) => key_before(source, span.start),
        _ => None,
    };
    ScenarioError {
        file: file.to_path_buf(),
        position,
        key,
        reason: message,
    }
}

pub(crate) fn line_and_column(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The key of the nearest `key = ...` line at or above `offset`, which is
/// the key whose value holds `offset` (arrays may span several lines).
fn key_before(source: &str, offset: usize) -> Option<String> {
    let before = &source[..offset.min(source.len())];
    let line_end = source[before.len()..]
        .find('\n')
        .map_or(source.len(), |i| before.len() + i);
    source[..line_end].lines().rev().find_map(|line| {
        let (key, _) = line.split_once('=')?;
        let key = key.trim();
        let plain = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        plain.then(|| key.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "tests/boot/virt-gicv3.toml";

    /// Two known configurations; any other path cannot be read.
    fn systems(path: &Path) -> Result<SystemMachine, String> {
        match path.to_str() {
            Some("tests/guests/systems/two-vms.toml") => Ok(SystemMachine {
                machine: Machine::VirtGicv3,
                cpus: 4,
                qemu_memory: Some("1024M".into()),
                memory: 1 << 30,
            }),
            Some("tests/guests/systems/two-vms-gicv2.toml") => Ok(SystemMachine {
                machine: Machine::VirtGicv2,
                cpus: 4,
                qemu_memory: Some("1024M".into()),
                memory: 1 << 30,
            }),
            Some("tests/guests/systems/pi.toml") => Ok(SystemMachine {
                machine: Machine::Raspi4b,
                cpus: 4,
                qemu_memory: None,
                memory: 948 << 20,
            }),
            _ => Err(format!("{}: cannot read: No such file", path.display())),
        }
    }

    fn parse_runs(source: &str) -> Vec<Scenario> {
        parse(source, Path::new(FILE), &mut systems).unwrap_or_else(|err| panic!("{err}"))
    }

    /// A file with one run, that run.
    fn parse_ok(source: &str) -> Scenario {
        let mut runs = parse_runs(source);
        assert_eq!(runs.len(), 1, "{runs:?}");
        runs.remove(0)
    }

    fn parse_err(source: &str) -> String {
        parse(source, Path::new(FILE), &mut systems)
            .unwrap_err()
            .to_string()
    }

    const FULL: &str = r#"
name = "boot-virt-gicv3"
description = "4 CPUs come online and the EL2 timer ticks on each"
machine = "virt-gicv3"
cpus = 4
features = ["semihosting"]
timeout_secs = 30
exit_status = 0
expect = [
  'Tessera \d+\.\d+\.\d+ .* on qemu-virt',
  'cpu 0 online',
]
expect_unordered = ['cpu 1 online', 'cpu 2 online']
forbid = []
allow_crash = false
qemu_args = ["-dtb", "tests/boot/board.dtb"]
"#;

    #[test]
    fn full_example_parses() {
        let scenario = parse_ok(FULL);
        assert_eq!(scenario.name, "boot-virt-gicv3");
        assert_eq!(scenario.machine, Machine::VirtGicv3);
        assert_eq!(scenario.cpus, 4);
        assert_eq!(scenario.variant.name(), "virt-semihosting");
        assert_eq!(scenario.timeout, Duration::from_secs(30));
        assert_eq!(scenario.exit_status, 0);
        assert_eq!(scenario.expectations.ordered.len(), 2);
        assert_eq!(scenario.expectations.unordered.len(), 2);
        assert_eq!(scenario.qemu_args, ["-dtb", "tests/boot/board.dtb"]);
    }

    #[test]
    fn defaults() {
        let scenario = parse_ok("machine = 'raspi4b'\nexpect = ['hello']\n");
        assert_eq!(scenario.name, "boot-virt-gicv3");
        assert_eq!(scenario.cpus, DEFAULT_CPUS);
        assert_eq!(scenario.timeout, Duration::from_secs(DEFAULT_TIMEOUT_SECS));
        assert_eq!(scenario.exit_status, 0);
        assert_eq!(scenario.variant.name(), "rpi4-semihosting");
        assert!(scenario.qemu_args.is_empty());
    }

    #[test]
    fn semihosting_is_added_to_the_features() {
        let scenario = parse_ok("machine = 'virt-gicv2'\nfeatures = ['zz']\nexpect = ['x']\n");
        assert_eq!(scenario.variant.name(), "virt-semihosting-zz");
    }

    fn forbidden_sources(scenario: &Scenario) -> Vec<&str> {
        scenario
            .expectations
            .forbidden
            .iter()
            .map(Pattern::source)
            .collect()
    }

    #[test]
    fn default_forbids_are_always_added() {
        let scenario = parse_ok("machine = 'virt-gicv3'\nexpect = ['x']\nforbid = ['oops']\n");
        assert_eq!(
            forbidden_sources(&scenario),
            [
                "oops",
                "PANIC",
                "panicked at",
                "CRASH REPORT",
                r"(^|\W)FAIL(\W|$)"
            ]
        );
    }

    #[test]
    fn allow_crash_drops_crash_report_and_fail_but_not_panics() {
        let scenario = parse_ok("machine = 'virt-gicv3'\nexpect = ['x']\nallow_crash = true\n");
        assert_eq!(forbidden_sources(&scenario), ["PANIC", "panicked at"]);
    }

    #[test]
    fn unknown_key_names_file_position_and_key() {
        let err = parse_err("machine = 'virt-gicv3'\nexpect = ['x']\nexpected = ['y']\n");
        assert!(
            err.starts_with("tests/boot/virt-gicv3.toml:3:1: unknown field `expected`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_machine() {
        let err = parse_err("machine = 'virt'\nexpect = ['x']\n");
        assert!(
            err.starts_with("tests/boot/virt-gicv3.toml:1:11: unknown variant `virt`"),
            "{err}"
        );
    }

    #[test]
    fn missing_machine() {
        let err = parse_err("expect = ['x']\n");
        assert_eq!(
            err,
            "tests/boot/virt-gicv3.toml: machine: missing; give machine, or system to boot a system configuration"
        );
    }

    #[test]
    fn a_system_gives_machine_cpus_and_memory() {
        let scenario = parse_ok("system = 'tests/guests/systems/two-vms.toml'\nexpect = ['x']\n");
        assert_eq!(
            scenario.system.as_deref(),
            Some(Path::new("tests/guests/systems/two-vms.toml"))
        );
        assert_eq!(scenario.machine, Machine::VirtGicv3);
        assert_eq!(scenario.cpus, 4);
        assert_eq!(scenario.memory.as_deref(), Some("1024M"));
        assert_eq!(scenario.variant.name(), "virt-semihosting");

        let pi = parse_ok("system = 'tests/guests/systems/pi.toml'\nexpect = ['x']\n");
        assert_eq!(pi.machine, Machine::Raspi4b);
        assert_eq!(pi.memory, None);
        assert_eq!(pi.variant.name(), "rpi4-semihosting");
    }

    #[test]
    fn a_system_may_be_repeated_but_not_contradicted() {
        let base = "system = 'tests/guests/systems/two-vms.toml'\nexpect = ['x']\n";
        let same = parse_ok(&format!(
            "{base}machine = 'virt-gicv3'\ncpus = 4\nmemory = '1G'\n"
        ));
        assert_eq!(same.memory.as_deref(), Some("1024M"));
        let cases = [
            (
                "machine = 'virt-gicv2'",
                "machine: virt-gicv2 conflicts with tests/guests/systems/two-vms.toml, \
                 whose board runs on virt-gicv3; leave machine out",
            ),
            (
                "cpus = 2",
                "cpus: 2 conflicts with board.cpus = 4 in tests/guests/systems/two-vms.toml; \
                 leave cpus out",
            ),
            (
                "memory = '2G'",
                "memory: 2G conflicts with board.memory = 1G in tests/guests/systems/two-vms.toml; \
                 leave memory out",
            ),
            (
                "qemu_args = ['-initrd', 'x.cpio']",
                "qemu_args: `-initrd` is set by the runner to the system's package; do not pass it here",
            ),
        ];
        for (extra, reason) in cases {
            assert_eq!(
                parse_err(&format!("{base}{extra}\n")),
                format!("tests/boot/virt-gicv3.toml: {reason}")
            );
        }
        // Without a system, -initrd is the scenario's own business.
        let own =
            parse_ok("machine = 'virt-gicv3'\nexpect = ['x']\nqemu_args = ['-initrd', 'x']\n");
        assert_eq!(own.system, None);
    }

    #[test]
    fn a_raspi4b_system_takes_its_device_tree_from_the_runner() {
        let pi = "system = 'tests/guests/systems/pi.toml'\nexpect = ['x']\n";
        assert_eq!(
            parse_err(&format!("{pi}qemu_args = ['-dtb', 'board.dtb']\n")),
            "tests/boot/virt-gicv3.toml: qemu_args: `-dtb` is set by the runner to the raspi4b \
             firmware device tree, which tells the hypervisor where the system's package is; \
             do not pass it here"
        );
        // QEMU writes virt's device tree itself, and without a system the
        // runner passes no package: there -dtb is the scenario's business.
        let with_dtb = "expect = ['x']\nqemu_args = ['-dtb', 'board.dtb']\n";
        parse_ok(&format!(
            "system = 'tests/guests/systems/two-vms.toml'\n{with_dtb}"
        ));
        parse_ok(&format!("machine = 'raspi4b'\n{with_dtb}"));
    }

    #[test]
    fn system_paths() {
        let cases = [
            (
                "tests/guests/two-vms.toml",
                "`tests/guests/two-vms.toml` is where scenario files live (tests/<dir>/*.toml); \
                 put system configurations in a deeper directory, e.g. tests/<dir>/systems/",
            ),
            (
                "/abs/x.toml",
                "`/abs/x.toml` is not a plain path relative to the workspace root (no leading /, no ..)",
            ),
            (
                "tests/../x.toml",
                "`tests/../x.toml` is not a plain path relative to the workspace root (no leading /, no ..)",
            ),
            (
                "systems/demo.yaml",
                "`systems/demo.yaml` is not a .toml file",
            ),
            (
                "systems/none.toml",
                "systems/none.toml: cannot read: No such file",
            ),
        ];
        for (path, reason) in cases {
            assert_eq!(
                parse_err(&format!("system = '{path}'\nexpect = ['x']\n")),
                format!("tests/boot/virt-gicv3.toml: system: {reason}")
            );
        }
    }

    #[test]
    fn type_errors_name_the_key_even_inside_multiline_arrays() {
        let err = parse_err("machine = 'virt-gicv3'\ncpus = 'four'\nexpect = ['x']\n");
        assert!(
            err.starts_with("tests/boot/virt-gicv3.toml:2:8: cpus: invalid type"),
            "{err}"
        );
        let err = parse_err("machine = 'virt-gicv3'\nexpect = [\n  'a',\n  3,\n]\n");
        assert!(
            err.starts_with("tests/boot/virt-gicv3.toml:4:3: expect: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn bad_regex_names_key_entry_and_reason() {
        let err = parse_err("machine = 'virt-gicv3'\nexpect = ['ok', 'cpu (0 online']\n");
        assert_eq!(
            err,
            "tests/boot/virt-gicv3.toml: expect, entry 2: invalid regex /cpu (0 online/: unclosed group"
        );
        let err = parse_err("machine = 'virt-gicv3'\nexpect = ['x']\nforbid = ['[']\n");
        assert!(
            err.contains(": forbid, entry 1: invalid regex /[/"),
            "{err}"
        );
    }

    #[test]
    fn empty_pattern_is_rejected() {
        let err = parse_err("machine = 'virt-gicv3'\nexpect_unordered = ['']\n");
        assert!(
            err.contains("expect_unordered, entry 1: empty pattern"),
            "{err}"
        );
    }

    #[test]
    fn a_scenario_must_expect_something() {
        let err = parse_err("machine = 'virt-gicv3'\n");
        assert!(err.contains(": expect: no expected lines"), "{err}");
    }

    #[test]
    fn raspi4b_cpus_must_be_four() {
        let err = parse_err("machine = 'raspi4b'\ncpus = 2\nexpect = ['x']\n");
        assert_eq!(
            err,
            "tests/boot/virt-gicv3.toml: cpus: raspi4b always has 4 CPUs; 2 were asked for"
        );
    }

    #[test]
    fn range_checks_name_their_keys() {
        let base = "machine = 'virt-gicv3'\nexpect = ['x']\n";
        let cases = [
            ("cpus = -1", "cpus: -1 is not a CPU count"),
            ("cpus = 0", "cpus: virt-gicv3 takes 1 to 512 CPUs"),
            ("timeout_secs = 0", "timeout_secs: 0 is outside"),
            ("timeout_secs = 30000", "timeout_secs: 30000 is outside"),
            (
                "exit_status = 256",
                "exit_status: 256 is not a process exit status",
            ),
            ("exit_status = -1", "exit_status: -1 is not"),
            ("memory = '1GB'", "memory: memory size `1GB`"),
            ("name = 'a/b'", "name: `a/b` is not a plain name"),
            (
                "features = ['board-rpi4']",
                "features: feature `board-rpi4` selects a board",
            ),
            (
                "qemu_args = ['-smp', '2']",
                "qemu_args: `-smp` is set by the runner",
            ),
            (
                "qemu_args = ['--kernel', 'x']",
                "qemu_args: `--kernel` is set",
            ),
        ];
        for (extra, expected) in cases {
            let err = parse_err(&format!("{base}{extra}\n"));
            assert!(err.contains(expected), "{extra}: {err}");
        }
    }

    #[test]
    fn qemu_arg_values_may_look_like_reserved_words() {
        let scenario =
            parse_ok("machine = 'virt-gicv3'\nexpect = ['x']\nqemu_args = ['-append', 'm']\n");
        assert_eq!(scenario.qemu_args, ["-append", "m"]);
    }

    #[test]
    fn a_cpu_model_is_kept_on_virt_and_refused_where_the_machine_fixes_it() {
        let scenario = parse_ok("machine = 'virt-gicv3'\nexpect = ['x']\ncpu = 'neoverse-n1'\n");
        assert_eq!(scenario.cpu_model.as_deref(), Some("neoverse-n1"));
        let err = parse_err("machine = 'raspi4b'\nexpect = ['x']\ncpu = 'neoverse-n1'\n");
        assert!(err.contains("cpu: raspi4b has a fixed CPU model"), "{err}");
        let err = parse_err("machine = 'virt-gicv3'\nexpect = ['x']\ncpu = 'max,sve=off'\n");
        assert!(
            err.contains("cpu: `max,sve=off` is not a QEMU CPU model name"),
            "{err}"
        );
        let err =
            parse_err("machine = 'virt-gicv3'\nexpect = ['x']\nqemu_args = ['-cpu', 'max']\n");
        assert!(
            err.contains("qemu_args: `-cpu` is set by the runner"),
            "{err}"
        );
    }

    #[test]
    fn memory_is_kept() {
        let scenario = parse_ok("machine = 'virt-gicv3'\nexpect = ['x']\nmemory = '2G'\n");
        assert_eq!(scenario.memory.as_deref(), Some("2G"));
    }

    #[test]
    fn default_name_uses_the_directory() {
        assert_eq!(
            default_name(Path::new("tests/shmem/ping.toml")),
            "shmem-ping"
        );
        assert_eq!(default_name(Path::new("ping.toml")), "ping");
    }

    const PSCI: &str = "tests/guests/psci.toml";

    fn parse_file(file: &str, source: &str) -> Result<Vec<Scenario>, String> {
        parse(source, Path::new(file), &mut systems).map_err(|err| err.to_string())
    }

    fn names(runs: &[Scenario]) -> Vec<&str> {
        runs.iter().map(|run| run.name.as_str()).collect()
    }

    fn sources(patterns: &[Pattern]) -> Vec<&str> {
        patterns.iter().map(Pattern::source).collect()
    }

    #[test]
    fn a_file_with_machines_runs_once_per_machine_in_order() {
        let runs = parse_file(
            PSCI,
            "machines = ['virt-gicv3', 'virt-gicv2', 'raspi4b']\ncpus = 4\ntimeout_secs = 9\n\
             expect = ['x']\n",
        )
        .unwrap();
        assert_eq!(
            names(&runs),
            [
                "guests-psci-virt-gicv3",
                "guests-psci-virt-gicv2",
                "guests-psci-raspi4b"
            ]
        );
        let machines: Vec<Machine> = runs.iter().map(|run| run.machine).collect();
        assert_eq!(
            machines,
            [Machine::VirtGicv3, Machine::VirtGicv2, Machine::Raspi4b]
        );
        let variants: Vec<String> = runs.iter().map(|run| run.variant.name()).collect();
        assert_eq!(
            variants,
            ["virt-semihosting", "virt-semihosting", "rpi4-semihosting"]
        );
        for run in &runs {
            assert_eq!(run.cpus, 4);
            assert_eq!(run.timeout, Duration::from_secs(9));
            assert_eq!(run.file, Path::new(PSCI));
            assert_eq!(sources(&run.expectations.ordered), ["x"]);
        }
    }

    #[test]
    fn a_given_name_also_takes_the_machine() {
        let runs = parse_file(
            "tests/boot/virt.toml",
            "name = 'boot'\nmachines = ['virt-gicv3', 'virt-gicv2']\nexpect = ['x']\n",
        )
        .unwrap();
        assert_eq!(names(&runs), ["boot-virt-gicv3", "boot-virt-gicv2"]);
        // One machine in a list is still named after it.
        let runs = parse_file(PSCI, "machines = ['raspi4b']\nexpect = ['x']\n").unwrap();
        assert_eq!(names(&runs), ["guests-psci-raspi4b"]);
        // With machine, the name is the file's, as before.
        let runs = parse_file(PSCI, "machine = 'raspi4b'\nexpect = ['x']\n").unwrap();
        assert_eq!(names(&runs), ["guests-psci"]);
    }

    #[test]
    fn patterns_can_be_limited_to_some_machines() {
        let runs = parse_file(
            PSCI,
            r#"
machines = ['virt-gicv3', 'virt-gicv2', 'raspi4b']
expect = [
  { pattern = 'banner', machines = ['raspi4b'] },
  'common',
  { pattern = 'virt only', machines = ['virt-gicv3', 'virt-gicv2'] },
  'last',
]
expect_unordered = [{ pattern = 'v2 any order', machines = ['virt-gicv2'] }]
forbid = ['ERROR', { pattern = 'no system package', machines = ['raspi4b'] }]
"#,
        )
        .unwrap();
        let [v3, v2, pi] = &runs[..] else {
            panic!("{runs:?}");
        };
        assert_eq!(
            sources(&v3.expectations.ordered),
            ["common", "virt only", "last"]
        );
        assert_eq!(
            sources(&v2.expectations.ordered),
            ["common", "virt only", "last"]
        );
        assert_eq!(
            sources(&pi.expectations.ordered),
            ["banner", "common", "last"]
        );
        assert!(v3.expectations.unordered.is_empty());
        assert_eq!(sources(&v2.expectations.unordered), ["v2 any order"]);
        assert!(pi.expectations.unordered.is_empty());
        let defaults = ["PANIC", "panicked at", "CRASH REPORT", r"(^|\W)FAIL(\W|$)"];
        assert_eq!(
            sources(&v3.expectations.forbidden),
            [&["ERROR"][..], &defaults].concat()
        );
        assert_eq!(
            sources(&pi.expectations.forbidden),
            [&["ERROR", "no system package"][..], &defaults].concat()
        );
    }

    const SYSTEM_TABLE: &str = "\
machines = ['virt-gicv3', 'virt-gicv2', 'raspi4b']
expect = ['x']

[system]
raspi4b = 'tests/guests/systems/pi.toml'
virt-gicv3 = 'tests/guests/systems/two-vms.toml'
virt-gicv2 = 'tests/guests/systems/two-vms-gicv2.toml'
";

    #[test]
    fn each_machine_boots_its_own_system() {
        let runs = parse_file(PSCI, SYSTEM_TABLE).unwrap();
        // In the order of machines, not of the table.
        assert_eq!(
            names(&runs),
            [
                "guests-psci-virt-gicv3",
                "guests-psci-virt-gicv2",
                "guests-psci-raspi4b"
            ]
        );
        let systems: Vec<&Path> = runs
            .iter()
            .map(|run| run.system.as_deref().unwrap())
            .collect();
        assert_eq!(
            systems,
            [
                Path::new("tests/guests/systems/two-vms.toml"),
                Path::new("tests/guests/systems/two-vms-gicv2.toml"),
                Path::new("tests/guests/systems/pi.toml"),
            ]
        );
        assert_eq!(runs[1].machine, Machine::VirtGicv2);
        assert_eq!(runs[1].memory.as_deref(), Some("1024M"));
        assert_eq!(runs[2].memory, None);
        assert_eq!(runs[2].variant.name(), "rpi4-semihosting");
    }

    #[test]
    fn a_machine_list_is_checked() {
        let cases = [
            (
                "machines = []",
                "machines: empty; list the machines to run on (or give one as machine)",
            ),
            (
                "machines = ['virt-gicv3', 'virt']",
                "machines, entry 2: `virt` is not a machine (one of virt-gicv3, virt-gicv2, \
                 raspi4b, virt-el1)",
            ),
            (
                "machines = ['virt-gicv2', 'raspi4b', 'virt-gicv2']",
                "machines, entry 3: `virt-gicv2` is listed twice",
            ),
            (
                "machine = 'raspi4b'\nmachines = ['raspi4b']",
                "machines: give machine (one) or machines (a list), not both",
            ),
            (
                "machines = ['virt-gicv3', 'raspi4b']\ncpus = 2",
                "cpus: raspi4b always has 4 CPUs; 2 were asked for",
            ),
        ];
        for (keys, reason) in cases {
            assert_eq!(
                parse_file(PSCI, &format!("{keys}\nexpect = ['x']\n")).unwrap_err(),
                format!("{PSCI}: {reason}"),
                "{keys}"
            );
        }
        let err = parse_file(PSCI, "machines = 'virt-gicv3'\nexpect = ['x']\n").unwrap_err();
        assert!(
            err.starts_with(&format!("{PSCI}:1:12: machines: invalid type: string")),
            "{err}"
        );
    }

    #[test]
    fn systems_go_one_per_machine() {
        let two_vms = "tests/guests/systems/two-vms.toml";
        let cases = [
            (
                format!("machines = ['virt-gicv3', 'virt-gicv2']\nsystem = '{two_vms}'\n"),
                format!(
                    "system: `{two_vms}` is one configuration, which runs on one machine; with \
                     machines, give a [system] table with a configuration for each of \
                     virt-gicv3, virt-gicv2"
                ),
            ),
            (
                format!(
                    "machines = ['virt-gicv3', 'virt-gicv2']\n[system]\nvirt-gicv3 = '{two_vms}'\n"
                ),
                "system: no configuration for virt-gicv2".into(),
            ),
            (
                format!(
                    "machines = ['virt-gicv3']\n[system]\nvirt-gicv3 = '{two_vms}'\nraspi4b = 'x.toml'\n"
                ),
                "system.raspi4b: not one of this scenario's machines".into(),
            ),
            (
                format!("machines = ['virt-gicv2']\n[system]\nvirt-gicv2 = '{two_vms}'\n"),
                format!(
                    "system.virt-gicv2: {two_vms} runs on virt-gicv3 (its board), not virt-gicv2"
                ),
            ),
            (
                "machines = ['raspi4b']\n[system]\nraspi4b = 'tests/guests/pi.toml'\n".into(),
                "system.raspi4b: `tests/guests/pi.toml` is where scenario files live \
                 (tests/<dir>/*.toml); put system configurations in a deeper directory, \
                 e.g. tests/<dir>/systems/"
                    .into(),
            ),
            (
                "machines = ['raspi4b']\n[system]\nraspi4b = 'systems/none.toml'\n".into(),
                "system.raspi4b: systems/none.toml: cannot read: No such file".into(),
            ),
            (
                format!("[system]\nvirt-gicv3 = '{two_vms}'\n"),
                "system: a table of configurations, one per machine, goes with machines = [...]; \
                 for one machine give one path"
                    .into(),
            ),
        ];
        for (keys, reason) in cases {
            assert_eq!(
                parse_file(PSCI, &format!("expect = ['x']\n{keys}")).unwrap_err(),
                format!("{PSCI}: {reason}"),
                "{keys}"
            );
        }
        // qemu_args are checked against each machine's system.
        let err = parse_file(
            PSCI,
            &format!("qemu_args = ['-dtb', 'b.dtb']\n{SYSTEM_TABLE}"),
        )
        .unwrap_err();
        assert!(
            err.starts_with(&format!(
                "{PSCI}: qemu_args (on raspi4b): `-dtb` is set by the runner"
            )),
            "{err}"
        );
    }

    #[test]
    fn limited_patterns_are_checked() {
        let pair = "machines = ['virt-gicv3', 'virt-gicv2']\n";
        let cases = [
            (
                pair,
                "expect = ['x', { pattern = 'y', machines = ['raspi4b'] }]",
                "expect, entry 2: machines: `raspi4b` is not one of this scenario's machines",
            ),
            (
                pair,
                "expect = ['x', { pattern = 'y', machines = ['gicv2'] }]",
                "expect, entry 2: machines: `gicv2` is not one of this scenario's machines",
            ),
            (
                pair,
                "expect = ['x']\nforbid = [{ pattern = 'y', machines = [] }]",
                "forbid, entry 1: machines: empty; the pattern would never be checked",
            ),
            (
                pair,
                "expect = ['x', { pattern = 'y', machines = ['virt-gicv2', 'virt-gicv2'] }]",
                "expect, entry 2: machines: `virt-gicv2` is listed twice",
            ),
            (
                pair,
                "expect = ['x', { pattern = 'y', machines = ['virt-gicv2', 'virt-gicv3'] }]",
                "expect, entry 2: machines: names every machine of the scenario; write the \
                 pattern as a plain string",
            ),
            (
                "machine = 'virt-gicv3'\n",
                "expect = ['x', { pattern = 'y', machines = ['virt-gicv3'] }]",
                "expect, entry 2: machines: this scenario runs on one machine; a pattern can \
                 be limited to some machines only in a file with machines = [...]",
            ),
            (
                pair,
                "expect_unordered = [{ pattern = '(', machines = ['virt-gicv2'] }]",
                "expect_unordered, entry 1: invalid regex /(/: unclosed group",
            ),
            (
                pair,
                "expect = [{ pattern = 'y', machines = ['virt-gicv2'] }]",
                "expect (on virt-gicv3): no expected lines on this machine; a scenario passes \
                 only on positive evidence, so give it at least one line in expect or \
                 expect_unordered",
            ),
        ];
        for (machines, keys, reason) in cases {
            assert_eq!(
                parse_file(PSCI, &format!("{machines}{keys}\n")).unwrap_err(),
                format!("{PSCI}: {reason}"),
                "{keys}"
            );
        }
        let err = parse_file(
            PSCI,
            &format!("{pair}expect = [{{ pattern = 'y', machine = ['virt-gicv2'] }}]\n"),
        )
        .unwrap_err();
        assert!(
            err.starts_with(&format!("{PSCI}:2:")) && err.contains("unknown field `machine`"),
            "{err}"
        );
    }

    #[test]
    fn a_corrupt_scenario_boots_a_corrupted_package_and_forbids_any_vm() {
        let runs = parse_file(
            PSCI,
            &format!("corrupt = 'zero-vms'\nexit_status = 1\nforbid = ['oops']\n{SYSTEM_TABLE}"),
        )
        .unwrap();
        assert_eq!(runs.len(), 3);
        for run in &runs {
            assert_eq!(run.corrupt, Some(Corruption::ZeroVms));
            assert!(run.system.is_some());
            assert_eq!(run.exit_status, 1);
            assert_eq!(
                sources(&run.expectations.forbidden),
                [
                    "oops",
                    "PANIC",
                    "panicked at",
                    "CRASH REPORT",
                    r"(^|\W)FAIL(\W|$)",
                    r"VM\(s\) built",
                    "^tessera: vm ",
                    r"^\[[^\]]*\] ",
                ]
            );
        }
        let one = parse_ok(
            "system = 'tests/guests/systems/two-vms.toml'\ncorrupt = 'control-chars-in-name'\n\
             exit_status = 1\nexpect = ['x']\n",
        );
        assert_eq!(one.corrupt, Some(Corruption::ControlCharsInName));
        // Without the key, the package is the system's own.
        let plain = parse_ok("system = 'tests/guests/systems/two-vms.toml'\nexpect = ['x']\n");
        assert_eq!(plain.corrupt, None);
    }

    #[test]
    fn the_forbidden_lines_of_a_corrupt_scenario_are_those_of_a_vm() {
        let forbidden: Vec<Pattern> = CORRUPT_FORBIDDEN
            .iter()
            .map(|source| Pattern::new(source).unwrap())
            .collect();
        let forbidden_line = |line: &str| forbidden.iter().any(|pattern| pattern.is_match(line));
        for line in [
            "tessera: 2 VM(s) built; starting them",
            "tessera: vm alpha: 64 MiB RAM at guest 0x40000000 (host 0x48200000), 1 vCPU(s) on \
             CPU(s) [1]",
            "tessera: vm beta: stopped cleanly",
            "[alpha] Hello from a Tessera guest (vCPU 0), RAM 0x40000000..0x44000000",
            "[a\\x1b] x",
        ] {
            assert!(forbidden_line(line), "{line}");
        }
        for line in [
            "tessera[cpu0] ERROR: system package: tessera/manifest.dtb: vm[0] \"alpha\": field \
             ram-size: 0x30_0000 is not a multiple of 2 MiB; rebuild the package with `tessera \
             package`",
            "tessera: power off, status 1",
            "Tessera 0.1.0 (EL2 hypervisor) on rpi4, GICv2, 4 CPUs",
        ] {
            assert!(!forbidden_line(line), "{line}");
        }
    }

    #[test]
    fn corrupt_is_checked() {
        let two_vms = "system = 'tests/guests/systems/two-vms.toml'\nexpect = ['x']\n";
        let cases = [
            (
                format!("{two_vms}corrupt = 'zero'\nexit_status = 1"),
                "corrupt: `zero` is not a corruption (one of zero-vms, odd-ram-size, \
                 non-hex-filesize, control-chars-in-name)",
            ),
            (
                "machine = 'virt-gicv3'\nexpect = ['x']\ncorrupt = 'zero-vms'\nexit_status = 1"
                    .to_string(),
                "corrupt: corrupts the package of the system booted, and this scenario boots \
                 none; give system (or, with machines, a [system] table)",
            ),
            (
                "machines = ['virt-gicv3', 'raspi4b']\nexpect = ['x']\ncorrupt = 'zero-vms'\n\
                 exit_status = 1"
                    .to_string(),
                "corrupt: corrupts the package of the system booted, and this scenario boots \
                 none; give system (or, with machines, a [system] table)",
            ),
            (
                format!("{two_vms}corrupt = 'odd-ram-size'"),
                "exit_status: 0 (the default) is a clean run, but a corrupted package is refused \
                 and the hypervisor powers off with status 1; give exit_status = 1",
            ),
            (
                format!("{two_vms}corrupt = 'odd-ram-size'\nexit_status = 0"),
                "exit_status: 0 (the default) is a clean run, but a corrupted package is refused \
                 and the hypervisor powers off with status 1; give exit_status = 1",
            ),
        ];
        for (keys, reason) in cases {
            assert_eq!(
                parse_file(PSCI, &format!("{keys}\n")).unwrap_err(),
                format!("{PSCI}: {reason}"),
                "{keys}"
            );
        }
        let err = parse_file(PSCI, &format!("{two_vms}corrupt = ['zero-vms']\n")).unwrap_err();
        assert!(
            err.starts_with(&format!("{PSCI}:3:11: corrupt: invalid type: sequence")),
            "{err}"
        );
    }

    #[test]
    fn line_and_column_count_from_one() {
        assert_eq!(line_and_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_and_column("ab\ncd", 4), (2, 2));
    }
}
