//! System configurations (docs/system-image.md): the TOML file that says
//! which board a system runs on and which VMs it has, read into a checked
//! model. Every mistake is reported as `FILE: KEY: REASON`, or as
//! `FILE:LINE:COLUMN: REASON` where the file is not TOML (or not UTF-8) at
//! that place; at most [`MAX_SHOWN`] are kept, then one line counts the rest.
//!
//! Checking runs in two stages so callers that only need the board (the
//! scenario loader) need not build guests: [`load_config`] does every
//! check that needs only the text, [`load`] adds the image checks, which
//! may build guest-sdk examples through an [`ImageLocator`], and the
//! passthrough checks (`passthrough`), which may read the board's device
//! tree.

mod board;
mod fields;
#[cfg(test)]
mod fuzz;
pub mod guest_image;
pub mod passthrough;
pub mod shmem;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use board::BoardSpec;
use fields::Problems;
pub use guest_image::GuestImage;
pub use passthrough::{PassthroughDevice, PassthroughSpec};
pub use shmem::{ShmemDevice, ShmemSystem};
use validate::Draft;

use crate::escape::escaped;
use crate::machine::Machine;
use crate::units::MIB;
use crate::workspace;

/// A checked system configuration.
#[derive(Clone, Debug)]
pub struct SystemConfig {
    pub board: BoardConfig,
    pub vms: Vec<VmConfig>,
    /// The `[shmem]` table (defaults when absent).
    pub shmem: ShmemSystem,
}

#[derive(Clone, Debug)]
pub struct BoardConfig {
    pub spec: &'static BoardSpec,
    pub gic_version: u32,
    pub cpus: u32,
    /// Bytes.
    pub memory: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    pub name: String,
    pub image: ImageSource,
    /// Bytes, a multiple of 2 MiB.
    pub ram: u64,
    /// Guest-physical, 2 MiB aligned.
    pub ram_base: u64,
    /// The physical CPU of each vCPU.
    pub cpus: Vec<u32>,
    pub bootargs: Option<String>,
    /// How long after the VMs are started this one's vCPU 0 is, in
    /// milliseconds (0: at once).
    pub start_delay_ms: u64,
    /// The physical devices given to it, as written.
    pub passthrough: Vec<PassthroughSpec>,
    /// Its vdev-shmem instances.
    pub shmem: Vec<ShmemDevice>,
}

/// Where a VM's image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageSource {
    /// A guest-sdk example, built by the tool.
    Example(String),
    /// A file; relative paths are already joined to the configuration's
    /// directory.
    File(PathBuf),
}

impl SystemConfig {
    /// The QEMU machine that runs this system.
    pub fn machine(&self) -> Machine {
        self.board.spec.machine(self.board.gic_version)
    }

    /// QEMU's `-m` for this system, in MiB so any configured size can be
    /// written; `None` where QEMU fixes the memory.
    pub fn qemu_memory(&self) -> Option<String> {
        self.board
            .spec
            .max_memory
            .is_none()
            .then(|| format!("{}M", self.board.memory / MIB))
    }
}

/// A configuration whose images have been found, read and checked, and
/// whose passthrough devices have been resolved and checked. `images[n]`
/// and `devices[n]` belong to `config.vms[n]`.
#[derive(Clone, Debug)]
pub struct LoadedSystem {
    pub config: SystemConfig,
    pub images: Vec<GuestImage>,
    pub devices: Vec<Vec<PassthroughDevice>>,
}

/// Finds the image file of a guest-sdk example, building it if need be.
pub trait ImageLocator {
    /// The flat binary of example `name`; the error is a reason for a
    /// message about the VM's `image` key.
    fn example_image(&mut self, name: &str) -> Result<PathBuf, String>;

    /// The device tree `machine` hands the hypervisor, for passthrough
    /// devices named by path when the configuration gives no
    /// `board.device-tree`; the error is a reason for a message about
    /// that key.
    fn board_device_tree(&mut self, machine: Machine) -> Result<Vec<u8>, String> {
        Err(format!(
            "no device tree of {} is at hand; give board.device-tree",
            machine.name()
        ))
    }
}

