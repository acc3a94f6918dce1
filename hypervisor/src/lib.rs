//! The portable core of the Tessera hypervisor.
//!
//! Everything in this library builds and is unit-tested on the host: address
//! types, exception-syndrome decoding, translation-table building, the
//! physical memory map, the device-tree reader and the crash report. The EL2
//! glue that touches hardware (boot assembly, vectors, system registers,
//! drivers) lives in the binary (`main.rs` and the modules under it) and calls
//! into this library.
#![cfg_attr(not(test), no_std)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod address;
pub mod console_queue;
pub mod crash_report;
/// Emulated devices: each VM's device map.
pub mod devices {
    pub mod map;
}
pub mod device_tree;
pub use tessera_arm_defs::exception_syndrome;
pub mod fast_copy;
pub mod flat_tree;
pub mod guest_exit;
pub mod manifest;
pub mod memory_map;
pub mod package;
pub mod page_table;
pub mod psci;
pub mod reflect;
pub mod set_way;
pub mod vcpu_state;
/// The VM core: typed identifiers, VM lifecycle, stage 2.
pub mod vm {
    pub mod ids;
    pub mod image;
    pub mod lifecycle;
    pub mod request_queue;
    pub mod stage2;
    pub mod system;
}

/// The version shown in the banner.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Upper bound on physical CPUs; sizes the per-CPU arrays (stacks, MPIDR
/// table). QEMU `virt` with GICv2 supports 8; GICv3 boards larger than this
/// boot with the first `MAX_CPUS` CPUs.
pub const MAX_CPUS: usize = 8;
