//! Bring-up, in order: check where and at which EL we run, read the device
//! tree, build the EL2 map and turn on the MMU, console, allocators, GIC,
//! the other CPUs, the timer tick on each; then report and power off.

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tessera_hypervisor::boot::device_tree::{self, MachineDescription};
use tessera_hypervisor::boot::manifest;
use tessera_hypervisor::boot::package::Package;
use tessera_hypervisor::console::escape::Escaped;
use tessera_hypervisor::memory::address::{PhysAddr, PhysRange};
use tessera_hypervisor::memory::map::RangeSet;
use tessera_hypervisor::{MAX_CPUS, VERSION};
use tessera_platform::GicLayout;

use crate::{
    arch, boot::board::BOARD, boot::power, boot::smp, console, interrupts::gic, interrupts::timer,
    memory, println, vm,
};

/// Ticks each CPU waits for before it reports its timer as working.
const TICKS_TO_PROVE: u32 = 3;
/// How long the boot CPU waits for the others, in timer ticks of its own.
const WAIT_FOR_CPUS_TICKS: u32 = 200;

/// CPUs that have seen `TICKS_TO_PROVE` ticks.
static TICKING: AtomicUsize = AtomicUsize::new(0);
/// Whether each CPU waits for `TICKS_TO_PROVE` ticks and reports them: the
/// bring-up self-test of a boot without a system package. With a package,
/// the VMs start as soon as every CPU's timer is armed. The boot CPU sets
/// it before any CPU reads it; it starts false so it lives in `.bss`.
static PROVE_TICKS: AtomicBool = AtomicBool::new(false);

/// Writes a fixed message straight to the board UART, before (or instead
/// of) the normal console. Uses no formatting: in the wrong-address case
/// the image's absolute pointers are wrong and only PC-relative code works.
pub(crate) fn early_message(message: &str) {
    let uart = console::emergency_writer(BOARD.console_uart.base as usize);
    for byte in message.bytes() {
        if byte == b'\n' {
            uart.write_byte(b'\r');
        }
        uart.write_byte(byte);
    }
    uart.flush();
}

/// Refuses to start on what the boot loader handed over, before the
/// console is up: writes `tessera: refusing to start: ` and `reason` with
/// [`early_message`], then fails. The beginning every such refusal shares
/// is stored once, here.
#[inline(never)]
fn refuse_to_start(reason: &str) -> ! {
    early_message("tessera: refusing to start: ");
    early_message(reason);
    power::fail_stop()
}

/// Logs why bring-up cannot go on and powers off with failure. Every
/// refusal after the console is up comes through here: each `log::error!`
/// site carries its own record metadata and set-up code, one shared site
/// keeps a single copy.
#[inline(never)]
fn fail(reason: fmt::Arguments<'_>) -> ! {
    report_error(reason);
    power::power_off(1)
}

/// Logs a bring-up error that does not end the boot (see [`fail`]).
#[inline(never)]
fn report_error(reason: fmt::Arguments<'_>) {
    log::error!("{reason}");
}

/// The facts about this machine: from the device tree, or the board's
/// fallback when there is none.
struct Machine {
    memory: RangeSet,
    reserved: RangeSet,
    cpu_affinities: [u64; MAX_CPUS],
    cpu_count: usize,
    gic: GicLayout,
    device_tree: Option<PhysRange>,
    initrd: Option<PhysRange>,
    /// The root `compatible` of the device tree.
    compatible: Option<&'static str>,
    /// CPUs the device tree lists beyond `MAX_CPUS`.
    cpus_ignored: usize,
}

impl Machine {
    /// The CPUs' affinities, in device-tree order. `cpu_count` never
    /// exceeds `MAX_CPUS` (both sources cap it); the `min` lets the
    /// compiler see so, where a slice to `cpu_count` kept a panic path in
    /// each caller.
    fn cpu_affinities(&self) -> &[u64] {
        &self.cpu_affinities[..self.cpu_count.min(MAX_CPUS)]
    }
}

