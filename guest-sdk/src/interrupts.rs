//! Masking and unmasking IRQs on the calling vCPU (PSTATE.I, in DAIF).
//!
//! Every vCPU starts with IRQs masked. The GIC's own priority mask is
//! [`crate::gic::set_priority_mask`].

use crate::arch;

/// DAIF.I.
const DAIF_IRQ: u64 = 1 << 7;

/// Lets IRQs in: from here on a pending interrupt is taken.
pub fn enable() {
    arch::irq_unmask();
}

/// Masks IRQs: interrupts stay pending in the GIC until [`enable`].
pub fn disable() {
    arch::irq_mask();
}

/// Whether IRQs are unmasked on this vCPU.
#[must_use]
pub fn are_enabled() -> bool {
    arch::daif() & DAIF_IRQ == 0
}

/// Runs `f` with IRQs masked, then restores the mask as it was.
pub fn without<R>(f: impl FnOnce() -> R) -> R {
    let were_enabled = are_enabled();
    disable();
    let result = f();
    if were_enabled {
        enable();
    }
    result
}

/// Waits for an interrupt (WFI). Returns at once if one is pending; with
/// IRQs masked it returns without taking it.
pub fn wait() {
    arch::wait_for_interrupt();
}
