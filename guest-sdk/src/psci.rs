//! PSCI over HVC, as a guest uses it (Arm DEN 0022, "Arm Power State
//! Coordination Interface"): the function identifiers, the return codes and
//! the calls.
//!
//! Natively on QEMU `virt` at EL1 (no EL2), QEMU's own PSCI also answers
//! `hvc`, so the guests run there unchanged.

use core::fmt;

use crate::arch;
use crate::cpu;

/// The function identifiers (shared with the hypervisor). The SDK makes
/// the SMC64 form of the calls that take addresses or MPIDRs.
pub use tessera_arm_defs::psci::function;
use tessera_arm_defs::psci::status;

/// PSCI return codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum PsciError {
    NotSupported = status::NOT_SUPPORTED as i32,
    InvalidParameters = status::INVALID_PARAMETERS as i32,
    Denied = status::DENIED as i32,
    AlreadyOn = status::ALREADY_ON as i32,
    OnPending = status::ON_PENDING as i32,
    InternalFailure = status::INTERNAL_FAILURE as i32,
    NotPresent = status::NOT_PRESENT as i32,
    Disabled = status::DISABLED as i32,
    InvalidAddress = status::INVALID_ADDRESS as i32,
}

impl PsciError {
    /// Maps a negative return value to its error; `None` for success values.
    #[must_use]
    pub const fn from_return(value: i64) -> Option<Self> {
        match value {
            status::NOT_SUPPORTED => Some(Self::NotSupported),
            status::INVALID_PARAMETERS => Some(Self::InvalidParameters),
            status::DENIED => Some(Self::Denied),
            status::ALREADY_ON => Some(Self::AlreadyOn),
            status::ON_PENDING => Some(Self::OnPending),
            status::INTERNAL_FAILURE => Some(Self::InternalFailure),
            status::NOT_PRESENT => Some(Self::NotPresent),
            status::DISABLED => Some(Self::Disabled),
            status::INVALID_ADDRESS => Some(Self::InvalidAddress),
            _ => None,
        }
    }
}

/// The names DEN 0022 uses, e.g. `NOT_SUPPORTED`.
impl fmt::Display for PsciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotSupported => "NOT_SUPPORTED",
            Self::InvalidParameters => "INVALID_PARAMETERS",
            Self::Denied => "DENIED",
            Self::AlreadyOn => "ALREADY_ON",
            Self::OnPending => "ON_PENDING",
            Self::InternalFailure => "INTERNAL_FAILURE",
            Self::NotPresent => "NOT_PRESENT",
            Self::Disabled => "DISABLED",
            Self::InvalidAddress => "INVALID_ADDRESS",
        })
    }
}

/// A PSCI version (VERSION's reply: major in bits 31:16, minor in 15:0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u16,
    pub minor: u16,
}

impl Version {
    #[must_use]
    pub const fn from_register(value: u32) -> Self {
        Self {
            major: (value >> 16) as u16,
            minor: value as u16,
        }
    }
}

/// `1.1`
impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// AFFINITY_INFO's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AffinityState {
    On = 0,
    Off = 1,
    OnPending = 2,
}

/// Decodes a PSCI reply: PSCI results are 32-bit signed values in w0
/// (implementations sign-extend them to x0, or leave the top half alone).
/// Negative values are errors, others are handed back.
///
/// # Errors
/// The error code, or `InternalFailure` for a negative value PSCI does not
/// define.
pub const fn decode_return(register: u64) -> Result<u32, PsciError> {
    let value = register as u32 as i32;
    if value >= 0 {
        return Ok(value as u32);
    }
    match PsciError::from_return(value as i64) {
        Some(error) => Err(error),
        None => Err(PsciError::InternalFailure),
    }
}

fn call(function: u32, arg1: u64, arg2: u64, arg3: u64) -> Result<u32, PsciError> {
    decode_return(arch::hvc(function, arg1, arg2, arg3))
}

/// PSCI_VERSION.
#[must_use]
pub fn version() -> Version {
    Version::from_register(arch::hvc(function::PSCI_VERSION, 0, 0, 0) as u32)
}

/// PSCI_FEATURES: whether `function_id` is implemented, and its feature
/// flags (0 for most functions).
///
/// # Errors
/// `NotSupported` when it is not implemented.
pub fn features(function_id: u32) -> Result<u32, PsciError> {
    call(function::PSCI_FEATURES, u64::from(function_id), 0, 0)
}

/// MIGRATE_INFO_TYPE (2: no Trusted OS that would need migrating).
///
/// # Errors
/// As the implementation reports.
pub fn migrate_info_type() -> Result<u32, PsciError> {
    call(function::MIGRATE_INFO_TYPE, 0, 0, 0)
}

