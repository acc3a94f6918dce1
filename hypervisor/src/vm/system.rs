//! The VMs of the system, the physical CPUs that run their vCPUs, and the
//! requests between those CPUs: the part of the VM core that decides, with
//! the hardware reached only through [`Hardware`].
//!
//! A [`Vm`] owns what never changes after boot (its RAM, image, placement),
//! its lifecycle, its vCPUs, its device map and its stage 2. A [`Vcpu`]
//! owns its EL1 context and its set/way tracker (and, next, its virtual
//! interrupt state); it is apart from the physical CPU it runs on, so a
//! scheduler could move it later.
//!
//! Cross-CPU work goes through each CPU's [`CpuRequestQueue`] and the
//! request interrupt ([`Hardware::send_request_interrupt`]): a CPU never
//! touches another CPU's running vCPU. Decisions are taken under the VM's
//! lifecycle lock (`lifecycle`), requests posted after it is released.
//!
//! # Lock order
//!
//! This is the one place the hypervisor's lock order is written; other
//! modules point here. Outermost first:
//!
//! 1. a VM's lifecycle lock (`Vm::lifecycle`);
//! 2. a vCPU's state lock (`Vm::vcpus[n]`), only ever taken by the CPU that
//!    runs the vCPU, so it never waits;
//! 3. a VM's stage-2 lock (`Vm::stage2`);
//! 4. one device lock of a VM (the hypervisor's per-slot device locks):
//!    never two at once;
//! 5. the console: the UART lock, then the output queue lock
//!    (`console/output.rs`);
//! 6. the GICv2 driver lock (`interrupts/gic.rs`), taken only with IRQs masked, and
//!    never held while an interrupt's handler runs.
//!
//! Two locks of the same kind are never held at once: no code holds two
//! VMs' lifecycle locks, two vCPUs' or two devices'. Work that spans VMs
//! (a stop report, vdev-shmem telling peers) takes one VM's lock, records
//! what to do, releases it, then takes the next. The request queues take
//! no lock at all (see `request_queue`), so posting is allowed under any
//! of the above.

use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use spin::{Mutex, Once};

use super::ids::{CpuId, VcpuId, VcpuSet, VmId};
use super::image::{LoadError, PristineImage};
use super::lifecycle::{
    CpuOnRefused, Outcome, Parked, StopOrder, SystemVerdict, Verdict, VmLifecycle,
};
use super::request_queue::{CpuRequestQueue, Request};
use super::stage2::Stage2;
use crate::MAX_CPUS;
use crate::boot::manifest::MAX_VMS;
use crate::devices::map::DeviceMap;
use crate::memory::address::{GuestPhysAddr, PhysAddr};
use crate::vm::psci::status;
use crate::vm::set_way::SetWayTracker;
use crate::vm::vcpu_state::{self, El1Context};

/// What the VM core needs of the machine: implemented over the real
/// registers in the hypervisor binary, and by a recording fake in tests.
pub trait Hardware {
    /// The physical CPU this code runs on.
    fn this_cpu(&self) -> CpuId;
    /// Sends the request interrupt (an SGI) to `cpu`, after making every
    /// earlier store visible to it.
    fn send_request_interrupt(&self, cpu: CpuId);
    /// Loads the VM's stage 2 (VMID and root), its trap configuration and
    /// virtual counter offset on this CPU, and drops every translation the
    /// TLBs hold for its VMID (its tables may have been rewritten).
    fn load_stage2(&self, vmid: u8, root: PhysAddr, counter_offset: u64);
    /// Loads a vCPU's identity and EL1 context on this CPU.
    fn load_vcpu(&self, virtual_mpidr: u64, context: &El1Context);
    /// Saves the running vCPU's EL1 context.
    fn save_vcpu(&self, context: &mut El1Context);
    /// Zeroes `size` bytes of a VM's RAM at `host` and cleans them to the
    /// point of coherency (the guest starts with its caches off).
    fn zero_guest_ram(&self, host: PhysAddr, size: u64);
    /// Copies `bytes` into a VM's RAM at `host` and cleans them to the
    /// point of coherency.
    fn copy_to_guest_ram(&self, host: PhysAddr, bytes: &[u8]);
    /// Invalidates every instruction cache to the point of unification, so
    /// code just written to guest RAM is fetched fresh.
    fn invalidate_instruction_caches(&self);
}

/// A vCPU's own state, touched only by the CPU that runs it.
#[derive(Clone, Debug)]
pub struct Vcpu {
    pub context: El1Context,
    pub set_way: SetWayTracker,
}

