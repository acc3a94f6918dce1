//! AArch64 architecture definitions that both sides of Tessera decode: the
//! hypervisor (at EL2, for guest exits and its crash report) and the guest
//! SDK (at EL1, for the exceptions a guest takes). One decoder, so the two
//! describe the same syndrome the same way.
//!
//! Portable and free of `unsafe`; unit-tested on the host.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod exception_syndrome;
