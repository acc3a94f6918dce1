//! Virtual device models for Tessera guests.
//!
//! Every device here is a pure state machine: it sees decoded MMIO accesses
//! and talks to the hypervisor core only through small traits (raise an
//! interrupt line, write console bytes, map and unmap guest pages, take
//! host pages). No `unsafe`, no hardware access, so each model is tested on
//! the host with fakes for those traits.
//!
//! - [`pl011`]: the virtual UART, one per VM.
//! - [`shmem`]: vdev-shmem, named shared regions with selective signalling;
//!   one model for the whole system.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

pub mod console;
pub mod interrupt;
pub mod mmio;
pub mod pl011;
pub mod services;
pub mod shmem;

pub use console::ConsoleSink;
pub use interrupt::{InterruptLine, VmLines};
pub use mmio::{AccessWidth, MmioDevice};
pub use pl011::Pl011;
pub use services::{GuestPages, HostPages, PageAccess, PagesRefused, VmIndex, VmServices};
pub use shmem::{Shmem, ShmemServices};
