//! The generic timers a guest owns at EL1: the virtual timer (CNTV_*,
//! compared with CNTVCT_EL0, PPI 27) and the EL1 physical timer (CNTP_*,
//! compared with CNTPCT_EL0, PPI 30). Both count at CNTFRQ_EL0.
//!
//! [`start_periodic`] and [`start_one_shot`] register the SDK's handler for
//! the timer's PPI, enable it in the GIC and arm the timer; the caller's
//! function then runs in interrupt context with a [`Tick`]. A periodic
//! timer is re-armed one period after the moment its interrupt is handled,
//! so two ticks are never less than a period apart (the rate is slightly
//! below 1/period, by the handling delay). Each vCPU has its own pair of
//! timers, and its own state here.
//!
//! Register fields: Arm ARM (DDI 0487) D24.10, "CNTV_CTL_EL0".

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::arch;
use crate::cpu::{self, MAX_VCPUS};
use crate::gic::{self, Config, GicError, Interrupt};

/// CNTx_CTL_EL0.ENABLE.
const CTL_ENABLE: u64 = 1 << 0;
/// CNTx_CTL_EL0.IMASK: the timer's output is masked.
const CTL_MASK: u64 = 1 << 1;
/// CNTx_CTL_EL0.ISTATUS: the condition (counter >= compare value) is met.
const CTL_STATUS: u64 = 1 << 2;

/// One of the two EL1 timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// CNTV_*: compares with the virtual counter.
    Virtual,
    /// CNTP_*: the EL1 physical timer, compares with the physical counter.
    Physical,
}

/// `virtual` / `physical`
impl core::fmt::Display for Timer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Virtual => "virtual",
            Self::Physical => "physical",
        })
    }
}

impl Timer {
    /// The timer's PPI.
    #[must_use]
    pub const fn intid(self) -> u32 {
        match self {
            Self::Virtual => gic::VIRTUAL_TIMER_INTID,
            Self::Physical => gic::PHYSICAL_TIMER_INTID,
        }
    }

    /// The timer for `intid`, if it is one of the two PPIs.
    #[must_use]
    pub const fn from_intid(intid: u32) -> Option<Self> {
        match intid {
            gic::VIRTUAL_TIMER_INTID => Some(Self::Virtual),
            gic::PHYSICAL_TIMER_INTID => Some(Self::Physical),
            _ => None,
        }
    }

    const fn slot(self) -> usize {
        match self {
            Self::Virtual => 0,
            Self::Physical => 1,
        }
    }

    /// The counter this timer compares with, now.
    #[must_use]
    pub fn now(self) -> u64 {
        match self {
            Self::Virtual => arch::counter(),
            Self::Physical => arch::physical_counter(),
        }
    }

    fn write_control(self, value: u64) {
        match self {
            Self::Virtual => arch::cntv_ctl_write(value),
            Self::Physical => arch::cntp_ctl_write(value),
        }
    }

    fn control(self) -> u64 {
        match self {
            Self::Virtual => arch::cntv_ctl_read(),
            Self::Physical => arch::cntp_ctl_read(),
        }
    }

    /// Arms the timer to fire when its counter reaches `deadline` (the
    /// compare value is written before the timer is enabled, so a stale one
    /// cannot fire in between).
    pub fn arm_at(self, deadline: u64) {
        match self {
            Self::Virtual => arch::cntv_cval_write(deadline),
            Self::Physical => arch::cntp_cval_write(deadline),
        }
        self.write_control(CTL_ENABLE);
    }

    /// Arms the timer `ticks` counter ticks from now.
    pub fn arm_after(self, ticks: u64) {
        self.arm_at(self.now().saturating_add(ticks));
    }

    /// Disables the timer: its interrupt line drops.
    pub fn stop(self) {
        self.write_control(0);
    }

    /// Enabled but with the output masked (IMASK): the condition is still
    /// tracked, the interrupt line stays low.
    pub fn mask(self) {
        self.write_control(CTL_ENABLE | CTL_MASK);
    }

    /// The compare value.
    #[must_use]
    pub fn deadline(self) -> u64 {
        match self {
            Self::Virtual => arch::cntv_cval_read(),
            Self::Physical => arch::cntp_cval_read(),
        }
    }

    /// Whether the timer is enabled and its condition met (ISTATUS).
    #[must_use]
    pub fn has_fired(self) -> bool {
        let control = self.control();
        control & CTL_ENABLE != 0 && control & CTL_STATUS != 0
    }
}

/// What a tick handler is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tick {
    pub timer: Timer,
    /// The vCPU that took it.
    pub vcpu: usize,
    /// 1 for the first tick since the timer was started.
    pub count: u64,
    /// The deadline that fired, in the timer's own counter.
    pub deadline: u64,
    /// The timer's counter when the SDK's handler began.
    pub now: u64,
    /// CNTVCT_EL0 at the same moment (equal to `now` for the virtual
    /// timer): one time base for comparing the two timers.
    pub virtual_now: u64,
}

/// What runs on each tick, in interrupt context.
pub type TickHandler = fn(Tick);

