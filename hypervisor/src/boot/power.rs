//! Ending the run: PSCI SYSTEM_OFF where the board has it, semihosting exit
//! in test builds (so that the status reaches the host), parked CPUs
//! otherwise.

use crate::{arch, console};

/// PSCI function identifiers, for the calls the hypervisor makes itself.
pub use tessera_hypervisor::vm::psci::function as psci;

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
/// from the crash path, so it does not take the console lock.
pub fn fail_stop() -> ! {
    #[cfg(feature = "semihosting")]
    arch::semihosting_exit(1);
    // Without semihosting there is no channel for a status: the crash report
    // on the console is the record, and this CPU stops.
    #[cfg(not(feature = "semihosting"))]
    arch::halt()
}
