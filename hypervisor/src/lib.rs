//! The portable core of the Tessera hypervisor.
//!
//! Everything in this library builds and is unit-tested on the host: the VM
//! core (lifecycle, request queues, stage 2, device maps), address types,
//! exception-syndrome decoding, translation-table building, the physical
//! memory map, the device-tree and package readers and the crash report. The
//! EL2 glue that touches hardware (boot assembly, vectors, system registers,
//! drivers) lives in the binary (`main.rs` and the modules it declares) and
//! calls into this library; the VM core reaches the hardware only through
//! its `Hardware` trait.
#![cfg_attr(not(test), no_std)]
#![deny(clippy::undocumented_unsafe_blocks)]

// The source is grouped by concern: each directory holds one concern's
// portable part (declared here, host-tested) and its hardware glue
// (declared in `main.rs`), side by side.

/// Bring-up: the board's device tree, the system package and its manifest.
pub mod boot {
    pub mod device_tree;
    pub mod flat_tree;
    pub mod manifest;
    pub mod package;
}
/// The console's output queue, shared by every VM, and the escaping rule
/// for everything from outside that reaches the console.
pub mod console {
    pub use tessera_package::escape;
    pub mod queue;
}
/// Emulated devices: each VM's device map.
pub mod devices {
    pub mod map;
}
/// Memory and translation: typed addresses, the physical memory map, the
/// translation tables of EL2 and stage 2.
pub mod memory {
    pub mod address;
    pub mod map;
    pub mod page_table;
}
/// Traps and exits: decoding a guest exit, reflecting an abort, the crash
/// report.
pub mod traps {
    pub use tessera_arm_defs::exception_syndrome;
    pub mod crash_report;
    pub mod guest_exit;
    pub mod instruction;
    pub mod reflect;
}
/// The virtual GIC: each VM's interrupt state and its distributor and
/// redistributor register files.
pub mod vgic {
    pub mod distributor;
    pub mod interrupts;
    pub mod list_registers;
    pub mod redistributor;
    pub mod state;
}
/// The spin lock every hypervisor lock is.
pub mod sync;
/// The VM core: typed identifiers, VM lifecycle, the per-CPU request
/// queues, stage 2, loading, vCPU state, PSCI and set/way decisions.
pub mod vm {
    pub mod ids;
    pub mod image;
    pub mod lifecycle;
    pub mod psci;
    pub mod request_queue;
    pub mod services;
    pub mod set_way;
    pub mod stage2;
    pub mod system;
    pub mod vcpu_state;
}

/// The version shown in the banner.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Upper bound on physical CPUs; sizes the per-CPU arrays (stacks, MPIDR
/// table). QEMU `virt` with GICv2 supports 8; GICv3 boards larger than this
/// boot with the first `MAX_CPUS` CPUs.
pub const MAX_CPUS: usize = 8;
