//! The numbers of the firmware interface between a guest and Tessera: PSCI
//! (Arm DEN 0022, "Arm Power State Coordination Interface"), the SMCCC
//! version calls (Arm DEN 0028, "SMC Calling Convention") and Tessera's own
//! calls in the SMCCC vendor-specific hypervisor range (owner 6;
//! docs/guest-interface.md).
//!
//! Only the numbers live here. The guest SDK makes the calls, the
//! hypervisor decides what they mean, and the host tool names CPU_ON and
//! CPU_OFF in every guest's device tree: all three read them from this one
//! place.

/// Function identifiers, as passed in w0. Bit 30 selects the SMC64/HVC64
/// calling convention (64-bit arguments); the `_32` forms take 32-bit ones.
pub mod function {
    pub const SMCCC_VERSION: u32 = 0x8000_0000;
    pub const SMCCC_ARCH_FEATURES: u32 = 0x8000_0001;

    pub const PSCI_VERSION: u32 = 0x8400_0000;
    pub const CPU_SUSPEND_32: u32 = 0x8400_0001;
    pub const CPU_SUSPEND_64: u32 = 0xC400_0001;
    pub const CPU_OFF: u32 = 0x8400_0002;
    pub const CPU_ON_32: u32 = 0x8400_0003;
    pub const CPU_ON_64: u32 = 0xC400_0003;
    pub const AFFINITY_INFO_32: u32 = 0x8400_0004;
    pub const AFFINITY_INFO_64: u32 = 0xC400_0004;
    pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
    pub const SYSTEM_RESET: u32 = 0x8400_0009;
    pub const PSCI_FEATURES: u32 = 0x8400_000A;

    /// Tessera: stops the VM with the status in w1 (0 = success); does not
    /// return.
    pub const TESSERA_VM_EXIT: u32 = 0x8600_0001;
    /// Tessera: how often this VM has been restarted by SYSTEM_RESET.
    pub const TESSERA_RESET_COUNT: u32 = 0x8600_0002;
    /// Tessera, test builds only (the hypervisor's `semihosting` feature):
    /// the optional traps in force on the calling vCPU, so end-to-end tests
    /// can see them. Production images answer NOT_SUPPORTED.
    pub const TESSERA_TEST_VCPU_TRAPS: u32 = 0x8600_0080;
    /// Tessera, benchmark builds only (the hypervisor's `exit-counting`
    /// feature): the guest exits to EL2 taken so far on the calling vCPU's
    /// physical CPU, this call included. Other images answer NOT_SUPPORTED.
    pub const TESSERA_BENCH_EXIT_COUNT: u32 = 0x8600_0081;
    /// Tessera, test builds only (`semihosting`): sets the calling vCPU's
    /// CPU's PMU overflow SPI pending in the physical distributor, as the
    /// BCM2711 raises it when a counter overflows, so that tests under QEMU
    /// (whose `raspi4b` raises the PPI instead) follow that path. Returns
    /// the SPI's INTID; NOT_SUPPORTED on a board without one and in
    /// production images.
    pub const TESSERA_TEST_RAISE_PMU_SPI: u32 = 0x8600_0082;
}

/// PSCI return codes. PSCI defines them as 32-bit signed values in w0; they
/// are given here as the sign-extended x0 values the hypervisor returns.
pub mod status {
    pub const SUCCESS: i64 = 0;
    pub const NOT_SUPPORTED: i64 = -1;
    pub const INVALID_PARAMETERS: i64 = -2;
    pub const DENIED: i64 = -3;
    pub const ALREADY_ON: i64 = -4;
    pub const ON_PENDING: i64 = -5;
    pub const INTERNAL_FAILURE: i64 = -6;
    pub const NOT_PRESENT: i64 = -7;
    pub const DISABLED: i64 = -8;
    pub const INVALID_ADDRESS: i64 = -9;
}

#[cfg(test)]
mod tests {
    use super::function::*;

    /// The convention bit is the only difference between the two forms of
    /// a call, and every PSCI and SMCCC call is a fast call (bit 31), in the
    /// owning entity the specifications give it (bits 29:24: 0 for the Arm
    /// architecture calls, 4 for standard secure services such as PSCI, 6
    /// for the hypervisor vendor range Tessera uses).
    #[test]
    fn identifiers_follow_the_smccc_encoding() {
        const SMC64: u32 = 1 << 30;
        for (narrow, wide) in [
            (CPU_SUSPEND_32, CPU_SUSPEND_64),
            (CPU_ON_32, CPU_ON_64),
            (AFFINITY_INFO_32, AFFINITY_INFO_64),
        ] {
            assert_eq!(narrow & SMC64, 0, "{narrow:#x}");
            assert_eq!(narrow | SMC64, wide, "{narrow:#x}");
        }
        let owner = |id: u32| (id >> 24) & 0x3F;
        let fast = |id: u32| id & (1 << 31) != 0;
        for id in [SMCCC_VERSION, SMCCC_ARCH_FEATURES] {
            assert!(fast(id) && owner(id) == 0, "{id:#x}");
        }
        for id in [
            PSCI_VERSION,
            CPU_SUSPEND_64,
            CPU_OFF,
            CPU_ON_64,
            AFFINITY_INFO_64,
            MIGRATE_INFO_TYPE,
            SYSTEM_OFF,
            SYSTEM_RESET,
            PSCI_FEATURES,
        ] {
            assert!(fast(id) && owner(id) == 4, "{id:#x}");
        }
        for id in [
            TESSERA_VM_EXIT,
            TESSERA_RESET_COUNT,
            TESSERA_TEST_VCPU_TRAPS,
            TESSERA_BENCH_EXIT_COUNT,
            TESSERA_TEST_RAISE_PMU_SPI,
        ] {
            assert!(fast(id) && owner(id) == 6, "{id:#x}");
            assert_eq!(id & SMC64, 0, "{id:#x}: an SMC32 call");
        }
    }
}