/// One mistake: `FILE: KEY: REASON`, or `FILE:LINE:COLUMN: REASON` where
/// the file is not TOML at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub position: Option<(usize, usize)>,
    pub key: Option<String>,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The file name, the key and the values in the reason come from
        // outside: escaped, none can print a line of its own.
        write!(f, "{}", escaped(&workspace::display(&self.file)))?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {}", escaped(key))?;
        }
        write!(f, ": {}", escaped(&self.reason))
    }
}

/// How many mistakes a file's report shows; a mutated configuration can
/// hold millions (one per entry of a long array), and past a few dozen more
/// lines help nobody.
pub const MAX_SHOWN: usize = 40;

/// The mistakes in one file, in the order found: top-level keys, the
/// board, each VM in turn, then the memory budget. The first [`MAX_SHOWN`]
/// are kept (`.0`); `.1` counts those found after them. Displayed one per
/// line, then, if any were left out,
/// `FILE: N more mistakes not shown (the first 40 are above)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>, pub usize);

impl ConfigErrors {
    /// A report of one mistake.
    fn one(error: ConfigError) -> Self {
        ConfigErrors(vec![error], 0)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        if let Some(first) = self.0.first()
            && self.1 > 0
        {
            write!(
                f,
                "\n{}: {} more {} not shown (the first {} are above)",
                escaped(&workspace::display(&first.file)),
                self.1,
                if self.1 == 1 { "mistake" } else { "mistakes" },
                self.0.len()
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads `file` and does every check that needs only its text.
pub fn load_config(file: &Path) -> Result<SystemConfig, ConfigErrors> {
    let bytes = read_bytes(file)?;
    let source = decode(&bytes, file)?;
    let (draft, problems) = check_source(source, file)?;
    finish(draft, problems)
}

/// Reads `file` and does every check, images included.
pub fn load(file: &Path, locator: &mut dyn ImageLocator) -> Result<LoadedSystem, ConfigErrors> {
    let bytes = read_bytes(file)?;
    check_bytes(&bytes, file, locator)
}

/// Every check on the contents of `file`, as read: the in-process entry
/// point of `tessera check` (the fuzz run calls it too).
pub fn check_bytes(
    bytes: &[u8],
    file: &Path,
    locator: &mut dyn ImageLocator,
) -> Result<LoadedSystem, ConfigErrors> {
    check(decode(bytes, file)?, file, locator)
}

/// Every check on `source`, which was read from `file`.
pub fn check(
    source: &str,
    file: &Path,
    locator: &mut dyn ImageLocator,
) -> Result<LoadedSystem, ConfigErrors> {
    let (draft, mut problems) = check_source(source, file)?;
    let images = check_images(&draft, locator, &mut problems);
    let devices = check_devices(&draft, locator, &mut problems);
    let config = finish(draft, problems)?;
    // Without problems, every VM had an image and it was checked, and
    // every device was resolved.
    let images = images
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| internal_error(file, "an image was not checked"))?;
    let devices = devices
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| internal_error(file, "a passthrough device was not resolved"))?;
    Ok(LoadedSystem {
        config,
        images,
        devices,
    })
}

/// The file's bytes; a file that cannot be read at all is not a mistake
/// in it, so this is the one message of another form,
/// `FILE: cannot read: REASON`.
fn read_bytes(file: &Path) -> Result<Vec<u8>, ConfigErrors> {
    std::fs::read(file).map_err(|err| {
        ConfigErrors::one(ConfigError {
            file: file.to_path_buf(),
            position: None,
            key: None,
            reason: format!("cannot read: {err}"),
        })
    })
}

/// The text of a configuration, which TOML requires to be UTF-8; the first
/// byte that breaks it is reported at its line and column.
fn decode<'a>(bytes: &'a [u8], file: &Path) -> Result<&'a str, ConfigErrors> {
    std::str::from_utf8(bytes).map_err(|err| {
        let offset = err.valid_up_to();
        // Everything before the first bad byte is valid, so this cannot fail.
        let valid = std::str::from_utf8(&bytes[..offset]).unwrap_or_default();
        ConfigErrors::one(ConfigError {
            file: file.to_path_buf(),
            position: Some(crate::scenario::line_and_column(valid, offset)),
            key: None,
            reason: format!(
                "not UTF-8: byte {:#04x} at byte offset {offset} does not begin a valid character; save the file as UTF-8",
                bytes[offset]
            ),
        })
    })
}

