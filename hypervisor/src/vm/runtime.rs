//! The VM runtime on the target: the library's VM core (`tessera_hypervisor::vm`)
//! with the real hardware behind its `Hardware` trait, the idle loop that
//! enters vCPUs, and what guest exits ask for (PSCI, MMIO, faults).
//!
//! Every decision about a VM's state (which vCPU may start, when a VM has
//! ended, what a reset or a stop races with) is the core's, host-tested
//! there; this module carries the decisions out. The lock order is written
//! once, in `tessera_hypervisor::vm::system`.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicPtr, AtomicU8, Ordering};

use spin::Once;
use tessera_hypervisor::MAX_CPUS;
use tessera_hypervisor::boot::manifest::{MAX_VMS, SystemManifest, VmManifest};
use tessera_hypervisor::boot::package::Package;
use tessera_hypervisor::console::escape::Escaped;
use tessera_hypervisor::devices::map::{DeviceMap, DeviceSlot, Window};
use tessera_hypervisor::memory::address::{GuestPhysAddr, PhysAddr};
use tessera_hypervisor::memory::page_table::{Table, TableStore, TlbMaintenance};
use tessera_hypervisor::traps::crash_report::TrapFrame;
use tessera_hypervisor::traps::exception_syndrome::ExceptionSyndrome;
use tessera_hypervisor::traps::guest_exit::{self, AccessFrame, GuestExit, MmioAccess};
use tessera_hypervisor::traps::reflect::{self, AbortKind, CannotReflect, GuestState};
use tessera_hypervisor::vgic::state::SpiSet;
use tessera_hypervisor::vm::ids::{CpuId, VcpuId, VcpuSet, VmId};
use tessera_hypervisor::vm::image::PristineImage;
use tessera_hypervisor::vm::lifecycle::{Outcome, Parked, StopOrder};
use tessera_hypervisor::vm::psci::{self, Call, status};
use tessera_hypervisor::vm::request_queue::Request;
use tessera_hypervisor::vm::set_way::{self, SetWayTracker, VirtualMemoryRegister};
use tessera_hypervisor::vm::stage2::Stage2;
use tessera_hypervisor::vm::system::{
    FirstStart, GuestRam, Hardware, VcpuEntry, Vm, VmDescription, VmSystem, counter_ticks,
};
use tessera_hypervisor::vm::vcpu_state::{self, El1Context};

use crate::arch::{self, entry, guest, vectors};
use crate::devices::{self, VmDevices};
use crate::{boot::power, interrupts, interrupts::gic, memory, println};
use tessera_platform::GicLayout;

/// The device slot of each VM's virtual UART (`devices`).
pub const UART_SLOT: DeviceSlot = DeviceSlot(0);
/// The device slots of each VM's virtual distributor and (GICv3)
/// redistributors.
pub const GICD_SLOT: DeviceSlot = DeviceSlot(1);
pub const GICR_SLOT: DeviceSlot = DeviceSlot(2);

/// A VM's stage-2 tables: pages from the page allocator (identity-mapped
/// at EL2, so a table's physical address is where EL2 writes it), and the
/// TLB maintenance for the VM's VMID.
pub struct Stage2Tables {
    vmid: u8,
    /// The first table handed out, the root: TLB maintenance names it in
    /// VTTBR_EL2 when the VM is not the one loaded on this CPU.
    root: Option<PhysAddr>,
}

impl TableStore for Stage2Tables {
    fn allocate_table(&mut self) -> Option<PhysAddr> {
        let table = memory::allocate_pages(1);
        self.root = self.root.or(table);
        table
    }

    fn table_mut(&mut self, address: PhysAddr) -> &mut Table {
        // SAFETY: `address` is a page this store allocated for a table; it is
        // identity-mapped read/write at EL2 and only the table code uses it.
        unsafe { &mut *(address.0 as *mut Table) }
    }
}

impl TlbMaintenance for Stage2Tables {
    fn publish(&mut self) {
        guest::publish_table_writes();
    }

    fn invalidate(&mut self, input: u64, span: u64) {
        if let Some(root) = self.root {
            guest::invalidate_guest_translations(self.vmid, root, input, span);
        }
    }
}

/// The hardware behind the VM core.
struct Aarch64;

impl Hardware for Aarch64 {
    #[inline(always)]
    fn this_cpu(&self) -> CpuId {
        this_cpu()
    }

    fn send_request_interrupt(&self, cpu: CpuId) {
        let affinity = CPU_AFFINITIES
            .get()
            .map_or(cpu.index() as u64, |affinities| affinities[cpu.index()]);
        gic::send_request_sgi(cpu.index(), affinity);
    }

    #[inline(always)]
    fn ring_doorbell(&self, cpu: CpuId, intid: u32) -> bool {
        if !interrupts::guest::ring_doorbell(cpu.index(), intid) {
            return false;
        }
        gic::send_doorbell_sgi(cpu.index());
        true
    }

    fn load_stage2(&self, vmid: u8, root: PhysAddr, counter_offset: u64) {
        // HCR_EL2 starts without TVM: a fresh vCPU has done no set/way work.
        guest::activate_vm(vmid, root.0, counter_offset);
        // Nothing cached for this VMID may survive from before its tables
        // were (re)written: at first start and after a reset.
        guest::invalidate_guest_tlbs();
    }

    fn load_vcpu(&self, virtual_mpidr: u64, context: &El1Context) {
        guest::set_virtual_mpidr(virtual_mpidr);
        guest::restore_el1(context);
    }

    fn save_vcpu(&self, context: &mut El1Context) {
        guest::save_el1(context);
    }

