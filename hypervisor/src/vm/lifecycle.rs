//! A VM's life as a state machine: which of its vCPUs are on, whether it is
//! running, resetting or stopping, and how it ended; and the system-wide
//! verdict once every VM has ended.
//!
//! Every decision that PSCI calls, faults and resets make about a VM's
//! state is taken here, under the VM's lifecycle lock, so the races between
//! them (a CPU_ON racing a SYSTEM_RESET, two vCPUs faulting at once, a stop
//! arriving while a reset reloads the VM) are settled in one place and
//! tested on the host. Carrying a decision out (posting requests to other
//! CPUs, reloading RAM, entering the guest) is the caller's.
//!
//! A VM ends only when its last vCPU has left the guest: `stop` marks it
//! stopping and names the vCPUs to ask, and the vCPU that parks last gets
//! [`Parked::VmEnded`]. So every vCPU's own report (a fault it took, its
//! last output) is written before the VM's end is reported, and before
//! the power-off that may follow it.

use core::sync::atomic::{AtomicUsize, Ordering};

use super::ids::{VcpuId, VcpuSet};
use crate::MAX_CPUS;

/// How a VM ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// SYSTEM_OFF, CPU_OFF of its last vCPU, or TESSERA_VM_EXIT with status 0.
    Clean,
    /// TESSERA_VM_EXIT with a non-zero status.
    ExitStatus(u32),
    /// Stopped by the hypervisor for a fault it could not reflect.
    Fault,
}

impl Outcome {
    #[must_use]
    pub const fn is_failure(self) -> bool {
        !matches!(self, Self::Clean)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VmState {
    Running,
    /// A vCPU is reloading the VM: nothing may start or reset it until
    /// that is done; a stop overtakes it.
    Resetting,
    /// Asked to stop; ends when its last vCPU has parked.
    Stopping(Outcome),
    Stopped(Outcome),
}

/// A vCPU's power state, as PSCI AFFINITY_INFO reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuPower {
    Off,
    /// CPU_ON accepted; its CPU has not entered it yet.
    OnPending,
    On,
}

/// Why CPU_ON was refused, as PSCI names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuOnRefused {
    /// The VM is resetting or stopping.
    Denied,
    AlreadyOn,
    OnPending,
    /// No such vCPU.
    InvalidParameters,
}

/// What `stop` decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopOrder {
    /// The VM was already stopping or stopped: nothing more to do; the
    /// first outcome stands.
    AlreadyStopping,
    /// Ask these vCPUs (running on other CPUs) to leave the guest; the VM
    /// ends when the last of them, or the caller's own vCPU, parks.
    Stop(VcpuSet),
    /// No vCPU was running: the VM has ended now.
    Ended(Outcome),
}

/// What parking a vCPU decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parked {
    /// Other vCPUs are still on (or the VM is resetting).
    VmGoesOn,
    /// This was the last vCPU of a stopping VM, or the last to switch
    /// itself off: the VM has ended with this outcome.
    VmEnded(Outcome),
}

/// The lifecycle of one VM.
#[derive(Clone, Debug)]
pub struct VmLifecycle {
    state: VmState,
    vcpus: [VcpuPower; MAX_CPUS],
    vcpu_count: usize,
    reset_count: u64,
}

impl VmLifecycle {
    /// The power states of the VM's vCPUs. `new` keeps `vcpu_count` within
    /// the array; the `min` shows the compiler, so there is no panic path.
    fn vcpus_of_vm(&self) -> &[VcpuPower] {
        &self.vcpus[..self.vcpu_count.min(MAX_CPUS)]
    }

    /// A VM of `vcpu_count` vCPUs, all off, not yet started.
    #[must_use]
    pub const fn new(vcpu_count: usize) -> Self {
        Self {
            state: VmState::Running,
            vcpus: [VcpuPower::Off; MAX_CPUS],
            vcpu_count: if vcpu_count < MAX_CPUS {
                vcpu_count
            } else {
                MAX_CPUS
            },
            reset_count: 0,
        }
    }

