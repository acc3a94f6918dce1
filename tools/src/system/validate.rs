//! The checks of docs/system-image.md that need only the configuration
//! text: keys, types, sizes, names, CPUs, guest-physical ranges and the
//! memory budget. Each check that can still run does, so one pass reports
//! every mistake; what a failed check leaves unknown is `None` in the draft.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use tessera_package::rules::{self, RuleError};
use toml::{Table, Value};

use super::board::BoardSpec;
use super::fields::{Fields, Problems, describe};
use super::passthrough::{self, PassthroughSpec};
use super::shmem::{self, ShmemDevice, ShmemSystem};
use super::{BoardConfig, ImageSource, SystemConfig, VmConfig};
use crate::units::{MIB, address, format_size, parse_size};

const TOP_KEYS: &[&str] = &["board", "vm", "shmem"];
const BOARD_KEYS: &[&str] = &["name", "gic-version", "cpus", "memory", "device-tree"];
const VM_KEYS: &[&str] = &[
    "name",
    "image",
    "ram",
    "ram-base",
    "cpus",
    "bootargs",
    "start-delay",
    "passthrough",
    "vdev-shmem",
];

/// What the hypervisor keeps for itself out of the board's memory.
pub const HYPERVISOR_RESERVE: u64 = 32 * MIB;
// The rules about sizes, ranges, names, CPUs, the board and counts are
// `tessera_package::rules`, which the hypervisor applies to the manifest
// too; this file reads the values and words the messages.
pub const DEFAULT_RAM_BASE: u64 = tessera_platform::guest::DEFAULT_RAM_BASE;
/// Linux's `COMMAND_LINE_SIZE` on arm64, NUL included.
const MAX_BOOTARGS: usize = 2048;
pub const EXAMPLE_PREFIX: &str = "example:";

/// The configuration as far as it could be read.
#[derive(Debug, Default)]
pub struct Draft {
    pub board: BoardDraft,
    pub vms: Vec<VmDraft>,
    pub shmem: Option<ShmemSystem>,
}

#[derive(Debug, Default)]
pub struct BoardDraft {
    pub spec: Option<&'static BoardSpec>,
    pub gic_version: Option<u32>,
    /// Only when within what the board has.
    pub cpus: Option<u32>,
    pub memory: Option<u64>,
    /// `device-tree`, joined to the configuration's directory.
    pub device_tree: Option<PathBuf>,
}

#[derive(Debug, Default)]
pub struct VmDraft {
    pub name: Option<String>,
    pub image: Option<ImageSource>,
    pub ram: Option<u64>,
    pub ram_base: Option<u64>,
    pub cpus: Option<Vec<u32>>,
    pub bootargs: Option<String>,
    /// Milliseconds; `None` only when given and refused (absent is 0).
    pub start_delay_ms: Option<u64>,
    pub passthrough: Option<Vec<PassthroughSpec>>,
    pub shmem: Option<Vec<ShmemDevice>>,
}

