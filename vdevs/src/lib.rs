//! Virtual device models for Tessera guests.
//!
//! Every device here is a pure state machine: it sees decoded MMIO accesses
//! and talks to the hypervisor core only through small traits (raise an
//! interrupt line, write console bytes, map and unmap guest pages). No `unsafe`, no hardware access, so
//! each model is tested on the host with fakes for those traits.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

pub mod console;
pub mod interrupt;
pub mod mmio;
pub mod pl011;
pub mod services;

pub use console::ConsoleSink;
pub use interrupt::InterruptLine;
pub use mmio::{AccessWidth, MmioDevice};
pub use pl011::Pl011;
pub use services::{GuestPages, PageAccess, PagesRefused, VmServices};
