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
//! 3. the vdev-shmem registry lock (`devices/shmem.rs`, one for the
//!    system): under it the model maps and unmaps the acting VM's stage 2
//!    and drives VMs' lines, one vGIC lock at a time;
//! 4. a VM's stage-2 lock (`Vm::stage2`);
//! 5. one device lock of a VM (the hypervisor's per-slot device locks):
//!    never two at once;
//! 6. a VM's vGIC lock (`VmInterrupts`, `interrupts/guest.rs`): a device
//!    releases its own lock before it drives its line into the vGIC;
//!    requests are posted (and SGIs sent) under it;
//! 7. the console: the UART lock, then the output queue lock
//!    (`console/output.rs`);
//! 8. the GICv2 driver lock (`interrupts/gic.rs`), taken only with IRQs masked, and
//!    never held while an interrupt's handler runs.
//!
//! Two locks of the same kind are never held at once: no code holds two
//! VMs' lifecycle locks, two vCPUs' or two devices'. Work that spans VMs
//! (a stop report, vdev-shmem telling peers) takes one VM's lock, records
//! what to do, releases it, then takes the next. The request queues take
//! no lock at all (see `request_queue`), so posting is allowed under any
//! of the above.

use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use spin::Once;

use super::ids::{CpuId, VcpuId, VcpuSet, VmId};
use super::image::{LoadError, PristineImage};
use super::lifecycle::{
    CpuOnRefused, Outcome, Parked, StopOrder, SystemVerdict, VcpuPower, Verdict, VmLifecycle,
};
use super::request_queue::{CpuRequestQueue, Request};
use super::stage2::Stage2;
use crate::MAX_CPUS;
use crate::boot::manifest::MAX_VMS;
use crate::devices::map::DeviceMap;
use crate::memory::address::{GuestPhysAddr, PhysAddr};
use crate::sync::{Mutex, MutexGuard};
use crate::vgic::state::SpiSet;
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
    /// Tells `cpu` that SPI `intid` became pending for the vCPU it runs:
    /// through its injection doorbell and the doorbell interrupt (an SGI),
    /// after making every earlier store visible to it. False, having done
    /// nothing, when the doorbell holds another SPI not taken yet: the
    /// caller posts a request instead.
    fn ring_doorbell(&self, cpu: CpuId, intid: u32) -> bool;
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
    ///
    /// # Safety
    /// The range must be RAM of one VM that no vCPU of it uses meanwhile,
    /// with `host` and `size` multiples of 1 KiB.
    unsafe fn zero_guest_ram(&self, host: PhysAddr, size: u64);
    /// Copies `bytes` into a VM's RAM at `host` and cleans them to the
    /// point of coherency.
    ///
    /// # Safety
    /// The range must be RAM of one VM that no vCPU of it uses meanwhile.
    unsafe fn copy_to_guest_ram(&self, host: PhysAddr, bytes: &[u8]);
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

    /// Puts this vCPU back to [`Vcpu::RESET`] in place: its registers
    /// zeroed, then SCTLR_EL1's reset value, the one that is not 0. (An
    /// assignment of `RESET` copied a 224-byte template from rodata.)
    fn reset(&mut self) {
        // Written out in full, so that a field added to either type must
        // be given its reset value here.
        self.context = El1Context {
            sctlr: vcpu_state::SCTLR_EL1_RESET,
            ..El1Context::default()
        };
        self.set_way = SetWayTracker {
            trapping_vm_registers: false,
        };
    }
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
    /// The physical SPIs its configuration passes through to it, by INTID
    /// (the virtual INTID is the physical one). Its devices' registers are
    /// mapped into stage 2 at build; these interrupts are for the virtual
    /// GIC to route to it alone: the VM's owned set is these plus its
    /// emulated devices' SPIs (docs/system-image.md, "Passthrough").
    pub passthrough_spis: SpiSet,
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
    /// The VM's run the request belongs to (`VmLifecycle::generation`).
    pub generation: u32,
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
    pub fn lifecycle(&self) -> MutexGuard<'_, VmLifecycle> {
        self.lifecycle.lock()
    }

    /// The state of `vcpu`; call only on the CPU that runs it. Out of line:
    /// entry, parking, resets and the set/way tracking each had a copy of
    /// the lookup and the lock.
    #[inline(never)]
    pub fn vcpu(&self, vcpu: VcpuId) -> MutexGuard<'_, Vcpu> {
        self.vcpus[vcpu.index()].lock()
    }

    /// The VM's stage 2, to map or unmap pages (lock order: after the
    /// lifecycle and vCPU locks).
    pub fn stage2(&self) -> MutexGuard<'_, Stage2<T>> {
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