    unsafe fn zero_guest_ram(&self, host: PhysAddr, size: u64) {
        // SAFETY: the caller vouches the range is a VM's own RAM that no
        // vCPU uses, 1 KiB aligned in start and size (the trait's
        // contract); it is identity-mapped normal memory at EL2.
        unsafe { arch::zero_and_clean(host.0 as usize, size as usize) };
    }

    unsafe fn copy_to_guest_ram(&self, host: PhysAddr, bytes: &[u8]) {
        // SAFETY: as above: the caller vouches the range is a VM's own RAM
        // that no vCPU uses.
        let target = unsafe { core::slice::from_raw_parts_mut(host.0 as *mut u8, bytes.len()) };
        // SAFETY: `target` and `bytes` are distinct Normal memory (the VM's
        // RAM, the package), both mapped at EL2.
        let done = unsafe { arch::copy_blocks(target.as_mut_ptr(), bytes.as_ptr(), bytes.len()) };
        // Fewer than 32 bytes are left: a plain copy, too short for a
        // faster one to matter.
        target[done..].copy_from_slice(&bytes[done..]);
        // The guest starts with its MMU and caches off: what was copied
        // must be in memory, not only in this CPU's cache.
        arch::clean_to_point_of_coherency(host.0 as usize, bytes.len());
    }

    fn invalidate_instruction_caches(&self) {
        guest::invalidate_instruction_caches();
    }
}

/// A VM as the hypervisor has it: its stage-2 tables from the page
/// allocator, its devices those of `devices`.
pub type RunningVm = Vm<Stage2Tables, VmDevices>;

/// The VMs, built in place at boot (all zero until then, so in `.bss`).
pub static SYSTEM: VmSystem<Stage2Tables, VmDevices> = VmSystem::new();

static CPU_AFFINITIES: Once<[u64; MAX_CPUS]> = Once::new();

/// The VM whose vCPU each CPU is running, for the device fast path: one
/// load finds it (null while the CPU runs no vCPU). Set by the CPU itself
/// when it enters a vCPU.
static RUNNING_VM: [AtomicPtr<RunningVm>; MAX_CPUS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];

/// The index of the vCPU each CPU runs (meaningful while its `RUNNING_VM`
/// slot is set), for the device and interrupt fast paths.
static RUNNING_VCPU: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(0) }; MAX_CPUS];

/// The vCPU this CPU runs, while `running_vm` is `Some`: one load.
#[inline(always)]
pub fn running_vcpu() -> VcpuId {
    // Relaxed: only this CPU writes its slot. Every stored index is a
    // vCPU's, so `new` cannot fail; vCPU 0 stands in all the same.
    let index = RUNNING_VCPU[arch::cpu_index()].load(Ordering::Relaxed);
    VcpuId::new(usize::from(index)).unwrap_or(VcpuId::FIRST)
}

/// The VM this CPU is running a vCPU of, for the device fast path.
#[inline(always)]
pub fn running_vm() -> Option<&'static RunningVm> {
    // Relaxed: only this CPU writes its slot.
    let vm = RUNNING_VM[arch::cpu_index()].load(Ordering::Relaxed);
    // SAFETY: a non-null slot points into `SYSTEM`, a static whose VMs are
    // never removed or moved once added.
    unsafe { vm.as_ref() }
}

/// The entry frame each CPU hands to `enter_guest`. It must not live on the
/// stack that `enter_guest` resets, so each CPU has a slot here.
struct EntryFrame(UnsafeCell<TrapFrame>);

// SAFETY: slot `n` is only ever touched by CPU `n` (see `enter_vcpu`), so no
// two CPUs access the same frame.
unsafe impl Sync for EntryFrame {}

static ENTRY_FRAMES: [EntryFrame; MAX_CPUS] = [const {
    EntryFrame(UnsafeCell::new(TrapFrame {
        registers: [0; 31],
        stack_pointer: 0,
        exception_link: 0,
        saved_state: 0,
        syndrome: 0,
        fault_address: 0,
    }))
}; MAX_CPUS];

#[inline(always)]
fn this_cpu() -> CpuId {
    // `cpu_index` is masked below MAX_CPUS: never None.
    CpuId::new(arch::cpu_index()).unwrap_or(CpuId::new(0).expect("CPU 0 exists"))
}

/// VM `id` (a call: `VmSystem::vm` is out of line, as a lookup inlined
/// into a dozen cold paths cost more; [`vm_inline`] is for the one
/// measured path that needs it).
#[inline(always)]
pub fn vm(id: VmId) -> &'static RunningVm {
    SYSTEM.vm(id)
}

/// [`vm`], inline: for the sender's half of `shmem.notify_oneway`
/// (`interrupts::guest::raise_spi`).
#[inline(always)]
pub fn vm_inline(id: VmId) -> &'static RunningVm {
    SYSTEM.vm_inline(id)
}

fn name(id: VmId) -> &'static str {
    vm(id).description.name
}

/// The VM and vCPU this CPU runs, if any.
#[inline(always)]
pub fn current() -> Option<(VmId, VcpuId)> {
    SYSTEM.placement(this_cpu())
}

