//! VMs: building them from the system package, running their vCPUs, and
//! carrying out what their exits ask for (PSCI, MMIO, faults).
//!
//! Lock order (outermost first): a VM's `runtime` lock, then its device lock
//! (`devices`), then a CPU's `START_REQUESTS` lock, then the console lock.
//! None of these is held while taking the GIC lock (GICv2), which is held
//! while an interrupt is dispatched; its handler may take the console lock.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use spin::{Mutex, Once};
use tessera_hypervisor::MAX_CPUS;
use tessera_hypervisor::address::{GuestPhysAddr, PhysAddr};
use tessera_hypervisor::crash_report::TrapFrame;
use tessera_hypervisor::exception_syndrome::ExceptionSyndrome;
use tessera_hypervisor::fast_copy;
use tessera_hypervisor::guest_exit::{self, AccessFrame, GuestExit, MmioAccess};
use tessera_hypervisor::manifest::{MAX_VMS, SystemManifest, VmManifest};
use tessera_hypervisor::package::Package;
use tessera_hypervisor::page_table::{
    MapAttributes, MemoryKind, PageTable, Regime, Table, TableStore,
};
use tessera_hypervisor::psci::{self, Call, status};
use tessera_hypervisor::reflect::{self, AbortKind, CannotReflect, GuestState};
use tessera_hypervisor::set_way::{self, SetWayTracker, VirtualMemoryRegister};
use tessera_hypervisor::vcpu_state::{self, El1Context};

use crate::arch::{self, entry, guest, vectors};
use crate::{console, devices, gic, memory, power, println, timer};

/// Where the guest's device tree goes: the last 64 KiB of its RAM
/// (docs/system-image.md; the tool checks that the tree and image fit).
const DEVICE_TREE_RESERVE: u64 = 0x1_0000;

/// How a VM ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// SYSTEM_OFF, or TESSERA_VM_EXIT with status 0.
    Clean,
    /// TESSERA_VM_EXIT with a non-zero status.
    ExitStatus(u32),
    /// Stopped by the hypervisor for a fault it could not reflect.
    Fault,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VmState {
    Running,
    /// A vCPU is reloading the VM: nothing else may start, reset or
    /// stop it until the reload is done.
    Resetting,
    Stopped(Outcome),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VcpuPower {
    Off,
    On,
    /// CPU_ON accepted, the vCPU has not run yet.
    OnPending,
}

/// What never changes after boot.
struct Vm {
    name: &'static str,
    vmid: u8,
    stage2_root: u64,
    ram_host: PhysAddr,
    ram_base: GuestPhysAddr,
    ram_size: u64,
    image: &'static [u8],
    image_load_offset: u64,
    device_tree: &'static [u8],
    physical_cpus: [u32; MAX_CPUS],
    vcpu_count: usize,
    counter_offset: u64,
}

/// What changes while the VM runs, under the VM's lock.
struct Runtime {
    state: VmState,
    vcpus: [VcpuPower; MAX_CPUS],
    saved_el1: [El1Context; MAX_CPUS],
    reset_count: u64,
}

/// A request to a physical CPU to run a vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StartRequest {
    vm: usize,
    vcpu: usize,
    entry: u64,
    argument: u64,
}

static VMS: Once<[Option<Vm>; MAX_VMS]> = Once::new();
static RUNTIMES: [Mutex<Option<Runtime>>; MAX_VMS] = [const { Mutex::new(None) }; MAX_VMS];
/// Per CPU: a vCPU to start (taken by the idle loop).
static START_REQUESTS: [Mutex<Option<StartRequest>>; MAX_CPUS] =
    [const { Mutex::new(None) }; MAX_CPUS];

/// What one physical CPU runs, read on every guest exit: kept together (and
/// 32-byte aligned, so finding a CPU's entry is a shift) so the exit path
/// finds all of it from one base address.
#[repr(align(32))]
pub struct CpuPlacement {
    /// The VM this CPU's vCPU belongs to, set at boot: `usize::MAX` for none.
    vm: AtomicUsize,
    /// Which of that VM's vCPUs runs here.
    vcpu: AtomicUsize,
    /// Another CPU asks the vCPU running here to stop. It always sends an
    /// SGI too, so the flag is checked on interrupt exits (and on the full
    /// exit path), not on the device-access fast path.
    stop_requested: AtomicBool,
    /// The running vCPU's set/way state; only this CPU touches it.
    set_way: Mutex<SetWayTracker>,
}