fn gic_layout_for(version: Option<u8>) -> GicLayout {
    match (version, BOARD.default_gic) {
        // QEMU virt: the same board carries GICv2 or GICv3 by command line.
        (Some(2), GicLayout::V3 { distributor, .. }) => GicLayout::V2 {
            distributor,
            cpu_interface: tessera_platform::PhysRange::new(0x0801_0000, 0x1_0000),
            hypervisor_interface: tessera_platform::PhysRange::new(0x0803_0000, 0x1_0000),
            virtual_cpu_interface: tessera_platform::PhysRange::new(0x0804_0000, 0x1_0000),
        },
        (_, layout) => layout,
    }
}

fn discover_machine(device_tree_address: u64) -> Machine {
    let mut header = [0u8; 8];
    if device_tree_address != 0 && device_tree_address.is_multiple_of(8) {
        // SAFETY: the boot protocol passes the device tree's address in x0
        // (or 0); a non-zero, aligned value points at RAM the boot loader
        // wrote, and reading 8 bytes of it cannot fault with the MMU off.
        header = unsafe { core::ptr::read_volatile(device_tree_address as *const [u8; 8]) };
    }
    if let Some(size) = device_tree::blob_size(&header) {
        // SAFETY: the header names the blob's size; the boot loader keeps it
        // in RAM that the memory map reserves for the whole run.
        let blob = unsafe { core::slice::from_raw_parts(device_tree_address as *const u8, size) };
        match device_tree::read_machine(blob) {
            Ok(description) => {
                let MachineDescription {
                    memory,
                    reserved,
                    cpu_affinities,
                    cpu_count,
                    cpus_ignored,
                    gic_version,
                    initrd,
                    compatible,
                } = description;
                return Machine {
                    memory,
                    reserved,
                    cpu_affinities,
                    cpu_count,
                    gic: gic_layout_for(gic_version),
                    device_tree: PhysRange::from_base_size(device_tree_address, size as u64),
                    initrd,
                    compatible,
                    cpus_ignored,
                };
            }
            // A valid tree with more memory ranges than can be tracked
            // would leave reservations out: running on the fallback layout
            // could then hand the tree, the initrd or firmware memory out.
            Err(device_tree::DeviceTreeError::MemoryMap(_)) => {
                refuse_to_start(
                    "the device tree has more memory or reserved ranges than Tessera can track\n",
                );
            }
            Err(_) => {
                early_message("tessera: device tree unusable, using the board's fallback layout\n")
            }
        }
    }
    let mut memory = RangeSet::new();
    for range in BOARD.fallback_memory {
        // A board table of a range or two: it always fits.
        let _ = memory.add((*range).into());
    }
    let mut cpu_affinities = [0; MAX_CPUS];
    let cpu_count = BOARD.fallback_cpu_count.min(MAX_CPUS);
    for (index, affinity) in cpu_affinities.iter_mut().enumerate().take(cpu_count) {
        *affinity = index as u64;
    }
    Machine {
        memory,
        reserved: RangeSet::new(),
        cpu_affinities,
        cpu_count,
        gic: BOARD.default_gic,
        device_tree: None,
        initrd: None,
        compatible: None,
        cpus_ignored: 0,
    }
}

/// Refuses to start if the device tree or the package lies inside the
/// hypervisor's memory, BSS and stacks included (`whole`: the Image
/// header's image_size), which boot has already written: a boot loader
/// that put one right after the file would have had it overwritten. Out
/// of line, so as not to change how the compiler lays out
/// `primary_entry`, which is the boot budget's.
#[inline(never)]
fn refuse_inputs_inside(machine: &Machine, whole: PhysRange) {
    let inside = |range: Option<PhysRange>| range.is_some_and(|range| range.overlaps(&whole));
    if inside(machine.device_tree) || inside(machine.initrd) {
        refuse_to_start(
            "the device tree or the package lies inside the hypervisor's memory; the boot \
             loader must place them beyond the Image header's image_size\n",
        );
    }
}

