//! The runtime that bare-metal Tessera guests link.
//!
//! Guests see a machine shaped like QEMU `virt` (see docs/ARCHITECTURE.md);
//! this crate holds the calls every guest makes to the hypervisor. It grows
//! the entry code, vectors, console and the vdev-shmem client with the guest
//! issues.
#![no_std]

pub mod psci;
