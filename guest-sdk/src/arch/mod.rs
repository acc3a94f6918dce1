//! Everything that touches the processor: HVC, system registers, the UART's
//! registers, the probe accessors, stage-1 translation and the accesses the
//! compiler does not emit. The real thing on bare-metal aarch64; on
//! any other target a stand-in that never touches hardware, so the portable
//! code and the examples build (and the portable code tests) on the host.

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod aarch64;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub use aarch64::*;

#[cfg(not(all(target_arch = "aarch64", target_os = "none")))]
mod fake;
#[cfg(not(all(target_arch = "aarch64", target_os = "none")))]
pub use fake::*;

/// The PL011 the guest interface promises at this address (and QEMU `virt`
/// has natively).
pub const UART_BASE: usize = 0x0900_0000;

/// The EL1 translation registers a vCPU loads to turn its MMU on: what the
/// first vCPU chose, published for the others (see `crate::mmu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TranslationRegisters {
    pub mair: u64,
    pub tcr: u64,
    pub ttbr0: u64,
    /// The SCTLR_EL1 bits to set (M, C, I); never 0.
    pub sctlr_set: u64,
}

/// The SCTLR_EL1 bits a vCPU clears as it turns its MMU on: A (alignment
/// checks, so unaligned accesses to Normal memory work) and WXN (RAM is
/// writable and executable).
pub const SCTLR_CLEAR_ON_ENABLE: [u64; 2] = [1 << 1, 1 << 19];

/// What a probe accessor leaves behind: the value read (0 for writes and
/// aborted reads) and, when the access aborted, the syndrome and address.
///
/// The layout is shared with the assembly in `aarch64.rs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeOutcome {
    pub value: u64,
    /// ESR_EL1 of the abort; 0 when the access completed (a real syndrome
    /// is never 0: its exception class is not 0).
    pub esr: u64,
    /// FAR_EL1 of the abort.
    pub far: u64,
}

/// The addresses of the probe accessors' loads and stores (64, 32 and 8 bits):
/// the exception handler recovers only from aborts of these instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeSites {
    pub read: u64,
    pub write: u64,
    pub read32: u64,
    pub write32: u64,
    pub write8: u64,
    pub load_exclusive: u64,
    pub atomic_add: u64,
}

impl ProbeSites {
    /// Whether `address` is one of the probe accesses.
    pub const fn contains(&self, address: u64) -> bool {
        address == self.read
            || address == self.write
            || address == self.read32
            || address == self.write32
            || address == self.write8
            || address == self.load_exclusive
            || address == self.atomic_add
    }
}

/// In an aborted probe, the exception handler puts ESR_EL1 in this
/// register of the interrupted context...
pub const PROBE_ESR_REGISTER: usize = 2;
/// ...and FAR_EL1 in this one, then resumes after the access.
pub const PROBE_FAR_REGISTER: usize = 3;