impl Vcpu {
    const RESET: Self = Self {
        context: El1Context::reset(),
        set_way: SetWayTracker {
            trapping_vm_registers: false,
        },
    };
}

/// Where a VM's RAM is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRam {
    pub guest: GuestPhysAddr,
    pub host: PhysAddr,
    pub size: u64,
}

impl GuestRam {
    #[must_use]
    pub const fn contains(&self, address: GuestPhysAddr) -> bool {
        address.0.wrapping_sub(self.guest.0) < self.size
    }
}

/// What a VM is, fixed at boot.
#[derive(Clone, Copy, Debug)]
pub struct VmDescription {
    pub id: VmId,
    pub name: &'static str,
    pub ram: GuestRam,
    /// The physical CPU of each vCPU.
    pub cpus: [CpuId; MAX_CPUS],
    pub vcpu_count: usize,
    /// Where vCPU 0 starts, and what it gets in x0 (the device tree).
    pub entry: GuestPhysAddr,
    pub entry_argument: u64,
    /// CNTVOFF_EL2: the physical count when the VM was built.
    pub counter_offset: u64,
    /// What its RAM is loaded from, at build time and on every reset.
    pub pristine: PristineImage,
}

/// One VM: `T` owns its stage-2 tables' memory and TLB maintenance, `D`
/// is its emulated devices' state (each behind a lock of its own), which
/// the device map's slots name.
pub struct Vm<T, D> {
    pub description: VmDescription,
    lifecycle: Mutex<VmLifecycle>,
    vcpus: [Mutex<Vcpu>; MAX_CPUS],
    stage2: Mutex<Stage2<T>>,
    /// Which device slot answers which guest-physical window.
    pub devices: DeviceMap,
    /// The devices behind the slots.
    pub device_state: D,
}

/// What a start request asks the CPU to enter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuEntry {
    pub vm: VmId,
    pub vcpu: VcpuId,
    pub entry: GuestPhysAddr,
    pub argument: u64,
}

impl<T, D> Vm<T, D> {
    #[must_use]
    pub fn new(
        description: VmDescription,
        stage2: Stage2<T>,
        devices: DeviceMap,
        device_state: D,
    ) -> Self {
        Self {
            lifecycle: Mutex::new(VmLifecycle::new(description.vcpu_count)),
            vcpus: [const { Mutex::new(Vcpu::RESET) }; MAX_CPUS],
            stage2: Mutex::new(stage2),
            devices,
            device_state,
            description,
        }
    }

    /// The lifecycle, for reads that decide nothing (reports, AFFINITY_INFO).
    pub fn lifecycle(&self) -> spin::MutexGuard<'_, VmLifecycle> {
        self.lifecycle.lock()
    }

    /// The state of `vcpu`; call only on the CPU that runs it.
    pub fn vcpu(&self, vcpu: VcpuId) -> spin::MutexGuard<'_, Vcpu> {
        self.vcpus[vcpu.index()].lock()
    }

    /// The VM's stage 2, to map or unmap pages (lock order: after the
    /// lifecycle and vCPU locks).
    pub fn stage2(&self) -> spin::MutexGuard<'_, Stage2<T>> {
        self.stage2.lock()
    }

    fn cpu_of(&self, vcpu: VcpuId) -> CpuId {
        self.description.cpus[vcpu.index()]
    }
}

/// What a CPU runs: encoded in a byte so the table starts all zero (no
/// VM) and the exit path reads it with one load.
struct Placement(AtomicU8);

impl Placement {
    const NONE: u8 = 0;

    fn get(&self) -> Option<(VmId, VcpuId)> {
        // Relaxed: written once at boot, before this CPU was given any
        // vCPU (the start request's release/acquire orders it).
        let value = self.0.load(Ordering::Relaxed);
        if value == Self::NONE {
            return None;
        }
        let vm = VmId::new(usize::from(value >> 4) - 1)?;
        Some((vm, VcpuId::new(usize::from(value & 0xF))?))
    }

    fn set(&self, vm: VmId, vcpu: VcpuId) {
        self.0.store(
            ((vm.index() as u8 + 1) << 4) | vcpu.index() as u8,
            Ordering::Release,
        );
    }
}

const _: () = assert!(MAX_VMS < 15 && MAX_CPUS <= 16, "a placement fits a byte");

/// Why the VMs could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetupError {
    /// Two vCPUs (of any VMs) were placed on the same physical CPU.
    CpuTaken { cpu: CpuId },
    /// More VMs than the table holds.
    TooManyVms,
}

