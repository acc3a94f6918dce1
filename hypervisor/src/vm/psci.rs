//! The guest-facing firmware interface: PSCI 1.1, the SMCCC version calls
//! and Tessera's own calls (docs/guest-interface.md), decoded into actions.
//! Carrying the actions out (starting vCPUs, stopping VMs) is the VM
//! layer's job; this module only decides what a call means.

/// The function identifiers and return codes, shared with the guest SDK
/// and the host tool.
pub use tessera_arm_defs::psci::{function, status};

/// PSCI 1.1 in the VERSION encoding (major << 16 | minor).
pub const PSCI_VERSION_1_1: i64 = 0x1_0001;
/// SMCCC 1.1.
pub const SMCCC_VERSION_1_1: i64 = 0x1_0001;
/// MIGRATE_INFO_TYPE: "Trusted OS not present or does not require migration".
pub const MIGRATE_NOT_REQUIRED: i64 = 2;

/// What a call asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// Answer at once with this value in x0.
    Return(i64),
    /// Start the vCPU whose MPIDR is `target` at `entry`, with x0 = `context`.
    CpuOn {
        target: u64,
        entry: u64,
        context: u64,
    },
    /// Stop the calling vCPU.
    CpuOff,
    /// Standby until an interrupt (CPU_SUSPEND; every power state is
    /// treated as standby, which PSCI allows).
    CpuSuspend,
    /// Report whether the vCPU `target` is on.
    AffinityInfo { target: u64, lowest_level: u64 },
    /// Stop the VM (status 0).
    SystemOff,
    /// Restart the VM from its pristine image.
    SystemReset,
    /// Stop the VM with a status (Tessera call).
    VmExit { status: u32 },
    /// How often the VM has been reset (Tessera call).
    ResetCount,
    /// Which optional traps are on for this vCPU (Tessera call, test
    /// builds only).
    TestVcpuTraps,
    /// How many guest exits this CPU has taken (Tessera call, benchmark
    /// builds only).
    BenchExitCount,
    /// Raise this CPU's PMU overflow SPI (Tessera call, test builds only).
    TestRaisePmuSpi,
}

/// Decodes a call from the guest's x0..x3. 32-bit calling-convention
/// functions only see the low 32 bits of their arguments.
#[must_use]
pub fn decode(x0: u64, x1: u64, x2: u64, x3: u64) -> Call {
    use function::*;
    let id = x0 as u32;
    let is_32 = id & (1 << 30) == 0;
    let arg = |value: u64| if is_32 { value & 0xFFFF_FFFF } else { value };
    match id {
        SMCCC_VERSION => Call::Return(SMCCC_VERSION_1_1),
        PSCI_VERSION => Call::Return(PSCI_VERSION_1_1),
        CPU_ON_32 | CPU_ON_64 => Call::CpuOn {
            target: arg(x1),
            entry: arg(x2),
            context: arg(x3),
        },
        CPU_OFF => Call::CpuOff,
        CPU_SUSPEND_32 | CPU_SUSPEND_64 => Call::CpuSuspend,
        SMCCC_ARCH_FEATURES => Call::Return(match x1 as u32 {
            SMCCC_VERSION | SMCCC_ARCH_FEATURES => status::SUCCESS,
            // The ARCH_WORKAROUND calls and everything else.
            _ => status::NOT_SUPPORTED,
        }),
        AFFINITY_INFO_32 | AFFINITY_INFO_64 => Call::AffinityInfo {
            target: arg(x1),
            lowest_level: arg(x2),
        },
        MIGRATE_INFO_TYPE => Call::Return(MIGRATE_NOT_REQUIRED),
        SYSTEM_OFF => Call::SystemOff,
        SYSTEM_RESET => Call::SystemReset,
        PSCI_FEATURES => Call::Return(if is_implemented(x1 as u32) {
            status::SUCCESS
        } else {
            status::NOT_SUPPORTED
        }),
        TESSERA_VM_EXIT => Call::VmExit { status: x1 as u32 },
        TESSERA_RESET_COUNT => Call::ResetCount,
        TESSERA_TEST_VCPU_TRAPS => Call::TestVcpuTraps,
        TESSERA_BENCH_EXIT_COUNT => Call::BenchExitCount,
        TESSERA_TEST_RAISE_PMU_SPI => Call::TestRaisePmuSpi,
        // Everything else is not implemented.
        _ => Call::Return(status::NOT_SUPPORTED),
    }
}

