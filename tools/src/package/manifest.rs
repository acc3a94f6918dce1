//! The package's `tessera/manifest.dtb`: the checked configuration as a
//! flattened device tree, which is what the hypervisor reads to build the
//! VMs (docs/system-image.md, "The manifest").

use vm_fdt::{Error, FdtWriter};

use crate::system::LoadedSystem;

pub const MANIFEST_ENTRY: &str = "tessera/manifest.dtb";
pub const FORMAT_VERSION: u32 = 1;

/// The package entry holding a VM's image.
pub fn image_entry(vm: &str) -> String {
    format!("vm/{vm}/image")
}

/// The package entry holding a VM's device tree.
pub fn device_tree_entry(vm: &str) -> String {
    format!("vm/{vm}/guest.dtb")
}

pub fn manifest_dtb(system: &LoadedSystem) -> Result<Vec<u8>, Error> {
    let board = &system.config.board;
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", "tessera,system")?;
    fdt.property_u32("tessera,format-version", FORMAT_VERSION)?;
    fdt.property_string("board", board.spec.name)?;
    fdt.property_u32("gic-version", board.gic_version)?;

    // The system's shared memory, only for a system that has some (so a
    // package without it is as before): the page limit, and the boot
    // regions (names, and pages as u32) when there are any.
    let shmem = &system.config.shmem;
    let uses_shmem =
        !shmem.regions.is_empty() || system.config.vms.iter().any(|vm| !vm.shmem.is_empty());
    if uses_shmem {
        fdt.property_u64("shmem-page-limit", shmem.limit_pages)?;
    }
    if !shmem.regions.is_empty() {
        let names = shmem.regions.iter().map(|region| region.name.clone());
        fdt.property_string_list("shmem-regions", names.collect())?;
        let pages: Vec<u32> = shmem
            .regions
            .iter()
            // Checked: a page count that fits 32 bits.
            .map(|region| (region.size / tessera_package::rules::SHMEM_PAGE) as u32)
            .collect();
        fdt.property_array_u32("shmem-region-pages", &pages)?;
    }

    let vms = fdt.begin_node("vms")?;
    let each = system
        .config
        .vms
        .iter()
        .zip(&system.images)
        .zip(&system.devices);
    for (index, ((vm, image), devices)) in each.enumerate() {
        let node = fdt.begin_node(&format!("vm@{index}"))?;
        fdt.property_string("name", &vm.name)?;
        fdt.property_u64("ram-base", vm.ram_base)?;
        fdt.property_u64("ram-size", vm.ram)?;
        fdt.property_array_u32("cpus", &vm.cpus)?;
        fdt.property_string("image", &image_entry(&vm.name))?;
        fdt.property_u64("image-load-offset", image.layout.load_offset)?;
        fdt.property_string("device-tree", &device_tree_entry(&vm.name))?;
        // Only for a VM that waits: how long after the VMs are started its
        // vCPU 0 is, in microseconds (the configuration counts whole
        // milliseconds).
        if vm.start_delay_ms > 0 {
            fdt.property_u64("start-delay-us", vm.start_delay_ms * 1000)?;
        }
        // Only for a VM that has devices, as `<base size>` u64 pairs and
        // u32 SPI numbers.
        let reg: Vec<u64> = devices
            .iter()
            .flat_map(|device| device.ranges.iter().flat_map(|&(base, size)| [base, size]))
            .collect();
        if !reg.is_empty() {
            fdt.property_array_u64("passthrough-reg", &reg)?;
        }
        let spis: Vec<u32> = devices
            .iter()
            .flat_map(|device| device.spis.iter().copied())
            .collect();
        if !spis.is_empty() {
            fdt.property_array_u32("passthrough-spis", &spis)?;
        }
        // Only for a VM with vdev-shmem instances: seven cells each,
        // `<loc window-base window-size>` as u64 and `intr` as u32; the
        // rules as "INSTANCE allow|deny PATTERN" strings in the order the
        // model checks them (each instance's denies, then its allows).
        if !vm.shmem.is_empty() {
            let mut cells = Vec::new();
            let mut rules = Vec::new();
            for (index, device) in vm.shmem.iter().enumerate() {
                for value in [device.loc, device.window.0, device.window.1] {
                    cells.extend([(value >> 32) as u32, value as u32]);
                }
                cells.push(device.intr);
                for pattern in &device.deny {
                    rules.push(format!("{index} deny {pattern}"));
                }
                for pattern in &device.allow {
                    rules.push(format!("{index} allow {pattern}"));
                }
            }
            fdt.property_array_u32("vdev-shmem", &cells)?;
            if !rules.is_empty() {
                fdt.property_string_list("vdev-shmem-rules", rules)?;
            }
        }
        fdt.end_node(node)?;
    }
    fdt.end_node(vms)?;
    fdt.end_node(root)?;
    fdt.finish()
}