/// Every VM, what each CPU runs, the CPUs' request queues and the verdict.
///
/// Built in place at boot by the boot CPU (`add` takes `&self`, so the
/// table can be a `static` that other CPUs already poll their queues in),
/// read-only but for its locks and queues afterwards. `new` is all zero
/// bytes, so the static costs the image nothing.
pub struct VmSystem<T, D> {
    vms: [Once<Vm<T, D>>; MAX_VMS],
    count: AtomicUsize,
    placement: [Placement; MAX_CPUS],
    queues: [CpuRequestQueue; MAX_CPUS],
    verdict: SystemVerdict,
}

impl<T, D> Default for VmSystem<T, D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, D> VmSystem<T, D> {
    #[must_use]
    pub const fn new() -> Self {
        Self {
            vms: [const { Once::new() }; MAX_VMS],
            count: AtomicUsize::new(0),
            placement: [const { Placement(AtomicU8::new(Placement::NONE)) }; MAX_CPUS],
            queues: [const { CpuRequestQueue::new() }; MAX_CPUS],
            verdict: SystemVerdict::new(),
        }
    }

    /// Adds a built VM as the next id, placing each of its vCPUs on its
    /// CPU. Boot CPU only, before `start_all`.
    ///
    /// # Errors
    /// A CPU that already runs a vCPU, or one VM too many; nothing is
    /// added then.
    pub fn add(&self, vm: Vm<T, D>) -> Result<VmId, SetupError> {
        let id = VmId::new(self.count()).ok_or(SetupError::TooManyVms)?;
        let description = &vm.description;
        let vcpus = || VcpuId::all(description.vcpu_count);
        if let Some(cpu) = vcpus()
            .map(|vcpu| description.cpus[vcpu.index()])
            .find(|cpu| self.placement[cpu.index()].get().is_some())
        {
            return Err(SetupError::CpuTaken { cpu });
        }
        for vcpu in vcpus() {
            self.placement[description.cpus[vcpu.index()].index()].set(id, vcpu);
        }
        self.vms[id.index()].call_once(|| vm);
        self.count.store(id.index() + 1, Ordering::Release);
        Ok(id)
    }

    /// How many VMs there are.
    #[must_use]
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// The VM `id`. Ids come from this table, so it exists.
    #[must_use]
    #[inline]
    pub fn vm(&self, id: VmId) -> &Vm<T, D> {
        self.vms[id.index()]
            .get()
            .expect("VM ids come from the table")
    }

    pub fn vms(&self) -> impl Iterator<Item = &Vm<T, D>> {
        self.vms.iter().filter_map(Once::get)
    }

    /// The VM and vCPU `cpu` runs, if any.
    #[must_use]
    #[inline]
    pub fn placement(&self, cpu: CpuId) -> Option<(VmId, VcpuId)> {
        self.placement[cpu.index()].get()
    }

    /// `cpu`'s request queue; only `cpu` takes requests out of it.
    #[must_use]
    pub fn requests(&self, cpu: CpuId) -> &CpuRequestQueue {
        &self.queues[cpu.index()]
    }

    /// Posts `request` to `cpu` and wakes it. A start that finds the queue
    /// full is handed back.
    fn post(&self, cpu: CpuId, request: Request, hardware: &impl Hardware) -> Result<(), Request> {
        self.queues[cpu.index()].post(request)?;
        if cpu != hardware.this_cpu() {
            hardware.send_request_interrupt(cpu);
        }
        Ok(())
    }

    /// Starts vCPU 0 of every VM. With no VM at all there is nothing to
    /// wait for: the verdict comes at once.
    pub fn start_all(&self, hardware: &impl Hardware) -> Option<Verdict> {
        self.verdict.begin(self.count());
        if self.count() == 0 {
            return Some(Verdict {
                total: 0,
                failed: 0,
            });
        }
        for vm in self.vms() {
            let description = &vm.description;
            // A fresh VM is running with every vCPU off: this cannot fail.
            let _ = vm.lifecycle.lock().start();
            let start = Request::StartVcpu {
                vm: description.id,
                vcpu: VcpuId::FIRST,
                entry: description.entry,
                argument: description.entry_argument,
            };
            // Each CPU's queue is empty at boot.
            let _ = self.post(vm.cpu_of(VcpuId::FIRST), start, hardware);
        }
        None
    }

