//! Starting the secondary CPUs, by PSCI CPU_ON or the spin table.

use core::sync::atomic::{AtomicUsize, Ordering};

use tessera_platform::CpuStartMethod;

use crate::arch::{self, entry};
use crate::boot::board::BOARD;
use crate::boot::power::psci;

/// Secondary CPUs that have reached Rust. The boot CPU is not counted, so
/// that the count starts at zero and lives in `.bss`, not the image.
static SECONDARIES_ONLINE: AtomicUsize = AtomicUsize::new(0);

/// Why a CPU could not be started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartError {
    /// PSCI CPU_ON returned this error code.
    Psci(i64),
    /// The spin table has no release address for this CPU.
    NoReleaseAddress,
}

// Written out rather than derived `Debug`: the image then carries none of
// the `Debug` builders (about 3 KiB with every such report).
impl core::fmt::Display for StartError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Psci(code) => write!(f, "PSCI CPU_ON returned {code}"),
            Self::NoReleaseAddress => f.write_str("the spin table has no release address for it"),
        }
    }
}

/// Publishes what secondaries need to find their index and turn on their
/// MMU, then cleans it to memory: they read it with caches off.
pub fn publish_boot_parameters(affinities: &[u64], translation_table: u64) {
    let boot_pointer = &raw mut entry::SECONDARY_BOOT;
    // SAFETY: only the boot CPU runs; no secondary has been started yet, so
    // nothing else reads or writes SECONDARY_BOOT.
    let boot = unsafe { &mut *boot_pointer };
    boot.affinities[..affinities.len()].copy_from_slice(affinities);
    boot.cpu_count = affinities.len() as u64;
    boot.mair = arch::mair_el2_value();
    boot.tcr = arch::tcr_el2_value();
    boot.translation_table = translation_table;
    boot.sctlr = arch::SCTLR_EL2_VALUE;
    arch::clean_to_point_of_coherency(boot as *const _ as usize, size_of::<entry::SecondaryBoot>());
}

/// Releases CPU `index` (whose MPIDR affinity is `affinity`) into
/// `secondary_entry`.
pub fn start_cpu(index: usize, affinity: u64) -> Result<(), StartError> {
    let entry_point = entry::secondary_entry as *const () as u64;
    match BOARD.cpu_start {
        CpuStartMethod::PsciSmc => {
            let result = arch::smc_call(psci::CPU_ON_64, affinity, entry_point, index as u64);
            if result == 0 {
                Ok(())
            } else {
                Err(StartError::Psci(result))
            }
        }
        CpuStartMethod::SpinTable { release_addresses } => {
            let address = *release_addresses
                .get(index)
                .ok_or(StartError::NoReleaseAddress)?;
            // SAFETY: the release address is the firmware's spin-table slot
            // for this CPU, in the board's firmware-reserved page, which the
            // EL2 map covers as RAM; the waiting CPU only reads it.
            unsafe { core::ptr::write_volatile(address as *mut u64, entry_point) };
            arch::clean_to_point_of_coherency(address as usize, 8);
            arch::send_event();
            Ok(())
        }
    }
}

/// Called by each secondary CPU once it runs Rust.
pub fn mark_online() {
    SECONDARIES_ONLINE.fetch_add(1, Ordering::AcqRel);
}

/// CPUs that have reached Rust, the boot CPU included.
pub fn online_count() -> usize {
    SECONDARIES_ONLINE.load(Ordering::Acquire) + 1
}
