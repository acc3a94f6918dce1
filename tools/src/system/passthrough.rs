//! Physical devices given to a VM (docs/system-image.md, "Passthrough"):
//! the `[[vm.passthrough]]` entries of a configuration, read from its text
//! ([`parse`]), resolved against the board's own device tree where an
//! entry names a node of it ([`resolve`]), and checked by the rules the
//! hypervisor applies to the manifest too ([`check_rules`]).
//!
//! A device appears in the guest at its own physical address, so its node
//! in the guest's tree is the board's node with the addresses translated
//! to CPU addresses: the same compatible, reg, interrupts (SPIs of the
//! GIC, as the guest's GIC numbers them the same) and clocks, with the
//! fixed clocks those name copied beside it.

use fdt::Fdt;
use fdt::node::FdtNode;
use tessera_package::rules::{self, Address, BoardRules, PassthroughClaims, RuleError};
use toml::Value;

use super::fields::{Fields, Problems, describe};

const ENTRY_KEYS: &[&str] = &["path", "reg", "spis"];

/// Interrupt controllers whose three-cell specifiers the guest's GIC
/// reads the same way: SPIs are SPIs, numbered alike.
const GIC_COMPATIBLES: &[&str] = &[
    "arm,gic-v3",
    "arm,gic-400",
    "arm,cortex-a15-gic",
    "arm,cortex-a7-gic",
    "arm,cortex-a9-gic",
];

/// The GIC binding's interrupt types.
const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;

/// One `[[vm.passthrough]]` entry as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PassthroughSpec {
    /// `path`: a node of the board's device tree, by its full path.
    Node(String),
    /// `reg` and `spis`: ranges (CPU physical addresses) and SPI numbers,
    /// for a device the board's tree does not describe. The guest's tree
    /// gets no node for it.
    Explicit {
        reg: Vec<(u64, u64)>,
        spis: Vec<u32>,
    },
}

/// A device given to a VM, resolved: what the manifest and the guest's
/// device tree carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassthroughDevice {
    /// `(base, size)` of each register range, CPU physical addresses,
    /// which are also the guest-physical ones.
    pub ranges: Vec<(u64, u64)>,
    /// SPI numbers (INTID - 32).
    pub spis: Vec<u32>,
    /// The node for the guest's device tree, for a device named by path.
    pub node: Option<DeviceNode>,
}

/// A board device-tree node, as the guest's tree will have it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceNode {
    /// Its name in the guest's tree: the board's node name with the CPU
    /// address of its first range as unit address (`pl031@9010000`).
    pub name: String,
    /// The raw `compatible` string list.
    pub compatible: Vec<u8>,
    /// The `interrupts` cells: `<0 spi flags>` triples.
    pub interrupts: Vec<u32>,
    /// The providers its `clocks` names, in order (each a fixed clock).
    pub clocks: Vec<ClockNode>,
    /// The raw `clock-names`, if it has them.
    pub clock_names: Option<Vec<u8>>,
}

/// A fixed clock copied from the board's tree: its node name and every
/// property but its phandle, which the guest's tree assigns anew.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClockNode {
    pub name: String,
    pub properties: Vec<(String, Vec<u8>)>,
}

/// Whether any entry names a board device-tree node: only then is the
/// board's tree needed.
pub fn needs_board_tree(specs: &[PassthroughSpec]) -> bool {
    specs
        .iter()
        .any(|spec| matches!(spec, PassthroughSpec::Node(_)))
}

/// Reads a VM's `passthrough` array from the text; `None` when a mistake
/// was reported. No key: no devices.
pub fn parse(fields: &Fields<'_>, problems: &mut Problems) -> Option<Vec<PassthroughSpec>> {
    let Some(given) = fields.value("passthrough", false, problems) else {
        return Some(Vec::new());
    };
    let key = fields.key("passthrough");
    let Some(entries) = given.as_array() else {
        problems.add(
            &key,
            format!(
                "must be an array of tables ([[vm.passthrough]]), not {}",
                describe(given)
            ),
        );
        return None;
    };
    let mut specs = Vec::new();
    let mut all_good = true;
    for (index, entry) in entries.iter().enumerate() {
        let key = format!("{key}[{index}]");
        let Some(table) = entry.as_table() else {
            problems.add(&key, format!("must be a table, not {}", describe(entry)));
            all_good = false;
            continue;
        };
        let before = problems.list.len() + problems.omitted;
        let entry_fields = Fields::new(&key, table);
        entry_fields.reject_unknown(ENTRY_KEYS, problems);
        let spec = parse_entry(&entry_fields, table, &key, problems);
        match spec {
            Some(spec) if problems.list.len() + problems.omitted == before => specs.push(spec),
            _ => all_good = false,
        }
    }
    all_good.then_some(specs)
}