impl Draft {
    /// The finished configuration, when every value was read. Only called
    /// when no problem was reported, and every missing value was.
    pub fn finish(self) -> Option<SystemConfig> {
        let board = BoardConfig {
            spec: self.board.spec?,
            gic_version: self.board.gic_version?,
            cpus: self.board.cpus?,
            memory: self.board.memory?,
        };
        let vms = self
            .vms
            .into_iter()
            .map(|vm| {
                Some(VmConfig {
                    name: vm.name?,
                    image: vm.image?,
                    ram: vm.ram?,
                    ram_base: vm.ram_base?,
                    cpus: vm.cpus?,
                    bootargs: vm.bootargs,
                    start_delay_ms: vm.start_delay_ms?,
                    passthrough: vm.passthrough?,
                    shmem: vm.shmem?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(SystemConfig {
            board,
            vms,
            shmem: self.shmem?,
        })
    }
}

/// Checks the parsed TOML; `file` locates relative image paths.
pub fn check_table(table: &Table, file: &Path, problems: &mut Problems) -> Draft {
    let top = Fields::new("", table);
    top.reject_unknown(TOP_KEYS, problems);

    let board = match top.typed(
        "board",
        true,
        "a table ([board])",
        Value::as_table,
        problems,
    ) {
        Some(board) => check_board(&Fields::new("board", board), file, problems),
        None => BoardDraft::default(),
    };

    let mut vms = Vec::new();
    let vm_tables = top.typed(
        "vm",
        true,
        "an array of tables ([[vm]])",
        Value::as_array,
        problems,
    );
    if let Some(entries) = vm_tables {
        match rules::check_vm_count(entries.len()) {
            Ok(()) => {}
            Err(RuleError::NoVms) => problems.add("vm", "empty; give at least one [[vm]] table"),
            Err(error) => problems.add("vm", error.to_string()),
        }
        let mut cross = CrossChecks::default();
        for (index, entry) in entries.iter().enumerate() {
            let path = format!("vm[{index}]");
            let Some(vm) = entry.as_table() else {
                problems.add(path, format!("must be a table, not {}", describe(entry)));
                vms.push(VmDraft::default());
                continue;
            };
            let draft = check_vm(
                index,
                &Fields::new(&path, vm),
                file,
                &board,
                &mut cross,
                problems,
            );
            vms.push(draft);
        }
    }

    let shmem = shmem::parse_system(&top, problems);
    check_memory_budget(&board, &vms, problems);
    Draft { board, vms, shmem }
}

fn check_board(fields: &Fields<'_>, file: &Path, problems: &mut Problems) -> BoardDraft {
    fields.reject_unknown(BOARD_KEYS, problems);
    let mut draft = BoardDraft::default();

    if let Some(name) = fields.string("name", true, problems) {
        draft.spec = BoardSpec::find(name);
        if draft.spec.is_none() {
            problems.add(
                fields.key("name"),
                format!(
                    "unknown board \"{name}\" (expected one of: {})",
                    BoardSpec::names()
                ),
            );
        }
    }

    // Which versions and counts are right depends on the board.
    if let Some(version) = fields.integer("gic-version", true, problems)
        && let Some(spec) = draft.spec
    {
        match u32::try_from(version) {
            Ok(version) => match spec.rules.check_gic_version(version) {
                Ok(()) => draft.gic_version = Some(version),
                Err(error) => problems.add(fields.key("gic-version"), error.to_string()),
            },
            Err(_) => problems.add(
                fields.key("gic-version"),
                format!(
                    "{} supports GIC version {}, not {version}",
                    spec.name,
                    spec.gic_versions_text()
                ),
            ),
        }
    }

    if let Some(cpus) = fields.integer("cpus", true, problems)
        && let Some(spec) = draft.spec
    {
        match u64::try_from(cpus) {
            Ok(count) => match spec.rules.check_cpu_count(count) {
                // The rule bounds it by the board's count, a u32.
                Ok(()) => draft.cpus = u32::try_from(count).ok(),
                Err(error) => problems.add(fields.key("cpus"), error.to_string()),
            },
            Err(_) => problems.add(
                fields.key("cpus"),
                format!("{} has {}, not {cpus}", spec.name, spec.cpus_text()),
            ),
        }
    }

    let memory = fields.typed(
        "memory",
        true,
        "a string with a unit, e.g. \"1G\"",
        Value::as_str,
        problems,
    );
    if let Some(text) = memory {
        match check_board_memory(text, draft.spec) {
            Ok(bytes) => draft.memory = Some(bytes),
            Err(reason) => problems.add(fields.key("memory"), reason),
        }
    }

    // Read when a VM names one of its nodes, with the images.
    if let Some(path) = fields.string("device-tree", false, problems) {
        if path.is_empty() {
            problems.add(
                fields.key("device-tree"),
                "empty; give the path of the board's device tree blob",
            );
        } else {
            let dir = file.parent().unwrap_or(Path::new(""));
            draft.device_tree = Some(dir.join(path));
        }
    }
    draft
}

fn check_board_memory(text: &str, spec: Option<&BoardSpec>) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    if bytes == 0 {
        return Err(format!("\"{text}\" is zero"));
    }
    if !bytes.is_multiple_of(MIB) {
        return Err(format!(
            "\"{text}\" is not a whole number of MiB (QEMU's -m counts MiB)"
        ));
    }
    if let Some(spec) = spec
        && let Some(max) = spec.max_memory
        && bytes > max
    {
        return Err(format!(
            "{} has at most {} of usable memory, not {text}",
            spec.name,
            format_size(max)
        ));
    }
    Ok(bytes)
}

/// What one VM's checks must know about the VMs before it.
#[derive(Debug, Default)]
struct CrossChecks {
    /// Each name and the index of the VM that has it.
    names: BTreeMap<String, usize>,
    /// Each CPU taken and how to name the VM that took it.
    cpu_owners: BTreeMap<u32, String>,
}

fn check_vm(
    index: usize,
    fields: &Fields<'_>,
    file: &Path,
    board: &BoardDraft,
    cross: &mut CrossChecks,
    problems: &mut Problems,
) -> VmDraft {
    fields.reject_unknown(VM_KEYS, problems);
    let mut draft = VmDraft::default();

    if let Some(name) = fields.string("name", true, problems) {
        if let Err(reason) = check_vm_name(name) {
            problems.add(fields.key("name"), reason);
        } else if let Some(&first) = cross.names.get(name) {
            let taken = RuleError::NameTaken { first };
            problems.add(fields.key("name"), format!("\"{name}\" {taken}"));
        } else {
            cross.names.insert(name.to_string(), index);
            draft.name = Some(name.to_string());
        }
    }

    if let Some(image) = fields.string("image", true, problems) {
        match parse_image_source(image, file) {
            Ok(source) => draft.image = Some(source),
            Err(reason) => problems.add(fields.key("image"), reason),
        }
    }

    let ram = fields.typed(
        "ram",
        true,
        "a string with a unit, e.g. \"64M\"",
        Value::as_str,
        problems,
    );
    if let Some(text) = ram {
        match check_ram(text) {
            Ok(bytes) => draft.ram = Some(bytes),
            Err(reason) => problems.add(fields.key("ram"), reason),
        }
    }

    let base_given = fields.integer("ram-base", false, problems);
    draft.ram_base = match base_given {
        None if fields.value("ram-base", false, problems).is_some() => None,
        None => Some(DEFAULT_RAM_BASE),
        Some(base) => match check_ram_base(base) {
            Ok(base) => Some(base),
            Err(reason) => {
                problems.add(fields.key("ram-base"), reason);
                None
            }
        },
    };
    if let (Some(base), Some(size)) = (draft.ram_base, draft.ram) {
        // Blame the key the user wrote: the base if given, else the size.
        let key = if base_given.is_some() {
            "ram-base"
        } else {
            "ram"
        };
        if let Err(reason) = check_guest_ram_range(base, size) {
            problems.add(fields.key(key), reason);
            // Reported once: the image is not checked against a range that
            // does not exist.
            draft.ram_base = None;
        } else if let (Some(ImageSource::Example(example)), true) =
            (&draft.image, base != DEFAULT_RAM_BASE)
        {
            problems.add(
                fields.key("ram-base"),
                example_needs_default_base(base, example),
            );
        }
    }

    let vm_label = draft
        .name
        .as_ref()
        .map_or_else(|| format!("vm[{index}]"), |name| format!("vm \"{name}\""));
    draft.cpus = check_vm_cpus(fields, board, &vm_label, cross, problems);

    if let Some(bootargs) = fields.string("bootargs", false, problems) {
        match check_bootargs(bootargs) {
            Ok(()) => draft.bootargs = Some(bootargs.to_string()),
            Err(reason) => problems.add(fields.key("bootargs"), reason),
        }
    }
    draft.start_delay_ms = match fields.typed(
        "start-delay",
        false,
        "a string with a unit, e.g. \"20ms\"",
        Value::as_str,
        problems,
    ) {
        None if fields.value("start-delay", false, problems).is_some() => None,
        None => Some(0),
        Some(text) => match check_start_delay(text) {
            Ok(milliseconds) => Some(milliseconds),
            Err(reason) => {
                problems.add(fields.key("start-delay"), reason);
                None
            }
        },
    };
    draft.passthrough = passthrough::parse(fields, problems);
    draft.shmem = shmem::parse_vm(fields, draft.ram_base.zip(draft.ram), problems);
    draft
}

/// VM names become package entry names and console tags, so they stay
/// short and plain (`rules::check_vm_name`).
fn check_vm_name(name: &str) -> Result<(), String> {
    rules::check_vm_name(name).map_err(|error| format!("\"{name}\" {error}"))
}

fn parse_image_source(text: &str, file: &Path) -> Result<ImageSource, String> {
    if text.is_empty() {
        return Err("empty; give \"example:NAME\" or a path to an image file".into());
    }
    if let Some(name) = text.strip_prefix(EXAMPLE_PREFIX) {
        let plain = name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        return if plain {
            Ok(ImageSource::Example(name.to_string()))
        } else {
            Err(format!(
                "\"{text}\" does not name a guest-sdk example (letters, digits, _ and -, starting with a letter)"
            ))
        };
    }
    let dir = file.parent().unwrap_or(Path::new(""));
    Ok(ImageSource::File(dir.join(text)))
}

/// guest-sdk examples are linked to run from the default RAM base (and stop
/// at boot anywhere else), so another base with one is a mistake `check`
/// can see before anything runs.
fn example_needs_default_base(base: u64, example: &str) -> String {
    format!(
        "{}: guest-sdk examples (here {EXAMPLE_PREFIX}{example}) only run with RAM at the \
         default {}; leave ram-base out, or use an image built for this base",
        address(base),
        address(DEFAULT_RAM_BASE)
    )
}

fn check_ram(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    rules::check_ram_size(bytes).map_err(|error| format!("\"{text}\" {error}"))?;
    Ok(bytes)
}

fn check_ram_base(base: i64) -> Result<u64, String> {
    let base = u64::try_from(base).map_err(|_| format!("{base} is negative"))?;
    rules::check_ram_base(base).map_err(|error| format!("{} {error}", address(base)))?;
    Ok(base)
}

fn check_guest_ram_range(base: u64, size: u64) -> Result<(), String> {
    rules::check_ram_range(base, size).map_err(|error| error.to_string())
}

/// The VM's CPU list, or `None` when it is unusable. CPUs are claimed in
/// `cross` as they are read, so a later VM that reuses one is the one
/// blamed.
fn check_vm_cpus(
    fields: &Fields<'_>,
    board: &BoardDraft,
    vm_label: &str,
    cross: &mut CrossChecks,
    problems: &mut Problems,
) -> Option<Vec<u32>> {
    let key = fields.key("cpus");
    let entries = fields.typed(
        "cpus",
        true,
        "an array of CPU numbers, e.g. [1]",
        Value::as_array,
        problems,
    )?;
    if let Err(error @ RuleError::NoCpus) = rules::check_vcpu_count(entries.len()) {
        problems.add(&key, error.to_string());
        return None;
    }
    let mut cpus = Vec::new();
    // `cpus` in a set too: an array of a million CPU numbers (where the
    // board, so the CPU count, is unknown) must not take n² steps.
    let mut listed = BTreeSet::new();
    let mut all_good = true;
    for entry in entries {
        let Some(cpu) = entry.as_integer().and_then(|cpu| u32::try_from(cpu).ok()) else {
            problems.add(
                &key,
                format!("{} is not a CPU number", describe_cpu_entry(entry)),
            );
            all_good = false;
            continue;
        };
        if let Some(count) = board.cpus
            && let Err(error) = rules::check_cpu_exists(cpu, count)
        {
            problems.add(&key, error.to_string());
            all_good = false;
            continue;
        }
        if !listed.insert(cpu) {
            problems.add(&key, RuleError::CpuTwice { cpu }.to_string());
            all_good = false;
            continue;
        }
        if let Some(owner) = cross.cpu_owners.get(&cpu) {
            problems.add(&key, format!("CPU {cpu} is already used by {owner}"));
            all_good = false;
            continue;
        }
        cross.cpu_owners.insert(cpu, vm_label.to_string());
        cpus.push(cpu);
    }
    all_good.then_some(cpus)
}

/// CPU numbers are plain integers, so a wrong one is shown as written.
fn describe_cpu_entry(entry: &Value) -> String {
    match entry {
        Value::Integer(number) => number.to_string(),
        other => describe(other),
    }
}

fn check_bootargs(bootargs: &str) -> Result<(), String> {
    if bootargs.contains('\0') {
        return Err("contains a NUL character, which cannot be in a device tree string".into());
    }
    if bootargs.len() >= MAX_BOOTARGS {
        return Err(format!(
            "is {} bytes long; a guest command line holds at most {}",
            bootargs.len(),
            MAX_BOOTARGS - 1
        ));
    }
    Ok(())
}

/// `start-delay`: digits and a unit, `ms` or `s` (`"20ms"`, `"1s"`), as
/// sizes are digits and a unit; in milliseconds, at most the shared
/// rule's minute (`rules::check_start_delay`, in the manifest's
/// microseconds).
fn check_start_delay(text: &str) -> Result<u64, String> {
    let not_a_duration = || {
        format!("\"{text}\" is not a duration: expected digits and a unit ms or s, e.g. \"20ms\"")
    };
    let (digits, scale) = if let Some(digits) = text.strip_suffix("ms") {
        (digits, 1)
    } else if let Some(digits) = text.strip_suffix('s') {
        (digits, 1000)
    } else {
        return Err(not_a_duration());
    };
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(not_a_duration());
    }
    // Digits past 64 bits are a delay far past the rule's limit too.
    let microseconds = digits
        .parse::<u64>()
        .ok()
        .and_then(|count| count.checked_mul(scale * 1000));
    let Some(microseconds) = microseconds else {
        return Err(format!("\"{text}\" {}", RuleError::StartDelayTooLong));
    };
    rules::check_start_delay(microseconds).map_err(|error| format!("\"{text}\" {error}"))?;
    Ok(microseconds / 1000)
}

/// The VMs whose RAM is known already show whether the board is too
/// small; RAM not yet known could only add to it.
fn check_memory_budget(board: &BoardDraft, vms: &[VmDraft], problems: &mut Problems) {
    let Some(memory) = board.memory else {
        return;
    };
    let sizes = vms.iter().filter_map(|vm| vm.ram);
    let vm_ram = sizes.clone().try_fold(0u64, u64::checked_add);
    let needed = vm_ram.and_then(|ram| ram.checked_add(HYPERVISOR_RESERVE));
    let (Some(vm_ram), Some(needed)) = (vm_ram, needed) else {
        // Each size fits 64 bits, their sum does not: far past any board.
        problems.add(
            "board.memory",
            format!(
                "the RAM of the {} VMs plus the hypervisor's reserve ({}) is more than 2^64 bytes, \
                 far more than the board's {}",
                sizes.count(),
                format_size(HYPERVISOR_RESERVE),
                format_size(memory)
            ),
        );
        return;
    };
    if needed > memory {
        problems.add(
            "board.memory",
            format!(
                "the VMs' RAM ({}) plus the hypervisor's reserve ({}) is {}, more than the board's {}",
                format_size(vm_ram),
                format_size(HYPERVISOR_RESERVE),
                format_size(needed),
                format_size(memory)
            ),
        );
    }
}