    /// PSCI CPU_ON from a vCPU of `vm`: checks the target and entry, then
    /// asks the target's CPU to start it. Returns the PSCI status.
    pub fn cpu_on(
        &self,
        vm: VmId,
        target: u64,
        entry: GuestPhysAddr,
        argument: u64,
        hardware: &impl Hardware,
    ) -> i64 {
        let vm = self.vm(vm);
        let description = &vm.description;
        let Some(target) =
            vcpu_state::vcpu_for_affinity(target, description.vcpu_count).and_then(VcpuId::new)
        else {
            return status::INVALID_PARAMETERS;
        };
        if !description.ram.contains(entry) {
            return status::INVALID_ADDRESS;
        }
        if let Err(refused) = vm.lifecycle.lock().cpu_on(target) {
            return match refused {
                CpuOnRefused::Denied => status::DENIED,
                CpuOnRefused::AlreadyOn => status::ALREADY_ON,
                CpuOnRefused::OnPending => status::ON_PENDING,
                CpuOnRefused::InvalidParameters => status::INVALID_PARAMETERS,
            };
        }
        let start = Request::StartVcpu {
            vm: description.id,
            vcpu: target,
            entry,
            argument,
        };
        if self.post(vm.cpu_of(target), start, hardware).is_err() {
            // The queue is sized so that this does not happen (one start
            // in flight per vCPU); should it, the call fails cleanly and
            // the vCPU is off again, so a retry can work.
            vm.lifecycle.lock().cancel_start(target);
            return status::INTERNAL_FAILURE;
        }
        status::SUCCESS
    }

    /// A start request taken by `cpu`'s idle loop: the vCPU to enter, if the
    /// VM's state has not overtaken the request. Its stage 2 and context
    /// are loaded; the caller enters the guest.
    pub fn claim_start(&self, entry: VcpuEntry, hardware: &impl Hardware) -> bool {
        let vm = self.vm(entry.vm);
        if self.placement(hardware.this_cpu()) != Some((entry.vm, entry.vcpu)) {
            return false;
        }
        if !vm.lifecycle.lock().claim_start(entry.vcpu) {
            return false;
        }
        let description = &vm.description;
        let root = vm.stage2.lock().root();
        hardware.load_stage2(description.id.vmid(), root, description.counter_offset);
        let mut vcpu = vm.vcpu(entry.vcpu);
        // Every start is a cold start: reset registers, no set/way state.
        *vcpu = Vcpu::RESET;
        hardware.load_vcpu(vcpu_state::virtual_mpidr(entry.vcpu.index()), &vcpu.context);
        true
    }

    /// Asks every vCPU of `vm` but `caller` to stop, with `outcome`. The
    /// caller's own vCPU parks by itself afterwards.
    pub fn stop(
        &self,
        vm: VmId,
        outcome: Outcome,
        caller: Option<VcpuId>,
        hardware: &impl Hardware,
    ) -> StopOrder {
        let vm = self.vm(vm);
        let order = vm.lifecycle.lock().stop(outcome, caller);
        if let StopOrder::Stop(others) = order {
            self.post_stops(vm, others, hardware);
        }
        order
    }

    fn post_stops(&self, vm: &Vm<T, D>, vcpus: VcpuSet, hardware: &impl Hardware) {
        for vcpu in vcpus.iter() {
            // Stops are coalesced bits: never refused.
            let _ = self.post(
                vm.cpu_of(vcpu),
                Request::StopVcpu {
                    vm: vm.description.id,
                },
                hardware,
            );
        }
    }

    /// `vcpu` of `vm`, running on this CPU, leaves the guest for good: its
    /// EL1 state is saved and it is marked off.
    pub fn park(&self, vm: VmId, vcpu: VcpuId, hardware: &impl Hardware) -> Parked {
        let vm = self.vm(vm);
        hardware.save_vcpu(&mut vm.vcpu(vcpu).context);
        vm.lifecycle.lock().park(vcpu)
    }

    /// The VM has ended: counts it, and gives the verdict when it was the
    /// last.
    pub fn vm_ended(&self, outcome: Outcome) -> Option<Verdict> {
        self.verdict.vm_ended(outcome)
    }

    /// SYSTEM_RESET from `caller`: the VM starts resetting, and its other
    /// vCPUs are asked to leave. False when the VM was not running (a
    /// reset or stop is already under way); the caller then just parks.
    pub fn begin_reset(&self, vm: VmId, caller: VcpuId, hardware: &impl Hardware) -> bool {
        let vm = self.vm(vm);
        hardware.save_vcpu(&mut vm.vcpu(caller).context);
        let Some(others) = vm.lifecycle.lock().begin_reset(caller) else {
            return false;
        };
        self.post_stops(vm, others, hardware);
        true
    }