fn parse_entry(
    fields: &Fields<'_>,
    table: &toml::Table,
    key: &str,
    problems: &mut Problems,
) -> Option<PassthroughSpec> {
    let explicit = table.contains_key("reg") || table.contains_key("spis");
    if table.contains_key("path") {
        if explicit {
            problems.add(
                key,
                "give either path (a node of the board's device tree) or reg and spis, not both",
            );
            return None;
        }
        let path = fields.string("path", true, problems)?;
        if !path.starts_with('/') || path == "/" || path.ends_with('/') || path.contains("//") {
            problems.add(
                fields.key("path"),
                format!(
                    "\"{path}\" is not the full path of a device node (e.g. \"/pl031@9010000\")"
                ),
            );
            return None;
        }
        return Some(PassthroughSpec::Node(path.to_string()));
    }
    if !explicit {
        problems.add(
            key,
            "names no device: give path (a node of the board's device tree), or reg \
             (and spis) for one it does not describe",
        );
        return None;
    }
    let reg = parse_reg(fields, problems);
    let spis = parse_spis(fields, problems);
    Some(PassthroughSpec::Explicit {
        reg: reg?,
        spis: spis?,
    })
}

fn parse_reg(fields: &Fields<'_>, problems: &mut Problems) -> Option<Vec<(u64, u64)>> {
    let entries = fields.typed(
        "reg",
        true,
        "an array of [base, size] pairs, e.g. [[0x9010000, 0x1000]]",
        Value::as_array,
        problems,
    )?;
    if entries.is_empty() {
        problems.add(
            fields.key("reg"),
            "empty; give each register range as a [base, size] pair, e.g. [[0x9010000, 0x1000]]",
        );
        return None;
    }
    if entries.iter().all(Value::is_integer) {
        problems.add(
            fields.key("reg"),
            "is a flat list of numbers; write each range as a [base, size] pair, e.g. \
             [[0x9010000, 0x1000]]",
        );
        return None;
    }
    let mut ranges = Vec::new();
    let mut all_good = true;
    for entry in entries {
        let pair = entry.as_array().and_then(|pair| match pair.as_slice() {
            [base, size] => Some((
                u64::try_from(base.as_integer()?).ok()?,
                u64::try_from(size.as_integer()?).ok()?,
            )),
            _ => None,
        });
        match pair {
            Some(pair) => ranges.push(pair),
            None => {
                problems.add(
                    fields.key("reg"),
                    format!(
                        "{} is not a [base, size] pair of non-negative integers",
                        describe(entry)
                    ),
                );
                all_good = false;
            }
        }
    }
    all_good.then_some(ranges)
}

fn parse_spis(fields: &Fields<'_>, problems: &mut Problems) -> Option<Vec<u32>> {
    let Some(entries) = fields.typed(
        "spis",
        false,
        "an array of SPI numbers, e.g. [2]",
        Value::as_array,
        problems,
    ) else {
        // Absent: no interrupts; of the wrong type: reported.
        return fields
            .value("spis", false, problems)
            .is_none()
            .then(Vec::new);
    };
    let mut spis = Vec::new();
    let mut all_good = true;
    for entry in entries {
        match entry.as_integer().and_then(|spi| u32::try_from(spi).ok()) {
            Some(spi) => spis.push(spi),
            None => {
                let shown = match entry {
                    Value::Integer(number) => number.to_string(),
                    other => describe(other),
                };
                problems.add(fields.key("spis"), format!("{shown} is not an SPI number"));
                all_good = false;
            }
        }
    }
    all_good.then_some(spis)
}

/// The device `spec` names; `tree` is the board's device tree, there
/// whenever a spec names a node. The error is a reason for a message
/// about the entry's `path`.
pub fn resolve(
    spec: &PassthroughSpec,
    tree: Option<&Fdt<'_>>,
) -> Result<PassthroughDevice, String> {
    match spec {
        PassthroughSpec::Explicit { reg, spis } => Ok(PassthroughDevice {
            ranges: reg.clone(),
            spis: spis.clone(),
            node: None,
        }),
        PassthroughSpec::Node(path) => {
            let tree = tree.ok_or("the board's device tree is not available")?;
            resolve_node(tree, path).map_err(|reason| format!("\"{path}\": {reason}"))
        }
    }
}