/// Why a VM could not be built. Each is a configuration or package fault.
#[derive(Clone, Copy, Debug)]
pub enum BuildError {
    Package(&'static str),
    Stage2 {
        vm: &'static str,
    },
    ImageTooLarge {
        vm: &'static str,
    },
    Placement {
        vm: &'static str,
    },
    Devices {
        vm: &'static str,
    },
    Shmem {
        vm: Option<&'static str>,
        error: devices::shmem::SetupError,
    },
}

impl core::fmt::Display for BuildError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Package(entry) => write!(f, "the package has no valid entry {entry}"),
            Self::Stage2 { vm } => {
                let vm = Escaped::str(vm);
                write!(f, "vm {vm}: could not build its stage-2 tables")
            }
            Self::ImageTooLarge { vm } => {
                let vm = Escaped::str(vm);
                write!(f, "vm {vm}: image or device tree does not fit its RAM")
            }
            Self::Placement { vm } => {
                let vm = Escaped::str(vm);
                write!(f, "vm {vm}: a physical CPU is given to two vCPUs")
            }
            Self::Devices { vm } => {
                let vm = Escaped::str(vm);
                write!(f, "vm {vm}: could not set up its virtual devices")
            }
            Self::Shmem {
                vm: Some(vm),
                error,
            } => write!(f, "vm {}: {error}", Escaped::str(vm)),
            Self::Shmem { vm: None, error } => write!(f, "{error}"),
        }
    }
}

/// Builds every VM of the manifest: RAM, stage 2, image, device tree and
/// device map.
pub fn build_all(
    package: &Package<'static>,
    manifest: &SystemManifest<'static>,
    guest_ram: &[PhysAddr],
    cpu_affinities: &[u64],
) -> Result<usize, BuildError> {
    let mut affinities = [0; MAX_CPUS];
    affinities[..cpu_affinities.len()].copy_from_slice(cpu_affinities);
    CPU_AFFINITIES.call_once(|| affinities);
    gic::learn_sgi_targets(cpu_affinities);
    // Every VM's image and device tree must be in the package and fit its
    // RAM before any VM is built: a package that breaks this for one VM
    // builds none (and its refusal names that VM).
    let mut images: [Option<(&'static [u8], &'static [u8])>; MAX_VMS] = [None; MAX_VMS];
    for (slot, description) in images.iter_mut().zip(manifest.vms()) {
        let files = guest_files(description, package)?;
        let pristine = PristineImage {
            image: files.0,
            image_load_offset: description.image_load_offset,
            device_tree: files.1,
        };
        pristine
            .fit(description.ram_size)
            .map_err(|_| BuildError::ImageTooLarge {
                vm: description.name,
            })?;
        *slot = Some(files);
    }
    devices::shmem::set_up_regions(manifest)
        .map_err(|error| BuildError::Shmem { vm: None, error })?;
    for (index, description) in manifest.vms().enumerate() {
        let id = VmId::new(index).ok_or(BuildError::Placement {
            vm: description.name,
        })?;
        let files = images[index].ok_or(BuildError::Placement {
            vm: description.name,
        })?;
        build_vm(id, description, files, guest_ram[index])?;
        println!(
            "tessera: vm {}: {} MiB RAM at guest {} (host {}), {} vCPU(s) on CPU(s) {}",
            description.name,
            description.ram_size >> 20,
            GuestPhysAddr(description.ram_base),
            guest_ram[index],
            description.vcpu_count,
            CpuList(description.physical_cpus())
        );
    }
    Ok(SYSTEM.count())
}

/// A VM's image and device tree, from the package.
fn guest_files(
    manifest: &VmManifest<'static>,
    package: &Package<'static>,
) -> Result<(&'static [u8], &'static [u8]), BuildError> {
    let image = package
        .file(manifest.image)
        .map_err(|_| BuildError::Package(manifest.image))?;
    let device_tree = package
        .file(manifest.device_tree)
        .map_err(|_| BuildError::Package(manifest.device_tree))?;
    Ok((image, device_tree))
}

/// CPU numbers as `[0, 1]`: the `Debug` text of the list, without the
/// `Debug` builders in the image.
struct CpuList<'a>(&'a [u32]);

impl core::fmt::Display for CpuList<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("[")?;
        for (index, cpu) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{cpu}")?;
        }
        f.write_str("]")
    }
}