    /// Rewrites the VM's RAM from its pristine image, once the reset has
    /// no vCPU of it left running (`Vm::lifecycle().any_vcpu_on()`).
    ///
    /// # Errors
    /// The image no longer fits, which the build ruled out.
    pub fn reload(&self, vm: VmId, hardware: &impl Hardware) -> Result<(), LoadError> {
        let description = &self.vm(vm).description;
        description.pristine.load(&description.ram, hardware)
    }

    /// The VM's RAM has been reloaded: it runs again, with vCPU 0 pending.
    /// False when a stop overtook the reset. The caller reports the
    /// restart, then calls [`restart`](Self::restart).
    pub fn finish_reset(&self, vm: VmId) -> bool {
        self.vm(vm).lifecycle.lock().finish_reset()
    }

    /// Asks vCPU 0's CPU to start it again, after `finish_reset`.
    pub fn restart(&self, vm: VmId, hardware: &impl Hardware) {
        let vm = self.vm(vm);
        let description = &vm.description;
        let start = Request::StartVcpu {
            vm: description.id,
            vcpu: VcpuId::FIRST,
            entry: description.entry,
            argument: description.entry_argument,
        };
        // A reset leaves nothing of the VM in flight (its vCPUs are all
        // off): vCPU 0's queue has room for its one start.
        if self
            .post(vm.cpu_of(VcpuId::FIRST), start, hardware)
            .is_err()
        {
            vm.lifecycle.lock().cancel_start(VcpuId::FIRST);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use core::cell::RefCell;

    use super::*;
    use crate::memory::page_table::test_store::HeapStore;
    use crate::memory::page_table::{Table, TableStore, TlbMaintenance};
    use crate::vm::request_queue::CPU_QUEUE_CAPACITY;

    /// Records what the core asked of the hardware, for one CPU at a time.
    #[derive(Default)]
    pub(crate) struct FakeHardware {
        cpu: core::cell::Cell<usize>,
        interrupts_sent: RefCell<Vec<usize>>,
        stage2_loads: RefCell<Vec<(usize, u8)>>,
        vcpu_loads: RefCell<Vec<(usize, u64)>>,
        saves: core::cell::Cell<usize>,
        pub(crate) memory_operations: RefCell<Vec<String>>,
    }

    impl FakeHardware {
        fn on(&self, cpu: usize) -> &Self {
            self.cpu.set(cpu);
            self
        }
    }

    impl Hardware for FakeHardware {
        fn this_cpu(&self) -> CpuId {
            CpuId::new(self.cpu.get()).unwrap()
        }

        fn send_request_interrupt(&self, cpu: CpuId) {
            assert_ne!(cpu.index(), self.cpu.get(), "a CPU needs no SGI to itself");
            self.interrupts_sent.borrow_mut().push(cpu.index());
        }

        fn load_stage2(&self, vmid: u8, _root: PhysAddr, _counter_offset: u64) {
            self.stage2_loads.borrow_mut().push((self.cpu.get(), vmid));
        }

        fn load_vcpu(&self, virtual_mpidr: u64, context: &El1Context) {
            assert_eq!(context.sctlr, El1Context::reset().sctlr);
            self.vcpu_loads
                .borrow_mut()
                .push((self.cpu.get(), virtual_mpidr));
        }

        fn save_vcpu(&self, _context: &mut El1Context) {
            self.saves.set(self.saves.get() + 1);
        }

        fn zero_guest_ram(&self, host: PhysAddr, size: u64) {
            self.memory_operations
                .borrow_mut()
                .push(format!("zero {:#x} +{size:#x}", host.0));
        }

        fn copy_to_guest_ram(&self, host: PhysAddr, bytes: &[u8]) {
            self.memory_operations.borrow_mut().push(format!(
                "copy {:#x} +{:#x}",
                host.0,
                bytes.len()
            ));
        }

        fn invalidate_instruction_caches(&self) {
            self.memory_operations
                .borrow_mut()
                .push("invalidate instruction caches".into());
        }
    }

    #[derive(Default)]
    struct Tables(HeapStore);

    impl TableStore for Tables {
        fn allocate_table(&mut self) -> Option<PhysAddr> {
            self.0.allocate_table()
        }
        fn table_mut(&mut self, address: PhysAddr) -> &mut Table {
            self.0.table_mut(address)
        }
    }

    impl TlbMaintenance for Tables {
        fn publish(&mut self) {}
        fn invalidate(&mut self, _input: u64, _span: u64) {}
    }

    const RAM: GuestRam = GuestRam {
        guest: GuestPhysAddr(0x4000_0000),
        host: PhysAddr(0x8000_0000),
        size: 0x400_0000,
    };

    fn cpu(index: usize) -> CpuId {
        CpuId::new(index).unwrap()
    }

    fn vcpu(index: usize) -> VcpuId {
        VcpuId::new(index).unwrap()
    }

    /// VMs with the given CPUs each, in order.
    fn system(placements: &[&[usize]]) -> VmSystem<Tables, ()> {
        let system = VmSystem::new();
        for (index, cpus) in placements.iter().enumerate() {
            let mut table = [cpu(0); MAX_CPUS];
            for (slot, &physical) in table.iter_mut().zip(cpus.iter()) {
                *slot = cpu(physical);
            }
            let description = VmDescription {
                id: VmId::new(index).unwrap(),
                name: "test",
                ram: RAM,
                cpus: table,
                vcpu_count: cpus.len(),
                entry: GuestPhysAddr(0x4008_0000),
                entry_argument: 0x43FF_0000,
                counter_offset: 0,
                pristine: PristineImage {
                    image: b"image",
                    image_load_offset: 0x8_0000,
                    device_tree: b"tree",
                },
            };
            let mut stage2 = Stage2::new(Tables::default()).unwrap();
            stage2.map_ram(RAM.guest, RAM.host, RAM.size).unwrap();
            system
                .add(Vm::new(description, stage2, DeviceMap::new(), ()))
                .unwrap();
        }
        system
    }

    fn vm(index: usize) -> VmId {
        VmId::new(index).unwrap()
    }

    /// Everything `cpu` has been asked, in the order it takes it.
    fn drain(system: &VmSystem<Tables, ()>, cpu: usize) -> Vec<Request> {
        let mut taken = Vec::new();
        system
            .requests(self::cpu(cpu))
            .drain(|request| taken.push(request));
        taken
    }

    /// Takes `cpu`'s start requests and enters what they still allow.
    fn run_starts(system: &VmSystem<Tables, ()>, hardware: &FakeHardware, cpu: usize) -> usize {
        drain(system, cpu)
            .into_iter()
            .filter(|request| match *request {
                Request::StartVcpu {
                    vm,
                    vcpu,
                    entry,
                    argument,
                } => system.claim_start(
                    VcpuEntry {
                        vm,
                        vcpu,
                        entry,
                        argument,
                    },
                    hardware.on(cpu),
                ),
                _ => false,
            })
            .count()
    }

    #[test]
    fn start_all_wakes_each_vms_first_cpu_which_loads_its_stage2_and_vcpu() {
        let hardware = FakeHardware::default();
        let system = system(&[&[1], &[2, 3]]);
        assert_eq!(system.start_all(hardware.on(0)), None);
        assert_eq!(*hardware.interrupts_sent.borrow(), [1, 2]);
        assert_eq!(run_starts(&system, &hardware, 1), 1);
        assert_eq!(run_starts(&system, &hardware, 2), 1);
        assert_eq!(run_starts(&system, &hardware, 3), 0);
        assert_eq!(*hardware.stage2_loads.borrow(), [(1, 1), (2, 2)]);
        assert_eq!(
            *hardware.vcpu_loads.borrow(),
            [(1, 0x8000_0000), (2, 0x8000_0000)]
        );
        assert_eq!(system.placement(cpu(3)), Some((vm(1), vcpu(1))));
        assert_eq!(system.placement(cpu(0)), None);
    }

    #[test]
    fn a_system_with_no_vms_has_its_verdict_at_once() {
        let hardware = FakeHardware::default();
        let system = system(&[]);
        assert_eq!(
            system.start_all(&hardware),
            Some(Verdict {
                total: 0,
                failed: 0
            })
        );
    }

    #[test]
    fn two_vcpus_on_one_cpu_are_refused() {
        let system = system(&[&[1]]);
        let description = VmDescription {
            id: vm(1),
            cpus: [cpu(1); MAX_CPUS],
            vcpu_count: 1,
            ..system.vm(vm(0)).description
        };
        let stage2 = Stage2::new(Tables::default()).unwrap();
        assert!(matches!(
            system.add(Vm::new(description, stage2, DeviceMap::new(), ())),
            Err(SetupError::CpuTaken { .. })
        ));
    }

    #[test]
    fn cpu_on_checks_target_and_entry_and_starts_the_vcpu_on_its_cpu_once() {
        let hardware = FakeHardware::default();
        let system = system(&[&[1, 2, 3]]);
        system.start_all(hardware.on(0));
        run_starts(&system, &hardware, 1);
        let entry = GuestPhysAddr(0x4010_0000);
        let on = |target| system.cpu_on(vm(0), target, entry, 7, hardware.on(1));
        assert_eq!(on(0), status::ALREADY_ON);
        assert_eq!(on(5), status::INVALID_PARAMETERS);
        assert_eq!(
            system.cpu_on(vm(0), 1, GuestPhysAddr(0x1000), 0, hardware.on(1)),
            status::INVALID_ADDRESS
        );
        assert_eq!(on(1), status::SUCCESS);
        assert_eq!(on(1), status::ON_PENDING, "started twice before it ran");
        assert_eq!(
            drain(&system, 2),
            [Request::StartVcpu {
                vm: vm(0),
                vcpu: vcpu(1),
                entry,
                argument: 7
            }]
        );
        // CPU 2 enters it now, from the request it took.
        assert!(system.claim_start(
            VcpuEntry {
                vm: vm(0),
                vcpu: vcpu(1),
                entry,
                argument: 7
            },
            hardware.on(2)
        ));
        assert_eq!(on(1), status::ALREADY_ON);
        // A start request carried to the wrong CPU is not honoured.
        assert_eq!(on(2), status::SUCCESS);
        assert!(!system.claim_start(
            VcpuEntry {
                vm: vm(0),
                vcpu: vcpu(2),
                entry,
                argument: 7
            },
            hardware.on(2)
        ));
        // vCPU 1 switches itself off; the VM goes on with the others.
        assert_eq!(
            system.park(vm(0), vcpu(1), hardware.on(2)),
            Parked::VmGoesOn
        );
        assert_eq!(on(1), status::SUCCESS, "off again, so it may be started");
    }

    #[test]
    fn a_stop_from_another_cpu_reaches_every_vcpu_of_the_vm_and_no_other() {
        let hardware = FakeHardware::default();
        let system = system(&[&[1, 2, 3], &[4]]);
        system.start_all(hardware.on(0));
        for target in 1..3 {
            system.cpu_on(vm(0), target, GuestPhysAddr(0x4000_0000), 0, hardware.on(1));
        }
        for physical in 1..5 {
            run_starts(&system, &hardware, physical);
        }
        hardware.interrupts_sent.borrow_mut().clear();
        // CPU 0 runs no vCPU of the VM: every vCPU is asked.
        assert_eq!(
            system.stop(vm(0), Outcome::Fault, None, hardware.on(0)),
            StopOrder::Stop({
                let mut all = VcpuSet::EMPTY;
                (0..3).for_each(|index| all.insert(vcpu(index)));
                all
            })
        );
        assert_eq!(*hardware.interrupts_sent.borrow(), [1, 2, 3]);
        for physical in 1..4 {
            assert_eq!(drain(&system, physical), [Request::StopVcpu { vm: vm(0) }]);
        }
        assert!(drain(&system, 4).is_empty(), "the other VM is untouched");
        // Each CPU parks its vCPU; the last one ends the VM.
        assert_eq!(
            system.park(vm(0), vcpu(2), hardware.on(3)),
            Parked::VmGoesOn
        );
        assert_eq!(
            system.park(vm(0), vcpu(0), hardware.on(1)),
            Parked::VmGoesOn
        );
        assert_eq!(
            system.park(vm(0), vcpu(1), hardware.on(2)),
            Parked::VmEnded(Outcome::Fault)
        );
        assert_eq!(hardware.saves.get(), 3);
        assert_eq!(system.vm_ended(Outcome::Fault), None, "VM 1 still runs");
        assert_eq!(
            system.vm_ended(Outcome::Clean),
            Some(Verdict {
                total: 2,
                failed: 1
            })
        );
    }

    #[test]
    fn system_reset_racing_a_cpu_on_and_a_stop() {
        let hardware = FakeHardware::default();
        let system = system(&[&[1, 2, 3]]);
        system.start_all(hardware.on(0));
        run_starts(&system, &hardware, 1);
        system.cpu_on(vm(0), 1, GuestPhysAddr(0x4000_0000), 0, hardware.on(1));
        run_starts(&system, &hardware, 2);
        // vCPU 1 asks for vCPU 2, then vCPU 0 resets before CPU 3 looked.
        assert_eq!(
            system.cpu_on(vm(0), 2, GuestPhysAddr(0x4000_0000), 0, hardware.on(2)),
            status::SUCCESS
        );
        assert!(system.begin_reset(vm(0), vcpu(0), hardware.on(1)));
        assert_eq!(drain(&system, 2), [Request::StopVcpu { vm: vm(0) }]);
        assert_eq!(run_starts(&system, &hardware, 3), 0, "the start is stale");
        // vCPU 1, before it saw its stop, tries CPU_ON and a second reset.
        assert_eq!(
            system.cpu_on(vm(0), 2, GuestPhysAddr(0x4000_0000), 0, hardware.on(2)),
            status::DENIED
        );
        assert!(!system.begin_reset(vm(0), vcpu(1), hardware.on(2)));
        assert!(system.vm(vm(0)).lifecycle().any_vcpu_on());
        assert_eq!(
            system.park(vm(0), vcpu(1), hardware.on(2)),
            Parked::VmGoesOn
        );
        assert!(!system.vm(vm(0)).lifecycle().any_vcpu_on());
        assert_eq!(system.reload(vm(0), hardware.on(1)), Ok(()));
        assert_eq!(
            hardware
                .memory_operations
                .borrow()
                .first()
                .map(String::as_str),
            Some("zero 0x80000000 +0x4000000"),
            "RAM is rewritten from the pristine image"
        );
        assert!(system.finish_reset(vm(0)));
        system.restart(vm(0), hardware.on(1));
        assert_eq!(run_starts(&system, &hardware, 1), 1, "vCPU 0 runs again");
        assert_eq!(system.vm(vm(0)).lifecycle().reset_count(), 1);

        // Now a reset that a fault on another vCPU overtakes.
        system.cpu_on(vm(0), 1, GuestPhysAddr(0x4000_0000), 0, hardware.on(1));
        run_starts(&system, &hardware, 2);
        assert!(system.begin_reset(vm(0), vcpu(0), hardware.on(1)));
        assert_eq!(
            system.stop(vm(0), Outcome::Fault, Some(vcpu(1)), hardware.on(2)),
            StopOrder::Stop(VcpuSet::EMPTY)
        );
        assert_eq!(
            system.park(vm(0), vcpu(1), hardware.on(2)),
            Parked::VmEnded(Outcome::Fault)
        );
        assert!(!system.finish_reset(vm(0)));
        assert_eq!(run_starts(&system, &hardware, 1), 0);
    }

    #[test]
    fn more_requests_than_the_queue_holds_lose_nothing() {
        let hardware = FakeHardware::default();
        let system = system(&[&[1, 2]]);
        system.start_all(hardware.on(0));
        run_starts(&system, &hardware, 1);
        // Stops are coalesced: however many arrive, the CPU stops its vCPU,
        // and that is all any of them asked.
        for _ in 0..CPU_QUEUE_CAPACITY * 4 {
            system
                .requests(cpu(2))
                .post(Request::StopVcpu { vm: vm(0) })
                .unwrap();
        }
        // Starts fill the ring; the one past it is handed back to the
        // poster, who fails the call cleanly (CPU_ON: INTERNAL_FAILURE,
        // the vCPU off again) instead of losing it.
        let start = Request::StartVcpu {
            vm: vm(0),
            vcpu: vcpu(1),
            entry: GuestPhysAddr(0x4000_0000),
            argument: 0,
        };
        for _ in 0..CPU_QUEUE_CAPACITY {
            system.requests(cpu(2)).post(start).unwrap();
        }
        assert_eq!(
            system.cpu_on(vm(0), 1, GuestPhysAddr(0x4000_0000), 0, hardware.on(1)),
            status::INTERNAL_FAILURE
        );
        assert_eq!(
            system.vm(vm(0)).lifecycle().power(vcpu(1)),
            Some(super::super::lifecycle::VcpuPower::Off)
        );
        let taken = drain(&system, 2);
        assert_eq!(taken.len(), 1 + CPU_QUEUE_CAPACITY);
        assert_eq!(taken[0], Request::StopVcpu { vm: vm(0) });
        // Room again: the retry works.
        assert_eq!(
            system.cpu_on(vm(0), 1, GuestPhysAddr(0x4000_0000), 0, hardware.on(1)),
            status::SUCCESS
        );
        assert_eq!(run_starts(&system, &hardware, 2), 1);
    }
}