fn resolve_node(tree: &Fdt<'_>, path: &str) -> Result<PassthroughDevice, String> {
    let chain = ancestry(tree, path).ok_or("the board's device tree has no such node")?;
    let node = chain[chain.len() - 1];
    let ranges = cpu_ranges(&chain)?;
    let Some(&(first, _)) = ranges.first() else {
        return Err("its reg is empty: it has no registers to give".into());
    };
    let compatible = node
        .property("compatible")
        .map(|property| property.value.to_vec())
        .ok_or("it has no compatible, so no driver would find it")?;
    if node.property("interrupts-extended").is_some() {
        return Err(
            "it uses interrupts-extended; only interrupts of the GIC can be given to a VM".into(),
        );
    }
    let (interrupts, spis) = match node.property("interrupts") {
        None => (Vec::new(), Vec::new()),
        Some(property) => gic_spis(tree, &chain, property.value)?,
    };
    let clocks = match node.property("clocks") {
        None => Vec::new(),
        Some(property) => fixed_clocks(tree, property.value)?,
    };
    let base_name = node.name.split('@').next().unwrap_or(node.name);
    Ok(PassthroughDevice {
        ranges,
        spis,
        node: Some(DeviceNode {
            name: format!("{base_name}@{first:x}"),
            compatible,
            interrupts,
            clocks,
            clock_names: node
                .property("clock-names")
                .map(|property| property.value.to_vec()),
        }),
    })
}

/// The nodes from the root down to the one at `path`. A path part without
/// a unit address matches a node of that name with one, as in `dtc`.
fn ancestry<'b, 'a>(tree: &'b Fdt<'a>, path: &str) -> Option<Vec<FdtNode<'b, 'a>>> {
    let mut chain = vec![tree.find_node("/")?];
    for part in path.split('/').filter(|part| !part.is_empty()) {
        let parent = chain[chain.len() - 1];
        let child = parent.children().find(|child| {
            child.name == part
                || (!part.contains('@') && child.name.split('@').next() == Some(part))
        })?;
        chain.push(child);
    }
    (chain.len() > 1).then_some(chain)
}

fn be32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// A one-cell property.
fn cell(node: FdtNode<'_, '_>, name: &str) -> Option<u32> {
    node.property(name)
        .filter(|property| property.value.len() == 4)
        .map(|property| be32(property.value))
}

/// A number of `cells` cells (at most two).
fn number(bytes: &[u8], cells: u32) -> u64 {
    bytes
        .chunks_exact(4)
        .take(cells as usize)
        .fold(0, |value, chunk| (value << 32) | u64::from(be32(chunk)))
}

/// `#address-cells` and `#size-cells` of the children of `node`, with the
/// defaults the specification gives, refused past two (PCI and the like).
fn child_cells(node: FdtNode<'_, '_>) -> Result<(u32, u32), String> {
    let address = cell(node, "#address-cells").unwrap_or(2);
    let size = cell(node, "#size-cells").unwrap_or(1);
    if address == 0 || address > 2 || size > 2 {
        return Err(format!(
            "{} has #address-cells {address} and #size-cells {size}; Tessera reads at most two of each",
            node.name
        ));
    }
    Ok((address, size))
}

/// The node's `reg`, translated through its ancestors' `ranges` to CPU
/// addresses.
fn cpu_ranges(chain: &[FdtNode<'_, '_>]) -> Result<Vec<(u64, u64)>, String> {
    let node = chain[chain.len() - 1];
    let parent = chain[chain.len() - 2];
    let reg = node.property("reg").ok_or("it has no reg")?.value;
    let (address_cells, size_cells) = child_cells(parent)?;
    let entry = ((address_cells + size_cells) * 4) as usize;
    if reg.is_empty() || !reg.len().is_multiple_of(entry) {
        return Err(format!(
            "its reg is {} bytes, not whole entries of {address_cells} address and {size_cells} \
             size cells",
            reg.len()
        ));
    }
    reg.chunks_exact(entry)
        .map(|entry| {
            let (address, size) = entry.split_at(address_cells as usize * 4);
            let size = number(size, size_cells);
            let mut address = number(address, address_cells);
            // Up the tree: each bus between the node and the root maps its
            // children's addresses into its parent's.
            for level in (1..chain.len() - 1).rev() {
                address = translate(chain[level], chain[level - 1], address, size)?;
            }
            Ok((address, size))
        })
        .collect()
}