const _: () = assert!(
    size_of::<CpuPlacement>() == 32,
    "a CPU's placement is found with a shift: keep it 32 bytes"
);

static CPU_PLACEMENT: [CpuPlacement; MAX_CPUS] = [const {
    CpuPlacement {
        vm: AtomicUsize::new(usize::MAX),
        vcpu: AtomicUsize::new(0),
        stop_requested: AtomicBool::new(false),
        set_way: Mutex::new(SetWayTracker {
            trapping_vm_registers: false,
        }),
    }
}; MAX_CPUS];
static CPU_AFFINITIES: Once<[u64; MAX_CPUS]> = Once::new();
static RUNNING_VMS: AtomicUsize = AtomicUsize::new(0);
static FAILED_VMS: AtomicUsize = AtomicUsize::new(0);
/// The entry frame each CPU hands to `enter_guest`. It must not live on the
/// stack that `enter_guest` resets, so each CPU has a slot here.
struct EntryFrame(UnsafeCell<TrapFrame>);

// SAFETY: slot `n` is only ever touched by CPU `n` (see `run_vcpu`), so no
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

impl Vm {
    /// Where vCPU 0 starts: the image's load address.
    fn entry_point(&self) -> u64 {
        self.ram_base.0 + self.image_load_offset
    }

    /// The guest-physical address of the device tree, passed in x0.
    fn device_tree_address(&self) -> u64 {
        self.ram_base.0 + self.ram_size - DEVICE_TREE_RESERVE
    }
}

fn vm(index: usize) -> &'static Vm {
    VMS.get()
        .and_then(|vms| vms[index].as_ref())
        .expect("VM indices come from the boot-time table")
}

/// Stage-2 tables come from the page allocator; RAM is identity-mapped at
/// EL2, so a table's physical address is also where EL2 writes it.
struct PageAllocatorStore;

impl TableStore for PageAllocatorStore {
    fn allocate_table(&mut self) -> Option<PhysAddr> {
        memory::allocate_pages(1)
    }

    fn table_mut(&mut self, address: PhysAddr) -> &mut Table {
        // SAFETY: `address` is a page this store allocated for a table; it is
        // identity-mapped read/write at EL2 and only the table code uses it.
        unsafe { &mut *(address.0 as *mut Table) }
    }
}

/// Why a VM could not be built. Each is a configuration or package fault.
#[derive(Clone, Copy, Debug)]
pub enum BuildError {
    Package(&'static str),
    Stage2 { vm: &'static str },
    ImageTooLarge { vm: &'static str },
}

impl core::fmt::Display for BuildError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Package(entry) => write!(f, "the package has no valid entry {entry}"),
            Self::Stage2 { vm } => write!(f, "vm {vm}: could not build its stage-2 tables"),
            Self::ImageTooLarge { vm } => {
                write!(f, "vm {vm}: image or device tree does not fit its RAM")
            }
        }
    }
}

/// Builds every VM of the manifest: RAM, stage 2, image and device tree.
pub fn build_all(
    package: &Package<'static>,
    manifest: &SystemManifest<'static>,
    guest_ram: &[PhysAddr],
    cpu_affinities: &[u64],
) -> Result<usize, BuildError> {
    let mut affinities = [0; MAX_CPUS];
    affinities[..cpu_affinities.len()].copy_from_slice(cpu_affinities);
    CPU_AFFINITIES.call_once(|| affinities);
    let mut vms: [Option<Vm>; MAX_VMS] = [const { None }; MAX_VMS];
    for (index, description) in manifest.vms().enumerate() {
        let built = build_vm(index, description, package, guest_ram[index])?;
        for (vcpu, &cpu) in description.physical_cpus().iter().enumerate() {
            let placement = &CPU_PLACEMENT[cpu as usize];
            placement.vm.store(index, Ordering::Release);
            placement.vcpu.store(vcpu, Ordering::Release);
        }
        devices::install(index, description.name);
        *RUNTIMES[index].lock() = Some(Runtime {
            state: VmState::Running,
            vcpus: [VcpuPower::Off; MAX_CPUS],
            saved_el1: [El1Context::reset(); MAX_CPUS],
            reset_count: 0,
        });
        println!(
            "tessera: vm {}: {} MiB RAM at guest {} (host {}), {} vCPU(s) on CPU(s) {:?}",
            built.name,
            built.ram_size >> 20,
            built.ram_base,
            built.ram_host,
            built.vcpu_count,
            description.physical_cpus()
        );
        vms[index] = Some(built);
    }
    let count = manifest.vm_count();
    VMS.call_once(|| vms);
    RUNNING_VMS.store(count, Ordering::Release);
    Ok(count)
}

