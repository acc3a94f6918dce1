//! Secondary vCPUs with interrupts: which vCPUs the guest has, and a
//! PSCI CPU_ON that sets up the started vCPU's GIC interface before its
//! entry function runs.
//!
//! ```ignore
//! gic::init_from_device_tree()?;          // on vCPU 0
//! for mpidr in smp::secondaries()? {
//!     smp::start(mpidr, worker, 0)?;      // worker runs with its GIC ready
//! }
//! ```

use crate::cpu::{self, Start};
use crate::device_tree::{DeviceTree, DeviceTreeError};
use crate::psci::{self, PsciError};

/// vCPUs the SDK can list (its stack slots).
const MAX: usize = cpu::MAX_VCPUS;

/// The MPIDRs (affinity) of the vCPUs the SDK can run, as the boot device
/// tree lists them (`/cpus/cpu@N`), in tree order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vcpus {
    ids: [u64; MAX],
    count: usize,
}

impl Vcpus {
    /// Reads the CPU nodes of `tree`, keeping those the SDK has a stack for.
    #[must_use]
    pub fn from_device_tree(tree: &DeviceTree<'_>) -> Self {
        let mut vcpus = Self {
            ids: [0; MAX],
            count: 0,
        };
        for id in tree.cpu_ids().filter(|&id| cpu::index_of(id).is_some()) {
            if vcpus.count < MAX {
                vcpus.ids[vcpus.count] = id;
                vcpus.count += 1;
            }
        }
        vcpus
    }

    /// The vCPUs of the boot device tree.
    ///
    /// # Errors
    /// Without a device tree.
    pub fn boot() -> Result<Self, DeviceTreeError> {
        Ok(Self::from_device_tree(&DeviceTree::boot()?))
    }

    #[must_use]
    pub const fn count(&self) -> usize {
        self.count
    }

    /// Their MPIDRs.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.ids[..self.count].iter().copied()
    }

    /// All but the calling vCPU.
    pub fn others(&self) -> impl Iterator<Item = u64> + '_ {
        let me = cpu::index_of(cpu::mpidr());
        self.iter().filter(move |&id| cpu::index_of(id) != me)
    }
}

/// Starts the vCPU with MPIDR `target_mpidr` through PSCI CPU_ON: on its
/// own stack, with the SDK's vectors, it sets up its GIC interface
/// ([`crate::gic::init_this_cpu`]: redistributor woken, SGIs and PPIs in
/// the SDK's group, priority mask open, interface enabled) and then runs
/// `entry(argument)` with IRQs still masked. [`crate::gic::init`] must have
/// run on the boot vCPU. Should the set-up fail, the vCPU reports it and
/// stops the VM with [`crate::exit_status::GIC_SETUP_FAILED`].
///
/// # Errors
/// As [`psci::cpu_on`].
pub fn start(target_mpidr: u64, entry: fn(usize) -> !, argument: usize) -> Result<(), PsciError> {
    psci::cpu_on_with(
        target_mpidr,
        Start {
            entry,
            argument,
            init_interrupts: true,
        },
    )
}