/// `address` (of `size` bytes) on `bus` as its parent sees it.
fn translate(
    bus: FdtNode<'_, '_>,
    parent: FdtNode<'_, '_>,
    address: u64,
    size: u64,
) -> Result<u64, String> {
    let ranges = bus
        .property("ranges")
        .ok_or_else(|| {
            format!(
                "{} has no ranges, so its children's addresses are not CPU addresses",
                bus.name
            )
        })?
        .value;
    if ranges.is_empty() {
        return Ok(address);
    }
    let (parent_cells, _) = child_cells(parent)?;
    let (child_cells, size_cells) = child_cells(bus)?;
    let entry = ((child_cells + parent_cells + size_cells) * 4) as usize;
    for window in ranges.chunks_exact(entry) {
        let (child, rest) = window.split_at(child_cells as usize * 4);
        let (cpu, length) = rest.split_at(parent_cells as usize * 4);
        let (child, cpu) = (number(child, child_cells), number(cpu, parent_cells));
        let length = number(length, size_cells);
        let offset = address.wrapping_sub(child);
        if address >= child && offset < length && size <= length - offset {
            return cpu
                .checked_add(offset)
                .ok_or_else(|| format!("{} translates past 2^64", bus.name));
        }
    }
    Err(format!(
        "{} is outside every window of {}'s ranges",
        Address(address),
        bus.name
    ))
}

/// The node's interrupt cells and SPI numbers; its interrupt parent must
/// be the GIC and every interrupt an SPI.
fn gic_spis(
    tree: &Fdt<'_>,
    chain: &[FdtNode<'_, '_>],
    interrupts: &[u8],
) -> Result<(Vec<u32>, Vec<u32>), String> {
    let parent = chain
        .iter()
        .rev()
        .find_map(|node| cell(*node, "interrupt-parent"))
        .and_then(|phandle| tree.find_phandle(phandle))
        .ok_or("its interrupt parent cannot be found")?;
    let is_gic = parent
        .compatible()
        .is_some_and(|compatible| compatible.all().any(|name| GIC_COMPATIBLES.contains(&name)));
    if !is_gic || cell(parent, "#interrupt-cells") != Some(3) {
        return Err(format!(
            "its interrupt parent {} is not the GIC; only the GIC's SPIs can be given to a VM",
            parent.name
        ));
    }
    if interrupts.is_empty() || !interrupts.len().is_multiple_of(12) {
        return Err(format!(
            "its interrupts are {} bytes, not whole <type number flags> triples",
            interrupts.len()
        ));
    }
    let cells: Vec<u32> = interrupts.chunks_exact(4).map(be32).collect();
    let mut spis = Vec::new();
    for triple in cells.chunks_exact(3) {
        match triple[0] {
            GIC_SPI => spis.push(triple[1]),
            GIC_PPI => {
                return Err(format!(
                    "its interrupt PPI {} is a per-CPU interrupt, which cannot be given to one VM",
                    triple[1]
                ));
            }
            other => return Err(format!("its interrupt type {other} is not an SPI")),
        }
    }
    Ok((cells, spis))
}

/// The providers `clocks` names: fixed clocks only, which a guest can be
/// given as they are. A clock the hypervisor would have to run (a clock
/// controller, the firmware's) cannot be passed through.
fn fixed_clocks(tree: &Fdt<'_>, clocks: &[u8]) -> Result<Vec<ClockNode>, String> {
    if !clocks.len().is_multiple_of(4) {
        return Err(format!(
            "its clocks are {} bytes, not whole cells",
            clocks.len()
        ));
    }
    let mut found = Vec::new();
    for phandle in clocks.chunks_exact(4).map(be32) {
        let provider = tree
            .find_phandle(phandle)
            .ok_or_else(|| format!("its clock {phandle:#x} is no node of the tree"))?;
        let fixed = provider
            .compatible()
            .is_some_and(|compatible| compatible.all().any(|name| name == "fixed-clock"));
        if !fixed || cell(provider, "#clock-cells") != Some(0) {
            return Err(format!(
                "its clock {} is not a fixed clock; only fixed clocks can be given to a guest \
                 (name the device's reg and spis instead, and let the guest know its clock)",
                provider.name
            ));
        }
        found.push(ClockNode {
            name: provider.name.to_string(),
            properties: provider
                .properties()
                .filter(|property| !matches!(property.name, "phandle" | "linux,phandle"))
                .map(|property| (property.name.to_string(), property.value.to_vec()))
                .collect(),
        });
    }
    Ok(found)
}