fn build_vm(
    id: VmId,
    manifest: &VmManifest<'static>,
    (image, device_tree): (&'static [u8], &'static [u8]),
    ram_host: PhysAddr,
) -> Result<(), BuildError> {
    let name = manifest.name;
    let stage2_error = BuildError::Stage2 { vm: name };
    let mut stage2 = Stage2::new(Stage2Tables {
        vmid: id.vmid(),
        root: None,
    })
    .map_err(|_| stage2_error)?;
    let ram = GuestRam {
        guest: GuestPhysAddr(manifest.ram_base),
        host: ram_host,
        size: manifest.ram_size,
    };
    stage2
        .map_ram(ram.guest, ram.host, ram.size)
        .map_err(|_| stage2_error)?;
    // Passthrough devices appear at their own address: the manifest's
    // rules kept each range inside the board's device space, clear of the
    // hypervisor's devices, the guest's emulated ones and its RAM. Mapped,
    // the guest's accesses reach the device without a trap; the device map
    // below never sees them.
    for (base, size) in manifest.passthrough_ranges() {
        stage2
            .map_device(GuestPhysAddr(base), PhysAddr(base), size)
            .map_err(|_| stage2_error)?;
    }
    let mut cpus = [CpuId::new(0).expect("CPU 0 exists"); MAX_CPUS];
    for (slot, &cpu) in cpus.iter_mut().zip(manifest.physical_cpus()) {
        *slot = CpuId::new(cpu as usize).ok_or(BuildError::Placement { vm: name })?;
    }
    let pristine = PristineImage {
        image,
        image_load_offset: manifest.image_load_offset,
        device_tree,
    };
    // SAFETY: `ram_host` is this VM's RAM, carved out of free memory for
    // it alone (2 MiB aligned) at boot, and no vCPU of it exists yet.
    unsafe { pristine.load(&ram, &Aarch64) }.map_err(|_| BuildError::ImageTooLarge { vm: name })?;
    let description = VmDescription {
        id,
        name,
        ram,
        cpus,
        vcpu_count: manifest.vcpu_count,
        entry: GuestPhysAddr(manifest.ram_base + manifest.image_load_offset),
        entry_argument: PristineImage::device_tree_address(&ram),
        counter_offset: guest::physical_counter(),
        pristine,
        passthrough_spis: manifest.passthrough_spi_set(),
    };
    let mut devices = device_map(manifest.vcpu_count, &mut stage2)
        .map_err(|_| BuildError::Devices { vm: name })?;
    let mut owned = SpiSet::EMPTY;
    owned.insert(32 + tessera_platform::guest::UART_SPI);
    let mut signalled = SpiSet::EMPTY;
    let shmem = devices::shmem::add_vm(id, manifest, &mut devices, &mut owned, &mut signalled)
        .map_err(|error| BuildError::Shmem {
            vm: Some(name),
            error,
        })?;
    let passthrough = manifest.passthrough_spi_set();
    for intid in passthrough.iter() {
        owned.insert(intid);
    }
    let vgic = interrupts::guest::new_vgic(manifest.vcpu_count, owned, passthrough, signalled)
        .ok_or(BuildError::Devices { vm: name })?;
    let first_cpu = cpus[0].index();
    interrupts::guest::pass_through(id, passthrough, first_cpu, cpu_affinity(first_cpu))
        .map_err(|_| BuildError::Devices { vm: name })?;
    SYSTEM
        .add(Vm::new(
            description,
            stage2,
            devices,
            VmDevices::new(id, name, vgic, shmem),
        ))
        .map_err(|_| BuildError::Placement { vm: name })?;
    Ok(())
}

/// A VM's device windows, the same for every VM (the guest platform,
/// `tessera_platform::guest`): the UART, the distributor, and for GICv3 the
/// redistributors of its `vcpu_count` vCPUs. For GICv2 the guest's CPU
/// interface is the GIC's own virtual CPU interface (GICV), mapped into
/// `stage2` at the guest's GICC address: the guest's acknowledges and EOIs
/// never trap.
fn device_map(vcpu_count: usize, stage2: &mut Stage2<Stage2Tables>) -> Result<DeviceMap, ()> {
    use tessera_platform::guest;
    let mut devices = DeviceMap::new();
    let mut add = |base: u64, size: u64, slot| {
        devices
            .insert(
                Window {
                    base: GuestPhysAddr(base),
                    size,
                },
                slot,
            )
            .map_err(|_| ())
    };
    add(guest::UART.base, guest::UART.size, UART_SLOT)?;
    add(
        guest::GIC_DISTRIBUTOR.base,
        guest::GIC_DISTRIBUTOR.size,
        GICD_SLOT,
    )?;
    match gic::layout() {
        Some(GicLayout::V3 { .. }) => add(
            guest::GICV3_REDISTRIBUTORS_BASE,
            vcpu_count as u64 * guest::GICV3_REDISTRIBUTOR_STRIDE,
            GICR_SLOT,
        )?,
        Some(GicLayout::V2 {
            virtual_cpu_interface,
            ..
        }) => {
            // GICC_DIR is in the second page: the guest needs both.
            const GICV_SIZE: u64 = 0x2000;
            stage2
                .map_device(
                    GuestPhysAddr(guest::GICV2_CPU_INTERFACE.base),
                    PhysAddr(virtual_cpu_interface.base),
                    GICV_SIZE.min(virtual_cpu_interface.size),
                )
                .map_err(|_| ())?;
        }
        None => return Err(()),
    }
    Ok(devices)
}

/// The MPIDR of the CPU with logical `index`.
pub fn cpu_affinity(index: usize) -> u64 {
    CPU_AFFINITIES
        .get()
        .map_or(index as u64, |affinities| affinities[index % MAX_CPUS])
}

/// Asks the CPU running `vcpu` of `vm` to show SPI `intid`, which
/// became pending for it; true when this CPU runs it (the caller shows
/// it).
#[inline(always)]
pub fn request_interrupt_injection(vm: &RunningVm, vcpu: VcpuId, intid: u32) -> bool {
    SYSTEM.request_interrupt_injection(vm, vcpu, intid, &Aarch64)
}

/// Asks the CPUs running `vcpus` of VM `id` to sync their list registers;
/// true when this CPU runs one of them (the caller syncs it).
pub fn request_interrupt_sync(id: VmId, vcpus: VcpuSet) -> bool {
    SYSTEM.request_interrupt_sync(id, vcpus, &Aarch64)
}

/// Starts vCPU 0 of every VM, a VM with a start delay once that much time
/// has passed from here (its CPU sleeps until then: see `idle_loop`); with
/// no VM there is nothing to run, and the machine powers off at once.
pub fn start_all(manifest: &SystemManifest<'_>) {
    let frequency = arch::counter_frequency();
    let mut delays = [0; MAX_VMS];
    for (slot, description) in delays.iter_mut().zip(manifest.vms()) {
        let delay = description.start_delay_us;
        if delay > 0 {
            println!(
                "tessera: vm {}: starts after {}",
                Escaped::str(description.name),
                tessera_package::rules::Delay(delay)
            );
        }
        *slot = counter_ticks(delay, frequency);
    }
    if let Some(verdict) = SYSTEM.start_all(&delays, guest::physical_counter(), &Aarch64) {
        println!("tessera: no VMs to run");
        power::power_off(verdict.status());
    }
}

