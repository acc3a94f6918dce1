//! Masking and unmasking IRQs on the calling vCPU (PSTATE.I, in DAIF).
//!
//! Every vCPU starts with IRQs masked. The GIC's own priority mask is
//! [`crate::gic::set_priority_mask`].

use crate::arch;

/// DAIF.I.
const DAIF_IRQ: u64 = 1 << 7;

/// Lets IRQs in: from here on a pending interrupt is taken.
///
/// Not inside an interrupt handler: the SDK runs handlers with IRQs masked
/// and does not nest them (the lazy FP/SIMD save relies on it), so a
/// handler that calls this is stopped with a report.
pub fn enable() {
    if arch::in_irq_handler() {
        panic!("interrupts::enable inside an interrupt handler (handlers do not nest)");
    }
    arch::irq_unmask();
}

/// How many times the interrupted code's FP/SIMD state was saved because
/// an interrupt handler used FP/SIMD (or took a synchronous exception);
/// handlers that do neither never save it.
#[must_use]
pub fn fp_state_saves() -> u64 {
    #[cfg(all(target_arch = "aarch64", target_os = "none"))]
    {
        crate::rt::FP_STATE_SAVES.load(core::sync::atomic::Ordering::Relaxed)
    }
    #[cfg(not(all(target_arch = "aarch64", target_os = "none")))]
    {
        0
    }
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
