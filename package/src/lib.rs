//! The system package (docs/system-image.md), as both sides see it: the
//! host tool writes packages, the hypervisor reads one at every boot, and
//! `tessera inspect` checks them the way the hypervisor will. What both must
//! agree on lives here, once.
//!
//! - [`cpio`]: the container, a `070702` cpio archive: its header layout,
//!   the reader (entries, checksums) and typed errors.
//! - [`rules`]: the rules every system obeys (sizes, alignment, ranges,
//!   names, CPUs, board, GIC version, counts), which the tool applies to a
//!   configuration and the hypervisor to the manifest it boots.
//! - [`escape`]: how bytes from outside (names, values, guest output) are
//!   printed, by the tool and the hypervisor alike.
//! - `test_support` (tests, and the `test-support` feature): archives built
//!   from a list of files, for tests here and in the crates that read
//!   packages.
//!
//! `no_std` and free of `unsafe`, so the hypervisor can link it; unit-tested
//! on the host.
#![no_std]
#![forbid(unsafe_code)]

pub mod cpio;
pub mod escape;
pub mod rules;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