/// Where a CPU waits when it runs no vCPU: it sleeps until a request comes.
pub fn idle_loop() -> ! {
    let cpu = this_cpu();
    loop {
        // Check and sleep with IRQs masked, so a request SGI arriving
        // between the check and the WFI still wakes the WFI; it is taken
        // (and acknowledged) when IRQs are unmasked below.
        arch::disable_interrupts();
        let mut handled = 0;
        SYSTEM.requests(cpu).drain(|request| {
            handled += 1;
            match request {
                Request::StartVcpu {
                    vm,
                    vcpu,
                    entry,
                    argument,
                    generation,
                } => enter_vcpu(VcpuEntry {
                    vm,
                    vcpu,
                    entry,
                    argument,
                    generation,
                }),
                // No vCPU runs here: a stop or interrupt for one is moot.
                Request::StopVcpu { .. }
                | Request::InjectInterrupt { .. }
                | Request::SyncInterrupts { .. } => {}
            }
        });
        if handled == 0 {
            // A delayed first start may wait here: its time is set on
            // the EL2 timer, and the CPU sleeps until then (never polls).
            match SYSTEM.waiting_start(guest::physical_counter(), &Aarch64) {
                FirstStart::Due(start) => enter_vcpu(start),
                FirstStart::WaitUntil(due) => {
                    interrupts::timer::wake_by(due);
                    arch::wait_for_interrupt();
                }
                FirstStart::Nothing => arch::wait_for_interrupt(),
            }
        }
        arch::enable_interrupts();
    }
}

/// Enters the vCPU a start request names, or returns at once when the
/// VM's state has overtaken the request.
fn enter_vcpu(request: VcpuEntry) {
    arch::disable_interrupts();
    if !SYSTEM.claim_start(request, &Aarch64) {
        return;
    }
    let cpu = arch::cpu_index();
    RUNNING_VCPU[cpu].store(request.vcpu.index() as u8, Ordering::Relaxed);
    RUNNING_VM[cpu].store(
        core::ptr::from_ref(vm(request.vm)).cast_mut(),
        Ordering::Relaxed,
    );
    interrupts::guest::vcpu_starting(vm(request.vm), request.vcpu);
    let mut entry_frame = TrapFrame {
        exception_link: request.entry.0,
        saved_state: vcpu_state::ENTRY_SAVED_STATE,
        ..TrapFrame::default()
    };
    entry_frame.registers[0] = request.argument;
    let slot = ENTRY_FRAMES[cpu].0.get();
    // SAFETY: this CPU's own slot; no other CPU touches it, and the only
    // other use is `enter_guest` below, on this CPU.
    unsafe { slot.write(entry_frame) };
    // SAFETY: as above; the reference ends when `enter_guest` has copied it.
    vectors::enter_guest(unsafe { &*slot }, entry::boot_stack_top(cpu))
}

/// Acts on this CPU's requests while its vCPU is in the guest: a stop for
/// its VM parks it (and does not return).
fn take_requests(running: VmId, vcpu: VcpuId) {
    let requests = SYSTEM.requests(this_cpu());
    if requests.is_empty() {
        return;
    }
    requests.drain(|request| match request {
        Request::StopVcpu { vm } if vm == running => park_current_vcpu(),
        Request::SyncInterrupts { vm } if vm == running => {
            interrupts::guest::sync_this_cpu(self::vm(vm), vcpu);
        }
        Request::InjectInterrupt {
            vm,
            vcpu: target,
            intid,
        } if vm == running && target == vcpu => {
            interrupts::guest::show_injected(self::vm(vm), vcpu, intid);
        }
        // A start while a vCPU runs here is stale (its vCPU was started
        // and stopped since), as is a request for another VM or vCPU (the
        // model holds an injection's interrupt: the vCPU shows it when it
        // starts).
        Request::StopVcpu { .. }
        | Request::StartVcpu { .. }
        | Request::InjectInterrupt { .. }
        | Request::SyncInterrupts { .. } => {}
    });
}

/// The vCPU running here leaves the guest for good: its context is saved
/// and it is off. If it was the VM's last, the VM's end is reported (and,
/// for the last VM, the machine powered off). Then this CPU idles.
fn park_current_vcpu() -> ! {
    let leaving = running_vm().map(|vm| (vm, running_vcpu()));
    // Relaxed: only this CPU reads its slot.
    RUNNING_VM[arch::cpu_index()].store(core::ptr::null_mut(), Ordering::Relaxed);
    interrupts::guest::vcpu_leaving(leaving);
    if let Some((id, vcpu)) = current()
        && let Parked::VmEnded(outcome) = SYSTEM.park(id, vcpu, &Aarch64)
    {
        report_end(id, outcome);
    }
    idle_loop()
}

/// Reports how VM `id` ended; after its last vCPU parked, so every report
/// its vCPUs made comes first. The last VM's end powers the machine off.
fn report_end(id: VmId, outcome: Outcome) {
    let name = name(id);
    // The VM's last partial line first.
    devices::flush(id);
    // Its peers learn it is gone.
    devices::stopped(id);
    crate::console::report_dropped_output(id.index(), name);
    match outcome {
        Outcome::Clean => println!("tessera: vm {}: stopped cleanly", Escaped::str(name)),
        Outcome::ExitStatus(status) => {
            println!(
                "tessera: vm {}: exited with status {status} (failure)",
                Escaped::str(name)
            );
        }
        Outcome::Fault => {
            println!(
                "tessera: vm {}: stopped after a fault it could not take (failure)",
                Escaped::str(name)
            );
        }
    }
    if let Some(verdict) = SYSTEM.vm_ended(outcome) {
        devices::shmem::report();
        println!(
            "tessera: all {} VMs stopped, {} failed",
            verdict.total, verdict.failed
        );
        power::power_off(verdict.status());
    }
}

