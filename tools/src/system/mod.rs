//! System configurations (docs/system-image.md): the TOML file that says
//! which board a system runs on and which VMs it has, read into a checked
//! model. Every mistake is reported as `FILE: KEY: REASON`.
//!
//! Checking runs in two stages so callers that only need the board (the
//! scenario loader) need not build guests: [`load_config`] does every
//! check that needs only the text, [`load`] adds the image checks, which
//! may build guest-sdk examples through an [`ImageLocator`].

mod board;
mod fields;
pub mod guest_image;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use board::BoardSpec;
use fields::Problems;
pub use guest_image::GuestImage;
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

/// A configuration whose images have been found, read and checked.
/// `images[n]` belongs to `config.vms[n]`.
#[derive(Clone, Debug)]
pub struct LoadedSystem {
    pub config: SystemConfig,
    pub images: Vec<GuestImage>,
}

/// Finds the image file of a guest-sdk example, building it if need be.
pub trait ImageLocator {
    /// The flat binary of example `name`; the error is a reason for a
    /// message about the VM's `image` key.
    fn example_image(&mut self, name: &str) -> Result<PathBuf, String>;
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

/// Every mistake in one file, in the order found: top-level keys, the
/// board, each VM in turn, then the memory budget. Displayed one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads `file` and does every check that needs only its text.
pub fn load_config(file: &Path) -> Result<SystemConfig, ConfigErrors> {
    let source = read_source(file)?;
    let (draft, problems) = check_source(&source, file)?;
    finish(draft, problems)
}

/// Reads `file` and does every check, images included.
pub fn load(file: &Path, locator: &mut dyn ImageLocator) -> Result<LoadedSystem, ConfigErrors> {
    let source = read_source(file)?;
    check(&source, file, locator)
}

/// Every check on `source`, which was read from `file`.
pub fn check(
    source: &str,
    file: &Path,
    locator: &mut dyn ImageLocator,
) -> Result<LoadedSystem, ConfigErrors> {
    let (draft, mut problems) = check_source(source, file)?;
    let images = check_images(&draft, locator, &mut problems);
    let config = finish(draft, problems)?;
    // Without problems, every VM had an image and it was checked.
    let images = images
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| internal_error(file, "an image was not checked"))?;
    Ok(LoadedSystem { config, images })
}

fn read_source(file: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(file).map_err(|err| {
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            position: None,
            key: None,
            reason: format!("cannot read: {err}"),
        }])
    })
}

/// Parses the TOML (a syntax error ends it there: nothing after it can be
/// trusted) and runs the text-only checks.
fn check_source(source: &str, file: &Path) -> Result<(Draft, Problems), ConfigErrors> {
    let table: toml::Table = source
        .parse()
        .map_err(|err: toml::de::Error| ConfigErrors(vec![syntax_error(source, file, &err)]))?;
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
    ConfigErrors(vec![ConfigError {
        file: file.to_path_buf(),
        position: None,
        key: None,
        reason: format!("internal error in the checker: {what}"),
    }])
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

/// One line for a TOML syntax error, at its position.
fn syntax_error(source: &str, file: &Path, err: &toml::de::Error) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        position: err
            .span()
            .map(|span| crate::scenario::line_and_column(source, span.start)),
        key: None,
        reason: err.message().trim().to_string(),
    }
}

#[cfg(test)]
mod tests;