/// The boot CPU's first Rust code. MMU off; BSS zeroed; on the first stack.
pub extern "C" fn primary_entry(device_tree_address: u64, run_address: u64) -> ! {
    if arch::current_exception_level() != 2 {
        refuse_to_start(
            "not entered at EL2. Tessera is a hypervisor and must be started at EL2 \
             (QEMU: -M virt,virtualization=on).\n",
        );
    }
    if run_address != BOARD.load_address {
        refuse_to_start(
            "loaded at the wrong address for this board image (the boot loader must honour \
             the Image header's text_offset)\n",
        );
    }
    arch::set_cpu_index(0);
    arch::configure_hypervisor_traps();
    arch::vectors::install();

    let machine = discover_machine(device_tree_address);
    let image = memory::image_layout();
    refuse_inputs_inside(&machine, image.whole());

    let mut free = machine.memory.clone();
    let mut holes = RangeSet::new();
    // A hole that does not fit the set would leave memory in use looking
    // free: refuse to go on rather than hand it out.
    let mut add_hole = |range: PhysRange| {
        if holes.add(range).is_err() {
            early_message("tessera: too many reserved memory ranges to keep track of\n");
            power::fail_stop();
        }
    };
    add_hole(image.whole());
    for range in machine.reserved.ranges() {
        add_hole(*range);
    }
    for range in BOARD.firmware_reserved {
        add_hole((*range).into());
    }
    if let Some(tree) = machine.device_tree {
        add_hole(tree);
    }
    if let Some(initrd) = machine.initrd {
        add_hole(initrd);
    }
    for hole in holes.ranges() {
        if free.remove(*hole).is_err() {
            early_message("tessera: memory map too fragmented\n");
            power::fail_stop();
        }
    }
    free.trim_to_pages();

    // The EL2 map covers all RAM, including the reserved parts the
    // hypervisor reads (device tree, firmware's spin table).
    let mut mapped_ram = machine.memory.clone();
    for range in BOARD.firmware_reserved {
        if mapped_ram.add((*range).into()).is_err() {
            early_message("tessera: too many memory ranges to map\n");
            power::fail_stop();
        }
    }
    let Ok(el2_map) = memory::build_el2_map(&mapped_ram, &image) else {
        early_message("tessera: could not build the EL2 translation tables\n");
        power::fail_stop();
    };
    for range in memory::written_with_mmu_off(&el2_map) {
        // SAFETY: with the MMU off every store so far went to memory, so no
        // cache line holds anything of ours (see `written_with_mmu_off`).
        unsafe { arch::invalidate_data_cache(range.start.0 as usize, range.size() as usize) };
    }
    // SAFETY: the map covers the image, all RAM (stacks, BSS, device tree)
    // and the board's device windows, identity-mapped.
    unsafe { arch::enable_mmu(el2_map.root, arch::entry::boot_stack_top(0)) };
    arch::enable_system_errors();

    console::init(BOARD.console_uart.base as usize);
    console::init_logging();

    let initrd = machine.initrd;
    // The VMs' RAM is carved out before the allocators get the rest, so that
    // each VM gets one contiguous block of exactly its size.
    let system = initrd.map(|initrd| load_system(initrd, &machine, &mut free));

    let Some(allocators) = memory::init_allocators(&mut free) else {
        println!("tessera: ERROR: not enough free RAM for the heap");
        power::power_off(1);
    };
    print_banner(&machine, &image, &allocators);
    if !memory::self_check() {
        fail(format_args!("allocator self-check failed"));
    }

    if let Err(error) = gic::init_boot_cpu(machine.gic, machine.cpu_count) {
        fail(format_args!("GIC initialisation failed: {error}"));
    }

    PROVE_TICKS.store(system.is_none(), Ordering::Release);
    smp::publish_boot_parameters(machine.cpu_affinities(), el2_map.root);
    announce_online(0);
    let mut start_failures = 0;
    for (index, &affinity) in machine.cpu_affinities().iter().enumerate().skip(1) {
        if let Err(error) = smp::start_cpu(index, affinity) {
            report_error(format_args!("cpu {index} did not start: {error}"));
            start_failures += 1;
        }
    }

    prove_timer_ticks(0);
    let deadline = timer::ticks(0) + WAIT_FOR_CPUS_TICKS;
    while TICKING.load(Ordering::Acquire) < machine.cpu_count - start_failures
        && timer::ticks(0) < deadline
    {
        arch::wait_for_event();
    }
    let online = smp::online_count();
    let ticking = TICKING.load(Ordering::Acquire);
    if online != machine.cpu_count || ticking != machine.cpu_count {
        fail(format_args!(
            "only {online} of {} CPUs came online and {ticking} have a ticking timer",
            machine.cpu_count
        ));
    }
    // One sentence with the word that differs filled in: two whole
    // sentences stored the rest twice.
    let timer = if PROVE_TICKS.load(Ordering::Acquire) {
        "ticking"
    } else {
        "armed"
    };
    println!("tessera: all {online} CPUs online, EL2 timer {timer} on every CPU");

    #[cfg(feature = "selftest-fault")]
    selftest_fault();

    let Some(system) = system else {
        println!("tessera: no system package (initrd); nothing to run");
        power::power_off(0)
    };
    start_system(system, &machine)
}