/// CPU_ON: starts the vCPU whose MPIDR affinity is `target_mpidr`, which
/// runs `entry(argument)` on its own stack with the SDK's vectors installed.
///
/// The target must have an affinity-0 value below [`cpu::MAX_VCPUS`] (its
/// stack is picked by it); under Tessera vCPU n has MPIDR affinity n.
///
/// # Errors
/// `InvalidParameters` for a target this SDK has no stack for; `OnPending`
/// while an earlier start of the same vCPU has not been picked up;
/// otherwise what CPU_ON returned (`AlreadyOn`, `InvalidParameters` for a
/// vCPU the VM does not have, ...).
pub fn cpu_on(target_mpidr: u64, entry: fn(usize) -> !, argument: usize) -> Result<(), PsciError> {
    cpu_on_with(
        target_mpidr,
        cpu::Start {
            entry,
            argument,
            init_interrupts: false,
        },
    )
}

/// CPU_ON with the whole start record (see [`cpu_on`]).
pub(crate) fn cpu_on_with(target_mpidr: u64, start: cpu::Start) -> Result<(), PsciError> {
    let index = cpu::index_of(target_mpidr).ok_or(PsciError::InvalidParameters)?;
    if !cpu::post_start(index, start) {
        return Err(PsciError::OnPending);
    }
    let result = call(
        function::CPU_ON_64,
        target_mpidr,
        arch::secondary_entry_address(),
        index as u64,
    );
    if result.is_err() {
        cpu::withdraw_start(index);
    }
    result.map(|_| ())
}

/// CPU_OFF: stops the calling vCPU. Should the call fail (PSCI refuses to
/// turn off the last vCPU of a system, for one), the failure is reported and
/// the VM stops with [`crate::exit_status::PSCI_FAILED`].
pub fn cpu_off() -> ! {
    match call(function::CPU_OFF, 0, 0, 0) {
        Ok(value) => crate::println!("psci: CPU_OFF returned {value:#x}"),
        Err(error) => crate::println!("psci: CPU_OFF failed: {error}"),
    }
    crate::exit(crate::exit_status::PSCI_FAILED)
}

/// AFFINITY_INFO for one vCPU (lowest affinity level 0).
///
/// # Errors
/// `InvalidParameters` for a vCPU the VM does not have.
pub fn affinity_info(target_mpidr: u64) -> Result<AffinityState, PsciError> {
    match call(function::AFFINITY_INFO_64, target_mpidr, 0, 0)? {
        0 => Ok(AffinityState::On),
        1 => Ok(AffinityState::Off),
        2 => Ok(AffinityState::OnPending),
        _ => Err(PsciError::InternalFailure),
    }
}

/// SYSTEM_OFF: stops the VM (under Tessera only this VM; natively QEMU).
/// Never returns; if the call does, this vCPU parks.
pub fn system_off() -> ! {
    let _ = arch::hvc(function::SYSTEM_OFF, 0, 0, 0);
    arch::park()
}

/// SYSTEM_RESET: restarts the VM from its pristine image (natively QEMU
/// restarts the machine). Never returns; if the call does, this vCPU parks.
pub fn system_reset() -> ! {
    let _ = arch::hvc(function::SYSTEM_RESET, 0, 0, 0);
    arch::park()
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    #[test]
    fn return_codes_map_both_ways() {
        for error in [
            PsciError::NotSupported,
            PsciError::AlreadyOn,
            PsciError::InvalidAddress,
        ] {
            assert_eq!(PsciError::from_return(error as i64), Some(error));
        }
        assert_eq!(PsciError::from_return(0), None);
    }

    #[test]
    fn replies_decode_from_either_register_width() {
        assert_eq!(decode_return(0), Ok(0));
        assert_eq!(decode_return(2), Ok(2));
        // Sign-extended to 64 bits (Tessera, QEMU) or only in w0.
        assert_eq!(decode_return(-4_i64 as u64), Err(PsciError::AlreadyOn));
        assert_eq!(decode_return(0xFFFF_FFFC), Err(PsciError::AlreadyOn));
        assert_eq!(decode_return(-1_i64 as u64), Err(PsciError::NotSupported));
        assert_eq!(
            decode_return(-42_i64 as u64),
            Err(PsciError::InternalFailure)
        );
    }

    #[test]
    fn versions_read_and_print() {
        let version = Version::from_register(0x1_0001);
        assert_eq!(version, Version { major: 1, minor: 1 });
        assert_eq!(std::format!("{version}"), "1.1");
        assert_eq!(std::format!("{}", PsciError::NotSupported), "NOT_SUPPORTED");
    }
}