/// A VM's first start that waits for its time (its configured start
/// delay): the physical counter value it is due at and the run it belongs
/// to. One per CPU, for the VM whose vCPU 0 the CPU runs: set by the boot
/// CPU in `start_all`, then read and taken only by that CPU. All zero
/// (nothing waits) until then.
struct WaitingStart {
    waiting: AtomicBool,
    due: AtomicU64,
    generation: AtomicU32,
}

/// What a CPU with no request to act on does about a first start that
/// waits on it ([`VmSystem::waiting_start`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstStart {
    /// None waits here: sleep until something comes.
    Nothing,
    /// One waits until the physical counter reaches this value: sleep,
    /// with a timer set to wake this CPU then.
    WaitUntil(u64),
    /// Its time has come: enter it, as a start request (`claim_start`
    /// still decides).
    Due(VcpuEntry),
}

/// `microseconds` in ticks of a counter running at `frequency` Hz,
/// rounded up so a delay never ends early, and saturating.
///
/// Exact in 64-bit arithmetic: with each operand split into millions and
/// a remainder (`m = a·10⁶ + b`, `f = c·10⁶ + d`), `m·f / 10⁶` is
/// `a·c·10⁶ + a·d + b·c + b·d / 10⁶`, where only the last term (below
/// 10¹²) needs rounding. A 128-bit product would bring in the 128-bit
/// division routines (about 800 bytes of image) for this one boot step.
#[must_use]
pub const fn counter_ticks(microseconds: u64, frequency: u64) -> u64 {
    const MILLION: u64 = 1_000_000;
    let (a, b) = (microseconds / MILLION, microseconds % MILLION);
    let (c, d) = (frequency / MILLION, frequency % MILLION);
    // Every term is at least zero: if any step overflows, so does the
    // whole, and the answer saturates.
    let Some(whole) = a.checked_mul(c) else {
        return u64::MAX;
    };
    let Some(whole) = whole.checked_mul(MILLION) else {
        return u64::MAX;
    };
    let Some(cross) = a.checked_mul(d) else {
        return u64::MAX;
    };
    let Some(cross) = cross.checked_add(b * c) else {
        return u64::MAX;
    };
    match whole.checked_add(cross) {
        Some(sum) => match sum.checked_add((b * d).div_ceil(MILLION)) {
            Some(ticks) => ticks,
            None => u64::MAX,
        },
        None => u64::MAX,
    }
}

/// The panic of [`VmSystem::vm`] given an id that is not in the table,
/// out of line: `expect` there put the message's set-up into each of the
/// accessor's ~17 inlined copies.
#[cold]
#[inline(never)]
fn no_such_vm() -> ! {
    panic!("VM ids come from the table")
}