/// A checked system package, and the RAM set aside for each of its VMs.
struct System {
    package: Package<'static>,
    manifest: manifest::SystemManifest<'static>,
    guest_ram: [PhysAddr; manifest::MAX_VMS],
}

/// Checks the system package (checksums, manifest, machine) and takes each
/// VM's RAM out of `free`; any problem ends the run with a report.
fn load_system(initrd: PhysRange, machine: &Machine, free: &mut RangeSet) -> &'static System {
    // SAFETY: the boot loader put the initrd in RAM and recorded it in the
    // device tree; the memory map keeps it out of every allocator, and it is
    // mapped read/write at EL2 and never written.
    let archive =
        unsafe { core::slice::from_raw_parts(initrd.start.0 as *const u8, initrd.size() as usize) };
    // Every refusal names the entry, the field and the value, and says what
    // to do (the errors' `Display`); nothing of a VM is built before all of
    // the package has been checked.
    let package = match Package::parse(archive) {
        Ok(package) => package,
        Err(error) => fail(format_args!("system package at {}: {error}", initrd.start)),
    };
    let manifest = match package.file(manifest::MANIFEST_ENTRY).map(manifest::parse) {
        Ok(Ok(manifest)) => manifest,
        Ok(Err(error)) => fail(format_args!("system package: {error}")),
        Err(error) => fail(format_args!("system package: {error}")),
    };
    // The images' sizes against their VMs' RAM (`check_package`) are left
    // to the VM builder, which checks them before it copies anything:
    // another walk over the package here costs 2,400 instructions of the
    // boot budget. `parse` has checked each load offset against its RAM.
    let checked = manifest.check_against_machine(
        BOARD.name,
        u32::from(machine.gic.version()),
        machine.cpu_count,
    );
    if let Err(error) = checked {
        fail(format_args!("system package: {error}"));
    }
    let mut guest_ram = [PhysAddr(0); manifest::MAX_VMS];
    for (slot, vm) in guest_ram.iter_mut().zip(manifest.vms()) {
        // 2 MiB alignment lets stage 2 map the RAM with blocks.
        match free.take(vm.ram_size, 0x20_0000) {
            Some(range) => *slot = range.start,
            None => fail(format_args!(
                "vm {}: no contiguous free RAM for its {} MiB",
                Escaped::str(vm.name),
                vm.ram_size >> 20
            )),
        }
    }
    // Kept in a static: it lives for the whole run, and moving it (about a
    // KiB) through return values shows up in the boot benchmark.
    SYSTEM.call_once(|| System {
        package,
        manifest,
        guest_ram,
    })
}

static SYSTEM: spin::Once<System> = spin::Once::new();

/// Builds the VMs and starts them; this CPU then serves whatever vCPU it is
/// given.
fn start_system(system: &'static System, machine: &Machine) -> ! {
    match vm::build_all(
        &system.package,
        &system.manifest,
        &system.guest_ram,
        machine.cpu_affinities(),
    ) {
        Ok(count) => println!("tessera: {count} VM(s) built; starting them"),
        Err(error) => fail(format_args!("could not build the VMs: {error}")),
    }
    vm::start_all(&system.manifest);
    vm::idle_loop()
}