fn build_vm(
    index: usize,
    description: &VmManifest<'static>,
    package: &Package<'static>,
    ram_host: PhysAddr,
) -> Result<Vm, BuildError> {
    let name = description.name;
    let image = package
        .file(description.image)
        .map_err(|_| BuildError::Package(description.image))?;
    let device_tree = package
        .file(description.device_tree)
        .map_err(|_| BuildError::Package(description.device_tree))?;
    let mut store = PageAllocatorStore;
    let mut stage2 =
        PageTable::new(Regime::Stage2, &mut store).map_err(|_| BuildError::Stage2 { vm: name })?;
    let guest_ram = MapAttributes {
        kind: MemoryKind::Normal,
        writable: true,
        executable: true,
    };
    stage2
        .map(
            description.ram_base,
            ram_host,
            description.ram_size,
            guest_ram,
            &mut store,
        )
        .map_err(|_| BuildError::Stage2 { vm: name })?;
    let vm = Vm {
        name,
        vmid: index as u8 + 1,
        stage2_root: stage2.root().0,
        ram_host,
        ram_base: GuestPhysAddr(description.ram_base),
        ram_size: description.ram_size,
        image,
        image_load_offset: description.image_load_offset,
        device_tree,
        physical_cpus: description.physical_cpus,
        vcpu_count: description.vcpu_count,
        counter_offset: arch::guest::physical_counter(),
    };
    load_pristine_image(&vm)?;
    Ok(vm)
}

/// (Re)writes the VM's RAM: zeroes, image at its load offset, device tree at
/// the top; then cleans it all to the point of coherency, since the guest
/// starts with its MMU (and so its caches) off.
fn load_pristine_image(vm: &Vm) -> Result<(), BuildError> {
    // The manifest was checked by the tool, but a package is data from
    // outside: every size is checked again before it indexes RAM.
    let too_large = BuildError::ImageTooLarge { vm: vm.name };
    let device_tree_offset = vm
        .ram_size
        .checked_sub(DEVICE_TREE_RESERVE)
        .ok_or(too_large)?;
    let image_end = vm
        .image_load_offset
        .checked_add(vm.image.len() as u64)
        .ok_or(too_large)?;
    if image_end > device_tree_offset
        || vm.device_tree.len() as u64 > DEVICE_TREE_RESERVE
        || !vm.ram_size.is_multiple_of(1024 * 1024)
    {
        return Err(too_large);
    }
    // SAFETY: the VM's RAM was allocated for it alone (2 MiB multiples, so
    // 1 KiB aligned), is identity-mapped normal memory at EL2, and no vCPU
    // of the VM runs while it is rewritten.
    unsafe { arch::zero_and_clean(vm.ram_host.0 as usize, vm.ram_size as usize) };
    // SAFETY: as above.
    let ram =
        unsafe { core::slice::from_raw_parts_mut(vm.ram_host.0 as *mut u8, vm.ram_size as usize) };
    let image_start = vm.image_load_offset as usize;
    fast_copy::copy_bytes(
        &mut ram[image_start..image_start + vm.image.len()],
        vm.image,
    );
    let tree_start = device_tree_offset as usize;
    fast_copy::copy_bytes(
        &mut ram[tree_start..tree_start + vm.device_tree.len()],
        vm.device_tree,
    );
    // The guest starts with its MMU and caches off: what was copied must be
    // in memory, not only in this CPU's cache.
    arch::clean_to_point_of_coherency(vm.ram_host.0 as usize + image_start, vm.image.len());
    arch::clean_to_point_of_coherency(vm.ram_host.0 as usize + tree_start, vm.device_tree.len());
    guest::invalidate_instruction_caches();
    Ok(())
}

/// Wakes `cpu` so that it looks at its requests.
fn kick(cpu: usize) {
    if cpu == arch::cpu_index() {
        return;
    }
    let affinity = CPU_AFFINITIES
        .get()
        .map_or(cpu as u64, |affinities| affinities[cpu]);
    gic::send_request_sgi(cpu, affinity);
}

fn post_start(cpu: usize, request: StartRequest) {
    *START_REQUESTS[cpu].lock() = Some(request);
    kick(cpu);
}

