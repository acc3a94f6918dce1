//! vdev-shmem in a configuration (docs/system-image.md, "Shared memory"):
//! each VM's `[[vm.vdev-shmem]]` instances and the system's `[shmem]`
//! table (the page limit and the regions made at boot), read from the
//! text and checked by the shared rules (`tessera_package::rules`), which
//! the hypervisor applies to the manifest too.
//!
//! Patterns and region names are checked by the device model's own rules
//! (`tessera_vdevs::shmem::Pattern` and `Name`, through the shared rules),
//! so a configuration the tool accepts is one the model accepts.

use tessera_package::rules::{self, RuleError, SHMEM_PAGE, ShmemArea, ShmemClaims};
use toml::Value;

use super::fields::{Fields, Problems, describe};
use super::passthrough::ResolvedEntry;
use crate::units::{address, parse_size};

const ENTRY_KEYS: &[&str] = &["loc", "intr", "window", "allow", "deny"];
const SHMEM_KEYS: &[&str] = &["limit", "region"];
const REGION_KEYS: &[&str] = &["name", "size"];

/// One `[[vm.vdev-shmem]]` instance as checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShmemDevice {
    /// Guest-physical address of the factory page.
    pub loc: u64,
    /// The vector's INTID (an SPI, 32 or above).
    pub intr: u32,
    /// Guest-physical base and size in bytes of the mapping window.
    pub window: (u64, u64),
    /// The name patterns, as written. The model checks denies before
    /// allows (see the docs).
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

/// A region made at boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootRegion {
    pub name: String,
    /// Bytes, whole pages.
    pub size: u64,
}

/// The system-wide `[shmem]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShmemSystem {
    /// The limit on data pages of all live regions.
    pub limit_pages: u64,
    pub regions: Vec<BootRegion>,
}

impl Default for ShmemSystem {
    fn default() -> Self {
        ShmemSystem {
            limit_pages: rules::DEFAULT_SHMEM_LIMIT_PAGES,
            regions: Vec::new(),
        }
    }
}

/// Reads the top-level `[shmem]` table; `None` when a mistake was
/// reported. No table: the default limit and no boot regions.
pub fn parse_system(top: &Fields<'_>, problems: &mut Problems) -> Option<ShmemSystem> {
    let Some(table) = top.value("shmem", false, problems) else {
        return Some(ShmemSystem::default());
    };
    let Some(table) = table.as_table() else {
        problems.add(
            "shmem",
            format!("must be a table ([shmem]), not {}", describe(table)),
        );
        return None;
    };
    let fields = Fields::new("shmem", table);
    let before = problems.list.len() + problems.omitted;
    fields.reject_unknown(SHMEM_KEYS, problems);
    let mut system = ShmemSystem::default();
    if let Some(text) = fields.typed(
        "limit",
        false,
        "a string with a unit, e.g. \"16M\"",
        Value::as_str,
        problems,
    ) {
        match parse_size(text) {
            Ok(bytes) if bytes.is_multiple_of(SHMEM_PAGE) => {
                system.limit_pages = bytes / SHMEM_PAGE;
            }
            Ok(_) => problems.add(
                fields.key("limit"),
                format!("\"{text}\" is not a whole number of 4 KiB pages"),
            ),
            Err(reason) => problems.add(fields.key("limit"), reason),
        }
    }
    let regions = fields.typed(
        "region",
        false,
        "an array of tables ([[shmem.region]])",
        Value::as_array,
        problems,
    );
    let mut total: u64 = 0;
    for (index, entry) in regions.into_iter().flatten().enumerate() {
        let key = format!("shmem.region[{index}]");
        let Some(table) = entry.as_table() else {
            problems.add(&key, format!("must be a table, not {}", describe(entry)));
            continue;
        };
        let region = Fields::new(&key, table);
        region.reject_unknown(REGION_KEYS, problems);
        let name = region.string("name", true, problems).and_then(|name| {
            let checked = rules::check_shmem_region_name(name.as_bytes()).and_then(|()| {
                if system.regions.iter().any(|other| other.name == name) {
                    Err(RuleError::ShmemRegionTwice)
                } else {
                    Ok(())
                }
            });
            match checked {
                Ok(()) => Some(name.to_string()),
                Err(error) => {
                    problems.add(region.key("name"), format!("\"{name}\" {error}"));
                    None
                }
            }
        });
        let size = region
            .typed(
                "size",
                true,
                "a string with a unit, e.g. \"64K\"",
                Value::as_str,
                problems,
            )
            .and_then(|text| {
                let checked = parse_size(text).and_then(|bytes| {
                    rules::check_shmem_region_size(bytes)
                        .map(|()| bytes)
                        .map_err(|error| error.to_string())
                });
                checked
                    .map_err(|reason| problems.add(region.key("size"), reason))
                    .ok()
            });
        if let Some(size) = size {
            total = total.saturating_add(size / SHMEM_PAGE);
            if let Err(error) = rules::check_shmem_regions(index + 1, total, system.limit_pages) {
                problems.add(region.key("size"), error.to_string());
            }
        }
        if let (Some(name), Some(size)) = (name, size) {
            system.regions.push(BootRegion { name, size });
        }
    }
    (problems.list.len() + problems.omitted == before).then_some(system)
}