/// Stops the VM of the calling vCPU with `outcome` and parks the vCPU,
/// whose park ends the VM if it is the last one on.
fn stop_vm(id: VmId, outcome: Outcome) -> ! {
    if let Some((_, vcpu)) = current() {
        // `Ended` needs no vCPU on, and the caller's own is: the end comes
        // with the last park.
        let _ = SYSTEM.stop(id, outcome, Some(vcpu), &Aarch64);
    }
    park_current_vcpu()
}

/// An IRQ taken while a guest ran; `acknowledged` is one the assembly
/// fast path already acknowledged (`arch::vectors`).
pub fn handle_guest_interrupt(acknowledged: Option<u32>) {
    match acknowledged {
        Some(iar) => {
            if let Some(interrupt) = gic::Interrupt::from_iar(iar) {
                interrupts::handle_acknowledged(interrupt);
            }
        }
        None => interrupts::handle_irq(),
    }
    // Most interrupts (a guest's timer) come with no request: one check
    // each. A doorbell names an SPI that became pending for this vCPU (the
    // assembly fast path in `arch::vectors` shows it at once when it can).
    if let Some(vm) = running_vm() {
        if let Some(intid) = interrupts::guest::take_doorbell() {
            interrupts::guest::show_injected(vm, running_vcpu(), intid);
        }
        if !SYSTEM.requests(this_cpu()).is_empty() {
            take_requests(vm.description.id, running_vcpu());
        }
    }
}

/// A guest's exception (`what`) on a CPU that runs no VM: a bug, so the
/// machine stops. One log site for the three entries that can meet it.
#[cold]
#[inline(never)]
fn no_vm_here(what: &str) -> ! {
    log::error!("{what} on a CPU that runs no VM");
    power::fail_stop()
}

/// An SError taken while a guest ran: stop its VM with a report.
pub fn handle_guest_serror(frame: &TrapFrame) -> ! {
    let Some((id, _)) = current() else {
        no_vm_here("SError from a lower EL");
    };
    stop_with_fault(id, frame, format_args!("SError (asynchronous abort)"))
}

/// A synchronous exception from AArch32 code at the guest's EL0: Tessera
/// emulates nothing for AArch32, so the VM stops with a report.
pub fn handle_guest_aarch32_exit(frame: &TrapFrame) -> ! {
    let Some((id, _)) = current() else {
        no_vm_here("AArch32 exit");
    };
    stop_with_fault(
        id,
        frame,
        format_args!("exception from AArch32 EL0, which Tessera does not emulate"),
    )
}

/// A synchronous exception from a guest, other than a device access the
/// fast path in `traps::handlers` already carried out.
pub fn handle_guest_exit(frame: &mut TrapFrame) {
    let Some((id, vcpu)) = current() else {
        // A CPU without a VM cannot take guest exits; treat as a bug.
        no_vm_here("guest exit");
    };
    let syndrome = ExceptionSyndrome(frame.syndrome);
    let exit = guest_exit::decode(syndrome, frame.fault_address, guest::faulting_guest_page());
    match exit {
        GuestExit::Mmio(access) => handle_mmio(id, frame, &access),
        GuestExit::UndecodableDataAbort { address, is_write } => {
            use devices::shmem::Unsyndromed;
            // A pair or writeback form in a vdev-shmem page is carried out
            // from its instruction; anything else without a syndrome, or
            // not plain, gets the external abort.
            match devices::shmem::emulate_without_syndrome(vm(id), frame, address) {
                Unsyndromed::Done => {}
                Unsyndromed::Refused => {
                    log::debug!(
                        "vm {}: vdev-shmem access at {address} refused (not a plain load or store)",
                        Escaped::str(name(id))
                    );
                    inject_abort(id, frame, AbortKind::Data { is_write }, address);
                }
                Unsyndromed::NotShmem => {
                    log::debug!(
                        "vm {}: undecodable access to {address}",
                        Escaped::str(name(id))
                    );
                    inject_abort(id, frame, AbortKind::Data { is_write }, address);
                }
            }
        }
        GuestExit::OtherDataAbort { address, status } => {
            log::debug!(
                "vm {}: data abort at {address}: {status}",
                Escaped::str(name(id))
            );
            inject_abort(id, frame, AbortKind::Data { is_write: false }, address);
        }
        GuestExit::InstructionAbort { address } => {
            inject_abort(id, frame, AbortKind::Instruction, address);
        }
        GuestExit::Hypercall { .. } => handle_firmware_call(id, vcpu, frame),
        GuestExit::SecureMonitorCall => {
            // Guests reach PSCI through HVC; SMC has nothing behind it.
            frame.registers[0] = status::NOT_SUPPORTED as u64;
            frame.step_over_trapped_instruction();
        }
        GuestExit::WaitForInterrupt => {
            // WFI does not trap (HCR_EL2.TWI is clear: a guest's WFI sleeps
            // its own CPU and wakes for its virtual interrupts); should one
            // arrive anyway, it completes at once, as a WFI may.
            frame.step_over_trapped_instruction();
        }
        GuestExit::WaitForEvent => frame.step_over_trapped_instruction(),
        GuestExit::SystemRegister {
            is_read: false,
            register,
            encoding,
        } if interrupts::guest::sgi_register_write(
            id,
            vcpu,
            encoding,
            frame
                .registers
                .get(usize::from(register))
                .copied()
                .unwrap_or(0),
        ) =>
        {
            frame.step_over_trapped_instruction();
        }
        GuestExit::SystemRegister { encoding, .. } if set_way::is_set_way_operation(encoding) => {
            follow_set_way(id, vcpu, SetWayTracker::set_way_operation);
            frame.step_over_trapped_instruction();
        }
        GuestExit::SystemRegister {
            is_read: false,
            register,
            encoding,
        } if let Some(target) = VirtualMemoryRegister::from_encoding(encoding) => {
            // Trapped only while set/way maintenance is followed (TVM).
            let value = if register < 31 {
                frame.registers[register as usize]
            } else {
                0
            };
            let old = guest::guest_system_control();
            guest::write_virtual_memory_register(target, value);
            let new = guest::guest_system_control();
            follow_set_way(id, vcpu, |tracker| tracker.register_written(old, new));
            frame.step_over_trapped_instruction();
        }
        GuestExit::SystemRegister {
            is_read: false,
            encoding,
            ..
        } if vm(id).vcpu(vcpu).set_way.trapping_vm_registers
            && set_way::is_unemulated_virtual_memory_register(encoding) =>
        {
            // While TVM is on, a trapped write to a register Tessera does
            // not know (one added by a newer architecture extension) would
            // otherwise be lost without a trace: stop the VM instead.
            stop_with_fault(
                id,
                frame,
                format_args!(
                    "write to system register {encoding}, trapped while following set/way \
                     maintenance, which Tessera does not emulate"
                ),
            );
        }
        GuestExit::SystemRegister {
            is_read,
            register,
            encoding,
        } => {
            // Other trapped registers (performance monitors, implementation
            // defined) read as zero and ignore writes, as if not implemented.
            log::debug!(
                "vm {}: system register {encoding} emulated as RAZ/WI",
                Escaped::str(name(id))
            );
            if is_read && register < 31 {
                frame.registers[register as usize] = 0;
            }
            frame.step_over_trapped_instruction();
        }
        GuestExit::Unhandled { class } => {
            stop_with_fault(
                id,
                frame,
                format_args!("unhandled exception: {}", class.description()),
            );
        }
    }
    take_requests(id, vcpu);
}