    #[must_use]
    pub const fn vcpu_count(&self) -> usize {
        self.vcpu_count
    }

    #[must_use]
    pub const fn reset_count(&self) -> u64 {
        self.reset_count
    }

    /// The power state of `vcpu`, or `None` when the VM has no such vCPU.
    #[must_use]
    pub fn power(&self, vcpu: VcpuId) -> Option<VcpuPower> {
        (vcpu.index() < self.vcpu_count).then(|| self.vcpus[vcpu.index()])
    }

    /// Whether the VM has ended.
    #[must_use]
    pub const fn has_ended(&self) -> bool {
        matches!(self.state, VmState::Stopped(_))
    }

    /// Which run of the VM this is: its reset count, as start requests
    /// carry it, so a request posted before a reset is never honoured
    /// after it (it would start the vCPU with the old run's entry point).
    #[must_use]
    pub const fn generation(&self) -> u32 {
        self.reset_count as u32
    }

    /// Boot: vCPU 0 is to be started. Same rules as CPU_ON.
    pub fn start(&mut self) -> Result<u32, CpuOnRefused> {
        self.cpu_on(VcpuId::FIRST)
    }

    /// PSCI CPU_ON of `vcpu`: on success it is pending, and the caller asks
    /// its CPU to enter it, with the generation returned.
    pub fn cpu_on(&mut self, vcpu: VcpuId) -> Result<u32, CpuOnRefused> {
        if vcpu.index() >= self.vcpu_count {
            return Err(CpuOnRefused::InvalidParameters);
        }
        if self.state != VmState::Running {
            return Err(CpuOnRefused::Denied);
        }
        match self.vcpus[vcpu.index()] {
            VcpuPower::On => Err(CpuOnRefused::AlreadyOn),
            VcpuPower::OnPending => Err(CpuOnRefused::OnPending),
            VcpuPower::Off => {
                self.vcpus[vcpu.index()] = VcpuPower::OnPending;
                Ok(self.generation())
            }
        }
    }

    /// A CPU is about to enter `vcpu` on a start request of `generation`:
    /// true (and the vCPU is on) only if it is still pending in a running
    /// VM, in the same run. A request that the VM's state has overtaken (a
    /// stop, a reset) is dropped.
    pub fn claim_start(&mut self, vcpu: VcpuId, generation: u32) -> bool {
        let pending = self.is_start_pending(vcpu, generation);
        if pending {
            self.vcpus[vcpu.index()] = VcpuPower::On;
        }
        pending
    }

    /// Whether a start of `vcpu` in run `generation` may still be entered:
    /// the vCPU is pending in a running VM, in that run. A start that
    /// waits for its time (a delayed first start) stops waiting once this
    /// is false: the VM was stopped meanwhile.
    #[must_use]
    pub fn is_start_pending(&self, vcpu: VcpuId, generation: u32) -> bool {
        self.state == VmState::Running
            && generation == self.generation()
            && self.power(vcpu) == Some(VcpuPower::OnPending)
    }

    /// A start request for `vcpu` could not be delivered: it is off again,
    /// so CPU_ON may be retried.
    pub fn cancel_start(&mut self, vcpu: VcpuId) {
        if self.power(vcpu) == Some(VcpuPower::OnPending) {
            self.vcpus[vcpu.index()] = VcpuPower::Off;
        }
    }

