//! Ending the run: PSCI SYSTEM_OFF where the board has it, semihosting exit
//! in test builds (so that the status reaches the host), parked CPUs
//! otherwise.
//!
//! Every way a run ends prints the final verdict first, a line of its own:
//! `tessera: power off, status N` (N = 0 when every part of the run
//! succeeded). Nothing after it changes the outcome, so a host that watches
//! the console (`tessera run`) may stop the machine once it has seen it:
//! that is how a run ends on a board whose CPUs can only park.

use crate::{arch, console};

/// PSCI function identifiers, for the calls the hypervisor makes itself.
pub use tessera_hypervisor::vm::psci::function as psci;

/// `power_off(1)`'s verdict line, for `fail_stop`, with the console's line
/// ending. It starts with a line ending too: on the crash path another
/// CPU's line may have been cut short, and the verdict only counts at the
/// start of a line.
const FAIL_STOP_VERDICT: &str = "\r\ntessera: power off, status 1\r\n";

/// Stops the machine. `status` 0 means every part of the run succeeded.
pub fn power_off(status: u32) -> ! {
    crate::println!("tessera: power off, status {status}");
    console::flush();
    #[cfg(feature = "semihosting")]
    arch::semihosting_exit(status);
    #[cfg(not(feature = "semihosting"))]
    {
        use tessera_platform::PowerOffMethod;
        if status == 0 && crate::boot::board::BOARD.power_off == PowerOffMethod::PsciSmc {
            arch::smc_call(psci::SYSTEM_OFF, 0, 0, 0);
        }
        // PSCI SYSTEM_OFF carries no status, so a failure cannot be reported
        // that way; and some boards have no power-off at all. Stop here,
        // with the record on the console.
        crate::println!("tessera: system halted");
        console::flush();
        arch::halt()
    }
}

/// Stops the machine after a fatal hypervisor error, with status 1. Used
/// from the crash path, so it does not take the console lock; and from
/// the refusals to start, before the image may run where it was linked, so
/// the verdict is written byte by byte with no formatting (as
/// `bring_up::early_message` does).
pub fn fail_stop() -> ! {
    let uart = console::emergency_writer(crate::boot::board::BOARD.console_uart.base as usize);
    for byte in FAIL_STOP_VERDICT.bytes() {
        uart.write_byte(byte);
    }
    uart.flush();
    #[cfg(feature = "semihosting")]
    arch::semihosting_exit(1);
    // Without semihosting there is no channel for a status: the crash report
    // on the console is the record, and this CPU stops.
    #[cfg(not(feature = "semihosting"))]
    arch::halt()
}