/// Where a device came from, for messages: the key of the entry's `path`
/// or of its `reg` and `spis`.
pub struct EntryKeys {
    pub ranges: String,
    pub spis: String,
}

/// Applies the shared rules to every VM's devices, in order, so each
/// range and SPI goes to one VM once: inside the board's device space,
/// clear of the hypervisor's devices, the guest's emulated devices and
/// the VM's RAM. `labels[n]` names VM n in messages (`vm "alpha"`).
pub fn check_rules(
    board: &'static BoardRules,
    vms: &[VmDevices<'_>],
    labels: &[String],
    problems: &mut Problems,
) {
    let mut claims = PassthroughClaims::default();
    let reason = |error: RuleError| match error {
        RuleError::PassthroughTaken {
            other_base,
            other_end,
            vm,
        } => format!(
            "overlaps the range {}..{}, already given to {}",
            Address(other_base),
            Address(other_end),
            labels[vm]
        ),
        RuleError::SpiTaken { spi, vm } => {
            format!("SPI {spi} is already given to {}", labels[vm])
        }
        other => other.to_string(),
    };
    for (index, vm) in vms.iter().enumerate() {
        let mut range_count = 0;
        let mut spi_count = 0;
        for ResolvedEntry { device, keys, path } in vm.entries {
            let prefix = path
                .as_ref()
                .map_or(String::new(), |path| format!("\"{path}\": "));
            for &(base, size) in &device.ranges {
                let checked = rules::check_passthrough_range(board, base, size)
                    .and_then(|()| match vm.ram {
                        Some((ram_base, ram_size)) => {
                            rules::check_passthrough_ram(base, size, ram_base, ram_size)
                        }
                        None => Ok(()),
                    })
                    .and_then(|()| claims.claim_range(index, base, size));
                if let Err(error) = checked {
                    problems.add(&keys.ranges, format!("{prefix}{}", reason(error)));
                }
            }
            for &spi in &device.spis {
                let checked = rules::check_passthrough_spi(board, spi)
                    .and_then(|()| claims.claim_spi(index, spi));
                if let Err(error) = checked {
                    problems.add(&keys.spis, format!("{prefix}{}", reason(error)));
                }
            }
            range_count += device.ranges.len();
            spi_count += device.spis.len();
        }
        if let Err(error) = rules::check_passthrough_counts(range_count, spi_count) {
            problems.add(&vm.key, error.to_string());
        }
    }
}

/// A device resolved from one entry, with the keys its messages go under
/// and the board path it was named by.
pub struct ResolvedEntry {
    pub device: PassthroughDevice,
    pub keys: EntryKeys,
    pub path: Option<String>,
}

/// One VM's devices for [`check_rules`].
pub struct VmDevices<'d> {
    /// `vm[n].passthrough`.
    pub key: String,
    /// Its RAM, when known: `(base, size)`.
    pub ram: Option<(u64, u64)>,
    pub entries: &'d [ResolvedEntry],
}

/// Resolves the entries of VM `index`; `None` (reported) when one cannot
/// be. `tree` is the board's device tree, if it could be read; when a
/// node is named and it could not, why is reported already.
pub fn resolve_all(
    index: usize,
    specs: &[PassthroughSpec],
    tree: Option<&Fdt<'_>>,
    problems: &mut Problems,
) -> Option<Vec<ResolvedEntry>> {
    let mut entries = Vec::new();
    let mut all_good = true;
    for (entry, spec) in specs.iter().enumerate() {
        let key = format!("vm[{index}].passthrough[{entry}]");
        let (keys, path) = match spec {
            PassthroughSpec::Node(path) => {
                if tree.is_none() {
                    all_good = false;
                    continue;
                }
                let key = format!("{key}.path");
                let keys = EntryKeys {
                    ranges: key.clone(),
                    spis: key,
                };
                (keys, Some(path.clone()))
            }
            PassthroughSpec::Explicit { .. } => {
                let keys = EntryKeys {
                    ranges: format!("{key}.reg"),
                    spis: format!("{key}.spis"),
                };
                (keys, None)
            }
        };
        match resolve(spec, tree) {
            Ok(device) => entries.push(ResolvedEntry { device, keys, path }),
            Err(reason) => {
                problems.add(keys.ranges, reason);
                all_good = false;
            }
        }
    }
    all_good.then_some(entries)
}