/// Reads a VM's `vdev-shmem` array and checks each instance on its own
/// and against the VM's RAM (when known) and its other instances. `None`
/// when a mistake was reported; no key: no instances.
pub fn parse_vm(
    fields: &Fields<'_>,
    ram: Option<(u64, u64)>,
    problems: &mut Problems,
) -> Option<Vec<ShmemDevice>> {
    let Some(given) = fields.value("vdev-shmem", false, problems) else {
        return Some(Vec::new());
    };
    let key = fields.key("vdev-shmem");
    let Some(entries) = given.as_array() else {
        problems.add(
            &key,
            format!(
                "must be an array of tables ([[vm.vdev-shmem]]), not {}",
                describe(given)
            ),
        );
        return None;
    };
    let before = problems.list.len() + problems.omitted;
    let mut claims = ShmemClaims::default();
    let mut devices = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let key = format!("{key}[{index}]");
        let Some(table) = entry.as_table() else {
            problems.add(&key, format!("must be a table, not {}", describe(entry)));
            continue;
        };
        let entry = Fields::new(&key, table);
        entry.reject_unknown(ENTRY_KEYS, problems);
        if let Some(device) = parse_entry(&entry, ram, &mut claims, problems) {
            devices.push(device);
        }
    }
    if let Err(error) = rules::check_shmem_counts(entries.len(), 0)
        .and_then(|()| rules::check_vm_shmem_count(entries.len()))
    {
        problems.add(&key, error.to_string());
    }
    (problems.list.len() + problems.omitted == before).then_some(devices)
}

fn parse_entry(
    fields: &Fields<'_>,
    ram: Option<(u64, u64)>,
    claims: &mut ShmemClaims,
    problems: &mut Problems,
) -> Option<ShmemDevice> {
    let loc = fields
        .integer("loc", true, problems)
        .and_then(|loc| non_negative(fields, "loc", loc, problems));
    let mut place = Placement {
        fields,
        ram,
        claims,
    };
    let loc = loc.and_then(|loc| place.area("loc", loc, SHMEM_PAGE, ShmemArea::Factory, problems));
    let window = parse_window(fields, problems).and_then(|(base, size)| {
        place
            .area("window", base, size, ShmemArea::Window, problems)
            .map(|base| (base, size))
    });
    let intr = fields.integer("intr", true, problems).and_then(|intr| {
        let checked = u32::try_from(intr)
            .map_err(|_| RuleError::ShmemNotAnSpi { intid: u32::MAX })
            .and_then(|intid| rules::check_shmem_intr(intid).map(|()| intid))
            .and_then(|intid| place.claims.claim_intid(intid).map(|()| intid));
        match checked {
            Ok(intid) => Some(intid),
            Err(RuleError::ShmemNotAnSpi { .. }) if u32::try_from(intr).is_err() => {
                problems.add(
                    fields.key("intr"),
                    format!(
                        "{intr} is not an SPI the virtual GIC has (INTIDs 32 to {})",
                        rules::SPI_COUNT + 31
                    ),
                );
                None
            }
            Err(error) => {
                problems.add(fields.key("intr"), error.to_string());
                None
            }
        }
    });
    let allow = parse_patterns(fields, "allow", problems);
    let deny = parse_patterns(fields, "deny", problems);
    if let (Some(allow), Some(deny)) = (&allow, &deny)
        && let Err(error) = rules::check_shmem_counts(0, allow.len() + deny.len())
    {
        problems.add(fields.key("allow"), error.to_string());
        return None;
    }
    Some(ShmemDevice {
        loc: loc?,
        intr: intr?,
        window: window?,
        allow: allow?,
        deny: deny?,
    })
}

/// Where one VM's areas go: clear of its RAM and of each other.
struct Placement<'f, 'c> {
    fields: &'f Fields<'f>,
    ram: Option<(u64, u64)>,
    claims: &'c mut ShmemClaims,
}

