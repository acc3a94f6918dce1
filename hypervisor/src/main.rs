//! The Tessera EL2 image.
//!
//! On `aarch64-unknown-none-softfloat` this is the hypervisor: the boot
//! assembly in `arch` hands over to `boot`, which brings up the MMU, console,
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

#[cfg(target_os = "none")]
mod arch;
#[cfg(target_os = "none")]
mod board;
#[cfg(target_os = "none")]
mod boot;
#[cfg(target_os = "none")]
mod console;
#[cfg(target_os = "none")]
mod devices;
#[cfg(target_os = "none")]
mod exceptions;
#[cfg(target_os = "none")]
mod gic;
#[cfg(target_os = "none")]
mod interrupts;
#[cfg(target_os = "none")]
mod memory;
#[cfg(target_os = "none")]
mod power;
#[cfg(target_os = "none")]
mod smp;
#[cfg(target_os = "none")]
mod timer;
#[cfg(target_os = "none")]
mod vm;
#[cfg(target_os = "none")]
mod vuart;

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
