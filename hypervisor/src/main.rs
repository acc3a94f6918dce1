//! The Tessera EL2 image.
//!
//! On `aarch64-unknown-none-softfloat` this is the hypervisor: the boot
//! assembly in `arch` hands over to `boot::bring_up`, which brings up the MMU, console,
//! memory, GIC and every CPU. The portable logic it uses lives in the
//! `tessera_hypervisor` library and is unit-tested on the host.
//!
//! The hypervisor is built soft-float on purpose: EL2 code never touches the
//! FP/SIMD registers, so a guest's FP/SIMD state survives every trap
//! without being saved and restored.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(target_os = "none")]
extern crate alloc;

// Grouped by concern, beside the library's part of each concern (see
// lib.rs): a directory holds both crates' files.
#[cfg(target_os = "none")]
mod arch;
#[cfg(target_os = "none")]
mod boot {
    pub mod board;
    pub mod bring_up;
    pub mod power;
    pub mod smp;
}
#[cfg(target_os = "none")]
mod console {
    mod output;
    pub use output::*;
}
#[cfg(target_os = "none")]
mod devices {
    mod instances;
    pub mod shmem;
    pub mod vuart;
    pub use instances::*;
}
#[cfg(target_os = "none")]
mod interrupts {
    mod dispatch;
    pub mod gic;
    pub mod guest;
    pub mod timer;
    pub mod virtual_interface;
    pub use dispatch::*;
}
#[cfg(target_os = "none")]
mod memory {
    mod el2;
    pub use el2::*;
}
#[cfg(target_os = "none")]
mod traps {
    pub mod handlers;
}
#[cfg(target_os = "none")]
mod vm {
    mod runtime;
    pub use runtime::*;
}

/// Host builds (`cargo build --workspace`, clippy) compile this file too;
/// the hypervisor itself only exists for the bare-metal target.
#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "tessera-hypervisor is an EL2 image: build it with `tessera build --board virt|rpi4` \
         (target aarch64-unknown-none-softfloat)"
    );
    std::process::exit(2);
}