fn post_stop(cpu: usize) {
    CPU_PLACEMENT[cpu]
        .stop_requested
        .store(true, Ordering::Release);
    kick(cpu);
}

/// Starts vCPU 0 of every VM.
pub fn start_all() {
    let Some(vms) = VMS.get() else { return };
    for (index, vm) in vms.iter().enumerate() {
        let Some(vm) = vm else { continue };
        if let Some(runtime) = RUNTIMES[index].lock().as_mut() {
            runtime.vcpus[0] = VcpuPower::OnPending;
        }
        post_start(
            vm.physical_cpus[0] as usize,
            StartRequest {
                vm: index,
                vcpu: 0,
                entry: vm.entry_point(),
                argument: vm.device_tree_address(),
            },
        );
    }
}

/// Where a CPU waits when it runs no vCPU: it sleeps until a request comes.
pub fn idle_loop() -> ! {
    let cpu = arch::cpu_index();
    loop {
        // Check and sleep with IRQs masked, so a request SGI arriving
        // between the check and the WFI still wakes the WFI; it is taken
        // (and acknowledged) when IRQs are unmasked below.
        arch::disable_interrupts();
        // A stop request for a vCPU that is no longer running is moot.
        CPU_PLACEMENT[cpu]
            .stop_requested
            .store(false, Ordering::Release);
        let request = START_REQUESTS[cpu].lock().take();
        match request {
            Some(StartRequest {
                vm,
                vcpu,
                entry,
                argument,
            }) => run_vcpu(vm, vcpu, entry, argument),
            None => arch::wait_for_interrupt(),
        }
        arch::enable_interrupts();
    }
}

/// Enters vCPU `vcpu` of VM `index` at `entry` with x0 = `argument`, or
/// returns at once when the VM's state has overtaken the request.
fn run_vcpu(index: usize, vcpu: usize, entry_point: u64, argument: u64) {
    let cpu = arch::cpu_index();
    let vm = vm(index);
    // Only a vCPU that CPU_ON (or a start or reset) made pending runs: a
    // request that the VM's state has overtaken is dropped.
    let runnable = RUNTIMES[index].lock().as_mut().is_some_and(|runtime| {
        let start =
            runtime.state == VmState::Running && runtime.vcpus[vcpu] == VcpuPower::OnPending;
        if start {
            runtime.vcpus[vcpu] = VcpuPower::On;
        }
        start
    });
    if !runnable {
        return;
    }
    arch::disable_interrupts();
    // HCR_EL2 starts without TVM: a fresh vCPU has done no set/way work.
    guest::activate_vm(vm.vmid, vm.stage2_root, vm.counter_offset);
    *CPU_PLACEMENT[cpu].set_way.lock() = SetWayTracker::default();
    // Nothing cached for this VMID may survive from before its tables were
    // (re)written: at first start and after a reset.
    guest::invalidate_guest_tlbs();
    guest::set_virtual_mpidr(vcpu_state::virtual_mpidr(vcpu));
    guest::restore_el1(&El1Context::reset());
    let mut entry_frame = TrapFrame {
        exception_link: entry_point,
        saved_state: vcpu_state::ENTRY_SAVED_STATE,
        ..TrapFrame::default()
    };
    entry_frame.registers[0] = argument;
    let slot = ENTRY_FRAMES[cpu].0.get();
    // SAFETY: this CPU's own slot; no other CPU touches it, and the only
    // other use is `enter_guest` below, on this CPU.
    unsafe { slot.write(entry_frame) };
    // SAFETY: as above; the reference ends when `enter_guest` has copied it.
    vectors::enter_guest(unsafe { &*slot }, entry::boot_stack_top(cpu))
}

/// The VM and vCPU this CPU runs, if any.
#[inline]
fn current_vm() -> Option<(usize, usize)> {
    let placement = &CPU_PLACEMENT[arch::cpu_index()];
    // Relaxed: the placement is written once at boot, before this CPU was
    // given any vCPU (the start request's lock orders it).
    let vm = placement.vm.load(Ordering::Relaxed);
    (vm != usize::MAX).then(|| (vm, placement.vcpu.load(Ordering::Relaxed)))
}

/// This CPU's placement.
#[inline(always)]
pub fn this_cpu() -> &'static CpuPlacement {
    &CPU_PLACEMENT[arch::cpu_index()]
}