/// A secondary CPU's first Rust code: MMU on, on its own stack.
pub extern "C" fn secondary_entry(index: usize) -> ! {
    arch::set_cpu_index(index);
    arch::configure_hypervisor_traps();
    arch::vectors::install();
    arch::enable_system_errors();
    gic::init_secondary_cpu(index);
    smp::mark_online();
    announce_online(index);
    prove_timer_ticks(index);
    vm::idle_loop()
}

fn announce_online(index: usize) {
    println!(
        "tessera: cpu {index} online (MPIDR {:#x})",
        arch::current_mpidr()
    );
}

/// Starts the tick on this CPU and, in the bring-up self-test, waits for
/// `TICKS_TO_PROVE` of them.
fn prove_timer_ticks(index: usize) {
    if let Err(error) = timer::start_on_this_cpu() {
        report_error(format_args!(
            "cpu {index}: timer interrupt not enabled: {error}"
        ));
        return;
    }
    arch::enable_interrupts();
    if PROVE_TICKS.load(Ordering::Acquire) {
        while timer::ticks(index) < TICKS_TO_PROVE {
            arch::wait_for_interrupt();
        }
        println!(
            "tessera: cpu {index}: EL2 timer ticking ({} ticks at {} Hz)",
            timer::ticks(index),
            timer::TICK_HZ
        );
    }
    TICKING.fetch_add(1, Ordering::AcqRel);
    // Wakes the boot CPU, which waits for every CPU in WFE.
    arch::send_event();
}

fn print_banner(
    machine: &Machine,
    image: &memory::ImageLayout,
    allocators: &memory::AllocatorSummary,
) {
    println!(
        "Tessera {VERSION} (EL2 hypervisor) on {}, GICv{}, {} CPUs",
        BOARD.name,
        machine.gic.version(),
        machine.cpu_count
    );
    match machine.device_tree {
        Some(tree) => println!(
            "tessera: device tree at {} ({}){}",
            tree.start,
            machine.compatible.unwrap_or("no compatible"),
            if machine.cpus_ignored > 0 {
                " - some CPUs beyond the supported maximum stay off"
            } else {
                ""
            }
        ),
        None => println!(
            "tessera: no device tree; using the {} board's built-in layout",
            BOARD.name
        ),
    }
    println!("tessera: memory map:");
    for range in machine.memory.ranges() {
        map_line("RAM             ", *range, 20);
    }
    map_line("hypervisor image", image.whole(), 10);
    if let Some(tree) = machine.device_tree {
        map_line("device tree     ", tree, 10);
    }
    if let Some(initrd) = machine.initrd {
        map_line("package (initrd)", initrd, 10);
    }
    for range in machine.reserved.ranges() {
        map_line("reserved        ", *range, 10);
    }
    // The board's own firmware areas, unless the device tree reserved
    // them already (the Pi firmware's tree does).
    for range in BOARD.firmware_reserved {
        let range = PhysRange::from(*range);
        if machine
            .reserved
            .ranges()
            .iter()
            .any(|reserved| reserved.start <= range.start && range.end <= reserved.end)
        {
            continue;
        }
        map_line("firmware        ", range, 10);
    }
    map_line("heap            ", allocators.heap, 20);
    println!(
        "tessera:   page allocator   {} free pages ({} MiB)",
        allocators.free_pages,
        (allocators.free_pages * 4096) >> 20
    );
}

/// One line of the banner's memory map: `label` (padded to the column),
/// the range and its size in MiB (`shift` 20) or KiB (10). One format for
/// every line, where each had its own.
fn map_line(label: &str, range: PhysRange, shift: u32) {
    let unit = if shift == 20 { "MiB" } else { "KiB" };
    println!(
        "tessera:   {label} {range} {} {unit}",
        range.size() >> shift
    );
}

/// Deliberately faults after boot, to prove the crash report end to end.
#[cfg(feature = "selftest-fault")]
fn selftest_fault() {
    println!("tessera: selftest-fault: writing to an unmapped address");
    // SAFETY: not safe at all, on purpose: this address is outside the EL2
    // map, so the write takes a data abort at EL2 and never completes.
    unsafe { core::ptr::write_volatile(0xDEAD_0000 as *mut u64, 0x5AFE) };
}