    /// Stops the VM with `outcome` (SYSTEM_OFF, an exit call, a fault).
    /// `caller` is the vCPU asking, which parks by itself afterwards.
    pub fn stop(&mut self, outcome: Outcome, caller: Option<VcpuId>) -> StopOrder {
        match self.state {
            VmState::Stopping(_) | VmState::Stopped(_) => return StopOrder::AlreadyStopping,
            VmState::Running | VmState::Resetting => {}
        }
        let mut others = VcpuSet::EMPTY;
        let mut any_on = false;
        for vcpu in VcpuId::all(self.vcpu_count) {
            match self.vcpus[vcpu.index()] {
                // Never entered: its start request will find the VM stopped.
                VcpuPower::OnPending => self.vcpus[vcpu.index()] = VcpuPower::Off,
                VcpuPower::On => {
                    any_on = true;
                    if Some(vcpu) != caller {
                        others.insert(vcpu);
                    }
                }
                VcpuPower::Off => {}
            }
        }
        if any_on {
            self.state = VmState::Stopping(outcome);
            StopOrder::Stop(others)
        } else {
            self.state = VmState::Stopped(outcome);
            StopOrder::Ended(outcome)
        }
    }

    /// `vcpu` has left the guest for good (CPU_OFF, a stop request, the
    /// end of its VM): it is off, unless a sibling's CPU_ON has already
    /// made it pending again after its CPU_OFF.
    pub fn park(&mut self, vcpu: VcpuId) -> Parked {
        if self.power(vcpu) == Some(VcpuPower::On) {
            self.vcpus[vcpu.index()] = VcpuPower::Off;
        }
        let all_off = self
            .vcpus_of_vm()
            .iter()
            .all(|power| *power == VcpuPower::Off);
        if !all_off {
            return Parked::VmGoesOn;
        }
        match self.state {
            VmState::Stopping(outcome) => {
                self.state = VmState::Stopped(outcome);
                Parked::VmEnded(outcome)
            }
            // The last vCPU switched itself off: nothing is left to run,
            // so the VM is over, as after SYSTEM_OFF.
            VmState::Running => {
                self.state = VmState::Stopped(Outcome::Clean);
                Parked::VmEnded(Outcome::Clean)
            }
            VmState::Resetting | VmState::Stopped(_) => Parked::VmGoesOn,
        }
    }

    /// SYSTEM_RESET from `caller`: the VM is resetting, `caller` is off,
    /// pending vCPUs are dropped, and the returned vCPUs must be asked to
    /// leave the guest. Refused (`None`) unless the VM is running, so a
    /// second reset, or one racing a stop, does nothing.
    pub fn begin_reset(&mut self, caller: VcpuId) -> Option<VcpuSet> {
        if self.state != VmState::Running {
            return None;
        }
        self.state = VmState::Resetting;
        self.reset_count += 1;
        let mut others = VcpuSet::EMPTY;
        for vcpu in VcpuId::all(self.vcpu_count) {
            let power = &mut self.vcpus[vcpu.index()];
            if vcpu == caller || *power == VcpuPower::OnPending {
                *power = VcpuPower::Off;
            } else if *power == VcpuPower::On {
                others.insert(vcpu);
            }
        }
        Some(others)
    }

    /// Whether any vCPU is still in the guest (a resetting VM waits for
    /// none to be before it rewrites RAM).
    #[must_use]
    pub fn any_vcpu_on(&self) -> bool {
        self.vcpus_of_vm().contains(&VcpuPower::On)
    }

    /// Whether a reset is still under way (no stop has overtaken it).
    #[must_use]
    pub fn is_resetting(&self) -> bool {
        self.state == VmState::Resetting
    }

    /// The reload is done: vCPU 0 is pending again and the VM runs; the
    /// generation to start it with. `None` when a stop overtook the reset
    /// meanwhile (the VM stays stopped).
    pub fn finish_reset(&mut self) -> Option<u32> {
        if self.state != VmState::Resetting {
            return None;
        }
        self.state = VmState::Running;
        self.vcpus[VcpuId::FIRST.index()] = VcpuPower::OnPending;
        Some(self.generation())
    }
}

/// The power-off verdict: once every VM has ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub total: usize,
    pub failed: usize,
}

impl Verdict {
    /// The machine's exit status: 0 only if no VM failed.
    #[must_use]
    pub const fn status(self) -> u32 {
        if self.failed == 0 { 0 } else { 1 }
    }
}