impl CpuPlacement {
    /// The VM this CPU runs, if any.
    #[inline(always)]
    pub fn vm_index(&self) -> Option<usize> {
        // Relaxed: written once at boot, before this CPU was given any
        // vCPU (the start request's lock orders it).
        let vm = self.vm.load(Ordering::Relaxed);
        (vm < MAX_VMS).then_some(vm)
    }

    /// If another CPU asked this one to stop its vCPU, stops here and
    /// idles. Call only on this CPU's own placement.
    #[inline(always)]
    fn honour_stop_request(&self) {
        if self.stop_requested.load(Ordering::Acquire) {
            self.stop_requested.store(false, Ordering::Release);
            park_current_vcpu();
        }
    }
}

/// If another CPU asked this one to stop its vCPU, stops here and idles.
#[inline]
fn honour_stop_request() {
    this_cpu().honour_stop_request();
}

/// Saves the vCPU's EL1 state, marks it off and idles.
fn park_current_vcpu() -> ! {
    if let Some((index, vcpu)) = current_vm()
        && let Some(runtime) = RUNTIMES[index].lock().as_mut()
    {
        guest::save_el1(&mut runtime.saved_el1[vcpu]);
        // Only On becomes Off: a sibling's CPU_ON may already have made this
        // vCPU pending again after its CPU_OFF.
        if runtime.vcpus[vcpu] == VcpuPower::On {
            runtime.vcpus[vcpu] = VcpuPower::Off;
        }
    }
    idle_loop()
}

/// An IRQ taken while a guest ran.
pub fn handle_guest_interrupt() {
    timer::handle_irq();
    honour_stop_request();
}

/// An SError taken while a guest ran: stop its VM with a report.
pub fn handle_guest_serror(frame: &TrapFrame) -> ! {
    let Some((index, _)) = current_vm() else {
        log::error!("SError from a lower EL on a CPU that runs no VM");
        power::fail_stop();
    };
    stop_with_fault(index, frame, format_args!("SError (asynchronous abort)"))
}

/// A synchronous exception from AArch32 code at the guest's EL0: Tessera
/// emulates nothing for AArch32, so the VM stops with a report.
pub fn handle_guest_aarch32_exit(frame: &TrapFrame) -> ! {
    let Some((index, _)) = current_vm() else {
        log::error!("AArch32 exit on a CPU that runs no VM");
        power::fail_stop();
    };
    stop_with_fault(
        index,
        frame,
        format_args!("exception from AArch32 EL0, which Tessera does not emulate"),
    )
}