/// Whether PSCI_FEATURES reports `id` as implemented.
#[must_use]
pub const fn is_implemented(id: u32) -> bool {
    use function::*;
    matches!(
        id,
        PSCI_VERSION
            | CPU_OFF
            | CPU_ON_32
            | CPU_ON_64
            | AFFINITY_INFO_32
            | AFFINITY_INFO_64
            | MIGRATE_INFO_TYPE
            | SYSTEM_OFF
            | SYSTEM_RESET
            | PSCI_FEATURES
            | CPU_SUSPEND_32
            | CPU_SUSPEND_64
            | SMCCC_VERSION
    )
}

/// The MPIDR affinity bits a caller may use to name a CPU: bit 31, U and
/// MT are masked off before matching.
pub const MPIDR_AFFINITY_MASK: u64 = 0xFF_00FF_FFFF;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_features() {
        assert_eq!(decode(0x8400_0000, 0, 0, 0), Call::Return(PSCI_VERSION_1_1));
        assert_eq!(
            decode(0x8000_0000, 0, 0, 0),
            Call::Return(SMCCC_VERSION_1_1)
        );
        assert_eq!(decode(0x8400_000A, 0xC400_0003, 0, 0), Call::Return(0));
        assert_eq!(decode(0x8400_000A, 0xC400_0001, 0, 0), Call::Return(0));
        assert_eq!(decode(0x8400_000A, 0x8400_0005, 0, 0), Call::Return(-1));
        assert_eq!(decode(0x8000_0001, 0x8000_8000, 0, 0), Call::Return(-1));
        assert_eq!(decode(0x8000_0001, 0x8000_0000, 0, 0), Call::Return(0));
        assert_eq!(decode(0xC400_0001, 0, 0, 0), Call::CpuSuspend);
        assert_eq!(decode(0x8400_0006, 0, 0, 0), Call::Return(2));
    }

    #[test]
    fn cpu_on_keeps_64_bit_arguments_and_truncates_32_bit_ones() {
        assert_eq!(
            decode(0xC400_0003, 0x8000_0001, 0x1_4008_0000, 7),
            Call::CpuOn {
                target: 0x8000_0001,
                entry: 0x1_4008_0000,
                context: 7
            }
        );
        assert_eq!(
            decode(0x8400_0003, 0x1, 0x1_4008_0000, 0xFFFF_FFFF_0000_0001),
            Call::CpuOn {
                target: 1,
                entry: 0x4008_0000,
                context: 1
            }
        );
    }

    #[test]
    fn lifecycle_calls() {
        assert_eq!(decode(0x8400_0008, 0, 0, 0), Call::SystemOff);
        assert_eq!(decode(0x8400_0009, 0, 0, 0), Call::SystemReset);
        assert_eq!(decode(0x8400_0002, 0, 0, 0), Call::CpuOff);
        assert_eq!(decode(0x8600_0001, 3, 0, 0), Call::VmExit { status: 3 });
        assert_eq!(decode(0x8600_0002, 0, 0, 0), Call::ResetCount);
        assert_eq!(decode(0x8600_0080, 0, 0, 0), Call::TestVcpuTraps);
        assert_eq!(decode(0x8600_0081, 0, 0, 0), Call::BenchExitCount);
        assert_eq!(decode(0x8600_0082, 0, 0, 0), Call::TestRaisePmuSpi);
        assert_eq!(
            decode(0xC400_0004, 1, 0, 0),
            Call::AffinityInfo {
                target: 1,
                lowest_level: 0
            }
        );
        // The upper half of x0 is ignored: the function ID is 32 bits.
        assert_eq!(decode(0xFFFF_FFFF_8400_0008, 0, 0, 0), Call::SystemOff);
        assert_eq!(decode(0x1234, 0, 0, 0), Call::Return(-1));
    }
}