/// One timer of one vCPU. `period` 0 means one-shot.
struct Slot {
    period: AtomicU64,
    deadline: AtomicU64,
    count: AtomicU64,
    /// A `TickHandler` cast to usize; 0 = none.
    handler: AtomicUsize,
}

impl Slot {
    const fn new() -> Self {
        Self {
            period: AtomicU64::new(0),
            deadline: AtomicU64::new(0),
            count: AtomicU64::new(0),
            handler: AtomicUsize::new(0),
        }
    }
}

static SLOTS: [[Slot; 2]; MAX_VCPUS] = [const { [Slot::new(), Slot::new()] }; MAX_VCPUS];

fn slot(timer: Timer) -> Result<&'static Slot, GicError> {
    let index = cpu::index();
    SLOTS
        .get(index)
        .map(|slots| &slots[timer.slot()])
        .ok_or(GicError::InvalidVcpu(index))
}

/// Starts `timer` on this vCPU, firing every `period` counter ticks (at
/// least 1) and calling `on_tick` each time, with the timer's PPI at
/// `priority`.
///
/// # Errors
/// As [`gic::enable_interrupt`] (the GIC must be set up on this vCPU).
pub fn start_periodic(
    timer: Timer,
    period: u64,
    priority: u8,
    on_tick: TickHandler,
) -> Result<(), GicError> {
    start(timer, period.max(1), None, priority, on_tick)
}

/// Arms `timer` on this vCPU for one interrupt when its counter reaches
/// `deadline`, calling `on_expiry`; the timer is then stopped.
///
/// # Errors
/// As [`gic::enable_interrupt`].
pub fn start_one_shot(
    timer: Timer,
    deadline: u64,
    priority: u8,
    on_expiry: TickHandler,
) -> Result<(), GicError> {
    start(timer, 0, Some(deadline), priority, on_expiry)
}

fn start(
    timer: Timer,
    period: u64,
    deadline: Option<u64>,
    priority: u8,
    handler: TickHandler,
) -> Result<(), GicError> {
    let slot = slot(timer)?;
    timer.stop();
    slot.period.store(period, Ordering::Relaxed);
    slot.count.store(0, Ordering::Relaxed);
    slot.handler.store(handler as usize, Ordering::Release);
    gic::register_handler(timer.intid(), timer_interrupt)?;
    gic::enable_interrupt(timer.intid(), Config::priority(priority))?;
    let deadline = deadline.unwrap_or_else(|| timer.now().saturating_add(period));
    slot.deadline.store(deadline, Ordering::Release);
    timer.arm_at(deadline);
    Ok(())
}

/// Stops `timer` on this vCPU; its handler is not called again.
pub fn stop(timer: Timer) {
    timer.stop();
    if let Ok(slot) = slot(timer) {
        slot.handler.store(0, Ordering::Release);
    }
}

/// Ticks taken by `timer` on this vCPU since it was last started.
#[must_use]
pub fn ticks_taken(timer: Timer) -> u64 {
    slot(timer).map_or(0, |slot| slot.count.load(Ordering::Acquire))
}

/// The SDK's handler for both timer PPIs: re-arms (periodic) or stops
/// (one-shot) the timer — which drops its level interrupt before the EOI —
/// then calls the registered function.
fn timer_interrupt(interrupt: Interrupt) {
    let virtual_now = arch::counter();
    let Some(timer) = Timer::from_intid(interrupt.intid) else {
        return;
    };
    let now = timer.now();
    let Ok(slot) = slot(timer) else {
        timer.stop();
        return;
    };
    let deadline = slot.deadline.load(Ordering::Acquire);
    let period = slot.period.load(Ordering::Relaxed);
    if period == 0 {
        timer.stop();
    } else {
        let next = timer.now().saturating_add(period);
        slot.deadline.store(next, Ordering::Release);
        timer.arm_at(next);
    }
    let count = slot.count.fetch_add(1, Ordering::AcqRel) + 1;
    let raw = slot.handler.load(Ordering::Acquire);
    if raw == 0 {
        timer.stop();
        return;
    }
    // SAFETY: the only non-zero values stored in `handler` are
    // `TickHandler` function pointers cast to usize (`start`); a function
    // pointer has the size of a usize, so the cast back yields it again.
    let handler = unsafe { core::mem::transmute::<usize, TickHandler>(raw) };
    handler(Tick {
        timer,
        vcpu: cpu::index(),
        count,
        deadline,
        now,
        virtual_now,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_know_their_ppis() {
        assert_eq!(Timer::Virtual.intid(), 27);
        assert_eq!(Timer::Physical.intid(), 30);
        assert_eq!(Timer::from_intid(27), Some(Timer::Virtual));
        assert_eq!(Timer::from_intid(30), Some(Timer::Physical));
        assert_eq!(Timer::from_intid(26), None);
    }

    #[test]
    fn starting_needs_the_gic() {
        fn never(_: Tick) {}
        assert_eq!(
            start_periodic(Timer::Virtual, 1000, 0x80, never),
            Err(GicError::NotInitialized)
        );
        assert_eq!(ticks_taken(Timer::Physical), 0);
    }
}