/// A synchronous exception from a guest, other than a device access the
/// fast path in `exceptions` already carried out.
pub fn handle_guest_exit(frame: &mut TrapFrame) {
    let Some((index, vcpu)) = current_vm() else {
        // A CPU without a VM cannot take guest exits; treat as a bug.
        log::error!("guest exit on a CPU that runs no VM");
        power::fail_stop();
    };
    let syndrome = ExceptionSyndrome(frame.syndrome);
    let exit = guest_exit::decode(syndrome, frame.fault_address, guest::faulting_guest_page());
    match exit {
        GuestExit::Mmio(access) => handle_mmio(index, frame, &access),
        GuestExit::UndecodableDataAbort { address, is_write } => {
            log::debug!("vm {}: undecodable access to {address}", vm(index).name);
            inject_abort(index, frame, AbortKind::Data { is_write }, address);
        }
        GuestExit::OtherDataAbort { address, status } => {
            log::debug!("vm {}: data abort at {address}: {status}", vm(index).name);
            inject_abort(index, frame, AbortKind::Data { is_write: false }, address);
        }
        GuestExit::InstructionAbort { address } => {
            inject_abort(index, frame, AbortKind::Instruction, address);
        }
        GuestExit::Hypercall { .. } => handle_firmware_call(index, vcpu, frame),
        GuestExit::SecureMonitorCall => {
            // Guests reach PSCI through HVC; SMC has nothing behind it.
            frame.registers[0] = status::NOT_SUPPORTED as u64;
            frame.step_over_trapped_instruction();
        }
        GuestExit::WaitForInterrupt => {
            // No virtual interrupts exist yet, so the vCPU sleeps until the
            // next physical interrupt (at the latest the EL2 tick).
            // The interrupt that wakes the CPU is taken to EL2 as soon as
            // the guest resumes (HCR_EL2.IMO routes it here).
            arch::wait_for_interrupt();
            frame.step_over_trapped_instruction();
        }
        GuestExit::WaitForEvent => frame.step_over_trapped_instruction(),
        GuestExit::SystemRegister { encoding, .. } if set_way::is_set_way_operation(encoding) => {
            follow_set_way(index, SetWayTracker::set_way_operation);
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
            follow_set_way(index, |tracker| tracker.register_written(old, new));
            frame.step_over_trapped_instruction();
        }
        GuestExit::SystemRegister {
            is_read: false,
            encoding,
            ..
        } if this_cpu().set_way.lock().trapping_vm_registers
            && set_way::is_unemulated_virtual_memory_register(encoding) =>
        {
            // While TVM is on, a trapped write to a register Tessera does
            // not know (one added by a newer architecture extension) would
            // otherwise be lost without a trace: stop the VM instead.
            stop_with_fault(
                index,
                frame,
                format_args!(
                    "write to system register {encoding:?}, trapped while following set/way \
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
                "vm {}: system register {encoding:?} emulated as RAZ/WI",
                vm(index).name
            );
            if is_read && register < 31 {
                frame.registers[register as usize] = 0;
            }
            frame.step_over_trapped_instruction();
        }
        GuestExit::Unhandled { class } => {
            stop_with_fault(
                index,
                frame,
                format_args!("unhandled exception: {}", class.description()),
            );
        }
    }
    honour_stop_request();
}

fn handle_mmio(index: usize, frame: &mut TrapFrame, access: &MmioAccess) {
    if devices::emulate(index, &mut AccessFrame::full(frame), access) {
        frame.step_over_trapped_instruction();
        return;
    }
    log::debug!(
        "vm {}: {} of {} bytes at {} outside RAM and devices",
        vm(index).name,
        if access.is_write { "write" } else { "read" },
        access.width.bytes(),
        access.address
    );
    inject_abort(
        index,
        frame,
        AbortKind::Data {
            is_write: access.is_write,
        },
        access.address,
    );
}

/// Tells this CPU's set/way tracker of an `event` of VM `index`'s running
/// vCPU and does what the policy decides.
///
/// Cleaning a VM's RAM takes time in proportion to its size, with this
/// CPU's interrupts masked; the guest can only make it happen when it
/// starts set/way maintenance or turns its caches on or off, and the cost
/// falls on its own CPU.
fn follow_set_way(index: usize, event: impl FnOnce(&mut SetWayTracker) -> set_way::Response) {
    let (response, was_trapping) = {
        let mut tracker = this_cpu().set_way.lock();
        let was_trapping = tracker.trapping_vm_registers;
        (event(&mut tracker), was_trapping)
    };
    if response.clean_guest_ram {
        let vm = vm(index);
        arch::clean_to_point_of_coherency(vm.ram_host.0 as usize, vm.ram_size as usize);
    }
    // A set/way loop is thousands of traps: touch HCR_EL2 only on a change.
    if response.trap_vm_registers != was_trapping {
        guest::trap_virtual_memory_registers(response.trap_vm_registers);
    }
}

/// Gives the guest the synchronous external abort hardware would, or stops
/// the VM when it cannot take one.
fn inject_abort(index: usize, frame: &mut TrapFrame, kind: AbortKind, address: GuestPhysAddr) {
    let vm = vm(index);
    let state = GuestState {
        program_counter: frame.exception_link,
        saved_state: frame.saved_state,
        vector_base: guest::guest_vector_base(),
        fault_address: frame.fault_address,
        translation_enabled: guest::guest_translation_enabled(),
    };
    let ram = (vm.ram_base, GuestPhysAddr(vm.ram_base.0 + vm.ram_size));
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
                index,
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
fn stop_with_fault(index: usize, frame: &TrapFrame, reason: core::fmt::Arguments<'_>) -> ! {
    // The VM's last partial line first, so the report reads after it (the
    // flush in `stop_vm` then finds nothing).
    devices::flush(index);
    println!(
        "tessera: vm {}: stopped: {reason}; PC {:#x}, ESR_EL2 {}",
        vm(index).name,
        frame.exception_link,
        ExceptionSyndrome(frame.syndrome)
    );
    stop_vm(index, Outcome::Fault);
    park_current_vcpu()
}

/// Marks the VM stopped, stops its other vCPUs, and powers off when it was
/// the last VM running.
fn stop_vm(index: usize, outcome: Outcome) {
    let this_cpu = arch::cpu_index();
    let vm = vm(index);
    let mut others = [false; MAX_CPUS];
    {
        let mut runtime = RUNTIMES[index].lock();
        let Some(runtime) = runtime.as_mut() else {
            return;
        };
        if matches!(runtime.state, VmState::Stopped(_)) {
            return;
        }
        runtime.state = VmState::Stopped(outcome);
        devices::flush(index);
        for vcpu in 0..vm.vcpu_count {
            let cpu = vm.physical_cpus[vcpu] as usize;
            if cpu != this_cpu && runtime.vcpus[vcpu] != VcpuPower::Off {
                others[cpu] = true;
            }
        }
    }
    for (cpu, _) in others.iter().enumerate().filter(|(_, stop)| **stop) {
        post_stop(cpu);
    }
    console::report_dropped_output(index, vm.name);
    match outcome {
        Outcome::Clean => println!("tessera: vm {}: stopped cleanly", vm.name),
        Outcome::ExitStatus(status) => println!(
            "tessera: vm {}: exited with status {status} (failure)",
            vm.name
        ),
        Outcome::Fault => println!(
            "tessera: vm {}: stopped after a fault it could not take (failure)",
            vm.name
        ),
    }
    if outcome != Outcome::Clean {
        FAILED_VMS.fetch_add(1, Ordering::AcqRel);
    }
    if RUNNING_VMS.fetch_sub(1, Ordering::AcqRel) == 1 {
        let failed = FAILED_VMS.load(Ordering::Acquire);
        let total = VMS.get().map_or(0, |vms| vms.iter().flatten().count());
        println!("tessera: all {total} VMs stopped, {failed} failed");
        power::power_off(u32::from(failed > 0));
    }
}

/// Restarts the VM from its pristine image: stops its other vCPUs, reloads
/// RAM, and starts vCPU 0 again (on this CPU if it is vCPU 0's).
fn reset_vm(index: usize) -> ! {
    let this_cpu = arch::cpu_index();
    let vm = vm(index);
    let mut others = [false; MAX_CPUS];
    let reset_count = {
        let mut guard = RUNTIMES[index].lock();
        let Some(runtime) = guard.as_mut() else {
            drop(guard);
            park_current_vcpu()
        };
        if runtime.state != VmState::Running {
            // Another vCPU is already resetting (or stopping) the VM; this
            // one just leaves.
            drop(guard);
            park_current_vcpu();
        }
        runtime.state = VmState::Resetting;
        runtime.reset_count += 1;
        devices::reset(index);
        for vcpu in 0..vm.vcpu_count {
            let cpu = vm.physical_cpus[vcpu] as usize;
            if cpu == this_cpu {
                runtime.vcpus[vcpu] = VcpuPower::Off;
            } else if runtime.vcpus[vcpu] != VcpuPower::Off {
                others[cpu] = true;
            }
        }
        runtime.reset_count
    };
    for (cpu, _) in others.iter().enumerate().filter(|(_, stop)| **stop) {
        post_stop(cpu);
    }
    // The others leave the guest at their next exit, which the request SGI
    // forces; a pending vCPU that never ran is simply marked off.
    loop {
        let busy = RUNTIMES[index].lock().as_mut().is_some_and(|runtime| {
            let mut busy = false;
            for vcpu in 0..vm.vcpu_count {
                match runtime.vcpus[vcpu] {
                    VcpuPower::On => busy = true,
                    VcpuPower::OnPending => runtime.vcpus[vcpu] = VcpuPower::Off,
                    VcpuPower::Off => {}
                }
            }
            busy
        });
        if !busy {
            break;
        }
        core::hint::spin_loop();
    }
    if load_pristine_image(vm).is_err() {
        // The image fitted at boot; it cannot stop fitting.
        stop_vm(index, Outcome::Fault);
        park_current_vcpu();
    }
    guest::invalidate_guest_tlbs();
    let restart = RUNTIMES[index].lock().as_mut().is_some_and(|runtime| {
        // A fault on another vCPU may have stopped the VM meanwhile.
        if runtime.state != VmState::Resetting {
            return false;
        }
        for saved in &mut runtime.saved_el1 {
            *saved = El1Context::reset();
        }
        runtime.vcpus[0] = VcpuPower::OnPending;
        runtime.state = VmState::Running;
        true
    });
    if !restart {
        idle_loop();
    }
    println!(
        "tessera: vm {}: restarted from its pristine image (reset {reset_count})",
        vm.name
    );
    let vcpu0_cpu = vm.physical_cpus[0] as usize;
    if vcpu0_cpu == this_cpu {
        run_vcpu(index, 0, vm.entry_point(), vm.device_tree_address());
        idle_loop();
    }
    post_start(
        vcpu0_cpu,
        StartRequest {
            vm: index,
            vcpu: 0,
            entry: vm.entry_point(),
            argument: vm.device_tree_address(),
        },
    );
    idle_loop()
}

/// PSCI, SMCCC and Tessera calls.
fn handle_firmware_call(index: usize, vcpu: usize, frame: &mut TrapFrame) {
    let vm = vm(index);
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
        } => cpu_on(index, target, entry, context),
        Call::AffinityInfo {
            target,
            lowest_level,
        } => {
            match (
                lowest_level,
                vcpu_state::vcpu_for_affinity(target, vm.vcpu_count),
            ) {
                (0, Some(target_vcpu)) => {
                    let runtime = RUNTIMES[index].lock();
                    match runtime.as_ref().map(|runtime| runtime.vcpus[target_vcpu]) {
                        Some(VcpuPower::On) => 0,
                        Some(VcpuPower::OnPending) => 2,
                        _ => 1,
                    }
                }
                _ => status::INVALID_PARAMETERS,
            }
        }
        Call::CpuSuspend => {
            // Standby: wake on the next interrupt, as a WFI would.
            arch::wait_for_interrupt();
            status::SUCCESS
        }
        Call::CpuOff => {
            let last = {
                let mut runtime = RUNTIMES[index].lock();
                runtime.as_mut().is_none_or(|runtime| {
                    runtime.vcpus[vcpu] = VcpuPower::Off;
                    runtime.vcpus[..vm.vcpu_count]
                        .iter()
                        .all(|power| *power == VcpuPower::Off)
                })
            };
            if last {
                // No vCPU left to run: the VM is over, as after SYSTEM_OFF.
                stop_vm(index, Outcome::Clean);
            }
            park_current_vcpu();
        }
        Call::SystemOff => {
            stop_vm(index, Outcome::Clean);
            park_current_vcpu();
        }
        Call::VmExit { status: 0 } => {
            stop_vm(index, Outcome::Clean);
            park_current_vcpu();
        }
        Call::VmExit { status } => {
            stop_vm(index, Outcome::ExitStatus(status));
            park_current_vcpu();
        }
        Call::SystemReset => reset_vm(index),
        // Bit 0: writes to the virtual-memory control registers trap
        // (set/way maintenance being followed). Test images only: in a
        // production image the call does not exist.
        Call::TestVcpuTraps if cfg!(feature = "semihosting") => {
            i64::from(guest::virtual_memory_registers_trapped())
        }
        Call::TestVcpuTraps => status::NOT_SUPPORTED,
        Call::ResetCount => RUNTIMES[index]
            .lock()
            .as_ref()
            .map_or(0, |runtime| runtime.reset_count) as i64,
    };
    frame.registers[0] = result as u64;
}

