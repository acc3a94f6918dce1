//! The EL2 physical timer (CNTHP): a periodic tick on every CPU. For now it
//! proves that interrupts reach EL2 on each CPU, and wakes a CPU that
//! waits for a VM's delayed start ([`wake_by`]); it becomes the
//! scheduler's and watchdog's clock later.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use tessera_hypervisor::MAX_CPUS;

use crate::{arch, boot::board::BOARD, interrupts::gic};

/// Ticks per second.
pub const TICK_HZ: u64 = 100;

static TICKS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

/// The physical counter value each CPU's timer fires at next (0 until it
/// is first armed), so [`wake_by`] never puts a tick off. Only the CPU
/// itself touches its slot, with IRQs masked or from the tick's handler.
static NEXT_FIRE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

fn tick_interval() -> u64 {
    (arch::counter_frequency() / TICK_HZ).max(1)
}

/// Enables the tick on the calling CPU.
pub fn start_on_this_cpu() -> Result<(), gic::GicError> {
    let cpu = arch::cpu_index();
    // First, so that no early return leaves them merely zeroed.
    crate::interrupts::guest::disarm_fast_paths();
    gic::enable_private_interrupt(BOARD.timer_interrupts.hypervisor_physical, cpu)?;
    gic::enable_private_interrupt(gic::REQUEST_SGI, cpu)?;
    gic::enable_private_interrupt(gic::DOORBELL_SGI, cpu)?;
    gic::learn_cpu_target();
    // The vGIC's: its maintenance interrupt, and the physical interrupts
    // linked to the guest's (its timers, its PMU), taken here and passed
    // to the vCPU running on this CPU.
    gic::enable_private_interrupt(BOARD.gic_maintenance_interrupt, cpu)?;
    crate::interrupts::guest::enable_linked_on_this_cpu(cpu)?;
    crate::interrupts::virtual_interface::VirtualInterface::init_this_cpu();
    arm(tick_interval());
    Ok(())
}

/// Arms this CPU's timer `ticks` counter ticks from now.
fn arm(ticks: u64) {
    let now = arch::guest::physical_counter();
    NEXT_FIRE[arch::cpu_index()].store(now.saturating_add(ticks), Ordering::Relaxed);
    arch::start_hypervisor_timer(ticks);
}

/// Makes this CPU's timer fire when the physical counter reaches
/// `deadline`, if that is before its next tick (which then comes early,
/// and re-arms as any tick does); a later deadline is left to the ticks.
/// So a CPU that sleeps until `deadline` (a VM's delayed start) is woken
/// on time without polling, and never later than its tick. Call with
/// IRQs masked.
pub fn wake_by(deadline: u64) {
    let next = &NEXT_FIRE[arch::cpu_index()];
    let armed = next.load(Ordering::Relaxed);
    if armed != 0 && deadline >= armed {
        return;
    }
    // At most a tick away (so it fits the timer's 32-bit value, even on
    // a CPU whose tick was never armed); a deadline already passed fires
    // at once.
    let now = arch::guest::physical_counter();
    arm(deadline.saturating_sub(now).clamp(1, tick_interval()));
}

/// Ticks seen so far on `cpu`.
pub fn ticks(cpu: usize) -> u32 {
    TICKS[cpu].load(Ordering::Acquire)
}

/// The tick's interrupt (dispatched by `interrupts`): counts it and
/// re-arms the timer.
pub fn tick() {
    TICKS[arch::cpu_index()].fetch_add(1, Ordering::AcqRel);
    arm(tick_interval());
}
