//! What EL2 does with an exception: IRQs go to the interrupt handler, guest
//! exits to the VM layer; anything else (an exception taken at EL2 itself,
//! an SError or FIQ) is a hypervisor bug or a machine fault and ends the run
//! with a crash report.

use tessera_hypervisor::traps::crash_report::{TrapFrame, VectorKind, write_crash_report};
use tessera_hypervisor::traps::exception_syndrome::ExceptionSyndrome;
use tessera_hypervisor::traps::guest_exit::{self, CallerSavedFrame};

use crate::arch::guest;
use crate::{arch, boot::board::BOARD, boot::power, console, devices, interrupts, vm};

/// Vector slots: groups of four (sync, IRQ, FIQ, SError) for current EL with
/// SP_EL0, current EL with SP_ELx, lower EL AArch64, lower EL AArch32.
const CURRENT_EL_SPX_IRQ: u64 = 5;
// Slots 8 and 9 (synchronous and IRQ, lower EL AArch64) have their own
// entry paths in `arch::vectors` and never reach `handle_exception`.
const LOWER_EL_IRQ: u64 = 9;
const LOWER_EL_FIQ: u64 = 10;
const LOWER_EL_SERROR: u64 = 11;
const AARCH32_LOWER_EL_SYNCHRONOUS: u64 = 12;
const AARCH32_LOWER_EL_IRQ: u64 = 13;
const AARCH32_LOWER_EL_FIQ: u64 = 14;
const AARCH32_LOWER_EL_SERROR: u64 = 15;

/// Step one of a synchronous exit from an AArch64 guest (slot 8; see
/// `arch::vectors`): carries out a device access, the most frequent exit by
/// far, and returns true; returns false, having changed nothing, for any
/// other exit, which then goes to [`handle_guest_synchronous`].
///
/// Only x0..x18 and x30 are saved here, which is all `CallerSavedFrame`
/// lets this code see: an access through x19..x29 is left to the full
/// path, where they are. `syndrome` and `fault_address` are the exit's
/// ESR_EL2 and FAR_EL2.
pub extern "C" fn handle_device_access(
    frame: &mut CallerSavedFrame,
    syndrome: u64,
    fault_address: u64,
) -> bool {
    if let Some(access) = guest_exit::decode_emulated_mmio(
        ExceptionSyndrome(syndrome),
        fault_address,
        guest::faulting_guest_page(),
    ) && let Some(vm) = vm::running_vm()
    {
        // The device's answer is the last thing done here, so it is a
        // tail call with no frame of this function's own; the vector's
        // fast return steps the guest past the instruction when it is
        // true. No stop-request check: every stop request comes with an
        // SGI to this CPU, which routed to EL2 (HCR_EL2.IMO) is taken as
        // soon as the guest resumes, and the interrupt exit honours it.
        return devices::emulate(vm, &mut frame.access(), &access);
    }
    false
}

/// What slot 9's fast path passes when it acknowledged nothing (a value no
/// IAR read returns: INTIDs are at most 24 bits).
pub const NO_INTERRUPT_ACKNOWLEDGED: u64 = u64::MAX;

/// An IRQ while an AArch64 guest ran (slot 9), with only the caller-saved
/// registers saved (see `arch::vectors`), when the assembly fast path did
/// not take it. `acknowledged` is the IAR value the fast path already read
/// (GICv3), or `NO_INTERRUPT_ACKNOWLEDGED`.
pub extern "C" fn handle_guest_irq(acknowledged: u64) {
    vm::handle_guest_interrupt(
        (acknowledged != NO_INTERRUPT_ACKNOWLEDGED).then_some(acknowledged as u32),
    );
}

/// Step two of a synchronous exit from a guest, with the whole frame
/// saved: every exit the device fast path did not take. One from AArch32
/// code at the guest's EL0 (SPSR_EL2.M[4]) stops its VM, as Tessera
/// emulates nothing for AArch32 (its instructions are not A64: a T32 one
/// may be 2 bytes long).
pub extern "C" fn handle_guest_synchronous(frame: &mut TrapFrame) {
    const AARCH32: u64 = 1 << 4;
    if frame.saved_state & AARCH32 != 0 {
        vm::handle_guest_aarch32_exit(frame);
    }
    vm::handle_guest_exit(frame);
}

/// Called by the vector stubs with the saved frame and the vector slot.
pub extern "C" fn handle_exception(frame: &mut TrapFrame, slot: u64) {
    match slot {
        CURRENT_EL_SPX_IRQ => return interrupts::handle_irq(),
        // Interrupts while a guest ran, whichever state it was in. (EL1 is
        // always AArch64, so exceptions from AArch32 code at the guest's EL0
        // come to the lower-EL AArch64 slots too: the vector is chosen by
        // the state of the EL just below EL2. Slot 8's paths look at
        // SPSR_EL2.M[4] for them; the AArch32 slots are only a backstop.)
        LOWER_EL_IRQ | LOWER_EL_FIQ | AARCH32_LOWER_EL_IRQ | AARCH32_LOWER_EL_FIQ => {
            return vm::handle_guest_interrupt(None);
        }
        // An asynchronous abort while a guest ran, such as a bus error from
        // one of its accesses: that guest's VM stops, the others go on.
        LOWER_EL_SERROR | AARCH32_LOWER_EL_SERROR => vm::handle_guest_serror(frame),
        AARCH32_LOWER_EL_SYNCHRONOUS => vm::handle_guest_aarch32_exit(frame),
        _ => {}
    }
    let kind = match slot % 4 {
        0 => VectorKind::Synchronous,
        1 => VectorKind::Irq,
        2 => VectorKind::Fiq,
        _ => VectorKind::SError,
    };
    crash(kind, frame)
}

/// Prints the crash report and stops the machine with a failure status.
fn crash(kind: VectorKind, frame: &TrapFrame) -> ! {
    let mut writer = console::emergency_writer(BOARD.console_uart.base as usize);
    let _ = write_crash_report(&mut writer, arch::cpu_index(), kind, frame);
    // Then what the guests had queued: often what explains the crash, but
    // the report comes first in case the queue is what broke.
    console::drain_for_crash(&writer);
    writer.flush();
    power::fail_stop()
}

/// A Rust panic in the hypervisor is a hypervisor bug: report and stop.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use core::fmt::Write;
    let mut writer = console::emergency_writer(BOARD.console_uart.base as usize);
    let _ = writeln!(
        writer,
        "\n==== PANIC on cpu {}: {info} ====",
        arch::cpu_index()
    );
    writer.flush();
    power::fail_stop()
}