/// Counts VMs that are still running and those that failed, and gives the
/// verdict when the last ends. Lock-free: VMs end on any CPU.
#[derive(Debug, Default)]
pub struct SystemVerdict {
    total: AtomicUsize,
    running: AtomicUsize,
    failed: AtomicUsize,
}

impl SystemVerdict {
    #[must_use]
    pub const fn new() -> Self {
        Self {
            total: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
        }
    }

    /// `count` VMs start running.
    pub fn begin(&self, count: usize) {
        self.total.store(count, Ordering::Release);
        self.running.store(count, Ordering::Release);
    }

    /// A VM ended with `outcome`: the verdict if it was the last.
    pub fn vm_ended(&self, outcome: Outcome) -> Option<Verdict> {
        if outcome.is_failure() {
            self.failed.fetch_add(1, Ordering::AcqRel);
        }
        // Counting down from zero would be a VM ending twice, which the
        // lifecycle rules out; saturate rather than wrap all the same.
        let before = self
            .running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |running| {
                running.checked_sub(1)
            })
            .ok()?;
        (before == 1).then(|| Verdict {
            total: self.total.load(Ordering::Acquire),
            failed: self.failed.load(Ordering::Acquire),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vcpu(index: usize) -> VcpuId {
        VcpuId::new(index).unwrap()
    }

    fn set(indices: &[usize]) -> VcpuSet {
        let mut set = VcpuSet::EMPTY;
        for index in indices {
            set.insert(vcpu(*index));
        }
        set
    }

    impl VmLifecycle {
        /// A start request of the current run, taken at once.
        fn claim_start_now(&mut self, vcpu: VcpuId) -> bool {
            self.claim_start(vcpu, self.generation())
        }
    }

    /// A VM of `count` vCPUs whose vCPU 0 is running.
    fn running(count: usize) -> VmLifecycle {
        let mut vm = VmLifecycle::new(count);
        vm.start().unwrap();
        assert!(vm.claim_start_now(vcpu(0)));
        vm
    }

    #[test]
    fn cpu_on_of_a_vcpu_that_is_off_on_or_pending() {
        let mut vm = running(3);
        assert_eq!(vm.cpu_on(vcpu(0)), Err(CpuOnRefused::AlreadyOn));
        assert_eq!(vm.cpu_on(vcpu(1)), Ok(0));
        assert_eq!(vm.power(vcpu(1)), Some(VcpuPower::OnPending));
        // Started twice before its CPU got to it.
        assert_eq!(vm.cpu_on(vcpu(1)), Err(CpuOnRefused::OnPending));
        assert!(vm.claim_start_now(vcpu(1)));
        assert_eq!(vm.cpu_on(vcpu(1)), Err(CpuOnRefused::AlreadyOn));
        // A second start request for the same vCPU is dropped.
        assert!(!vm.claim_start_now(vcpu(1)));
        assert_eq!(vm.cpu_on(vcpu(3)), Err(CpuOnRefused::InvalidParameters));
        assert_eq!(vm.power(vcpu(3)), None);
    }

    #[test]
    fn cpu_off_then_on_again_and_the_last_cpu_off_ends_the_vm_cleanly() {
        let mut vm = running(2);
        vm.cpu_on(vcpu(1)).unwrap();
        assert!(vm.claim_start_now(vcpu(1)));
        assert_eq!(vm.park(vcpu(1)), Parked::VmGoesOn);
        assert_eq!(vm.power(vcpu(1)), Some(VcpuPower::Off));
        vm.cpu_on(vcpu(1)).unwrap();
        // vCPU 0 switches off while 1 is pending: the VM goes on.
        assert_eq!(vm.park(vcpu(0)), Parked::VmGoesOn);
        assert!(vm.claim_start_now(vcpu(1)));
        assert_eq!(vm.park(vcpu(1)), Parked::VmEnded(Outcome::Clean));
        assert!(vm.has_ended());
        assert_eq!(vm.cpu_on(vcpu(0)), Err(CpuOnRefused::Denied));
    }

    #[test]
    fn a_vcpu_made_pending_after_its_cpu_off_stays_pending_when_it_parks() {
        let mut vm = running(2);
        vm.cpu_on(vcpu(1)).unwrap();
        assert!(vm.claim_start_now(vcpu(1)));
        // vCPU 1 called CPU_OFF and is marked off...
        assert_eq!(vm.park(vcpu(1)), Parked::VmGoesOn);
        // ...vCPU 0 turns it on again before vCPU 1's CPU parked...
        vm.cpu_on(vcpu(1)).unwrap();
        // ...and a late park of the old run must not undo that.
        assert_eq!(vm.park(vcpu(1)), Parked::VmGoesOn);
        assert_eq!(vm.power(vcpu(1)), Some(VcpuPower::OnPending));
    }

    #[test]
    fn a_stop_asks_every_other_running_vcpu_and_ends_with_the_last_park() {
        let mut vm = running(4);
        for index in 1..4 {
            vm.cpu_on(vcpu(index)).unwrap();
        }
        assert!(vm.claim_start_now(vcpu(1)));
        assert!(vm.claim_start_now(vcpu(2)));
        // vCPU 3 is pending: it is dropped, not asked.
        assert_eq!(
            vm.stop(Outcome::Fault, Some(vcpu(2))),
            StopOrder::Stop(set(&[0, 1]))
        );
        assert_eq!(vm.power(vcpu(3)), Some(VcpuPower::Off));
        assert!(!vm.claim_start_now(vcpu(3)), "its start request is stale");
        // A second fault while stopping keeps the first outcome.
        assert_eq!(
            vm.stop(Outcome::ExitStatus(3), Some(vcpu(1))),
            StopOrder::AlreadyStopping
        );
        assert_eq!(vm.park(vcpu(2)), Parked::VmGoesOn);
        assert_eq!(vm.park(vcpu(0)), Parked::VmGoesOn);
        assert!(!vm.has_ended(), "vCPU 1 is still in the guest");
        assert_eq!(vm.park(vcpu(1)), Parked::VmEnded(Outcome::Fault));
        // Parks after the end change nothing.
        assert_eq!(vm.park(vcpu(1)), Parked::VmGoesOn);
    }

    #[test]
    fn a_stop_from_another_cpu_asks_every_vcpu() {
        let mut vm = running(3);
        vm.cpu_on(vcpu(2)).unwrap();
        assert!(vm.claim_start_now(vcpu(2)));
        assert_eq!(vm.stop(Outcome::Clean, None), StopOrder::Stop(set(&[0, 2])));
        assert_eq!(vm.park(vcpu(2)), Parked::VmGoesOn);
        assert_eq!(vm.park(vcpu(0)), Parked::VmEnded(Outcome::Clean));
    }

    #[test]
    fn a_waiting_start_stays_pending_until_claimed_or_stopped() {
        let mut vm = VmLifecycle::new(2);
        let generation = vm.start().unwrap();
        assert!(vm.is_start_pending(vcpu(0), generation));
        assert!(!vm.is_start_pending(vcpu(1), generation), "never asked for");
        assert!(!vm.is_start_pending(vcpu(0), generation + 1), "another run");
        assert!(vm.claim_start(vcpu(0), generation));
        assert!(!vm.is_start_pending(vcpu(0), generation), "on now");

        // Stopped while its first start waited: nothing is pending.
        let mut vm = VmLifecycle::new(1);
        let generation = vm.start().unwrap();
        assert_eq!(
            vm.stop(Outcome::Fault, None),
            StopOrder::Ended(Outcome::Fault)
        );
        assert!(!vm.is_start_pending(vcpu(0), generation));
        assert!(!vm.claim_start(vcpu(0), generation));
    }

    #[test]
    fn a_stop_with_no_vcpu_running_ends_the_vm_at_once() {
        let mut vm = VmLifecycle::new(2);
        vm.start().unwrap();
        assert_eq!(
            vm.stop(Outcome::Fault, None),
            StopOrder::Ended(Outcome::Fault)
        );
        assert!(vm.has_ended());
    }

    #[test]
    fn system_reset_racing_cpu_on_and_a_second_reset() {
        let mut vm = running(3);
        vm.cpu_on(vcpu(1)).unwrap();
        assert!(vm.claim_start_now(vcpu(1)));
        vm.cpu_on(vcpu(2)).unwrap();
        // vCPU 0 resets while 1 runs and 2 is pending.
        assert_eq!(vm.begin_reset(vcpu(0)), Some(set(&[1])));
        assert_eq!(vm.reset_count(), 1);
        assert!(!vm.claim_start_now(vcpu(2)), "the pending start is dropped");
        // vCPU 1, not yet stopped, tries CPU_ON and SYSTEM_RESET: refused.
        assert_eq!(vm.cpu_on(vcpu(2)), Err(CpuOnRefused::Denied));
        assert_eq!(vm.begin_reset(vcpu(1)), None);
        assert!(vm.any_vcpu_on());
        assert_eq!(vm.park(vcpu(1)), Parked::VmGoesOn, "a reset is no end");
        assert!(!vm.any_vcpu_on());
        assert_eq!(vm.finish_reset(), Some(1));
        assert_eq!(vm.power(vcpu(0)), Some(VcpuPower::OnPending));
        assert!(!vm.claim_start(vcpu(0), 0), "a start from before the reset");
        assert!(vm.claim_start(vcpu(0), 1));
        assert_eq!(vm.cpu_on(vcpu(1)), Ok(1), "running again");
    }

    #[test]
    fn a_stop_overtakes_a_reset_in_progress() {
        let mut vm = running(2);
        vm.cpu_on(vcpu(1)).unwrap();
        assert!(vm.claim_start_now(vcpu(1)));
        assert_eq!(vm.begin_reset(vcpu(0)), Some(set(&[1])));
        // vCPU 1 faults before it saw the stop request.
        assert_eq!(
            vm.stop(Outcome::Fault, Some(vcpu(1))),
            StopOrder::Stop(VcpuSet::EMPTY)
        );
        assert_eq!(vm.park(vcpu(1)), Parked::VmEnded(Outcome::Fault));
        assert_eq!(vm.finish_reset(), None, "the VM stays stopped");
        assert!(!vm.claim_start_now(vcpu(0)));
    }

    #[test]
    fn the_verdict_comes_with_the_last_vm_and_counts_failures() {
        let verdict = SystemVerdict::new();
        verdict.begin(3);
        assert_eq!(verdict.vm_ended(Outcome::Clean), None);
        assert_eq!(verdict.vm_ended(Outcome::ExitStatus(2)), None);
        let last = verdict.vm_ended(Outcome::Clean).unwrap();
        assert_eq!(
            last,
            Verdict {
                total: 3,
                failed: 1
            }
        );
        assert_eq!(last.status(), 1);
        // An end past the last is not a second verdict.
        assert_eq!(verdict.vm_ended(Outcome::Clean), None);
        let clean = SystemVerdict::new();
        clean.begin(1);
        assert_eq!(clean.vm_ended(Outcome::Clean).map(Verdict::status), Some(0));
    }

    #[test]
    fn vms_ending_on_many_cpus_give_exactly_one_verdict() {
        let verdict = std::sync::Arc::new(SystemVerdict::new());
        verdict.begin(64);
        let handles: Vec<_> = (0..8)
            .map(|thread| {
                let verdict = verdict.clone();
                std::thread::spawn(move || {
                    (0..8)
                        .filter_map(|vm| {
                            let outcome = if (thread + vm) % 5 == 0 {
                                Outcome::Fault
                            } else {
                                Outcome::Clean
                            };
                            verdict.vm_ended(outcome)
                        })
                        .count()
                })
            })
            .collect();
        let verdicts: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(verdicts, 1);
    }
}