/// Parses the TOML (a syntax error ends it there: nothing after it can be
/// trusted) and runs the text-only checks.
fn check_source(source: &str, file: &Path) -> Result<(Draft, Problems), ConfigErrors> {
    let table: toml::Table = source
        .parse()
        .map_err(|err: toml::de::Error| ConfigErrors::one(syntax_error(source, file, &err)))?;
    let mut problems = Problems::new(file);
    let draft = validate::check_table(&table, file, &mut problems);
    Ok((draft, problems))
}

fn finish(draft: Draft, problems: Problems) -> Result<SystemConfig, ConfigErrors> {
    if !problems.is_empty() {
        return Err(problems.into_errors());
    }
    let file = problems.file().to_path_buf();
    draft
        .finish()
        .ok_or_else(|| internal_error(&file, "a value was neither read nor reported"))
}

fn internal_error(file: &Path, what: &str) -> ConfigErrors {
    ConfigErrors::one(ConfigError {
        file: file.to_path_buf(),
        position: None,
        key: None,
        reason: format!("internal error in the checker: {what}"),
    })
}

/// The image checks, for each VM whose image, RAM and RAM base are known.
/// Each example is located (built) once however many VMs use it.
fn check_images(
    draft: &Draft,
    locator: &mut dyn ImageLocator,
    problems: &mut Problems,
) -> Vec<Option<GuestImage>> {
    draft
        .vms
        .iter()
        .enumerate()
        .map(|(index, vm)| {
            let (Some(source), Some(ram), Some(ram_base)) = (&vm.image, vm.ram, vm.ram_base) else {
                return None;
            };
            match check_image(source, ram, ram_base, locator) {
                Ok(image) => Some(image),
                Err(reason) => {
                    problems.add(format!("vm[{index}].image"), reason);
                    None
                }
            }
        })
        .collect()
}

fn check_image(
    source: &ImageSource,
    ram: u64,
    ram_base: u64,
    locator: &mut dyn ImageLocator,
) -> Result<GuestImage, String> {
    let path = match source {
        ImageSource::Example(name) => locator.example_image(name)?,
        ImageSource::File(path) => path.clone(),
    };
    let shown = workspace::display(&path);
    let bytes = guest_image::read(&path)?;
    let layout = guest_image::layout(&bytes, &shown)?;
    guest_image::check_fit(layout, ram_base, ram, &shown)?;
    Ok(GuestImage {
        path,
        bytes,
        layout,
    })
}

/// The board's device tree, read when some VM names a node of it: the
/// configuration's `board.device-tree`, or the one the machine hands the
/// hypervisor. `None` (reported) when it cannot be had.
fn board_tree(
    draft: &Draft,
    locator: &mut dyn ImageLocator,
    problems: &mut Problems,
) -> Option<Vec<u8>> {
    let key = "board.device-tree";
    let bytes = match (&draft.board.device_tree, draft.board.spec) {
        (Some(path), _) => std::fs::read(path)
            .map_err(|err| format!("cannot read {}: {err}", workspace::display(path))),
        (None, Some(spec)) => {
            let machine = spec.machine(draft.board.gic_version.unwrap_or(spec.gic_versions[0]));
            locator.board_device_tree(machine)
        }
        // The board's mistake is reported already.
        (None, None) => return None,
    };
    let checked = bytes.and_then(|bytes| match fdt::Fdt::new(&bytes) {
        Ok(_) => Ok(bytes),
        Err(err) => Err(format!(
            "the board's device tree is not a device tree blob: {err:?}"
        )),
    });
    checked.map_err(|reason| problems.add(key, reason)).ok()
}