/// Why the VMs could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetupError {
    /// Two vCPUs (of any VMs) were placed on the same physical CPU.
    CpuTaken { cpu: CpuId },
    /// More VMs than the table holds.
    TooManyVms,
    /// The VM's description names another id than the next one.
    WrongId { expected: VmId },
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
    waiting: [WaitingStart; MAX_CPUS],
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
            waiting: [const {
                WaitingStart {
                    waiting: AtomicBool::new(false),
                    due: AtomicU64::new(0),
                    generation: AtomicU32::new(0),
                }
            }; MAX_CPUS],
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
        if description.id != id {
            return Err(SetupError::WrongId { expected: id });
        }
        let vcpus = || VcpuId::all(description.vcpu_count);
        let mut taken = [false; MAX_CPUS];
        for cpu in vcpus().map(|vcpu| description.cpus[vcpu.index()]) {
            if taken[cpu.index()] || self.placement[cpu.index()].get().is_some() {
                return Err(SetupError::CpuTaken { cpu });
            }
            taken[cpu.index()] = true;
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
    ///
    /// Out of line: its bounds check and `Once` read were inlined into
    /// each of the table's operations and the runtime's cold paths;
    /// [`vm_inline`](Self::vm_inline) is for a measured path.
    #[must_use]
    #[inline(never)]
    pub fn vm(&self, id: VmId) -> &Vm<T, D> {
        self.vm_inline(id)
    }

    /// [`vm`](Self::vm), inline.
    #[must_use]
    #[inline(always)]
    pub fn vm_inline(&self, id: VmId) -> &Vm<T, D> {
        match self.vms[id.index()].get() {
            Some(vm) => vm,
            None => no_such_vm(),
        }
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

    /// Asks the CPUs running `vcpus` of VM `vm` to bring their list
    /// registers in step with the VM's interrupt model (after a change the
    /// vGIC reported for them). Other CPUs get a coalesced
    /// [`Request::SyncInterrupts`] and the request SGI: no CPU touches
    /// another's list registers. Returns whether this CPU's own vCPU is
    /// among them, for the caller to sync at once.
    pub fn request_interrupt_sync(
        &self,
        vm: VmId,
        vcpus: VcpuSet,
        hardware: &impl Hardware,
    ) -> bool {
        // A sync needs no ring slot: it cannot be refused.
        self.request_for_vcpus(vm, vcpus, hardware, |_| Request::SyncInterrupts { vm })
    }

    /// As [`Self::request_interrupt_sync`], for one SPI `intid` that
    /// became pending for `vcpu`: its CPU's doorbell is rung with it (the
    /// CPU may show just that one, without a request at all: the
    /// `shmem.notify_oneway` path), or, when that CPU has requests waiting
    /// or its doorbell already holds another SPI, the CPU gets a
    /// [`Request::InjectInterrupt`] naming it (or, with its ring full, a
    /// sync), behind what waits. The doorbell needs no VM or vCPU: each
    /// CPU runs one vCPU of one VM, and an injection is only a hint (the
    /// receiving CPU shows what the model holds). Returns whether `vcpu`
    /// is this CPU's own (nothing is sent; the caller shows it). One vCPU,
    /// no loop: this is the notify path.
    /// `the_vm` is the VM (the caller has it at hand: one lookup less).
    #[inline(always)]
    pub fn request_interrupt_injection(
        &self,
        the_vm: &Vm<T, D>,
        vcpu: VcpuId,
        intid: u32,
        hardware: &impl Hardware,
    ) -> bool {
        let vm = the_vm.description.id;
        if vcpu.index() >= the_vm.description.vcpu_count {
            return false;
        }
        let cpu = the_vm.cpu_of(vcpu);
        if cpu == hardware.this_cpu() {
            return true;
        }
        // Only past an empty queue: a request posted before (a sync after
        // the guest disabled or reconfigured this SPI) must be taken
        // first, and the doorbell SGI could overtake the request SGI.
        if !(self.queues[cpu.index()].is_empty() && hardware.ring_doorbell(cpu, intid)) {
            // Never refused: a full ring makes it a coalesced sync.
            let _ = self.post(cpu, Request::InjectInterrupt { vm, vcpu, intid }, hardware);
        }
        false
    }

    /// Posts `request(vcpu)` to the CPU of each of VM `vm`'s `vcpus` that
    /// is not this one (requests that cannot be refused); whether this
    /// CPU's own vCPU is among them.
    fn request_for_vcpus(
        &self,
        vm: VmId,
        vcpus: VcpuSet,
        hardware: &impl Hardware,
        request: impl Fn(VcpuId) -> Request,
    ) -> bool {
        self.for_other_cpus(vm, vcpus, hardware, |cpu, vcpu| {
            let _ = self.post(cpu, request(vcpu), hardware);
        })
    }

    /// Calls `each(cpu, vcpu)` for each of VM `vm`'s `vcpus` run by
    /// another CPU; whether this CPU's own vCPU is among them.
    fn for_other_cpus(
        &self,
        vm: VmId,
        vcpus: VcpuSet,
        hardware: &impl Hardware,
        mut each: impl FnMut(CpuId, VcpuId),
    ) -> bool {
        let this_cpu = hardware.this_cpu();
        let mut here = false;
        let the_vm = self.vm(vm);
        for vcpu in vcpus.iter() {
            if vcpu.index() >= the_vm.description.vcpu_count {
                continue;
            }
            let cpu = the_vm.cpu_of(vcpu);
            if cpu == this_cpu {
                here = true;
            } else {
                each(cpu, vcpu);
            }
        }
        here
    }

    /// Starts vCPU 0 of every VM: at once, or, for a VM given a start
    /// delay (`delays[n]` for VM `n`, in counter ticks; missing or 0 is
    /// none), once the physical counter has passed `now` plus the delay.
    /// A delayed start waits on the CPU that is to run it, which is woken
    /// to set its timer ([`waiting_start`](Self::waiting_start)); its vCPU
    /// is pending meanwhile, so a stop in between drops it as it drops any
    /// start not yet entered. With no VM at all there is nothing to wait
    /// for: the verdict comes at once.
    pub fn start_all(&self, delays: &[u64], now: u64, hardware: &impl Hardware) -> Option<Verdict> {
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
            let generation = vm.lifecycle.lock().start().unwrap_or_default();
            let cpu = vm.cpu_of(VcpuId::FIRST);
            let delay = delays.get(description.id.index()).copied().unwrap_or(0);
            if delay > 0 {
                let slot = &self.waiting[cpu.index()];
                slot.due.store(now.saturating_add(delay), Ordering::Relaxed);
                slot.generation.store(generation, Ordering::Relaxed);
                // Release: the CPU that sees it waiting sees its time.
                slot.waiting.store(true, Ordering::Release);
                // Woken now, it sets its timer at once rather than at its
                // next tick.
                if cpu != hardware.this_cpu() {
                    hardware.send_request_interrupt(cpu);
                }
                continue;
            }
            let start = Request::StartVcpu {
                vm: description.id,
                vcpu: VcpuId::FIRST,
                entry: description.entry,
                argument: description.entry_argument,
                generation,
            };
            // Each CPU's queue is empty at boot.
            let _ = self.post(cpu, start, hardware);
        }
        None
    }

    /// For this CPU's idle loop, once it has no request to act on: what to
    /// do about the delayed first start that waits on it, given the
    /// physical counter `now`. When it is due the start is taken (handed
    /// out once); when its VM was stopped meanwhile it is dropped, and the
    /// CPU has nothing to wait for.
    pub fn waiting_start(&self, now: u64, hardware: &impl Hardware) -> FirstStart {
        let cpu = hardware.this_cpu();
        let slot = &self.waiting[cpu.index()];
        if !slot.waiting.load(Ordering::Acquire) {
            return FirstStart::Nothing;
        }
        let generation = slot.generation.load(Ordering::Relaxed);
        let due = slot.due.load(Ordering::Relaxed);
        // Relaxed stores below: only this CPU reads its slot from now on.
        let Some((vm, vcpu)) = self.placement(cpu) else {
            slot.waiting.store(false, Ordering::Relaxed);
            return FirstStart::Nothing;
        };
        let the_vm = self.vm(vm);
        if !the_vm.lifecycle.lock().is_start_pending(vcpu, generation) {
            slot.waiting.store(false, Ordering::Relaxed);
            return FirstStart::Nothing;
        }
        if now < due {
            return FirstStart::WaitUntil(due);
        }
        slot.waiting.store(false, Ordering::Relaxed);
        FirstStart::Due(VcpuEntry {
            vm,
            vcpu,
            entry: the_vm.description.entry,
            argument: the_vm.description.entry_argument,
            generation,
        })
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
        let generation = match vm.lifecycle.lock().cpu_on(target) {
            Ok(generation) => generation,
            Err(CpuOnRefused::Denied) => return status::DENIED,
            Err(CpuOnRefused::AlreadyOn) => return status::ALREADY_ON,
            Err(CpuOnRefused::OnPending) => return status::ON_PENDING,
            Err(CpuOnRefused::InvalidParameters) => return status::INVALID_PARAMETERS,
        };
        let start = Request::StartVcpu {
            vm: description.id,
            vcpu: target,
            entry,
            argument,
            generation,
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
        if !vm
            .lifecycle
            .lock()
            .claim_start(entry.vcpu, entry.generation)
        {
            return false;
        }
        let description = &vm.description;
        let root = vm.stage2.lock().root();
        hardware.load_stage2(description.id.vmid(), root, description.counter_offset);
        let mut vcpu = vm.vcpu(entry.vcpu);
        // Every start is a cold start: reset registers, no set/way state.
        vcpu.reset();
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
    /// no vCPU of it left running (`wait_until_no_vcpu_on`).
    ///
    /// # Errors
    /// The image no longer fits, which the build ruled out.
    ///
    /// # Safety
    /// No vCPU of the VM may run meanwhile, and its description's RAM must
    /// be its own (as `Vm::new` was given it).
    pub unsafe fn reload(&self, vm: VmId, hardware: &impl Hardware) -> Result<(), LoadError> {
        let description = &self.vm(vm).description;
        // SAFETY: the caller's contract is `load`'s.
        unsafe { description.pristine.load(&description.ram, hardware) }
    }

    /// Waits until no vCPU of `vm` is in the guest any more (a reset, after
    /// asking them to leave). Polls without holding the lifecycle lock, so
    /// the parking vCPUs are not kept from it.
    pub fn wait_until_no_vcpu_on(&self, vm: VmId) {
        let vm = self.vm(vm);
        loop {
            if vm
                .lifecycle
                .try_lock()
                .is_some_and(|lifecycle| !lifecycle.any_vcpu_on())
            {
                return;
            }
            for _ in 0..64 {
                core::hint::spin_loop();
            }
        }
    }

    /// The VM's RAM has been reloaded: it runs again, with vCPU 0 pending,
    /// in the generation returned. `None` when a stop overtook the reset.
    /// The caller reports the restart, then calls [`restart`](Self::restart).
    pub fn finish_reset(&self, vm: VmId) -> Option<u32> {
        self.vm(vm).lifecycle.lock().finish_reset()
    }

    /// Asks vCPU 0's CPU to start it again, after `finish_reset` gave
    /// `generation`. Should the request not fit (nothing of the VM is in
    /// flight after a reset, so it always does), the VM is stopped rather
    /// than left running with no vCPU: its end is returned for the caller
    /// to report.
    pub fn restart(&self, vm: VmId, generation: u32, hardware: &impl Hardware) -> Option<Outcome> {
        let vm = self.vm(vm);
        let description = &vm.description;
        let start = Request::StartVcpu {
            vm: description.id,
            vcpu: VcpuId::FIRST,
            entry: description.entry,
            argument: description.entry_argument,
            generation,
        };
        if self.post(vm.cpu_of(VcpuId::FIRST), start, hardware).is_ok() {
            return None;
        }
        match vm.lifecycle.lock().stop(Outcome::Fault, None) {
            StopOrder::Ended(outcome) => Some(outcome),
            StopOrder::Stop(_) | StopOrder::AlreadyStopping => None,
        }
    }

    /// PSCI AFFINITY_INFO for `target` of `vm` at `lowest_level`: 0 on, 1
    /// off, 2 on pending, or INVALID_PARAMETERS.
    pub fn affinity_info(&self, vm: VmId, target: u64, lowest_level: u64) -> i64 {
        let vm = self.vm(vm);
        let target =
            vcpu_state::vcpu_for_affinity(target, vm.description.vcpu_count).and_then(VcpuId::new);
        match (lowest_level, target) {
            (0, Some(target)) => match vm.lifecycle.lock().power(target) {
                Some(VcpuPower::On) => 0,
                Some(VcpuPower::OnPending) => 2,
                Some(VcpuPower::Off) | None => 1,
            },
            _ => status::INVALID_PARAMETERS,
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
        /// Each CPU's injection doorbell, and the doorbell SGIs sent.
        doorbells: RefCell<[u32; 8]>,
        doorbells_rung: RefCell<Vec<(usize, u32)>>,
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

        fn ring_doorbell(&self, cpu: CpuId, intid: u32) -> bool {
            assert_ne!(
                cpu.index(),
                self.cpu.get(),
                "a CPU rings no doorbell of its own"
            );
            let doorbell = &mut self.doorbells.borrow_mut()[cpu.index()];
            if *doorbell != 0 && *doorbell != intid {
                return false;
            }
            *doorbell = intid;
            self.doorbells_rung.borrow_mut().push((cpu.index(), intid));
            true
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

        unsafe fn zero_guest_ram(&self, host: PhysAddr, size: u64) {
            self.memory_operations
                .borrow_mut()
                .push(format!("zero {:#x} +{size:#x}", host.0));
        }

        unsafe fn copy_to_guest_ram(&self, host: PhysAddr, bytes: &[u8]) {
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
                passthrough_spis: SpiSet::EMPTY,
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
                    generation,
                } => system.claim_start(
                    VcpuEntry {
                        vm,
                        vcpu,
                        entry,
                        argument,
                        generation,
                    },
                    hardware.on(cpu),
                ),
                _ => false,
            })
            .count()
    }

    #[test]
    fn a_vcpu_reset_in_place_is_the_reset_state() {
        let mut vcpu = Vcpu::RESET;
        vcpu.context.sctlr = 0x30D0_0805;
        vcpu.context.vbar = 0x4008_0000;
        vcpu.context.mdscr = 1;
        vcpu.set_way.trapping_vm_registers = true;
        vcpu.reset();
        assert_eq!(vcpu.context, Vcpu::RESET.context);
        assert_eq!(vcpu.set_way, Vcpu::RESET.set_way);
    }

    #[test]
    fn an_interrupt_sync_goes_to_the_cpus_of_the_vcpus_it_concerns() {
        let hardware = FakeHardware::default();
        let system = system(&[&[1], &[2, 3, 0]]);
        let mut vcpus = VcpuSet::EMPTY;
        for index in [0, 1, 2, 5] {
            vcpus.insert(vcpu(index));
        }
        // CPU 0 runs VM 1's vCPU 2 itself: it syncs at once, no request.
        assert!(system.request_interrupt_sync(vm(1), vcpus, hardware.on(0)));
        assert_eq!(*hardware.interrupts_sent.borrow(), [2, 3]);
        assert_eq!(drain(&system, 2), [Request::SyncInterrupts { vm: vm(1) }]);
        assert_eq!(drain(&system, 3), [Request::SyncInterrupts { vm: vm(1) }]);
        assert!(drain(&system, 0).is_empty());
        // vCPU 5 does not exist; asked again, CPU 2 still has one request.
        assert!(!system.request_interrupt_sync(vm(1), vcpus, hardware.on(1)));
        assert!(!system.request_interrupt_sync(vm(1), vcpus, hardware.on(1)));
        assert_eq!(drain(&system, 2), [Request::SyncInterrupts { vm: vm(1) }]);
    }

    #[test]
    fn an_injection_rings_the_doorbell_of_its_vcpus_cpu_or_else_names_the_interrupt() {
        let hardware = FakeHardware::default();
        let system = system(&[&[1], &[2, 3, 0]]);
        // CPU 0 runs VM 1's vCPU 2 itself: the caller shows it at once.
        assert!(system.request_interrupt_injection(system.vm(vm(1)), vcpu(2), 40, hardware.on(0)));
        assert!(hardware.doorbells_rung.borrow().is_empty());
        // CPU 2's doorbell is rung for vCPU 0: no request.
        assert!(!system.request_interrupt_injection(system.vm(vm(1)), vcpu(0), 40, hardware.on(0)));
        assert_eq!(*hardware.doorbells_rung.borrow(), [(2, 40)]);
        assert!(hardware.interrupts_sent.borrow().is_empty());
        assert!(drain(&system, 2).is_empty());
        // The same SPI again, not taken yet: rung again (one more SGI).
        assert!(!system.request_interrupt_injection(system.vm(vm(1)), vcpu(0), 40, hardware.on(0)));
        assert_eq!(*hardware.doorbells_rung.borrow(), [(2, 40), (2, 40)]);
        // Another SPI while CPU 2's doorbell holds 40: a request naming it.
        assert!(!system.request_interrupt_injection(system.vm(vm(1)), vcpu(0), 41, hardware.on(0)));
        assert_eq!(*hardware.interrupts_sent.borrow(), [2]);
        assert_eq!(
            drain(&system, 2),
            [Request::InjectInterrupt {
                vm: vm(1),
                vcpu: vcpu(0),
                intid: 41
            }]
        );
        assert!(drain(&system, 0).is_empty());
        // A vCPU the VM does not have: nothing.
        assert!(!system.request_interrupt_injection(system.vm(vm(1)), vcpu(3), 40, hardware.on(0)));
        assert_eq!(hardware.doorbells_rung.borrow().len(), 2);
        // A sync waiting on CPU 2 (the guest reconfigured the SPI): the
        // injection queues behind it, the doorbell is not rung.
        hardware.doorbells.borrow_mut()[2] = 0;
        let mut only_vcpu0 = VcpuSet::EMPTY;
        only_vcpu0.insert(vcpu(0));
        assert!(!system.request_interrupt_sync(vm(1), only_vcpu0, hardware.on(0)));
        assert!(!system.request_interrupt_injection(system.vm(vm(1)), vcpu(0), 40, hardware.on(0)));
        assert_eq!(hardware.doorbells_rung.borrow().len(), 2, "not rung again");
        assert_eq!(
            drain(&system, 2),
            [
                Request::SyncInterrupts { vm: vm(1) },
                Request::InjectInterrupt {
                    vm: vm(1),
                    vcpu: vcpu(0),
                    intid: 40
                }
            ]
        );
    }

    #[test]
    fn start_all_wakes_each_vms_first_cpu_which_loads_its_stage2_and_vcpu() {
        let hardware = FakeHardware::default();
        let system = system(&[&[1], &[2, 3]]);
        assert_eq!(system.start_all(&[], 0, hardware.on(0)), None);
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
    fn a_delayed_vm_starts_on_its_cpu_once_its_time_has_come_and_only_then() {
        let hardware = FakeHardware::default();
        let system = system(&[&[1], &[2, 3], &[0]]);
        // VM 1 waits 500 ticks, VM 2 (on the boot CPU itself) 200.
        assert_eq!(system.start_all(&[0, 500, 200], 1000, hardware.on(0)), None);
        // VM 0 is asked to start; VM 1's CPU is only woken, to set its
        // timer; the boot CPU needs no interrupt to look at its own.
        assert_eq!(*hardware.interrupts_sent.borrow(), [1, 2]);
        assert_eq!(run_starts(&system, &hardware, 1), 1);
        assert_eq!(run_starts(&system, &hardware, 2), 0, "no request to start");
        assert_eq!(
            system.waiting_start(1000, hardware.on(2)),
            FirstStart::WaitUntil(1500)
        );
        assert_eq!(
            system.waiting_start(1499, hardware.on(2)),
            FirstStart::WaitUntil(1500)
        );
        assert_eq!(
            system.vm(vm(1)).lifecycle().power(vcpu(0)),
            Some(VcpuPower::OnPending),
            "pending while it waits"
        );
        // Nothing waits on CPUs without a delayed VM, nor on its second
        // vCPU's.
        assert_eq!(
            system.waiting_start(5000, hardware.on(1)),
            FirstStart::Nothing
        );
        assert_eq!(
            system.waiting_start(5000, hardware.on(3)),
            FirstStart::Nothing
        );
        let due = VcpuEntry {
            vm: vm(1),
            vcpu: vcpu(0),
            entry: GuestPhysAddr(0x4008_0000),
            argument: 0x43FF_0000,
            generation: 0,
        };
        assert_eq!(
            system.waiting_start(1500, hardware.on(2)),
            FirstStart::Due(due)
        );
        // Handed out once.
        assert_eq!(
            system.waiting_start(1600, hardware.on(2)),
            FirstStart::Nothing
        );
        assert!(system.claim_start(due, hardware.on(2)));
        assert_eq!(*hardware.stage2_loads.borrow(), [(1, 1), (2, 2)]);
        // VM 2's start waits on CPU 0 until 1200.
        assert_eq!(
            system.waiting_start(1100, hardware.on(0)),
            FirstStart::WaitUntil(1200)
        );
        assert!(matches!(
            system.waiting_start(1200, hardware.on(0)),
            FirstStart::Due(VcpuEntry { vm: id, .. }) if id == vm(2)
        ));
    }

    #[test]
    fn a_delayed_vm_stopped_before_its_time_never_starts() {
        let hardware = FakeHardware::default();
        let system = system(&[&[1], &[2]]);
        system.start_all(&[0, 300], 0, hardware.on(0));
        assert_eq!(
            system.waiting_start(100, hardware.on(2)),
            FirstStart::WaitUntil(300)
        );
        // Nothing of it ran: the stop ends it at once.
        assert_eq!(
            system.stop(vm(1), Outcome::Fault, None, hardware.on(1)),
            StopOrder::Ended(Outcome::Fault)
        );
        // Its CPU stops waiting, before its time and after it.
        assert_eq!(
            system.waiting_start(100, hardware.on(2)),
            FirstStart::Nothing
        );
        assert_eq!(
            system.waiting_start(400, hardware.on(2)),
            FirstStart::Nothing
        );
        assert_eq!(run_starts(&system, &hardware, 2), 0);
        assert!(system.vm(vm(1)).lifecycle().has_ended());
        // A start it might still have been handed is refused too.
        assert!(!system.claim_start(
            VcpuEntry {
                vm: vm(1),
                vcpu: vcpu(0),
                entry: GuestPhysAddr(0x4008_0000),
                argument: 0x43FF_0000,
                generation: 0,
            },
            hardware.on(2)
        ));
    }

    #[test]
    fn start_delays_in_counter_ticks_round_up_and_saturate() {
        // QEMU's 62.5 MHz counter; the Pi 4's 54 MHz.
        assert_eq!(counter_ticks(20_000, 62_500_000), 1_250_000);
        assert_eq!(counter_ticks(1, 54_000_000), 54);
        assert_eq!(counter_ticks(1, 1_000), 1, "never rounded to no delay");
        assert_eq!(counter_ticks(0, 62_500_000), 0);
        assert_eq!(counter_ticks(60_000_000, 1_000_000_000), 60_000_000_000);
        assert_eq!(counter_ticks(u64::MAX, u64::MAX), u64::MAX);
        // The 64-bit steps agree with the exact 128-bit product, rounding
        // and saturation included.
        let exact = |microseconds: u64, frequency: u64| {
            let ticks = (u128::from(microseconds) * u128::from(frequency)).div_ceil(1_000_000);
            u64::try_from(ticks).unwrap_or(u64::MAX)
        };
        let values = [
            0,
            1,
            999_999,
            1_000_000,
            1_000_001,
            54_000_000,
            62_500_000,
            tessera_package::rules::MAX_START_DELAY_US,
            u64::from(u32::MAX),
            1 << 44,
            (1 << 44) + 999_999,
            u64::MAX / 1_000_000,
            u64::MAX - 1,
            u64::MAX,
        ];
        for microseconds in values {
            for frequency in values {
                assert_eq!(
                    counter_ticks(microseconds, frequency),
                    exact(microseconds, frequency),
                    "{microseconds} us at {frequency} Hz"
                );
            }
        }
        // Near the saturation point: the largest product that fits.
        let frequency = 1_000_000_007;
        let edge = u64::MAX / frequency * 1_000_000;
        for microseconds in edge - 3..edge + 3 {
            assert_eq!(
                counter_ticks(microseconds, frequency),
                exact(microseconds, frequency)
            );
        }
    }

    #[test]
    fn a_system_with_no_vms_has_its_verdict_at_once() {
        let hardware = FakeHardware::default();
        let system = system(&[]);
        assert_eq!(
            system.start_all(&[], 0, &hardware),
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
        system.start_all(&[], 0, hardware.on(0));
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
                argument: 7,
                generation: 0,
            }]
        );
        // CPU 2 enters it now, from the request it took.
        assert!(system.claim_start(
            VcpuEntry {
                vm: vm(0),
                vcpu: vcpu(1),
                entry,
                argument: 7,
                generation: 0,
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
                argument: 7,
                generation: 0,
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
        system.start_all(&[], 0, hardware.on(0));
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
        system.start_all(&[], 0, hardware.on(0));
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
        // SAFETY: the fake touches no memory.
        assert_eq!(unsafe { system.reload(vm(0), hardware.on(1)) }, Ok(()));
        assert_eq!(
            hardware
                .memory_operations
                .borrow()
                .first()
                .map(String::as_str),
            Some("zero 0x80000000 +0x4000000"),
            "RAM is rewritten from the pristine image"
        );
        assert_eq!(system.finish_reset(vm(0)), Some(1));
        assert_eq!(system.restart(vm(0), 1, hardware.on(1)), None);
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
        assert_eq!(system.finish_reset(vm(0)), None);
        assert_eq!(run_starts(&system, &hardware, 1), 0);
    }

    #[test]
    fn a_start_posted_before_a_reset_is_never_honoured_after_it() {
        let hardware = FakeHardware::default();
        let system = system(&[&[1, 2]]);
        system.start_all(&[], 0, hardware.on(0));
        run_starts(&system, &hardware, 1);
        // CPU_ON of vCPU 1 at A; CPU 2 has not looked at its queue yet
        // when vCPU 0 resets the VM.
        let old = GuestPhysAddr(0x4000_A000);
        assert_eq!(
            system.cpu_on(vm(0), 1, old, 0xAAAA, hardware.on(1)),
            status::SUCCESS
        );
        assert!(system.begin_reset(vm(0), vcpu(0), hardware.on(1)));
        system.wait_until_no_vcpu_on(vm(0));
        let generation = system.finish_reset(vm(0)).unwrap();
        assert_eq!(system.restart(vm(0), generation, hardware.on(1)), None);
        assert_eq!(run_starts(&system, &hardware, 1), 1);
        // The new run asks for vCPU 1 at B: only that start may run.
        let new = GuestPhysAddr(0x4000_B000);
        assert_eq!(
            system.cpu_on(vm(0), 1, new, 0xBBBB, hardware.on(1)),
            status::SUCCESS
        );
        let starts: Vec<_> = drain(&system, 2)
            .into_iter()
            .filter_map(|request| match request {
                Request::StartVcpu {
                    vm,
                    vcpu,
                    entry,
                    argument,
                    generation,
                } => Some(VcpuEntry {
                    vm,
                    vcpu,
                    entry,
                    argument,
                    generation,
                }),
                _ => None,
            })
            .collect();
        assert_eq!(starts.len(), 2, "the stale start and the new one");
        let honoured: Vec<_> = starts
            .into_iter()
            .filter(|start| system.claim_start(*start, hardware.on(2)))
            .map(|start| (start.entry, start.argument))
            .collect();
        assert_eq!(honoured, [(new, 0xBBBB)]);
    }

    #[test]
    fn two_vcpus_of_one_vm_on_one_cpu_are_refused() {
        let system = system(&[]);
        let description = VmDescription {
            id: vm(0),
            name: "test",
            ram: RAM,
            cpus: [cpu(3); MAX_CPUS],
            vcpu_count: 2,
            entry: GuestPhysAddr(0x4008_0000),
            entry_argument: 0,
            counter_offset: 0,
            pristine: PristineImage {
                image: b"",
                image_load_offset: 0,
                device_tree: b"",
            },
            passthrough_spis: SpiSet::EMPTY,
        };
        let stage2 = || Stage2::new(Tables::default()).unwrap();
        assert_eq!(
            system
                .add(Vm::new(description, stage2(), DeviceMap::new(), ()))
                .err(),
            Some(SetupError::CpuTaken { cpu: cpu(3) })
        );
        assert_eq!(system.placement(cpu(3)), None, "nothing was placed");
        let wrong_id = VmDescription {
            id: vm(1),
            vcpu_count: 1,
            ..description
        };
        assert_eq!(
            system
                .add(Vm::new(wrong_id, stage2(), DeviceMap::new(), ()))
                .err(),
            Some(SetupError::WrongId { expected: vm(0) })
        );
    }

    #[test]
    fn affinity_info_reports_each_vcpus_power() {
        let hardware = FakeHardware::default();
        let system = system(&[&[1, 2, 3]]);
        system.start_all(&[], 0, hardware.on(0));
        run_starts(&system, &hardware, 1);
        system.cpu_on(vm(0), 1, GuestPhysAddr(0x4000_0000), 0, hardware.on(1));
        assert_eq!(system.affinity_info(vm(0), 0, 0), 0, "on");
        assert_eq!(system.affinity_info(vm(0), 1, 0), 2, "on pending");
        assert_eq!(system.affinity_info(vm(0), 2, 0), 1, "off");
        assert_eq!(
            system.affinity_info(vm(0), 3, 0),
            status::INVALID_PARAMETERS
        );
        assert_eq!(
            system.affinity_info(vm(0), 0, 1),
            status::INVALID_PARAMETERS
        );
    }

    #[test]
    fn more_requests_than_the_queue_holds_lose_nothing() {
        let hardware = FakeHardware::default();
        let system = system(&[&[1, 2]]);
        system.start_all(&[], 0, hardware.on(0));
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
            generation: 0,
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