/// PSCI CPU_ON: checks the target and entry, then asks the target vCPU's
/// physical CPU to start it.
fn cpu_on(index: usize, target: u64, entry_point: u64, context: u64) -> i64 {
    let vm = vm(index);
    let Some(target_vcpu) = vcpu_state::vcpu_for_affinity(target, vm.vcpu_count) else {
        return status::INVALID_PARAMETERS;
    };
    let ram = vm.ram_base.0..vm.ram_base.0 + vm.ram_size;
    if !ram.contains(&entry_point) {
        return status::INVALID_ADDRESS;
    }
    {
        let mut runtime = RUNTIMES[index].lock();
        let Some(runtime) = runtime.as_mut() else {
            return status::INVALID_PARAMETERS;
        };
        if runtime.state != VmState::Running {
            return status::DENIED;
        }
        match runtime.vcpus[target_vcpu] {
            VcpuPower::On => return status::ALREADY_ON,
            VcpuPower::OnPending => return status::ON_PENDING,
            VcpuPower::Off => runtime.vcpus[target_vcpu] = VcpuPower::OnPending,
        }
    }
    post_start(
        vm.physical_cpus[target_vcpu] as usize,
        StartRequest {
            vm: index,
            vcpu: target_vcpu,
            entry: entry_point,
            argument: context,
        },
    );
    status::SUCCESS
}
