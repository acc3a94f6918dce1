//! The EL2 physical timer (CNTHP): a periodic tick on every CPU. For now it
//! proves that interrupts reach EL2 on each CPU; it becomes the scheduler's
//! and watchdog's clock later.

use core::sync::atomic::{AtomicU32, Ordering};

use tessera_hypervisor::MAX_CPUS;

use crate::{arch, boot::board::BOARD, interrupts::gic};

/// Ticks per second.
pub const TICK_HZ: u64 = 100;

static TICKS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

fn tick_interval() -> u64 {
    (arch::counter_frequency() / TICK_HZ).max(1)
}

/// Enables the tick on the calling CPU.
pub fn start_on_this_cpu() -> Result<(), gic::GicError> {
    let cpu = arch::cpu_index();
    gic::enable_private_interrupt(BOARD.timer_interrupts.hypervisor_physical, cpu)?;
    gic::enable_private_interrupt(gic::REQUEST_SGI, cpu)?;
    // The vGIC's: its maintenance interrupt, and the PPIs linked to the
    // guest's (its timers, its PMU), taken here and passed to the vCPU
    // running on this CPU.
    gic::enable_private_interrupt(BOARD.gic_maintenance_interrupt, cpu)?;
    for intid in crate::interrupts::guest::linked_ppis() {
        gic::enable_private_interrupt(intid, cpu)?;
    }
    crate::interrupts::virtual_interface::VirtualInterface::init_this_cpu();
    gic::learn_cpu_target();
    arch::start_hypervisor_timer(tick_interval());
    Ok(())
}

/// Ticks seen so far on `cpu`.
pub fn ticks(cpu: usize) -> u32 {
    TICKS[cpu].load(Ordering::Acquire)
}

/// The tick's interrupt (dispatched by `interrupts`): counts it and
/// re-arms the timer.
pub fn tick() {
    TICKS[arch::cpu_index()].fetch_add(1, Ordering::AcqRel);
    arch::start_hypervisor_timer(tick_interval());
}