fn handle_mmio(id: VmId, frame: &mut TrapFrame, access: &MmioAccess) {
    if devices::emulate(vm(id), &mut AccessFrame::full(frame), access) {
        frame.step_over_trapped_instruction();
        return;
    }
    log::debug!(
        "vm {}: {} of {} bytes at {} outside RAM and devices",
        Escaped::str(name(id)),
        if access.is_write { "write" } else { "read" },
        access.width.bytes(),
        access.address
    );
    inject_abort(
        id,
        frame,
        AbortKind::Data {
            is_write: access.is_write,
        },
        access.address,
    );
}

/// Tells this CPU's set/way tracker of an `event` of VM `id`'s running
/// vCPU and does what the policy decides.
///
/// Cleaning a VM's RAM takes time in proportion to its size, with this
/// CPU's interrupts masked; the guest can only make it happen when it
/// starts set/way maintenance or turns its caches on or off, and the cost
/// falls on its own CPU.
fn follow_set_way(
    id: VmId,
    vcpu: VcpuId,
    event: impl FnOnce(&mut SetWayTracker) -> set_way::Response,
) {
    let (response, was_trapping) = {
        let mut state = vm(id).vcpu(vcpu);
        let was_trapping = state.set_way.trapping_vm_registers;
        (event(&mut state.set_way), was_trapping)
    };
    if response.clean_guest_ram {
        let ram = vm(id).description.ram;
        arch::clean_to_point_of_coherency(ram.host.0 as usize, ram.size as usize);
    }
    // A set/way loop is thousands of traps: touch HCR_EL2 only on a change.
    if response.trap_vm_registers != was_trapping {
        guest::trap_virtual_memory_registers(response.trap_vm_registers);
    }
}

/// Gives the guest the synchronous external abort hardware would, or stops
/// the VM when it cannot take one.
fn inject_abort(id: VmId, frame: &mut TrapFrame, kind: AbortKind, address: GuestPhysAddr) {
    let ram = vm(id).description.ram;
    let state = GuestState {
        program_counter: frame.exception_link,
        saved_state: frame.saved_state,
        vector_base: guest::guest_vector_base(),
        fault_address: frame.fault_address,
        translation_enabled: guest::guest_translation_enabled(),
    };
    let ram = (ram.guest, GuestPhysAddr(ram.guest.0 + ram.size));
    match reflect::external_abort(&state, kind, ram) {
        Ok(reflection) => {
            guest::set_guest_exception_registers(
                reflection.esr_el1,
                reflection.far_el1,
                reflection.elr_el1,
                reflection.spsr_el1,
            );
            frame.exception_link = reflection.program_counter;
            frame.saved_state = reflection.saved_state;
        }
        Err(reason) => {
            let why = match reason {
                CannotReflect::NoVectors { .. } => "the guest has no exception vectors",
                CannotReflect::FaultInHandler { .. } => {
                    "the guest faulted inside its own exception handler"
                }
                CannotReflect::UnsupportedMode { .. } => {
                    "the guest runs in a mode Tessera cannot reflect to"
                }
            };
            stop_with_fault(
                id,
                frame,
                format_args!(
                    "{why}: abort at guest address {address} (FAR {:#x})",
                    frame.fault_address
                ),
            );
        }
    }
}