impl Placement<'_, '_> {
    /// Checks and claims `base..base + size` for key `name`.
    fn area(
        &mut self,
        name: &str,
        base: u64,
        size: u64,
        kind: ShmemArea,
        problems: &mut Problems,
    ) -> Option<u64> {
        let checked = rules::check_shmem_area(base, size)
            .and_then(|()| match self.ram {
                Some((ram_base, ram_size)) => {
                    rules::check_shmem_ram(base, size, ram_base, ram_size)
                }
                None => Ok(()),
            })
            .and_then(|()| self.claims.claim_area(base, size, kind));
        match checked {
            Ok(()) => Some(base),
            Err(error) if error.has_subject() => {
                problems.add(self.fields.key(name), format!("{} {error}", address(base)));
                None
            }
            Err(error) => {
                problems.add(self.fields.key(name), error.to_string());
                None
            }
        }
    }
}

fn non_negative(
    fields: &Fields<'_>,
    name: &str,
    value: i64,
    problems: &mut Problems,
) -> Option<u64> {
    let converted = u64::try_from(value).ok();
    if converted.is_none() {
        problems.add(fields.key(name), format!("{value} is negative"));
    }
    converted
}

/// `window = [base, size]`, both integers in bytes.
fn parse_window(fields: &Fields<'_>, problems: &mut Problems) -> Option<(u64, u64)> {
    let what = "a [base, size] pair of non-negative integers, e.g. [0x1_0000_0000, 0x10_0000]";
    let pair = fields.typed("window", true, what, Value::as_array, problems)?;
    let parsed = match pair.as_slice() {
        [base, size] => base
            .as_integer()
            .and_then(|base| u64::try_from(base).ok())
            .zip(size.as_integer().and_then(|size| u64::try_from(size).ok())),
        _ => None,
    };
    if parsed.is_none() {
        problems.add(fields.key("window"), format!("must be {what}"));
    }
    parsed
}

/// `allow` or `deny`: an array of patterns, each checked by the model's
/// pattern rules.
fn parse_patterns(fields: &Fields<'_>, name: &str, problems: &mut Problems) -> Option<Vec<String>> {
    let Some(entries) = fields.typed(
        name,
        false,
        "an array of name patterns, e.g. [\"ping*\"]",
        Value::as_array,
        problems,
    ) else {
        return fields.value(name, false, problems).is_none().then(Vec::new);
    };
    let mut patterns = Vec::new();
    let mut all_good = true;
    for entry in entries {
        let Some(pattern) = entry.as_str() else {
            problems.add(
                fields.key(name),
                format!("{} is not a pattern (a string)", describe(entry)),
            );
            all_good = false;
            continue;
        };
        match rules::check_shmem_pattern(pattern.as_bytes()) {
            Ok(()) => patterns.push(pattern.to_string()),
            Err(error) => {
                problems.add(fields.key(name), format!("\"{pattern}\" {error}"));
                all_good = false;
            }
        }
    }
    all_good.then_some(patterns)
}

/// One VM's instances and passthrough devices, each when known.
pub type VmShmem<'d> = (Option<&'d [ShmemDevice]>, Option<&'d [ResolvedEntry]>);

/// Each VM's instances against its passthrough devices, once those are
/// resolved: no factory page or window on a passthrough range, no vector
/// on a passthrough SPI. Also the system-wide instance count.
pub fn check_against_devices(vms: &[VmShmem<'_>], problems: &mut Problems) {
    let mut total = 0;
    for (index, (devices, entries)) in vms.iter().enumerate() {
        let (Some(devices), Some(entries)) = (devices, entries) else {
            continue;
        };
        let key = format!("vm[{index}].vdev-shmem");
        total += devices.len();
        if let Err(error) = rules::check_shmem_counts(total, 0) {
            problems.add(&key, error.to_string());
        }
        if entries.is_empty() {
            continue;
        }
        let mut claims = ShmemClaims::default();
        for entry in entries.iter() {
            for &(base, size) in &entry.device.ranges {
                // Passthrough ranges are apart already (their own rules).
                let _ = claims.claim_area(base, size, ShmemArea::Passthrough);
            }
            for &spi in &entry.device.spis {
                let _ = claims.claim_intid(spi.saturating_add(32));
            }
        }
        for (number, device) in devices.iter().enumerate() {
            let key = format!("{key}[{number}]");
            if let Err(error) = claims.claim_area(device.loc, SHMEM_PAGE, ShmemArea::Factory) {
                problems.add(format!("{key}.loc"), error.to_string());
            }
            let (base, size) = device.window;
            if let Err(error) = claims.claim_area(base, size, ShmemArea::Window) {
                problems.add(format!("{key}.window"), error.to_string());
            }
            if let Err(error) = claims.claim_intid(device.intr) {
                problems.add(format!("{key}.intr"), error.to_string());
            }
        }
    }
}