/// Resolves every VM's passthrough entries (against the board's device
/// tree where they name a node of it) and applies the shared rules to
/// them. `None` for a VM whose devices could not all be resolved.
fn check_devices(
    draft: &Draft,
    locator: &mut dyn ImageLocator,
    problems: &mut Problems,
) -> Vec<Option<Vec<PassthroughDevice>>> {
    let wanted = draft.vms.iter().any(|vm| {
        vm.passthrough
            .as_deref()
            .is_some_and(passthrough::needs_board_tree)
    });
    let bytes = if wanted {
        board_tree(draft, locator, problems)
    } else {
        None
    };
    let tree = bytes.as_deref().and_then(|bytes| fdt::Fdt::new(bytes).ok());
    let resolved: Vec<_> = draft
        .vms
        .iter()
        .enumerate()
        .map(|(index, vm)| {
            passthrough::resolve_all(index, vm.passthrough.as_ref()?, tree.as_ref(), problems)
        })
        .collect();
    if let Some(board) = draft.board.spec {
        let labels: Vec<String> = draft
            .vms
            .iter()
            .enumerate()
            .map(|(index, vm)| {
                vm.name
                    .as_ref()
                    .map_or_else(|| format!("vm[{index}]"), |name| format!("vm \"{name}\""))
            })
            .collect();
        let vms: Vec<passthrough::VmDevices<'_>> = draft
            .vms
            .iter()
            .zip(&resolved)
            .enumerate()
            .map(|(index, (vm, entries))| passthrough::VmDevices {
                key: format!("vm[{index}].passthrough"),
                ram: vm.ram_base.zip(vm.ram),
                entries: entries.as_deref().unwrap_or_default(),
            })
            .collect();
        passthrough::check_rules(board.rules, &vms, &labels, problems);
    }
    let shmem_vms: Vec<_> = draft
        .vms
        .iter()
        .zip(&resolved)
        .map(|(vm, entries)| (vm.shmem.as_deref(), entries.as_deref()))
        .collect();
    shmem::check_against_devices(&shmem_vms, problems);
    resolved
        .into_iter()
        .map(|entries| Some(entries?.into_iter().map(|entry| entry.device).collect()))
        .collect()
}

/// One line for a TOML syntax error, at its position.
fn syntax_error(source: &str, file: &Path, err: &toml::de::Error) -> ConfigError {
    let message = err.message().trim();
    let (offset, reason) = match err.span() {
        Some(span) => (span.start, message.to_string()),
        // The parser gives no place for a dotted key of too many parts
        // (`a.b.c...`), its only error without one; find that key.
        None => (
            deep_key_offset(source).unwrap_or(0),
            format!("{message}: a key has too many dotted parts"),
        ),
    };
    ConfigError {
        file: file.to_path_buf(),
        position: Some(crate::scenario::line_and_column(source, offset)),
        key: None,
        reason,
    }
}

/// Dotted keys of this many parts or more are refused by the TOML parser.
const TOML_KEY_PARTS_LIMIT: usize = 80;

/// The start of the first line with at least [`TOML_KEY_PARTS_LIMIT`] - 1
/// dots outside quotes and comments: a dotted key that long, in a
/// `key = value` line, a `[table]` header or an inline table.
fn deep_key_offset(source: &str) -> Option<usize> {
    let mut line_start = 0;
    for line in source.split_inclusive('\n') {
        let mut dots = 0;
        let mut quote = None;
        let mut escaped = false;
        for c in line.chars() {
            match (quote, c) {
                (Some('"'), _) if escaped => escaped = false,
                (Some('"'), '\\') => escaped = true,
                (Some(open), _) if c == open => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '.') => dots += 1,
                (None, '#') => break,
                (None, _) => {}
            }
        }
        if dots + 1 >= TOML_KEY_PARTS_LIMIT {
            let indent = line.len() - line.trim_start().len();
            return Some(line_start + indent);
        }
        line_start += line.len();
    }
    None
}

#[cfg(test)]
mod tests;
