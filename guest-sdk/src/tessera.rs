//! Tessera's own hypercalls (SMCCC vendor-specific hypervisor range, owner
//! 6; docs/guest-interface.md) and how a guest ends.

use crate::arch;
use crate::psci::{self, PsciError};
use tessera_arm_defs::psci::function;

/// Bits of [`test_vcpu_traps`].
pub mod vcpu_trap {
    /// Writes to the virtual-memory control registers trap (HCR_EL2.TVM):
    /// the hypervisor is following set/way cache maintenance.
    pub const VIRTUAL_MEMORY_REGISTERS: u64 = 1 << 0;
}

/// The exit statuses the SDK itself uses. Guests use 0 for success and
/// [`FAILURE`](exit_status::FAILURE) (or any other non-zero value) for a
/// failed check.
pub mod exit_status {
    pub const SUCCESS: u32 = 0;
    /// A guest's own check failed.
    pub const FAILURE: u32 = 1;
    /// An exception the runtime does not recover from (reported first).
    pub const UNEXPECTED_EXCEPTION: u32 = 0xE1;
    /// A Rust panic (reported first).
    pub const PANIC: u32 = 0xE2;
    /// A PSCI call that must not fail did (CPU_OFF).
    pub const PSCI_FAILED: u32 = 0xE3;
    /// A secondary vCPU started without a start record from `cpu_on`.
    pub const BAD_SECONDARY_START: u32 = 0xE4;
    /// The image was loaded somewhere other than its link address; the entry
    /// code stops before running any Rust (it cannot print either).
    pub const WRONG_LOAD_ADDRESS: u32 = 0xE5;
    /// A secondary vCPU started by `smp::start` could not set up its GIC
    /// interface (reported first).
    pub const GIC_SETUP_FAILED: u32 = 0xE6;
}

/// TESSERA_VM_EXIT: stops this VM with `status` (non-zero marks it failed).
/// Returns only where the call is not supported (not under Tessera), with
/// the error.
pub fn try_vm_exit(status: u32) -> PsciError {
    let result = arch::hvc(function::TESSERA_VM_EXIT, u64::from(status), 0, 0);
    decode_count(result)
        .err()
        .unwrap_or(PsciError::InternalFailure)
}

/// TESSERA_VM_EXIT, falling back to PSCI SYSTEM_OFF where the call is not
/// supported, so that the VM stops either way.
pub fn vm_exit(status: u32) -> ! {
    let _ = try_vm_exit(status);
    psci::system_off()
}

/// TESSERA_RESET_COUNT: how often this VM has been restarted by
/// SYSTEM_RESET.
///
/// # Errors
/// `NotSupported` when not running under Tessera.
pub fn reset_count() -> Result<u64, PsciError> {
    decode_count(arch::hvc(function::TESSERA_RESET_COUNT, 0, 0, 0))
}

/// TESSERA_TEST_VCPU_TRAPS: which optional traps ([`vcpu_trap`]) are on
/// for this vCPU. Only Tessera's test images answer it.
///
/// # Errors
/// `NotSupported` in a production image or when not running under Tessera.
pub fn test_vcpu_traps() -> Result<u64, PsciError> {
    decode_count(arch::hvc(function::TESSERA_TEST_VCPU_TRAPS, 0, 0, 0))
}

/// TESSERA_TEST_RAISE_PMU_SPI: the hypervisor sets this vCPU's CPU's PMU
/// overflow SPI pending, as the BCM2711 raises it, and returns its INTID;
/// the guest then takes its PMU interrupt (PPI 23). Only Tessera's test
/// images on a board with such SPIs answer it.
///
/// # Errors
/// `NotSupported` on any other board or image, or when not running under
/// Tessera.
pub fn test_raise_pmu_spi() -> Result<u64, PsciError> {
    decode_count(arch::hvc(function::TESSERA_TEST_RAISE_PMU_SPI, 0, 0, 0))
}

/// TESSERA_BENCH_EXIT_COUNT: the guest exits to EL2 taken so far on this
/// vCPU's physical CPU, this call's own included. Only Tessera's benchmark
/// images (the `exit-counting` feature) answer it.
///
/// # Errors
/// `NotSupported` in any other image or when not running under Tessera.
pub fn bench_exit_count() -> Result<u64, PsciError> {
    decode_count(arch::hvc(function::TESSERA_BENCH_EXIT_COUNT, 0, 0, 0))
}

/// Ends the VM: status 0 through PSCI SYSTEM_OFF, anything else through
/// TESSERA_VM_EXIT (natively, where that call does not exist, through
/// SYSTEM_OFF as well: the run ends, but the status is lost).
pub fn exit(status: u32) -> ! {
    if status == exit_status::SUCCESS {
        psci::system_off()
    } else {
        vm_exit(status)
    }
}

/// A 64-bit result, or a PSCI-style error (a negative value).
const fn decode_count(register: u64) -> Result<u64, PsciError> {
    let value = register as i64;
    if value >= 0 {
        return Ok(register);
    }
    match PsciError::from_return(value) {
        Some(error) => Err(error),
        None => Err(PsciError::InternalFailure),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_errors_decode() {
        assert_eq!(decode_count(0), Ok(0));
        assert_eq!(decode_count(3), Ok(3));
        assert_eq!(decode_count(-1_i64 as u64), Err(PsciError::NotSupported));
        assert_eq!(
            decode_count(-100_i64 as u64),
            Err(PsciError::InternalFailure)
        );
    }

    #[test]
    fn on_the_host_nothing_is_supported() {
        // The host stand-in answers like a machine without Tessera.
        assert_eq!(reset_count(), Err(PsciError::NotSupported));
        assert_eq!(bench_exit_count(), Err(PsciError::NotSupported));
        assert_eq!(try_vm_exit(1), PsciError::NotSupported);
    }
}