/// Stops the VM for a fault it cannot take, with a report naming it.
fn stop_with_fault(id: VmId, frame: &TrapFrame, reason: core::fmt::Arguments<'_>) -> ! {
    // The VM's last partial line first, so the report reads after it.
    devices::flush(id);
    println!(
        "tessera: vm {}: stopped: {reason}; PC {:#x}, ESR_EL2 {}",
        Escaped::str(name(id)),
        frame.exception_link,
        ExceptionSyndrome(frame.syndrome)
    );
    stop_vm(id, Outcome::Fault)
}

/// Restarts the VM from its pristine image: stops its other vCPUs, reloads
/// RAM, and starts vCPU 0 again (on this CPU if it is vCPU 0's).
fn reset_vm(id: VmId, vcpu: VcpuId) -> ! {
    if !SYSTEM.begin_reset(id, vcpu, &Aarch64) {
        // Another vCPU is already resetting or stopping the VM; this one
        // just leaves.
        park_current_vcpu();
    }
    // This vCPU leaves the guest too: its CPU runs no vCPU until the
    // restart (its interrupt state goes with the model's reset below).
    RUNNING_VM[arch::cpu_index()].store(core::ptr::null_mut(), Ordering::Relaxed);
    interrupts::guest::vcpu_leaving(None);
    // The others leave the guest at their next exit, which the request SGI
    // forces; what they printed until then belongs to the old run.
    SYSTEM.wait_until_no_vcpu_on(id);
    devices::reset(id);
    if !vm(id).lifecycle().is_resetting() {
        // A fault on another vCPU stopped the VM meanwhile (and its last
        // vCPU to park reported the end).
        idle_loop();
    }
    // SAFETY: no vCPU of the VM runs (waited for above, and none can start
    // while it is resetting), so nothing else uses its RAM.
    if let Err(error) = unsafe { SYSTEM.reload(id, &Aarch64) } {
        // The image fitted at boot; it cannot stop fitting.
        println!(
            "tessera: vm {}: cannot reload its image ({error})",
            name(id)
        );
        if let StopOrder::Ended(outcome) = SYSTEM.stop(id, Outcome::Fault, None, &Aarch64) {
            report_end(id, outcome);
        }
        idle_loop();
    }
    let Some(generation) = SYSTEM.finish_reset(id) else {
        // A fault on another vCPU stopped the VM meanwhile.
        idle_loop();
    };
    println!(
        "tessera: vm {}: restarted from its pristine image (reset {})",
        Escaped::str(name(id)),
        vm(id).lifecycle().reset_count()
    );
    if let Some(outcome) = SYSTEM.restart(id, generation, &Aarch64) {
        report_end(id, outcome);
    }
    idle_loop()
}

/// PSCI, SMCCC and Tessera calls.
fn handle_firmware_call(id: VmId, vcpu: VcpuId, frame: &mut TrapFrame) {
    let registers = &frame.registers;
    let call = psci::decode(registers[0], registers[1], registers[2], registers[3]);
    // ELR_EL2 already points past the HVC: its preferred return address is
    // the next instruction (unlike a trapped SMC, which points at itself).
    let result = match call {
        Call::Return(value) => value,
        Call::CpuOn {
            target,
            entry,
            context,
        } => SYSTEM.cpu_on(id, target, GuestPhysAddr(entry), context, &Aarch64),
        Call::AffinityInfo {
            target,
            lowest_level,
        } => SYSTEM.affinity_info(id, target, lowest_level),
        Call::CpuSuspend => {
            // Standby: wake on the next interrupt, as a WFI would. A
            // virtual interrupt already in a list register cannot wake a
            // WFI at EL2, so with one shown the call returns at once;
            // anything new arrives as a physical interrupt, which does.
            if !interrupts::guest::virtual_interrupt_pending() {
                arch::wait_for_interrupt();
            }
            status::SUCCESS
        }
        // The core ends the VM when this was its last vCPU on.
        Call::CpuOff => park_current_vcpu(),
        Call::SystemOff | Call::VmExit { status: 0 } => stop_vm(id, Outcome::Clean),
        Call::VmExit { status } => stop_vm(id, Outcome::ExitStatus(status)),
        Call::SystemReset => reset_vm(id, vcpu),
        // Bit 0: writes to the virtual-memory control registers trap
        // (set/way maintenance being followed). Test images only: in a
        // production image the call does not exist.
        Call::TestVcpuTraps if cfg!(feature = "semihosting") => {
            i64::from(guest::virtual_memory_registers_trapped())
        }
        Call::TestVcpuTraps => status::NOT_SUPPORTED,
        // The SPI path of a PMU overflow, which QEMU never takes (test
        // images only, as above).
        Call::TestRaisePmuSpi if cfg!(feature = "semihosting") => {
            interrupts::guest::pmu_spi_of_this_cpu().map_or(status::NOT_SUPPORTED, |spi| {
                crate::interrupts::gic::set_spi_pending(spi);
                i64::from(spi)
            })
        }
        Call::TestRaisePmuSpi => status::NOT_SUPPORTED,
        // Benchmark images only (`exit-counting`): the vectors' count.
        Call::BenchExitCount => {
            vectors::guest_exits_on_this_cpu().map_or(status::NOT_SUPPORTED, |count| count as i64)
        }
        Call::ResetCount => vm(id).lifecycle().reset_count() as i64,
    };
    frame.registers[0] = result as u64;
}
