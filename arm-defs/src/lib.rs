//! Arm architecture and firmware-interface definitions shared by the
//! hypervisor, the guest SDK and the host tool: the exception syndrome
//! (decoded once, so the hypervisor's reports and the guest SDK's describe
//! a syndrome the same way) and the PSCI/SMCCC function identifiers and
//! return codes (with Tessera's own calls), so that the side making a call
//! and the side answering it cannot disagree on a number. It also holds
//! the one text utility the no_std crates share (`text`: short fixed
//! texts as NUL-ended lists), as the crate every one of them may depend
//! on.
//!
//! Portable and free of `unsafe`; unit-tested on the host.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod exception_syndrome;
pub mod psci;
pub mod text;
