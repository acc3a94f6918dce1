//! Physical interrupts taken at EL2: one dispatcher acknowledges each and
//! hands it to its owner — the EL2 tick (`interrupts::timer`), the request
//! and doorbell SGIs (whose requests and doorbell the caller takes
//! afterwards, see `vm`), the vGIC's maintenance interrupt, and the
//! physical interrupts linked to a guest's (its timers and PMU;
//! `interrupts::guest`). No lock is held while an owner runs, so an owner
//! may send SGIs, log or take the console.

use crate::interrupts::guest;
use crate::{boot::board::BOARD, console, interrupts::gic, interrupts::timer};

/// Who an interrupt belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    HypervisorTimer,
    Request,
    Doorbell,
    VgicMaintenance,
    /// Linked to the running vCPU's interrupt of the same number, or this
    /// core's PMU SPI, linked to its PMU PPI.
    Guest,
    /// A passed-through device's SPI, linked to its VM's.
    Passthrough(tessera_hypervisor::vm::ids::VmId),
    Unexpected(u32),
}

#[inline(always)]
fn owner(intid: u32) -> Owner {
    // A guest's timer first: the most frequent, and the one whose latency
    // is measured (`vtimer.irq_latency`).
    if guest::is_linked(intid) {
        Owner::Guest
    } else if intid == BOARD.timer_interrupts.hypervisor_physical {
        Owner::HypervisorTimer
    } else if intid == gic::REQUEST_SGI {
        Owner::Request
    } else if intid == gic::DOORBELL_SGI {
        Owner::Doorbell
    } else if intid == BOARD.gic_maintenance_interrupt {
        Owner::VgicMaintenance
    } else if Some(intid) == guest::pmu_spi_of_this_cpu() {
        Owner::Guest
    } else if let Some(vm) = guest::passthrough_owner(intid) {
        Owner::Passthrough(vm)
    } else {
        Owner::Unexpected(intid)
    }
}

/// Takes the highest-priority pending interrupt, if any, and hands it to
/// its owner.
pub fn handle_irq() {
    let Some(interrupt) = gic::acknowledge() else {
        return;
    };
    handle_acknowledged(interrupt);
}

/// Hands an acknowledged interrupt to its owner (a spurious one is
/// dropped).
pub fn handle_acknowledged(interrupt: gic::Interrupt) {
    if interrupt.is_spurious() {
        return;
    }
    match owner(interrupt.id()) {
        Owner::HypervisorTimer => {
            // Re-armed before the end, so the level-sensitive timer line is
            // low again and is not taken twice.
            timer::tick();
            gic::end(interrupt);
            // Queued console output moves on at least every tick, even
            // when no VM prints; a UART that showed its FIFO full then owes
            // its guest a transmit interrupt.
            console::try_drain();
            crate::devices::console_drained();
        }
        // A request or a doorbell: the caller takes this CPU's requests
        // and doorbell after this.
        Owner::Request | Owner::Doorbell => gic::end(interrupt),
        Owner::VgicMaintenance => guest::maintenance(interrupt),
        Owner::Guest => guest::linked_interrupt(interrupt),
        Owner::Passthrough(vm) => guest::passthrough_interrupt(interrupt, vm),
        Owner::Unexpected(intid) => {
            gic::end(interrupt);
            log::debug!("unexpected interrupt {intid}");
        }
    }
}
